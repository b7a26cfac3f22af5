#!/bin/bash
# Prepare a Debian machine (run as root from the repo root) and the
# project's virtualenv in .venv.
#   tools/setup-env.sh run    what `nova-usage-ext poll` needs
#   tools/setup-env.sh test   everything the test suite and the benchmarks
#                             need: the libvirt daemon and QEMU, RabbitMQ
#                             (started if no broker answers), nova and
#                             ceilometer
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-run}

run_pkgs="libvirt-dev pkg-config gcc python3-dev python3-venv"
test_pkgs="libvirt-daemon-system libvirt-daemon-driver-qemu qemu-system-x86
           qemu-utils libvirt-clients collectd-core prometheus"

broker_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

need=()
pkgs=$run_pkgs
[ "$what" = test ] && pkgs="$run_pkgs $test_pkgs"
for p in $pkgs; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ "$what" = test ] && ! broker_up && ! command -v rabbitmq-server >/dev/null
then
    need+=(rabbitmq-server)
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "$what" = test ] && [ -e /dev/kvm ] && getent group kvm >/dev/null; then
    # Debian's own setting (udev is not running in containers): without it
    # libvirt re-probes QEMU on every guest start, about 4 s each time.
    chgrp kvm /dev/kvm && chmod 660 /dev/kvm || true
fi

# The notification tests and the hook benchmark need RabbitMQ on
# 127.0.0.1:5672 (guest/guest).
if [ "$what" = test ] && ! broker_up; then
    echo "setup: starting rabbitmq-server" >&2
    rabbitmq-server -detached >/dev/null 2>&1 || rabbitmq-server >/tmp/rabbitmq.log 2>&1 &
    for _ in $(seq 60); do broker_up && break; sleep 1; done
    broker_up || { echo "setup: RabbitMQ did not start" >&2; exit 1; }
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
    .venv/bin/pip install -q -U pip setuptools wheel
fi
pip=(.venv/bin/pip install -q --disable-pip-version-check)
# The package with the dependencies it declares (what `pip install
# nova-usage-ext[libvirt]` gives a user), so that a missing runtime
# requirement breaks `run` here too, not only on users' machines.
"${pip[@]}" '.[libvirt]'
if [ "$what" = test ]; then
    "${pip[@]}" -r test-requirements.txt -r integration-requirements.txt
fi
# A regular install, not an editable one: nova loads the driver through the
# shim that the package puts inside nova's own package directory.
"${pip[@]}" --no-deps --force-reinstall .
