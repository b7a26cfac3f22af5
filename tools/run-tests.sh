#!/bin/bash
# Set up everything (setup-env.sh test also starts RabbitMQ where no broker
# answers), then run the whole test suite (unit and functional).
# Arguments go to `stestr run` (e.g. a test filter).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup-env.sh test

rc=0
.venv/bin/stestr run "$@" || rc=$?
# One closing line that any CI reads: "N passed, N failed, N skipped".
.venv/bin/python tools/test_summary.py || rc=1
exit $rc
