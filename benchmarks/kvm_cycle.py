"""The poll cycle at production sizes: KVM guests at 20, 50, 100 and 200
per host, this package against ceilometer 27's compute agent on the same
guests in the same run (``python -m benchmarks.run --kvm``).

Per size: the guests (``benchmarks.kvm_guests``: ``type='kvm'``, 64 MiB,
no OS) are started and left to finish their firmware, then the three
pollers of ``benchmarks.poll_cycle`` (ours as shipped, ours held to one
call, ceilometer's discovery and pollsters) run alternately, and
``benchmarks.floor`` measures each stats group alone on them (wall and
libvirtd CPU per guest, the QMP commands and files behind it). A TCG row
of 20 guests is run the same way for comparison with the default run.

The sizes stop where the host's memory would run short (the fixture keeps
``reserve_mib`` available); the results say where and why.
"""

import time

from benchmarks import common
from benchmarks import floor
from benchmarks import kvm_guests
from benchmarks import poll_cycle

DEFAULT_SIZES = (20, 50, 100, 200)
# No-OS guests run SeaBIOS for a few seconds after start, then idle.
SETTLE_S = 20


def _one_size(size, domain_type, cycles, log, trace, reserve_mib):
    label = '%s %d' % (domain_type, size)
    log('kvm: starting %d %s guests' % (size, domain_type))
    fixture = kvm_guests.KvmGuests(size, domain_type=domain_type,
                                   reserve_mib=reserve_mib)
    contenders = None
    fixture.setUp()
    try:
        started = len(fixture.guests)
        log('kvm: %d guests started; %ds for their firmware'
            % (started, SETTLE_S))
        time.sleep(SETTLE_S)
        uuids = [g.uuid for g in fixture.guests]
        qemu_pids = [p for p in (common.qemu_pid(g.name)
                                 for g in fixture.guests) if p]
        clocks = {'libvirtd': common.ProcessClock([common.libvirtd_pid()]),
                  'qemu': common.ProcessClock(qemu_pids)}
        contenders = poll_cycle.Contenders(poll_cycle.URI, uuids, clocks)
        result = poll_cycle.alternate(contenders, cycles, log, 'kvm ' + label)
        out = poll_cycle.summarize(result)
        out.update(domain_type=domain_type, requested=size, guests=started,
                   cycles=cycles, qemu_pids_found=len(qemu_pids),
                   stopped_because=fixture.stopped_because,
                   load_before=_load())
        out['floor'] = floor.run(poll_cycle.URI, uuids, qemu_pids, log,
                                 windows=3 if trace else 0)
        return out
    finally:
        log('kvm: removing the %s guests' % label)
        with common.shielded():
            if contenders is not None:
                contenders.close()
            fixture.cleanUp()


def _load():
    with open('/proc/loadavg') as f:
        return float(f.read().split()[0])


def run(sizes, cycles, log, tcg_guests=20, plot=None,
        reserve_mib=kvm_guests.DEFAULT_RESERVE_MIB):
    """Every size in turn (and the TCG row); a PNG to ``plot`` if given."""
    out = {'sizes': [], 'tcg': None, 'cycles': cycles}
    if tcg_guests:
        out['tcg'] = _one_size(tcg_guests, 'qemu', cycles, log, True,
                               reserve_mib)
    for i, size in enumerate(sizes):
        row = _one_size(size, 'kvm', cycles, log, True, reserve_mib)
        out['sizes'].append(row)
        if row['stopped_because']:
            out['stopped'] = 'at %d of %d guests: %s' % (
                row['guests'], size, row['stopped_because'])
            log('kvm: stopped ' + out['stopped'])
            break
    if plot:
        from benchmarks import plot as plotting
        plotting.cost_per_cycle(out, plot)
        out['plot'] = plot
        log('kvm: picture written to %s' % plot)
    return out
