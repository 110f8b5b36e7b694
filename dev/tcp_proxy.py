"""A TCP proxy on loopback that a test can cut and restore: a service outage without stopping the shared service.

Not a test module.  `cut()` closes the listening socket and every forwarded
connection (clients see their connection drop, new ones are refused, exactly as
when the server process is gone); `restore()` listens again on the same port.
"""
from __future__ import annotations

import selectors
import socket
import threading


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._pending: list = []
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> TcpProxy:
        self._listen()
        self._thread.start()
        return self

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        self._call(lambda: self._selector.register(listener, selectors.EVENT_READ, "accept"))

    def _call(self, fn) -> None:
        """Run `fn` on the proxy thread (selectors are not thread-safe) and wait for it."""
        if not self._thread.is_alive():
            fn()
            return
        done = threading.Event()
        with self._lock:
            self._pending.append((fn, done))
        self._wake_w.send(b"x")
        done.wait(5)

    def cut(self) -> None:
        """The service is gone: drop every connection and refuse new ones."""
        def close_all() -> None:
            if self._listener is not None:
                self._selector.unregister(self._listener)
                self._listener.close()
                self._listener = None
            for a, b in self._pairs:
                for sock in (a, b):
                    try:
                        self._selector.unregister(sock)
                    except (KeyError, ValueError):
                        pass
                    sock.close()
            self._pairs.clear()
        self._call(close_all)

    def restore(self) -> None:
        """The service is back, on the same address."""
        self._listen()

    def close(self) -> None:
        self.cut()
        self._stop.set()
        self._wake_w.send(b"x")
        self._thread.join(5)
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _events in self._selector.select(timeout=0.5):
                if key.fileobj is self._wake_r:
                    self._wake_r.recv(4096)
                    with self._lock:
                        pending, self._pending = self._pending, []
                    for fn, done in pending:
                        fn()
                        done.set()
                elif key.data == "accept":
                    self._accept()
                else:
                    self._forward(key.fileobj, key.data)

    def _accept(self) -> None:
        if self._listener is None:
            return
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setblocking(False)
        self._pairs.append((client, upstream))
        self._selector.register(client, selectors.EVENT_READ, upstream)
        self._selector.register(upstream, selectors.EVENT_READ, client)

    def _forward(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            data = source.recv(65536)
            if data:
                sink.setblocking(True)
                sink.sendall(data)
                sink.setblocking(False)
                return
        except OSError:
            pass
        self._drop(source, sink)

    def _drop(self, a: socket.socket, b: socket.socket) -> None:
        for sock in (a, b):
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
        self._pairs = [pair for pair in self._pairs if a not in pair]
