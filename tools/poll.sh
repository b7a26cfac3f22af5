#!/bin/bash
# The main job: set up, then read the hypervisor once and print the usage
# nova-compute would report. Arguments go to `nova-usage-ext poll`; with
# none, it reads the demo node shipped in etc/ through libvirt's test driver.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup-env.sh run >&2
exec .venv/bin/nova-usage-ext poll "$@"
