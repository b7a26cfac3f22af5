"""Part 1: one poll cycle on real QEMU guests, this package against
ceilometer 27's compute agent, alternating.

Each cycle of ours is ``LibvirtUsageReader.read_all()``; each cycle of
ceilometer's is discovery plus its 13 pollsters of the same meters (see
``benchmarks.ceilometer_cycle``). Both read the same guests through their
own read-only connection to the same libvirtd; a call counter wraps each
connection (``tests.libvirt_calls.CountingConnection``) and a filter below
it hides guests that are not the benchmark's (the daemon is shared).
"""

import concurrent.futures
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


class Contenders:
    """Both pollers over the same guests, each with its call counter."""

    def __init__(self, uri, uuids, clocks, host='bench-compute'):
        self.uuids = list(uuids)
        self.clocks = clocks
        self.host = host
        self.filters = []
        raw = libvirt.openReadOnly(uri)
        self._ours_raw = raw
        only = common.OnlyTheseDomains(raw, self.uuids)
        self.filters.append(only)
        self.ours_counter = libvirt_calls.CountingConnection(only)
        self.reader = libvirt_usage.LibvirtUsageReader(
            libvirt_calls.StaticConnection(self.ours_counter))
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

    def ours(self):
        self.ours_counter.reset_counts()
        gc.collect()
        with common.Measure(self.clocks) as m:
            usages = self.reader.read_all()
        calls = dict(self.ours_counter.calls)
        # What turning the cycle into payloads costs (not part of the read;
        # shown apart so that the comparison stays read against read).
        with common.Measure() as p:
            for usage in usages:
                json.dumps(exists.usage_primitive(usage, self.host))
        fallback = any(name.startswith('domain.') and name != 'domain.XMLDesc'
                       for name in calls)
        return _record(m, calls, len(usages), {
            'payload_wall_s': p.wall, 'payload_cpu_s': p.cpu,
            'disks': sum(len(u.disks) for u in usages),
            'interfaces': sum(len(u.interfaces) for u in usages),
            'path': 'per-domain fallback' if fallback else 'bulk'})

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
        try:
            self._ours_raw.close()
        except libvirt.libvirtError:
            pass


def alternate(contenders, cycles, log, label):
    """A warm-up cycle of each, then ``cycles`` of each, alternating which
    goes first."""
    result = {'warmup': {'ours': contenders.ours(),
                         'ceilometer': contenders.ceilo()},
              'ours': [], 'ceilometer': []}
    for i in range(cycles):
        order = ('ours', 'ceilometer') if i % 2 == 0 else \
            ('ceilometer', 'ours')
        for who in order:
            rec = contenders.ours() if who == 'ours' else contenders.ceilo()
            rec['foreign_domains'] = contenders.foreign
            result[who].append(rec)
        log('%s: cycle %d/%d: ours %.1f ms / %d calls, ceilometer %.1f ms '
            '/ %d calls' % (label, i + 1, cycles,
                            result['ours'][-1]['wall_s'] * 1e3,
                            result['ours'][-1]['calls'],
                            result['ceilometer'][-1]['wall_s'] * 1e3,
                            result['ceilometer'][-1]['calls']))
    return result


def summarize(result):
    """Medians and spreads of each metric, and ours/theirs ratios."""
    out = {'warmup': result['warmup']}
    for who in ('ours', 'ceilometer'):
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
        if who == 'ours' and recs:
            out[who]['payload_wall_s'] = common.summary(
                [r['payload_wall_s'] for r in recs])
            out[who]['path'] = sorted({r['path'] for r in recs})
            out[who]['disks'] = recs[-1]['disks']
            out[who]['interfaces'] = recs[-1]['interfaces']
        if who == 'ceilometer' and recs:
            out[who]['samples'] = recs[-1]['samples']
        out[who]['foreign_domains_max'] = max(
            (r.get('foreign_domains', 0) for r in recs), default=0)
    out['ratios'] = {}
    for key in ('wall_s', 'cpu_s', 'libvirtd_cpu_sched_s', 'calls'):
        a = out['ceilometer'][key]
        b = out['ours'][key]
        out['ratios'][key] = common.ratio(a and a['median'],
                                          b and b['median'])
    out['ratios']['libvirtd_cpu_stat_mean_s'] = common.ratio(
        out['ceilometer']['libvirtd_cpu_stat_mean_s'],
        out['ours']['libvirtd_cpu_stat_mean_s'])
    return out


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


SPLIT = ('ours, domains split in two halves, two calls in parallel threads '
         '(needs a listing first: 3 calls)')


def bulk_breakdown(uri, uuids, reps, log):
    """Where the bulk call's time goes: the same call on the benchmark's
    guests with fewer stats groups, and split in two halves run in two
    threads (one connection). Diagnostics, not a poller."""
    conn = libvirt.openReadOnly(uri)
    try:
        doms = [conn.lookupByUUIDString(u) for u in uuids]
        flags = libvirt_usage.NOWAIT
        times = {name: [] for name in GROUPS}
        times[SPLIT] = []
        half = len(doms) // 2
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for _ in range(reps):
                for name, groups in GROUPS.items():
                    t0 = time.perf_counter()
                    conn.domainListGetStats(doms, groups, flags)
                    times[name].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                futures = [pool.submit(conn.domainListGetStats, part,
                                       libvirt_usage.STAT_GROUPS, flags)
                           for part in (doms[:half], doms[half:])]
                for f in futures:
                    f.result()
                times[SPLIT].append(time.perf_counter() - t0)
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
