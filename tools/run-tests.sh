#!/bin/bash
# Set up everything (setup-env.sh test also starts RabbitMQ where no broker
# answers), then run the whole test suite (unit and functional).
# Arguments go to `stestr run` (e.g. a test filter).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup-env.sh test

rc=0
first_run=$(.venv/bin/python tools/test_summary.py --next-run-id)
.venv/bin/stestr run "$@" || rc=$?
# One closing line that any CI reads: "N passed, N failed, N skipped", of
# this run (never of an older one, when discovery failed).
.venv/bin/python tools/test_summary.py --since "$first_run" || rc=1
exit $rc
