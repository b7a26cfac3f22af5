"""What the metric plugins cost the poll thread: ``PluginManager.dispatch``
(a copy of the ledger's totals of the cycle, handed to the builder
thread) at 100 and 1000 instances, and the time until the builder thread
built the records (with rates) and every plugin processed them on its
own thread. Host figures come
from libvirt's test driver, whose calls are counted per cycle.

    python -m benchmarks.plugins [--sizes 100,1000] [--cycles 10]
"""

import argparse
import datetime
import os
import socket
import tempfile
import time

from oslo_config import cfg

from benchmarks import common
from nova_usage_ext import ledger as usage_ledger
from nova_usage_ext import state
from nova_usage_ext.plugins import base as plugin_base
from nova_usage_ext.plugins import manager
from nova_usage_ext.virt import base
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_calls

RULES = """
rules:
  - {name: busy, metric: cpu_percent, value: 95, fire_after: 3}
  - {name: nic, metric: network_outgoing_bits_per_s, value: 5.0e9,
     per: device}
  - {name: iops, metric: disk_write_iops, value: 5000}
"""


class EveryHook(plugin_base.MetricPlugin):
    """Defines every hook and does nothing: the dispatch cost alone."""

    def on_host(self, record):
        pass

    def on_cpu(self, records):
        pass

    def on_ram(self, records):
        pass

    def on_volume(self, records):
        pass

    def on_bandwidth(self, records):
        pass

    def on_health(self, record):
        pass


def usages(size, cycle):
    """``size`` running instances, one disk and one NIC each, counters
    grown by ``cycle``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    grown = cycle * 10 ** 9
    return [instance(i, now, grown, cycle) for i in range(size)]


def instance(i, now, grown, cycle):
    return base.InstanceUsage(
        uuid='00000000-0000-0000-0000-%012d' % i, name='instance-%08x' % i,
        display_name='vm-%d' % i, project_id='p%031d' % (i % 50),
        user_id='u' * 32, flavor=base.Flavor('m1.small', 2, 2048),
        state=base.RUNNING, read_at=now, cpu_time_ns=grown + i,
        vcpu_time_ns=grown, vcpus=2, generation=1,
        disks=[base.DiskUsage('vda', grown, cycle * 100, grown, cycle * 50)],
        interfaces=[base.InterfaceUsage(
            'tap%08x' % i, None, grown, cycle, 0, 0, grown, cycle, 0, 0)])


def make_conf(tmp, names):
    rules = os.path.join(tmp, 'rules.yaml')
    with open(rules, 'w') as f:
        f.write(RULES)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(('127.0.0.1', 0))
    path = os.path.join(tmp, 'nova.conf')
    with open(path, 'w') as f:
        f.write('[DEFAULT]\ntransport_url = fake:/\n'
                '[usage_ext]\nmetric_plugins = %s\n'
                'notification_drivers = noop\n'
                '[usage_ext_thresholds]\nrules_file = %s\n'
                '[usage_ext_statsd]\nport = %d\n'
                '[usage_ext_prometheus]\nport = 0\n'
                % (','.join(names), rules, sink.getsockname()[1]))
    conf = cfg.ConfigOpts()
    conf(['--config-file', path])
    return conf, sink


def load(name):
    return EveryHook if name == 'every_hook' else manager.load_class(name)


def measure(size, cycles, names, log):
    with tempfile.TemporaryDirectory(prefix=common.PREFIX) as tmp:
        conf, sink = make_conf(tmp, names)
        book = usage_ledger.Ledger(state.Store(tmp))
        plugins = manager.PluginManager(conf, 'bench-1', load=load,
                                        queue_size=cycles + 1)
        counting = libvirt_calls.CountingConnection(
            libvirt_usage.LibvirtConnection('test:///default').get())
        reader = libvirt_usage.LibvirtUsageReader(
            libvirt_calls.StaticConnection(counting))
        plugins.start()
        dispatch, drained = [], []
        try:
            for cycle in range(1, cycles + 1):
                reading = usages(size, cycle)
                book.update(base.HostReading(reading, True))
                counting.reset_counts()
                started = time.perf_counter()
                plugins.dispatch(reading, base.ALL_KINDS, book.totals,
                                 reader.read_host_figures, True,
                                 book.store.outbox_size)
                dispatch.append(time.perf_counter() - started)
                plugins.wait_idle(120)
                drained.append(time.perf_counter() - started)
            calls = dict(counting.calls)
            errors = {name: dict(runner.stats.errors)
                      for name, runner in plugins.runners.items()
                      if runner.stats.errors}
        finally:
            plugins.close()
            sink.close()
            book.store.close()
    log('plugins: %s at %d instances: dispatch median %.1f ms'
        % ('+'.join(names) or 'none', size,
           1000 * common.summary(dispatch)['median']))
    return {'plugins': names, 'instances': size, 'cycles': cycles,
            'dispatch_s': common.summary(dispatch),
            'until_drained_s': common.summary(drained),
            'host_calls_last_cycle': calls, 'errors': errors}


SETS = ([], ['every_hook'], ['thresholds'], ['statsd'], ['prometheus'],
        ['thresholds', 'statsd', 'prometheus'])


def run(sizes, cycles, log):
    return [measure(size, cycles, names, log)
            for size in sizes for names in SETS]


def table(results):
    lines = ['| plugins | instances | dispatch on the poll thread, '
             'median (max) ms | until every plugin is done, median ms | '
             'libvirt calls for on_host per cycle |',
             '| --- | ---: | ---: | ---: | --- |']
    for r in results:
        calls = ', '.join('%s %d' % item for item in
                          sorted(r['host_calls_last_cycle'].items()))
        lines.append('| %s | %d | %.1f (%.1f) | %.1f | %s |' % (
            ', '.join(r['plugins']) or 'none', r['instances'],
            1000 * r['dispatch_s']['median'], 1000 * r['dispatch_s']['max'],
            1000 * r['until_drained_s']['median'], calls or 'none'))
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--sizes', default='100,1000',
                   type=lambda v: [int(x) for x in v.split(',')])
    p.add_argument('--cycles', type=int, default=10)
    args = p.parse_args(argv)
    results = run(args.sizes, args.cycles,
                  lambda m: print(m, flush=True))
    print()
    print(table(results))
    for r in results:
        if r['errors']:
            print('errors in', r['plugins'], r['errors'])


if __name__ == '__main__':
    main()
