#!/bin/sh
# gnocchi 4.7.1 from PyPI (PostgreSQL indexer, file storage) in a
# virtualenv of its own, for tests/functional/test_gnocchi.py: gnocchi's
# requirements are not nova's or ceilometer's, so it never shares .venv.
# Idempotent; GNOCCHI_VENV overrides the place (default tmp/gnocchi-venv).
set -e
cd "$(dirname "$0")/.."
VENV=${GNOCCHI_VENV:-tmp/gnocchi-venv}
if [ -x "$VENV/bin/gnocchi-upgrade" ]; then
    exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q 'gnocchi[postgresql,file]==4.7.1'
