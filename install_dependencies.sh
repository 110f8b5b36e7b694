#!/usr/bin/env bash
# Installs what the suite, its tests and the local demo services need.
#
# Idempotent: every step checks first and skips when there is nothing to do, so
# `make test` can call it on every run.  Runs as root on Debian 12.  Only Debian's
# apt repositories and PyPI are reachable; PyTorch comes from a CPU wheel on the
# local disk (pip's find-links), which is why it is installed first and pinned:
# anything that later asks for torch then finds it satisfied and pip never pulls
# a multi-GB CUDA build.
#
# Options:
#   --no-apt     do not install Debian packages (ZooKeeper, OpenSSH server, RabbitMQ)
#   --no-torch   do not install torch (the OCR stage then cannot run; DUMMY stages still can)
#   --force      redo the pip steps even when the requirement files did not change
set -euo pipefail

cd "$(dirname "$0")"
REPO="$(pwd)"
VENV="$REPO/.venv"
PY="$VENV/bin/python"
TORCH_SPEC="torch==2.13.0"
STAMP="$VENV/.pero-install-stamp"

DO_APT=1
DO_TORCH=1
FORCE=0
for arg in "$@"; do
    case "$arg" in
        --no-apt) DO_APT=0 ;;
        --no-torch) DO_TORCH=0 ;;
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "install_dependencies.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done

say() { echo "[install] $*"; }

# --- Debian packages --------------------------------------------------------
if [[ $DO_APT == 1 ]]; then
    missing=()
    # ZooKeeper server (Debian package: /usr/share/java/zookeeper.jar).
    [[ -f /usr/share/java/zookeeper.jar ]] || missing+=(zookeeper)
    # OpenSSH server, for the SFTP service the workers download models from.
    [[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
    # RabbitMQ normally runs on this machine already; install only when absent.
    command -v rabbitmqctl >/dev/null 2>&1 || [[ -x /usr/sbin/rabbitmqctl ]] || missing+=(rabbitmq-server)
    # java runs ZooKeeper; the zookeeper package depends on a JRE, but check anyway.
    command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
    # Fonts: DejaVu for rendering test pages; Caladea is the family the bundled OCR model never saw
    # in training, used by the held-out evaluation (bench/cer.py, examples/make_examples.py).
    [[ -d /usr/share/fonts/truetype/dejavu ]] || missing+=(fonts-dejavu-core)
    [[ -d /usr/share/fonts/truetype/crosextra ]] || missing+=(fonts-crosextra-caladea)
    # docker-compose only validates scripts/services-docker-compose.yaml in the tests (no engine runs here).
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    # libmagic: python-magic tells the workers' input images by content (worker/processors/images.py).
    ldconfig -p 2>/dev/null | grep -q 'libmagic\.so\.1' || missing+=(libmagic1)
    # systemd-analyze verifies the unit files in sample-config/systemd (tests/test_systemd_units.py).
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
    # Headless Chromium and its WebDriver: the web console's browser tests and bench/console.py (selenium
    # drives these; nothing downloads a browser).
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
    if (( ${#missing[@]} )); then
        if [[ $(id -u) != 0 ]]; then
            echo "install_dependencies.sh: need root to install ${missing[*]} (or use --no-apt)" >&2
            exit 1
        fi
        say "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
    else
        say "Debian packages present (zookeeper, openssh-server, rabbitmq-server, fonts, libmagic1, chromium)"
    fi
fi

# --- virtual environment ----------------------------------------------------
if [[ ! -x $PY ]]; then
    say "creating virtual environment $VENV"
    python3 -m venv "$VENV"
else
    say "virtual environment $VENV exists"
fi

# The pip steps are skipped when none of their inputs changed since the last
# successful run: the requirement files, pyproject.toml and the options.
req_hash() {
    cat requirements.txt requirements-ocr.txt requirements-dev.txt requirements-ocr-nodeps.txt pyproject.toml
    echo "torch=$DO_TORCH $TORCH_SPEC"
    "$PY" --version
}
want="$(req_hash | sha256sum | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [[ $FORCE == 0 && $want == "$have" ]] && "$PY" -c "import pero_worker" 2>/dev/null; then
    say "python packages up to date (stamp $STAMP matches); use --force to reinstall"
    exit 0
fi

PIP=("$PY" -m pip --disable-pip-version-check)
if [[ $DO_TORCH == 1 ]]; then
    if "$PY" -c "import sys, torch; sys.exit(0 if torch.__version__.split('+')[0] == '${TORCH_SPEC#torch==}' else 1)" 2>/dev/null; then
        say "$TORCH_SPEC already installed"
    else
        # Only the CPU wheel on the local disk satisfies this on the machines we run on.
        say "pip install $TORCH_SPEC (local CPU wheel)"
        "${PIP[@]}" install --only-binary=:all: "$TORCH_SPEC"
    fi
    if "$PY" -c "import sys, torch; sys.exit(0 if torch.version.cuda is None else 1)" 2>/dev/null; then
        say "torch $("$PY" -c 'import torch; print(torch.__version__)') (CPU build)"
    else
        say "WARNING: the installed torch is a CUDA build"
    fi
fi

say "pip install -r requirements.txt -r requirements-ocr.txt -r requirements-dev.txt"
"${PIP[@]}" install -q -r requirements.txt -r requirements-ocr.txt -r requirements-dev.txt
say "pip install --no-deps -r requirements-ocr-nodeps.txt"
"${PIP[@]}" install -q --no-deps -r requirements-ocr-nodeps.txt
say "pip install --no-deps --no-build-isolation -e . (the pero_worker package, editable)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e .

"$PY" -c "import pero_worker.libs.zk, pero_worker.libs.message_pb2" \
    || { echo "install_dependencies.sh: pero_worker does not import after install" >&2; exit 1; }
echo "$want" > "$STAMP"
say "done"
