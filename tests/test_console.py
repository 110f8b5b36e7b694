"""The web console in a real headless Chromium, against a real worker, ZooKeeper and RabbitMQ.

Each action is checked where it takes effect (the worker's ZooKeeper nodes, the queues), not on the page.
Set PERO_CONSOLE_SCREENSHOTS=docs/img to refresh the README's screenshots.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from needs import missing, require_module  # tests/ helper: a skip here, a failure with CI=true

from pero_worker.dev.browser import (
    REPO,
    ConsoleProcess,
    chromium_paths,
    free_port,
    full_page_screenshot,
    login,
    start_chromium,
    wait_until_replaced,
)
from pero_worker.dev.opsplane import (
    Process,
    dummy_stage_config,
    make_stage,
    request_body,
    start_watchdog,
    start_worker,
    wait_for,
    worker_connected,
)
from pero_worker.dev.tcp_proxy import TcpProxy
from pero_worker.libs import zk_paths
from pero_worker.libs.mq import MQSession, MQSettings, PublishOutcome

require_module("selenium")
if None in chromium_paths():
    missing("chromium and chromium-driver are not installed (install_dependencies.sh installs them)")

from selenium.common.exceptions import StaleElementReferenceException, WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture
def deployment(zk_root, zk, conn_config, tmp_path, unique_name):
    """A live worker, a DUMMY stage, an output stage, a dead-letter queue of the test's own, and the console."""
    mq = MQSession(MQSettings.from_zookeeper(zk, conn_config), name="test-console")
    mq.open(retry_for=10)
    stage, out, dlq = unique_name("stage"), unique_name("out"), unique_name("dlq")
    make_stage(zk_root, stage, dummy_stage_config(0.01))
    make_stage(zk_root, out, None)
    mq.declare_stage_queue(dlq)
    worker_id = unique_name("w")
    worker = start_worker(zk_root, worker_id, tmp_path)
    wait_for(lambda: worker_connected(zk, worker_id)
             and zk.get_text(zk_paths.worker_status(worker_id)) == zk_paths.IDLE, 30, "worker idle")
    console = ConsoleProcess(["-z", zk_root, "--dead-letter-queue", dlq, "--refresh", "0.5"],
                             tmp_path / "console.log")
    driver = start_chromium(str(tmp_path / "chromium"))
    yield {"mq": mq, "stage": stage, "out": out, "dlq": dlq, "worker": worker_id, "process": worker,
           "console": console, "driver": driver, "zk": zk}
    driver.quit()
    console.stop()
    worker.stop()
    for name in (stage, out, dlq):
        mq.delete_queue(name)
    mq.close()


def console_zk_root(console: ConsoleProcess) -> str:
    return console.proc.args[console.proc.args.index("-z") + 1]


def screenshot(driver, name: str) -> None:
    folder = os.environ.get("PERO_CONSOLE_SCREENSHOTS")
    if folder:
        full_page_screenshot(driver, Path(folder) / name)


def row(driver, table: str, key: str, value: str):
    return driver.find_element(By.CSS_SELECTOR, f"#{table} tr[data-{key}='{value}']")


def on_page(action) -> None:
    """Run `action` (find elements, fill, submit) again if the page's live refresh replaced the elements it
    found meanwhile (it does every 2 s, unless a field has the focus or a box is ticked)."""
    for attempt in range(5):
        try:
            action()
            return
        except StaleElementReferenceException:
            if attempt == 4:
                raise


def move(driver, worker: str, stage: str) -> None:
    def act() -> None:
        form = row(driver, "workers", "worker", worker)
        form.find_element(By.NAME, "stage").send_keys(stage)
        submit(driver, form.find_element(By.CLASS_NAME, "move"))
    on_page(act)


def submit(driver, button) -> None:
    """Click a form's button and wait until the browser has loaded the answer (the old page is gone)."""
    page = driver.find_element(By.TAG_NAME, "html")
    button.click()
    wait_until_replaced(driver, page)


def wait_page(driver, condition, what: str, timeout: float = 20.0):
    """Reload until `condition(driver)` holds (the live refresh pauses while a form is in use)."""
    def check():
        driver.refresh()
        try:
            return condition(driver)
        except Exception:   # the element is not there yet (selenium's NoSuchElement and friends)
            return False
    return wait_for(check, timeout, what, interval=0.3)


def test_login_refuses_a_wrong_password_and_admits_the_deployments_user(deployment):
    driver, console = deployment["driver"], deployment["console"]
    driver.get(console.url + "/")
    assert driver.current_url.endswith("/login")
    login(driver, console.url, "guest", "wrong")
    assert "wrong user name or password" in driver.find_element(By.ID, "login-error").text
    screenshot(driver, "console-login.png")
    assert driver.current_url.endswith("/login")
    login(driver, console.url, "guest", "guest")
    assert driver.find_element(By.ID, "who").text == "guest"
    # The live tables show the real worker and stage.
    def tables() -> None:
        worker_row = row(driver, "workers", "worker", deployment["worker"])
        assert "IDLE" in worker_row.find_element(By.CLASS_NAME, "status").text
        assert row(driver, "stages", "stage", deployment["stage"]).find_element(By.CLASS_NAME, "ready").text == "0"
    on_page(tables)
    assert "refused login" in console.log()
    # The page refreshes itself (console.js fetches /live every 2 s): new data appears without a reload.
    mq = deployment["mq"]
    mq.publish(deployment["stage"], request_body([deployment["stage"], deployment["out"]]))
    assert mq.wait_for_confirms(30)
    def ready_cell() -> str:
        try:
            return row(driver, "stages", "stage", deployment["stage"]).find_element(By.CLASS_NAME, "ready").text
        except WebDriverException:   # the live area was replaced between finding and reading
            return ""
    wait_for(lambda: ready_cell() == "1", 20, "the live refresh shows the queued request")
    on_page(lambda: submit(driver, driver.find_element(By.ID, "logout")))
    driver.get(console.url + "/")
    assert driver.current_url.endswith("/login")


def test_move_disable_enable_act_on_zookeeper_and_the_worker(deployment):
    driver, console, zk = deployment["driver"], deployment["console"], deployment["zk"]
    worker, stage, out, mq = deployment["worker"], deployment["stage"], deployment["out"], deployment["mq"]
    login(driver, console.url, "guest", "guest")
    move(driver, worker, stage)
    assert f"worker {worker} -> {stage}" in driver.find_element(By.ID, "messages").text
    assert zk.get_text(zk_paths.worker_queue(worker)) == stage
    wait_for(lambda: zk.get_text(zk_paths.worker_status(worker)) == zk_paths.PROCESSING, 30, "worker on the stage")
    for _ in range(5):
        mq.publish(stage, request_body([stage, out]))
    assert mq.wait_for_confirms(30)
    wait_page(driver, lambda d: row(d, "workers", "worker", worker).find_element(By.CLASS_NAME, "stage").text
              == stage and row(d, "stages", "stage", stage).find_element(By.CLASS_NAME, "workers").text == "1",
              "the page shows the move")
    screenshot(driver, "console.png")

    # Bad input: a stage that is not a processing stage is refused with one line, nothing changes.
    move(driver, worker, out)
    messages = driver.find_element(By.ID, "messages").text
    assert "not a processing stage" in messages and "Traceback" not in driver.page_source
    assert zk.get_text(zk_paths.worker_queue(worker)) == stage

    on_page(lambda: submit(driver, row(driver, "workers", "worker", worker).find_element(By.CLASS_NAME, "disable")))
    assert zk.get_text(zk_paths.worker_enabled(worker)) == "false"
    assert deployment["process"].proc.wait(30) == 0          # the real worker obeys and stops
    wait_page(driver, lambda d: row(d, "workers", "worker", worker).find_elements(By.CLASS_NAME, "enable"),
              "the page shows the worker disabled")
    on_page(lambda: submit(driver, row(driver, "workers", "worker", worker).find_element(By.CLASS_NAME, "enable")))
    assert zk.get_text(zk_paths.worker_enabled(worker)) == "true"


def test_replay_dead_letters_from_the_page(deployment):
    driver, console, mq = deployment["driver"], deployment["console"], deployment["mq"]
    stage, out, dlq = deployment["stage"], deployment["out"], deployment["dlq"]
    headers = {"reason": "output_unroutable: test", "source_queue": stage, "worker_id": "w-test"}
    for request_id in ("dl-one", "dl-two"):
        assert mq.publish_and_wait(dlq, request_body([stage, out], request_id), headers=headers) \
            is PublishOutcome.CONFIRMED
    login(driver, console.url, "guest", "guest")
    wait_page(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#dead-letters tr[data-letter]")) == 2,
              "both dead letters listed")
    assert driver.find_element(By.ID, "dead-letter-depth").text.startswith("2")
    screenshot(driver, "console-dead-letters.png")
    def tick_first_and_replay() -> None:
        first = driver.find_elements(By.CSS_SELECTOR, "#dead-letters tr[data-letter]")[0]
        first.find_element(By.NAME, "letter").click()
        submit(driver, driver.find_element(By.ID, "replay-selected"))
    on_page(tick_first_and_replay)
    assert "replayed 1 of 1 selected" in driver.find_element(By.ID, "messages").text
    assert mq.queue_length(dlq) == 1
    assert mq.queue_length(stage) == 1                     # no worker on the stage: it waits there
    on_page(lambda: submit(driver, driver.find_element(By.ID, "replay-all")))
    assert "replayed 1 of 1 selected" in driver.find_element(By.ID, "messages").text
    assert mq.queue_length(dlq) == 0 and mq.queue_length(stage) == 2
    on_page(lambda: submit(driver, driver.find_element(By.ID, "replay-selected")))   # nothing ticked: a message
    assert "choose the dead letters" in driver.find_element(By.ID, "messages").text


def test_forms_without_the_csrf_token_do_nothing(deployment):
    console, zk, worker = deployment["console"], deployment["zk"], deployment["worker"]
    web = requests.Session()
    page = web.get(console.url + "/login", timeout=10).text
    token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    assert web.post(console.url + "/login", data={"csrf": "forged", "username": "guest", "password": "guest"},
                    timeout=10).url.endswith("/login")
    assert web.post(console.url + "/login", data={"csrf": token, "username": "guest", "password": "guest"},
                    timeout=10).url.endswith("/")
    page = web.post(console.url + "/action/disable", data={"csrf": "forged", "worker": worker}, timeout=10)
    assert "CSRF check failed" in page.text
    assert zk.get_text(zk_paths.worker_enabled(worker)) == "true"
    token = web.get(console.url + "/", timeout=10).text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    unknown = web.post(console.url + "/action/explode", data={"csrf": token}, timeout=10)
    assert unknown.status_code == 200 and "unknown action &#39;explode&#39;" in unknown.text
    missing_page = web.get(console.url + "/no/such/page", timeout=10)
    assert missing_page.status_code == 404 and "Traceback" not in missing_page.text
    stranger = requests.post(console.url + "/action/disable", data={"worker": worker}, timeout=10)
    assert stranger.url.endswith("/login") and zk.get_text(zk_paths.worker_enabled(worker)) == "true"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "console.pem", folder / "console.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_with_the_given_certificate_and_tls_deployments_require_it(zk_root, zk, tmp_path):
    cert, key = _self_signed(tmp_path)
    console = ConsoleProcess(["-z", zk_root, "--cert", str(cert), "--key", str(key)], tmp_path / "console.log",
                             https=True)
    try:
        web = requests.Session()
        page = web.get(console.url + "/login", verify=str(cert), timeout=10)
        token = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        cookie = page.headers["set-cookie"].lower()
        assert "; secure" in cookie and "samesite=strict" in cookie and "httponly" in cookie
        done = web.post(console.url + "/login", data={"csrf": token, "username": "guest", "password": "guest"},
                        verify=str(cert), timeout=10)
        assert done.url == console.url + "/" and "Workers" in done.text
        driver = start_chromium(str(tmp_path / "chromium"), ignore_certificate_errors=True)
        try:
            login(driver, console.url, "guest", "guest")
            assert driver.find_element(By.ID, "who").text == "guest"
        finally:
            driver.quit()
    finally:
        console.stop()
    refused = subprocess.run([sys.executable, str(REPO / "scripts" / "console.py"), "-z", zk_root, "-e", str(cert)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--cert and --key" in refused.stderr and "Traceback" not in refused.stderr


def test_watchdog_and_planned_moves_are_shown(deployment, tmp_path):
    """With work waiting and no watchdog, the page shows the move the planner would make; once a real
    watchdog runs, it is shown as active and the worker ends up where the plan said."""
    driver, console, zk, mq = deployment["driver"], deployment["console"], deployment["zk"], deployment["mq"]
    worker, stage, out = deployment["worker"], deployment["stage"], deployment["out"]
    for _ in range(3):
        mq.publish(stage, request_body([stage, out]))
    assert mq.wait_for_confirms(30)
    login(driver, console.url, "guest", "guest")
    wait_page(driver, lambda d: [cell.text for cell in d.find_elements(By.CSS_SELECTOR, "#moves td")][:3]
              == [worker, "-", stage], "the planned move of the idle worker")
    assert driver.find_element(By.ID, "watchdog").text == "no watchdog running"
    watchdog = start_watchdog(console_zk_root(console), tmp_path, "console")
    try:
        wait_page(driver, lambda d: d.find_element(By.ID, "watchdog").text.startswith("active: "),
                  "the active watchdog", timeout=30)
        wait_for(lambda: zk.get_text(zk_paths.worker_queue(worker)) == stage, 30, "the watchdog's move")
    finally:
        watchdog.stop()


def test_last_error_and_failures_come_from_the_log_daemons_files(zk_root, zk, conn_config, tmp_path, unique_name):
    """A real worker ships its log lines to a real log daemon; a stage config the worker refuses makes it log
    an error, which the console (--log-dir) shows as the worker's last error and in the recent failures."""
    mq = MQSession(MQSettings.from_zookeeper(zk, conn_config), name="test-console-logs")
    mq.open(retry_for=10)
    broken, log_queue, worker_id, dlq = unique_name("broken"), unique_name("log"), unique_name("w"), unique_name("dlq")
    mq.declare_stage_queue(dlq)
    make_stage(zk_root, broken, "[WORKER]\nMETHOD = NO_SUCH_METHOD\n")
    logs = tmp_path / "logs"
    logd = Process([sys.executable, str(REPO / "log_daemon" / "log_daemon.py"), "-z", zk_root, "-q", log_queue,
                    "-o", str(logs)], tmp_path / "logd.log")
    worker = Process([sys.executable, str(REPO / "worker" / "run_worker.py"), "-z", zk_root, "-i", worker_id,
                      "--cache-directory", str(tmp_path / "cache"), "-q", log_queue], tmp_path / "worker.log")
    console = driver = None
    try:
        wait_for(lambda: worker_connected(zk, worker_id), 30, "worker connected")
        zk.set_text(zk_paths.worker_queue(worker_id), broken)
        wait_for(lambda: zk.get_text(zk_paths.worker_status(worker_id)) == zk_paths.CONFIGURATION_FAILED, 30,
                 "the worker refuses the stage")
        wait_for(lambda: any("ERROR" in p.read_text() for p in logs.glob("pero_*.log")), 30, "the error logged")
        console = ConsoleProcess(["-z", zk_root, "--log-dir", str(logs), "--dead-letter-queue", dlq],
                                 tmp_path / "console.log")
        driver = start_chromium(str(tmp_path / "chromium"))
        login(driver, console.url, "guest", "guest")
        def shown() -> None:
            cell = row(driver, "workers", "worker", worker_id).find_element(By.CLASS_NAME, "error").text
            assert "NO_SUCH_METHOD" in cell or "unknown" in cell.lower(), cell
            failures = driver.find_element(By.ID, "failures").text
            assert f"worker {worker_id}: CONFIGURATION_FAILED" in failures
            assert f"{worker_id} ERROR" in failures
            assert "failed" in row(driver, "workers", "worker", worker_id).get_attribute("class")
        on_page(shown)
        screenshot(driver, "console-failures.png")
    finally:
        if driver is not None:
            driver.quit()
        if console is not None:
            console.stop()
        worker.stop()
        logd.stop()
        for name in (broken, log_queue, dlq):
            mq.delete_queue(name)
        mq.close()


def test_startup_failures_are_one_line_with_their_exit_code(zk_root, tmp_path):
    console = REPO / "scripts" / "console.py"
    down = subprocess.run([sys.executable, str(console), "-z", "127.0.0.1:1", "--listen", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=120)
    assert down.returncode == 3 and "Traceback" not in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1, down.stderr
    running = ConsoleProcess(["-z", zk_root], tmp_path / "console.log")
    try:
        busy = subprocess.run([sys.executable, str(console), "-z", zk_root, "--listen", f"127.0.0.1:{running.port}"],
                              capture_output=True, text=True, timeout=60)
        assert busy.returncode == 1 and "in use" in busy.stderr and "Traceback" not in busy.stderr
    finally:
        assert running.stop() == 0   # SIGTERM: a clean stop


def _login_with(web: requests.Session, url: str, user: str, password: str) -> requests.Response:
    page = web.get(url + "/login", timeout=10).text
    token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    return web.post(url + "/login", data={"csrf": token, "username": user, "password": password}, timeout=30)


def test_login_is_the_user_and_password_the_deployment_names(zk_root, services, tmp_path):
    """With -u/--password-file (the local services' `pero` user, SASL on ZooKeeper, a RabbitMQ user) that
    pair is the login: guest/guest no longer is."""
    password_file = REPO / "run" / "secrets" / "password"
    if not password_file.exists():
        missing("the local services' password file run/secrets/password is missing (make services)")
    console = ConsoleProcess(["-z", zk_root, "-u", "pero", "--password-file", str(password_file)],
                             tmp_path / "console.log")
    try:
        assert _login_with(requests.Session(), console.url, "guest", "guest").url.endswith("/login")
        assert _login_with(requests.Session(), console.url, "pero", "wrong").url.endswith("/login")
        page = _login_with(requests.Session(), console.url, "pero", password_file.read_text().strip())
        assert page.url == console.url + "/" and 'id="who">pero<' in page.text
        assert 'id="workers"' in page.text   # the console reads the tree as that user
    finally:
        console.stop()


def test_the_page_says_when_zookeeper_cannot_be_read(zk_root, zk, tmp_path):
    """ZooKeeper cut off (a proxy between the console and it): the page keeps the last figures and says how
    old they are; once it is back, the warning goes."""
    proxy = TcpProxy("127.0.0.1", int(zk_root.split("/", 1)[0].rsplit(":", 1)[1])).start()
    chroot = "/" + zk_root.split("/", 1)[1]
    console = ConsoleProcess(["-z", f"{proxy.address}{chroot}", "--refresh", "0.5"], tmp_path / "console.log")
    driver = start_chromium(str(tmp_path / "chromium"))
    try:
        login(driver, console.url, "guest", "guest")
        assert not driver.find_elements(By.ID, "stale")
        proxy.cut()
        wait_page(driver, lambda d: "s old" in d.find_element(By.ID, "stale").text, "the stale warning", 40)
        assert driver.find_element(By.ID, "workers")   # the last figures are still shown
        proxy.restore()
        wait_page(driver, lambda d: not d.find_elements(By.ID, "stale"), "the warning gone", 40)
        assert console.log().count("reading ZooKeeper failed") <= 1
    finally:
        driver.quit()
        console.stop()
        proxy.close()
