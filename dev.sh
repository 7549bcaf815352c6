#!/usr/bin/env bash
# Set-up and entry points of Defect Discovery Studio on a fresh machine.
#   bash dev.sh app    create .venv if missing, install what is missing into it, start the Studio
#                      and one local worker that runs its jobs (STUDIO_LOCAL_WORKER=0: workers run elsewhere)
#   bash dev.sh test   the same (plus Chromium and PostgreSQL), then run all tests
#   bash dev.sh test -m quick   the fast unit tests only (the local loop); extra arguments go to pytest
# Everything Python runs from the project's own virtual environment .venv (never the python3 that
# happens to be first on PATH); $PYTHON only chooses the interpreter the environment is made from.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
BASE_PYTHON=${PYTHON:-python3}
PYTHON="$VENV/bin/python"

make_venv() {
  # A venv left half-made (no python inside) is made again rather than used.
  if [ ! -x "$PYTHON" ]; then
    echo "Creating the virtual environment $VENV with $("$BASE_PYTHON" --version 2>&1) ..." >&2
    "$BASE_PYTHON" -m venv --clear "$VENV"
  fi
}

install_python_packages() {
  make_venv
  # requirements.txt is the pinned list; the project itself is then installed in editable mode
  # (pyproject.toml), so core/, storage/ and webapp/ import from this checkout without path patches.
  # pip skips what is already installed; torch comes from this machine's wheel cache when present.
  # A stamp of both files in .venv skips pip's own check (seconds) until either file changes.
  local stamp="$VENV/.studio-installed" wanted
  wanted=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    return 0
  fi
  "$PYTHON" -m pip install -q --disable-pip-version-check -r requirements.txt
  "$PYTHON" -m pip install -q --disable-pip-version-check -e .
  echo "$wanted" >"$stamp"
}

have_debian_packages() {
  dpkg -s "$@" >/dev/null 2>&1
}

install_debian_packages() {
  # The browser test drives Debian's Chromium; the storage tests need a real PostgreSQL server.
  if ! have_debian_packages chromium postgresql; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends chromium postgresql fonts-dejavu-core >/dev/null
  fi
}

case "${1:-}" in
  app)
    shift
    install_python_packages
    # The workspace's database is made (or migrated) once, before the app and the worker open it.
    "$PYTHON" -c 'from storage import environment, open_workspace; open_workspace(*environment()).close()'
    if [ "${STUDIO_LOCAL_WORKER:-1}" != 0 ]; then
      # One local worker takes the jobs from the queue in the workspace (docs/jobs.md: more elsewhere).
      log="${STUDIO_WORKSPACE:-workspace}/jobs/worker.log"
      mkdir -p "$(dirname "$log")"
      "$PYTHON" -m jobs.worker --queue gpu,cpu --concurrency 1 >>"$log" 2>&1 &
      worker=$!
      trap 'kill "$worker" 2>/dev/null; wait "$worker" 2>/dev/null || true' EXIT
      echo "Local worker (pid $worker) started; its log: $log" >&2
    fi
    "$PYTHON" -m streamlit run webapp/app.py "$@"
    ;;
  test)
    shift
    install_python_packages
    # The quick loop (-m quick) needs neither Chromium nor PostgreSQL: its tests use SQLite.
    if [ "$*" != "-m quick" ]; then
      install_debian_packages
      # Starts a throw-away PostgreSQL on 127.0.0.1 and exports STUDIO_TEST_POSTGRES_URL.
      # shellcheck source=.ci/postgres.sh
      source .ci/postgres.sh
      trap 'studio_postgres_stop || true' EXIT
    fi
    "$PYTHON" -m pytest -q -ra "$@"
    ;;
  *)
    echo "usage: bash dev.sh app|test [extra arguments]" >&2
    exit 2
    ;;
esac
