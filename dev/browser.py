"""Headless Chromium for the console's tests, bench and screenshots: Debian's `chromium` and `chromium-driver`
driven by selenium; nothing is downloaded (SE_OFFLINE, explicit driver and browser paths)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONSOLE = REPO / "scripts" / "console.py"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000")
PORTS = range(19500, 19600)   # the range this suite's console tests may use


def chromium_paths() -> tuple[str | None, str | None]:
    return (shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver"))


def start_chromium(user_data_dir: str | None = None, *, ignore_certificate_errors: bool = False):
    """A selenium WebDriver on a fresh profile (the caller quits it)."""
    os.environ["SE_OFFLINE"] = "true"   # selenium must never fetch a browser or a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium_paths()
    if browser is None or driver is None:
        raise RuntimeError("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir or tempfile.mkdtemp(prefix='pero_chromium_')}")
    if ignore_certificate_errors:
        options.add_argument("--ignore-certificate-errors")
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def free_port(host: str = "127.0.0.1") -> int:
    """A port of PORTS that nothing listens on now."""
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


class ConsoleProcess:
    """`scripts/console.py` as a child process, ready when /login answers."""

    def __init__(self, args: list[str], log_path: Path, *, https: bool = False, timeout: float = 60.0) -> None:
        self.port = free_port()
        self.url = f"{'https' if https else 'http'}://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, str(CONSOLE), "--listen", f"127.0.0.1:{self.port}", *args],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"console exited with {self.proc.returncode}: {self.log()}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"console did not listen within {timeout} s: {self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def login(driver, base_url: str, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base_url + "/login")
    driver.find_element(By.ID, "username").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, "login-button").click()
    wait_until_replaced(driver, page)


def wait_until_replaced(driver, element, timeout: float = 30) -> None:
    """Wait until `element` has left the document (the page it was on was replaced by the next one).

    Like selenium's staleness_of, but chromedriver may report an element that is being detached as an
    "unhandled inspector error ... does not belong to the document" instead of a stale reference: that
    means gone as well (seen once in a CI run)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def gone(_driver) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as error:
            if "does not belong to the document" in str(error):
                return True
            raise
        return False

    WebDriverWait(driver, timeout).until(gone)


def full_page_screenshot(driver, path: Path, width: int = 1400, max_height: int = 4000) -> None:
    """The whole page in one image (headless Chromium shoots only the window: grow it to the page first)."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, min(max(height + 40, 600), max_height))
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
