#!/bin/bash
# Set up everything, then run the whole test suite (unit and functional).
# Arguments go to `stestr run` (e.g. a test filter).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup-env.sh test

# The notification tests need RabbitMQ on 127.0.0.1:5672 (guest/guest).
broker_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if ! broker_up; then
    echo "run-tests: starting rabbitmq-server" >&2
    rabbitmq-server -detached >/dev/null 2>&1 || rabbitmq-server >/tmp/rabbitmq.log 2>&1 &
    for _ in $(seq 60); do broker_up && break; sleep 1; done
    broker_up || { echo "run-tests: RabbitMQ did not start" >&2; exit 1; }
fi

rc=0
.venv/bin/stestr run "$@" || rc=$?
# One closing line that any CI reads: "N passed, N failed, N skipped".
.venv/bin/python tools/test_summary.py || rc=1
exit $rc
