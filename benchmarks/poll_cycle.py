"""Part 1: one poll cycle on real QEMU guests, this package against
ceilometer 27's compute agent, alternating.

Each cycle of ours is ``LibvirtUsageReader.read_all()``, measured twice:
as shipped (``stats_workers`` 2: steady cycles split over two concurrent
calls) and held to one call per cycle (``stats_workers`` 1). Each cycle of
ceilometer's is discovery plus its 13 pollsters of the same meters (see
``benchmarks.ceilometer_cycle``). All read the same guests through their
own read-only connection to the same libvirtd; a call counter wraps each
connection (``tests.libvirt_calls.CountingConnection``) and a filter below
it hides guests that are not the benchmark's (the daemon is shared).
"""

import gc
import json
import statistics
import time

import libvirt

from benchmarks import ceilometer_cycle
from benchmarks import common
from nova_usage_ext import exists
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_calls
from tests.functional import fixtures as qemu_fixtures

URI = qemu_fixtures.URI


def _record(measure, counter_calls, instances, extra=None):
    libvirtd = measure.other['libvirtd']
    qemu = measure.other['qemu']
    rec = {'wall_s': measure.wall, 'cpu_s': measure.cpu,
           'libvirtd_cpu_stat_s': libvirtd[0],
           'libvirtd_cpu_sched_s': libvirtd[1],
           'qemu_cpu_sched_s': qemu[1],
           'calls': sum(counter_calls.values()),
           'calls_by_api': dict(sorted(counter_calls.items())),
           'instances': instances}
    rec.update(extra or {})
    return rec


OURS = common.OURS
ONE_CALL = common.ONE_CALL
CEILOMETER = common.CEILOMETER
NAMES = (OURS, ONE_CALL, CEILOMETER)


class Contenders:
    """The pollers over the same guests, each with its call counter."""

    def __init__(self, uri, uuids, clocks, host='bench-compute'):
        self.uuids = list(uuids)
        self.clocks = clocks
        self.host = host
        self.filters = []
        # As the CLI does: the event loop before the connection, so that
        # the reader's domain list learns of domain changes.
        libvirt_usage.libvirt_domains.ensure_event_loop()
        self._ours_raw = []
        self.readers = {}
        for name, workers in ((OURS, libvirt_usage.DEFAULT_STATS_WORKERS),
                              (ONE_CALL, 1)):
            raw = libvirt.openReadOnly(uri)
            self._ours_raw.append(raw)
            only = common.OnlyTheseDomains(raw, self.uuids)
            self.filters.append(only)
            counter = libvirt_calls.CountingConnection(only)
            reader = libvirt_usage.LibvirtUsageReader(
                libvirt_calls.StaticConnection(counter),
                stats_workers=workers)
            self.readers[name] = (reader, counter)
        self.ceilo_counters = []
        self.ceilometer = ceilometer_cycle.CeilometerCycle(uri, self._wrap)

    def _wrap(self, raw):
        only = common.OnlyTheseDomains(raw, self.uuids)
        self.filters.append(only)
        counter = libvirt_calls.CountingConnection(only)
        self.ceilo_counters.append(counter)
        return counter

    @property
    def foreign(self):
        return max(f.foreign for f in self.filters)

    def measure(self, name):
        if name == CEILOMETER:
            return self.ceilo()
        return self.ours(*self.readers[name])

    def ours(self, reader, counter):
        counter.reset_counts()
        gc.collect()
        with common.Measure(self.clocks) as m:
            usages = reader.read_all()
        calls = dict(counter.calls)
        # What turning the cycle into payloads costs (not part of the read;
        # shown apart so that the comparison stays read against read).
        with common.Measure() as p:
            for usage in usages:
                json.dumps(exists.usage_primitive(usage, self.host))
        return _record(m, calls, len(usages), {
            'payload_wall_s': p.wall, 'payload_cpu_s': p.cpu,
            'disks': sum(len(u.disks) for u in usages),
            'interfaces': sum(len(u.interfaces) for u in usages),
            'path': _path(calls)})

    def ceilo(self):
        for counter in self.ceilo_counters:
            counter.reset_counts()
        gc.collect()
        with common.Measure(self.clocks) as m:
            samples = self.ceilometer.cycle()
        calls = {}
        for counter in self.ceilo_counters:
            for name, n in counter.calls.items():
                calls[name] = calls.get(name, 0) + n
        instances = len({s.resource_id for s in samples if s.name == 'cpu'})
        return _record(m, calls, instances, {'samples': len(samples)})

    def close(self):
        self.ceilometer.close()
        for reader, _counter in self.readers.values():
            reader.close()
        for raw in self._ours_raw:
            try:
                raw.close()
            except libvirt.libvirtError:
                pass


def _path(calls):
    path = []
    if calls.get('domainListGetStats'):
        path.append('split over %d calls' % calls['domainListGetStats'])
    elif calls.get('getAllDomainStats'):
        path.append('one bulk call')
    if any(name.startswith('domain.') and name != 'domain.XMLDesc'
           for name in calls):
        path.append('per-domain fallback')
    return ', '.join(path)


def alternate(contenders, cycles, log, label):
    """A warm-up cycle of each, then ``cycles`` of each, rotating which
    goes first."""
    result = {'warmup': {name: contenders.measure(name) for name in NAMES}}
    result.update({name: [] for name in NAMES})
    for i in range(cycles):
        k = i % len(NAMES)
        for who in NAMES[k:] + NAMES[:k]:
            rec = contenders.measure(who)
            rec['foreign_domains'] = contenders.foreign
            result[who].append(rec)
        log('%s: cycle %d/%d: %s' % (label, i + 1, cycles, ', '.join(
            '%s %.1f ms / %d calls' % (who, result[who][-1]['wall_s'] * 1e3,
                                       result[who][-1]['calls'])
            for who in NAMES)))
    return result


def summarize(result):
    """Medians and spreads of each metric, and ours/theirs ratios."""
    out = {'warmup': result['warmup']}
    for who in NAMES:
        recs = result[who]
        out[who] = {key: common.summary([r[key] for r in recs])
                    for key in ('wall_s', 'cpu_s', 'libvirtd_cpu_stat_s',
                                'libvirtd_cpu_sched_s', 'qemu_cpu_sched_s',
                                'calls', 'instances')}
        # Per cycle, from the tick counter's total: finer than per-cycle
        # ticks (10 ms) can be.
        out[who]['libvirtd_cpu_stat_mean_s'] = (
            sum(r['libvirtd_cpu_stat_s'] for r in recs) / len(recs)
            if recs else None)
        out[who]['calls_by_api'] = recs[-1]['calls_by_api'] if recs else {}
        if who != CEILOMETER and recs:
            out[who]['payload_wall_s'] = common.summary(
                [r['payload_wall_s'] for r in recs])
            out[who]['path'] = sorted({r['path'] for r in recs})
            out[who]['disks'] = recs[-1]['disks']
            out[who]['interfaces'] = recs[-1]['interfaces']
        if who == 'ceilometer' and recs:
            out[who]['samples'] = recs[-1]['samples']
        out[who]['foreign_domains_max'] = max(
            (r.get('foreign_domains', 0) for r in recs), default=0)
    out['ratios'] = _ratios(out[CEILOMETER], out[OURS])
    out['ratios_one_call'] = _ratios(out[CEILOMETER], out[ONE_CALL])
    return out


def _ratios(theirs, ours):
    """theirs / ours of each metric's median."""
    ratios = {}
    for key in ('wall_s', 'cpu_s', 'libvirtd_cpu_sched_s', 'calls'):
        a, b = theirs[key], ours[key]
        ratios[key] = common.ratio(a and a['median'], b and b['median'])
    ratios['libvirtd_cpu_stat_mean_s'] = common.ratio(
        theirs['libvirtd_cpu_stat_mean_s'], ours['libvirtd_cpu_stat_mean_s'])
    return ratios


_G = libvirt
GROUPS = {
    'state': _G.VIR_DOMAIN_STATS_STATE,
    'state+cpu-total': (_G.VIR_DOMAIN_STATS_STATE |
                        _G.VIR_DOMAIN_STATS_CPU_TOTAL),
    'state+vcpu': _G.VIR_DOMAIN_STATS_STATE | _G.VIR_DOMAIN_STATS_VCPU,
    'state+interface': (_G.VIR_DOMAIN_STATS_STATE |
                        _G.VIR_DOMAIN_STATS_INTERFACE),
    'state+block': _G.VIR_DOMAIN_STATS_STATE | _G.VIR_DOMAIN_STATS_BLOCK,
    'ours without the block group': (libvirt_usage.STAT_GROUPS &
                                     ~_G.VIR_DOMAIN_STATS_BLOCK),
    'ours (reader.STAT_GROUPS)': libvirt_usage.STAT_GROUPS,
}


def bulk_breakdown(uri, uuids, reps, log):
    """Where a single bulk call's time goes: the same call on the
    benchmark's guests with fewer stats groups. Diagnostics, not a
    poller."""
    conn = libvirt.openReadOnly(uri)
    try:
        doms = [conn.lookupByUUIDString(u) for u in uuids]
        flags = libvirt_usage.NOWAIT
        times = {name: [] for name in GROUPS}
        for _ in range(reps):
            for name, groups in GROUPS.items():
                t0 = time.perf_counter()
                conn.domainListGetStats(doms, groups, flags)
                times[name].append(time.perf_counter() - t0)
        out = {name: statistics.median(v) for name, v in times.items()}
        log('poll: bulk call by stats group (median ms): %s' % ', '.join(
            '%s %.1f' % (k, v * 1e3) for k, v in out.items()))
        return out
    finally:
        conn.close()


def run(guests, cycles, log):
    log('poll: starting %d QEMU guests on %s' % (guests, URI))
    fixture = qemu_fixtures.QemuGuests(count=guests)
    fixture.setUp()
    contenders = None
    try:
        uuids = [g.uuid for g in fixture.guests]
        qemu_pids = [p for p in (common.qemu_pid(g.name)
                                 for g in fixture.guests) if p]
        clocks = {'libvirtd': common.ProcessClock([common.libvirtd_pid()]),
                  'qemu': common.ProcessClock(qemu_pids)}
        contenders = Contenders(URI, uuids, clocks)
        result = alternate(contenders, cycles, log, 'poll')
        out = summarize(result)
        out['guests'] = guests
        out['cycles'] = cycles
        out['qemu_pids_found'] = len(qemu_pids)
        out['raw'] = result
        out['bulk_breakdown_s'] = bulk_breakdown(URI, uuids, 5, log)
        return out
    finally:
        log('poll: removing the guests')
        with common.shielded():
            if contenders is not None:
                contenders.close()
            fixture.cleanUp()
