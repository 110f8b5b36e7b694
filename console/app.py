"""The console's web application (Starlette): login, the live page, and the actions.

Why Starlette + uvicorn + Jinja2: a page is a template rendered from a view kept in memory, so the server
needs little more than routing, sessions and templates; Starlette gives exactly that with no ORM or admin
machinery, runs on uvicorn's fast event loop, and its test-free dependencies are three small packages.
Blocking work (kazoo, pika) never runs on the event loop: the view comes from the collector thread and
actions run in Starlette's thread pool.

Safety: every page but /login needs a session (a signed, HttpOnly, SameSite=Strict cookie; Secure under
HTTPS); every POST carries the session's CSRF token; bad input and refused actions come back as a one-line
message on the page; an unexpected error is a one-line 500 page (the traceback goes to the log only).
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from pero_worker.console.collector import Collector
from pero_worker.console.settings import ConsoleSettings
from pero_worker.libs.mq import MQError, MQSession, MQSettings
from pero_worker.libs.zk import KazooException, ZooKeeper, describe_zk_error
from pero_worker.tools.cli import CliError, validate_stage_name
from pero_worker.tools.dead_letters import DeadLetterQueue, Selection, replay
from pero_worker.tools.worker_control import DEFAULT_SWITCH_LOCK, set_enabled, switch_worker

log = logging.getLogger(__name__)

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
STATIC = Path(__file__).parent / "static"
SESSION_SECONDS = 8 * 3600
BAD_LOGIN_DELAY = 1.0
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class ActionRefused(Exception):
    """An action that cannot be done as asked; the text is shown to the operator."""


def _csrf(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def _flash(request: Request, text: str, kind: str = "ok") -> None:
    messages = list(request.session.get("flash", []))[-4:]
    messages.append([kind, text[:500]])
    request.session["flash"] = messages


def _headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


class Console:
    """The app's state: settings, the ZooKeeper session and the collector."""

    def __init__(self, settings: ConsoleSettings, zk: ZooKeeper) -> None:
        self.settings = settings
        self.zk = zk
        self.collector = Collector(settings, zk)

    # --- pages ------------------------------------------------------------------------------------------
    def _render(self, request: Request, name: str, **context: Any) -> Response:
        view = context.setdefault("view", self.collector.view)
        context["age"] = time.time() - view.time if view is not None else 0.0
        context["stale_after"] = max(5.0, 5 * self.settings.refresh)
        context["round_ms"] = self.collector.last_round_s * 1000
        context["csrf"] = _csrf(request)
        context["user"] = request.session.get("user")
        context["messages"] = request.session.pop("flash", []) if name != "live.html" else []
        context["https"] = self.settings.https
        return _headers(TEMPLATES.TemplateResponse(request, name, context))

    async def index(self, request: Request) -> Response:
        if not request.session.get("user"):
            return _headers(RedirectResponse("/login", status_code=303))
        return self._render(request, "index.html")

    async def live(self, request: Request) -> Response:
        if not request.session.get("user"):
            return _headers(PlainTextResponse("login required", status_code=401))
        return self._render(request, "live.html")

    async def login_page(self, request: Request) -> Response:
        return self._render(request, "login.html", error=None)

    async def login(self, request: Request) -> Response:
        form = await request.form()
        if not self._csrf_ok(request, form):
            return self._render(request, "login.html", error="the form expired: try again")
        user, password = str(form.get("username", "")), str(form.get("password", ""))
        expected = self.settings.login_password
        good = (bool(expected) and hmac.compare_digest(user.encode(), self.settings.login_user.encode())
                and hmac.compare_digest(password.encode(), expected.encode()))
        if not good:
            log.warning("console: refused login for user %r from %s", user[:64],
                        request.client.host if request.client else "?")
            await asyncio.sleep(BAD_LOGIN_DELAY)   # slows down guessing
            return self._render(request, "login.html", error="wrong user name or password")
        request.session.clear()
        request.session.update({"user": user, "csrf": secrets.token_urlsafe(32), "since": time.time()})
        return _headers(RedirectResponse("/", status_code=303))

    async def logout(self, request: Request) -> Response:
        form = await request.form()
        if self._csrf_ok(request, form):
            request.session.clear()
        return _headers(RedirectResponse("/login", status_code=303))

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        kinds = {"console.css": "text/css", "console.js": "text/javascript"}
        if name not in kinds:
            return _headers(PlainTextResponse("not found", status_code=404))
        response = Response((STATIC / name).read_bytes(), media_type=kinds[name])
        response.headers.update(SECURITY_HEADERS)
        response.headers["Cache-Control"] = "max-age=3600"
        return response

    # --- actions ------------------------------------------------------------------------------------------
    @staticmethod
    def _csrf_ok(request: Request, form: Any) -> bool:
        expected = request.session.get("csrf") or ""
        given = str(form.get("csrf", ""))
        return bool(expected) and hmac.compare_digest(expected.encode(), given.encode())

    async def action(self, request: Request) -> Response:
        if not request.session.get("user"):
            return _headers(RedirectResponse("/login", status_code=303))
        form = await request.form()
        if not self._csrf_ok(request, form):
            _flash(request, "the form expired (CSRF check failed): nothing was done", "error")
            return _headers(RedirectResponse("/", status_code=303))
        name = request.path_params["name"]
        handlers = {"move": self._move, "enable": self._enable, "disable": self._disable, "replay": self._replay}
        handler = handlers.get(name)
        try:
            if handler is None:
                raise ActionRefused(f"unknown action {name!r}")
            text = await run_in_threadpool(handler, form)
            _flash(request, text)
            log.info("console: %s by %s: %s", name, request.session.get("user"), text)
        except (ActionRefused, CliError, MQError) as error:
            _flash(request, str(error), "error")
        except KazooException as error:
            _flash(request, f"ZooKeeper: {describe_zk_error(error)}", "error")
        self.collector.refresh_soon()
        return _headers(RedirectResponse("/", status_code=303))

    @staticmethod
    def _worker(form: Any) -> str:
        worker = str(form.get("worker", "")).strip()
        if not worker:
            raise ActionRefused("no worker given")
        return worker

    def _move(self, form: Any) -> str:
        worker, stage = self._worker(form), str(form.get("stage", "")).strip()
        warnings = switch_worker(self.zk, worker, stage, lock=DEFAULT_SWITCH_LOCK, force=False)
        return f"worker {worker} -> {stage or 'no stage'}" + "".join(f"; warning: {w}" for w in warnings)

    def _enable(self, form: Any) -> str:
        worker = self._worker(form)
        set_enabled(self.zk, worker, True)
        return f"worker {worker} enabled"

    def _disable(self, form: Any) -> str:
        worker = self._worker(form)
        set_enabled(self.zk, worker, False)
        return f"worker {worker} asked to shut down (enabled = false)"

    def _replay(self, form: Any) -> str:
        ids = frozenset(str(i) for i in form.getlist("letter"))
        everything = form.get("all") == "1"
        if not ids and not everything:
            raise ActionRefused("choose the dead letters to replay (tick them, or 'replay all')")
        to_stage = str(form.get("to", "")).strip() or None
        if to_stage:
            try:
                validate_stage_name(to_stage)
            except ValueError as error:
                raise ActionRefused(str(error)) from None
        session = MQSession(MQSettings.from_zookeeper(self.zk, self.settings.connection), name="pero-console-replay")
        session.open(retry_for=5)
        try:
            queue = DeadLetterQueue(session, self.settings.dead_letter_queue)
            report, lines = replay(queue, Selection(ids=ids, everything=everything), to_stage=to_stage,
                                   now=time.time())
        finally:
            session.close()
        refused = [line for line in lines if "not replayed" in line]
        text = f"replayed {report.published} of {report.matched} selected dead letters"
        details = refused[:3] + report.failures[:3]
        if details:
            text += ": " + "; ".join(details)
        if report.failures or refused:
            raise ActionRefused(text)
        return text


async def _server_error(request: Request, _error: Exception) -> Response:
    log.exception("console: request %s %s failed", request.method, request.url.path)
    return _headers(HTMLResponse("<!doctype html><title>error</title><p>The console failed on this request; "
                                 "its log has the details. <a href=\"/\">Back</a>", status_code=500))


async def _not_found(_request: Request, _error: Exception) -> Response:
    return _headers(HTMLResponse("<!doctype html><title>not found</title><p>No such page. <a href=\"/\">Back</a>",
                                 status_code=404))


def create_app(settings: ConsoleSettings, zk: ZooKeeper, *, secret: str | None = None) -> Starlette:
    console = Console(settings, zk)

    @asynccontextmanager
    async def lifespan(_app: Starlette):
        console.collector.start()
        await run_in_threadpool(console.collector.wait_for_round, 0, 30.0)
        yield
        await run_in_threadpool(console.collector.stop)

    routes = [
        Route("/", console.index), Route("/live", console.live),
        Route("/login", console.login_page, methods=["GET"]), Route("/login", console.login, methods=["POST"]),
        Route("/logout", console.logout, methods=["POST"]),
        Route("/action/{name}", console.action, methods=["POST"]),
        Route("/static/{name}", console.static),
    ]
    middleware = [Middleware(SessionMiddleware, secret_key=secret or secrets.token_urlsafe(32),
                             session_cookie="pero_console", max_age=SESSION_SECONDS, same_site="strict",
                             https_only=settings.https)]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={500: _server_error, 404: _not_found})
    app.state.console = console
    return app
