#!/usr/bin/env bash
# Set-up and entry points of Defect Discovery Studio on a fresh machine.
#   bash dev.sh app    install what is missing, then start the Studio on the embedded default
#   bash dev.sh test   install what is missing (with Chromium and PostgreSQL), then run all tests
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

install_python_packages() {
  # pip skips what is already installed; torch comes from this machine's wheel cache when present.
  "$PYTHON" -m pip install -q --disable-pip-version-check -r requirements.txt
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
    exec "$PYTHON" -m streamlit run webapp/app.py "$@"
    ;;
  test)
    shift
    install_python_packages
    install_debian_packages
    # Starts a throw-away PostgreSQL on 127.0.0.1 and exports STUDIO_TEST_POSTGRES_URL.
    # shellcheck source=.ci/postgres.sh
    source .ci/postgres.sh
    trap 'studio_postgres_stop || true' EXIT
    "$PYTHON" -m pytest -q -ra "$@"
    ;;
  *)
    echo "usage: bash dev.sh app|test [extra arguments]" >&2
    exit 2
    ;;
esac
