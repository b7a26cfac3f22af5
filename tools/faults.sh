#!/bin/bash
# Faults of the message bus with the issue's figures (as root, from
# anywhere; about 8 minutes): set up what the functional tests need
# (RabbitMQ started if no broker answers), then run
# `python -m benchmarks.faults` with the arguments given (see --help).
# Tables go to stdout and into doc/source/reliability.rst (unless
# --no-doc), every number to benchmarks/results/faults.json; the exit
# status is 1 when a target is not met.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup-env.sh test >&2

exec .venv/bin/python -m benchmarks.faults "$@"
