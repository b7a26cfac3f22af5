"""The poll cycle at production sizes: KVM guests at 20, 50, 100 and 200
per host, this package against ceilometer 27's compute agent on the same
guests in the same run (``python -m benchmarks.run --kvm``).

Per size: the guests (``benchmarks.kvm_guests``: ``type='kvm'``, 64 MiB,
no OS, halted after the firmware; one set grown from size to size) are
left until they idle, then the three pollers of ``benchmarks.poll_cycle``
(ours as shipped, ours held to one call, ceilometer's discovery and
pollsters) run alternately, and
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


def _measure(fixture, label, cycles, log):
    """The pollers and the stats groups on the fixture's guests, once
    they are idle."""
    guests = list(fixture.guests)
    uuids = [g.uuid for g in guests]
    qemu_pids = [p for p in (common.qemu_pid(g.name) for g in guests) if p]
    waited = fixture.wait_idle(qemu_pids)
    log('kvm: %s: %d guests idle after %.0f s' % (label, len(guests),
                                                  waited))
    clocks = {'libvirtd': common.ProcessClock([common.libvirtd_pid()]),
              'qemu': common.ProcessClock(qemu_pids)}
    contenders = poll_cycle.Contenders(poll_cycle.URI, uuids, clocks)
    try:
        result = poll_cycle.alternate(contenders, cycles, log, 'kvm ' + label)
        single = single_reads(contenders.readers[poll_cycle.OURS][0], uuids,
                              clocks['libvirtd'])
        log('kvm: %s: one instance read: p50 %.2f ms, p99 %.2f ms' % (
            label, single['wall_ms']['p50'], single['wall_ms']['p99']))
    finally:
        with common.shielded():
            contenders.close()
    out = poll_cycle.summarize(result)
    out.update(domain_type=fixture.domain_type, guests=len(guests),
               cycles=cycles, qemu_pids_found=len(qemu_pids),
               settle_s=waited, load_before=_load())
    out['single_read'] = single
    out['floor'] = floor.run(poll_cycle.URI, uuids, qemu_pids, log)
    return out


def single_reads(reader, uuids, libvirtd_clock, passes=2):
    """The hook's read before a final exists: ``read_instance`` of one
    guest (every counter but the guest's memory: one
    ``domainListGetStats`` call), each guest in turn, ``passes`` times, on
    the shipped reader after its cycles (its XML cache warm, as in
    nova-compute)."""
    walls, cpus = [], []
    for _ in range(passes):
        for uuid in uuids:
            before = libvirtd_clock.read()
            began = time.perf_counter()
            reader.read_instance(uuid)
            walls.append(time.perf_counter() - began)
            cpus.append(libvirtd_clock.delta(before,
                                             libvirtd_clock.read())[1])
    wall = common.summary([w * 1e3 for w in walls])
    wall['p50'] = wall['median']
    wall['p99'] = common.percentile([w * 1e3 for w in walls], 99)
    return {'wall_ms': wall,
            'libvirtd_cpu_ms': common.summary([c * 1e3 for c in cpus])}


def _fixture(count, domain_type, reserve_mib):
    fixture = kvm_guests.KvmGuests(count, domain_type=domain_type,
                                   reserve_mib=reserve_mib)
    fixture.setUp()
    return fixture


def _load():
    with open('/proc/loadavg') as f:
        return float(f.read().split()[0])


def run(sizes, cycles, log, tcg_guests=20, plot=None,
        reserve_mib=kvm_guests.DEFAULT_RESERVE_MIB):
    """The TCG row, then the KVM sizes in increasing order on one set of
    guests grown between sizes (each guest's firmware costs about 3 s of
    CPU here: booting 370 guests for four sizes would take the two cores
    for ten minutes); a PNG to ``plot`` if given."""
    out = {'sizes': [], 'tcg': None, 'cycles': cycles}
    if tcg_guests:
        log('kvm: starting %d TCG guests' % tcg_guests)
        fixture = _fixture(tcg_guests, 'qemu', reserve_mib)
        try:
            out['tcg'] = _measure(fixture, 'TCG %d' % tcg_guests, cycles,
                                  log)
        finally:
            log('kvm: removing the TCG guests')
            common.cleanup_fixture(fixture)
    fixture = None
    try:
        for size in sorted(sizes):
            log('kvm: growing to %d KVM guests' % size)
            if fixture is None:
                fixture = _fixture(size, 'kvm', reserve_mib)
            else:
                fixture.grow_to(size)
            if len(fixture.guests) < size:
                out['stopped'] = 'at %d of %d guests: %s' % (
                    len(fixture.guests), size, fixture.stopped_because)
                log('kvm: stopped ' + out['stopped'])
                if len(fixture.guests) <= (out['sizes'][-1]['guests']
                                           if out['sizes'] else 0):
                    break
            row = _measure(fixture, 'KVM %d' % len(fixture.guests), cycles,
                           log)
            row['requested'] = size
            out['sizes'].append(row)
            if out.get('stopped'):
                break
    finally:
        if fixture is not None:
            log('kvm: removing the KVM guests')
            common.cleanup_fixture(fixture)
    if plot and out['sizes']:
        from benchmarks import plot as plotting
        plotting.cost_per_cycle(out, plot)
        out['plot'] = plot
        log('kvm: picture written to %s' % plot)
    return out
