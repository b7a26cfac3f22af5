#!/bin/bash
# Run the benchmarks (as root, from anywhere): set up what the functional
# tests need, make sure RabbitMQ answers, then run `python -m benchmarks.run`
# with the arguments given (see --help). Tables go to stdout; a full default
# run writes benchmarks/results/latest.json.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup-env.sh test >&2

broker_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if ! broker_up; then
    echo "bench: starting rabbitmq-server" >&2
    rabbitmq-server -detached >/dev/null 2>&1 || rabbitmq-server >/tmp/rabbitmq.log 2>&1 &
    for _ in $(seq 60); do broker_up && break; sleep 1; done
    broker_up || { echo "bench: RabbitMQ did not start" >&2; exit 1; }
fi

export NOVA_USAGE_EXT_BENCH_VIA=tools/bench.sh
exec .venv/bin/python -m benchmarks.run "$@"
