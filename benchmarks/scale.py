"""Part 2: how a cycle's cost grows with the number of instances, without
guests: libvirt's test driver inside the daemon (``test+unix:///default``).

The test driver's ``getAllDomainStats`` returns only the state group, so
this package's reader falls back to per-domain calls there (``info``,
``blockStats`` and ``blockInfo`` per disk, ``interfaceStats`` per tap):
the numbers are those of the fallback path, not of the bulk path. The
test driver does not support ``blockStatsFlags``, which ceilometer's disk
inspection calls: its disk samples are missing here (the calls are still
made and counted).
"""

from benchmarks import common
from benchmarks import poll_cycle
from benchmarks import testdriver


def run(sizes, cycles, log):
    domains = testdriver.TestDomains('scale')
    results = []
    try:
        clocks = {'libvirtd': common.ProcessClock([common.libvirtd_pid()]),
                  'qemu': common.ProcessClock([])}
        for size in sorted(sizes):
            log('scale: %d test-driver domains on %s' % (size,
                                                         testdriver.URI))
            domains.grow_to(size)
            contenders = poll_cycle.Contenders(testdriver.URI,
                                               domains.uuids, clocks)
            try:
                result = poll_cycle.alternate(contenders, cycles, log,
                                              'scale %d' % size)
            finally:
                contenders.close()
            out = poll_cycle.summarize(result)
            out['domains'] = size
            out['cycles'] = cycles
            out['raw'] = result
            results.append(out)
        return results
    finally:
        log('scale: removing the test-driver domains')
        domains.close()
