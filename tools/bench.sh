#!/bin/bash
# Run the benchmarks (as root, from anywhere): set up what the functional
# tests need (RabbitMQ started if no broker answers), then run
# `python -m benchmarks.run` with the arguments given (see --help). Tables go to stdout; a full default
# run writes benchmarks/results/latest.json. `tools/bench.sh --kvm` runs the
# KVM poll cycle at 20-200 guests instead (benchmarks/results/kvm.json and
# doc/source/images/kvm-poll-cycle.png).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup-env.sh test >&2

export NOVA_USAGE_EXT_BENCH_VIA=tools/bench.sh
exec .venv/bin/python -m benchmarks.run "$@"
