"""The metric plugin manager: records, rates, isolation, reconfiguration,
fed by a real service over libvirt's test driver."""

import datetime
import logging
import os
import threading
import time

import fixtures
import testtools
from oslo_config import cfg

from nova_usage_ext import ledger
from nova_usage_ext import service as usage_service
from nova_usage_ext import state
from nova_usage_ext.plugins import base
from nova_usage_ext.plugins import cycle as plugin_cycle
from nova_usage_ext.plugins import manager
from nova_usage_ext.virt import base as virt_base
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_calls
from tests import libvirt_node

UUID0 = '00000000-0000-0000-0000-000000000001'
UUID1 = '00000000-0000-0000-0000-000000000002'
UTC = datetime.timezone.utc


class Recorder(base.MetricPlugin):
    CONFIG_OPTS = [cfg.StrOpt('label', default='x', mutable=True)]

    def __init__(self, conf, group, host):
        super().__init__(conf, group, host)
        self.calls = []
        self.reconfigured = 0
        self.closed = threading.Event()

    def on_host(self, record):
        self.calls.append(('on_host', record))

    def on_cpu(self, records):
        self.calls.append(('on_cpu', records))

    def on_volume(self, records):
        self.calls.append(('on_volume', records))

    def on_bandwidth(self, records):
        self.calls.append(('on_bandwidth', records))

    def reconfigure(self):
        self.reconfigured += 1

    def close(self):
        self.closed.set()

    def of(self, hook):
        return [arg for name, arg in self.calls if name == hook]


class CpuOnly(base.MetricPlugin):
    def __init__(self, conf, group, host):
        super().__init__(conf, group, host)
        self.seen = []

    def on_cpu(self, records):
        self.seen.append(records)


class Stuck(base.MetricPlugin):
    release = None

    def on_cpu(self, records):
        self.release.wait(30)


class Raising(base.MetricPlugin):
    def on_cpu(self, records):
        raise ValueError('bad plugin')


class Loader:
    """name -> class, keeping the plugin instances made."""

    def __init__(self, **classes):
        self.classes = classes
        self.made = {}

    def __call__(self, name):
        cls = self.classes[name]
        loader = self

        class Made(cls):
            def __init__(self, *args):
                super().__init__(*args)
                loader.made.setdefault(name, []).append(self)
        return Made


class ManagerTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.INFO))
        self.node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(0),
            libvirt_node.nova_test_domain(1)]))
        self.counting = libvirt_calls.CountingConnection(self.node.conn)
        self.reader = libvirt_usage.LibvirtUsageReader(
            libvirt_calls.StaticConnection(self.counting))
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.conf_path = os.path.join(self.tmp, 'nova.conf')
        self.conf = cfg.ConfigOpts()
        self.useFixture(fixtures.MonkeyPatch(
            'nova_usage_ext.conf._reported', set()))

    def configure(self, text):
        with open(self.conf_path, 'w') as f:
            f.write(text)
        if not self.conf._args:
            self.conf(['--config-file', self.conf_path])

    def make(self, loader, names, **kwargs):
        self.configure('[usage_ext]\nmetric_plugins = %s\n' % names)
        plugins = manager.PluginManager(self.conf, 'compute-1', load=loader,
                                        **kwargs)
        svc = usage_service.UsageService(
            self.reader, ledger.Ledger(state.Store(self.tmp)), 'compute-1',
            {'cpu': 60}, plugins=plugins)
        plugins.start()
        self.addCleanup(plugins.close)
        return svc, plugins

    def idle(self, plugins, name):
        self.assertTrue(plugins.wait_idle(10, names=(name,)))


class TestRecords(ManagerTestCase):

    def test_raw_counters_and_rates_from_the_ledger(self):
        loader = Loader(rec=Recorder)
        svc, plugins = self.make(loader, 'rec')
        svc.poll()
        first = svc.ledger.totals(UUID0)
        time.sleep(0.05)
        svc.poll()
        second = svc.ledger.totals(UUID0)
        self.idle(plugins, 'rec')
        rec = loader.made['rec'][0]
        cpu_first, cpu_second = rec.of('on_cpu')
        by_uuid = {r.instance.uuid: r for r in cpu_second}
        self.assertEqual({UUID0, UUID1}, set(by_uuid))
        record = by_uuid[UUID0]
        self.assertEqual(svc.latest(UUID0).cpu_time_ns,
                         record.counters['cpu_time_ns'])
        interval = (second.read_at - first.read_at).total_seconds()
        self.assertAlmostEqual(interval, record.interval_s)
        self.assertAlmostEqual(
            (second.vcpu_time_ns - first.vcpu_time_ns) / interval,
            record.rates['vcpu_time_ns'])
        self.assertAlmostEqual(
            record.rates['vcpu_time_ns'] / 1e9 / record.instance.vcpus * 100,
            record.percent)
        self.assertEqual('m1.tiny', record.instance.flavor_name)
        # The first reading has nothing to compare with.
        self.assertEqual({}, cpu_first[0].rates)
        self.assertIsNone(cpu_first[0].percent)
        disks = [r for r in rec.of('on_volume')[1]
                 if r.instance.uuid == UUID0]
        self.assertEqual(['vda'], [d.device for d in disks])
        self.assertAlmostEqual(
            (second.disks['vda'].read_bytes - first.disks['vda'].read_bytes)
            / interval, disks[0].rates['read_bytes'])
        nics = [r for r in rec.of('on_bandwidth')[1]
                if r.instance.uuid == UUID0]
        self.assertEqual(svc.latest(UUID0).interfaces[0].rx_bytes,
                         nics[0].counters['rx_bytes'])
        self.assertIn('tx_bytes', nics[0].rates)

    def test_a_guest_restart_is_no_negative_rate(self):
        loader = Loader(rec=Recorder)
        svc, plugins = self.make(loader, 'rec')
        svc.poll()
        dom = self.node.conn.lookupByUUIDString(UUID0)
        dom.destroy()
        dom.create()
        svc.poll()
        self.idle(plugins, 'rec')
        (record,) = [r for r in loader.made['rec'][0].of('on_cpu')[1]
                     if r.instance.uuid == UUID0]
        self.assertGreaterEqual(record.rates['vcpu_time_ns'], 0)

    def test_only_the_kinds_read_reach_the_hooks(self):
        loader = Loader(rec=Recorder)
        svc, plugins = self.make(loader, 'rec')
        svc.poll(('cpu',))
        self.idle(plugins, 'rec')
        rec = loader.made['rec'][0]
        self.assertEqual(['on_host', 'on_cpu'],
                         [name for name, _ in rec.calls])

    def test_host_figures_once_per_cycle(self):
        loader = Loader(rec=Recorder)
        svc, plugins = self.make(loader, 'rec')
        svc.poll()
        svc.poll()
        self.idle(plugins, 'rec')
        first, second = loader.made['rec'][0].of('on_host')
        self.assertEqual(2, second.figures.instances)
        self.assertEqual('compute-1', second.host)
        self.assertIsNone(first.cpu_percent)
        # The test driver's host CPU times stand still: no share to tell.
        self.assertIsNone(second.cpu_percent)
        self.assertGreater(second.interval_s, 0)
        self.assertTrue(0 <= second.memory_percent <= 100)
        self.assertEqual(2, self.counting.calls['getCPUStats'])
        self.assertEqual(2, self.counting.calls['getFreeMemory'])

    def test_nothing_is_built_for_hooks_no_plugin_defines(self):
        loader = Loader(cpu=CpuOnly)
        svc, plugins = self.make(loader, 'cpu')
        svc.poll()
        self.idle(plugins, 'cpu')
        self.assertEqual(0, self.counting.calls['getCPUStats'])
        usages = svc.reader.read_all()
        cycle = plugins.build(manager.Job(
            usages, ('cpu', 'disks'),
            {u.uuid: svc.ledger.totals(u.uuid) for u in usages},
            lambda: 1 / 0, True, lambda: 1 / 0, time.time()))
        self.assertIsNone(cycle.volume)
        self.assertIsNone(cycle.health)
        self.assertIsNone(cycle.host_record)
        self.assertEqual(2, len(cycle.cpu))

    def test_no_plugin_no_cost(self):
        before = set(threading.enumerate())
        svc, plugins = self.make(Loader(), '')
        svc.poll()
        self.assertEqual({}, plugins.runners)
        self.assertFalse(plugins.dispatch([], ('cpu',), None, None))
        self.assertEqual([], [t.name for t in set(threading.enumerate()) -
                              before if t.name.startswith('nova-usage-ext')])


class TestHostRates(testtools.TestCase):

    def test_cpu_share_from_busy_and_idle_growth(self):
        builder = plugin_cycle.CycleBuilder('compute-1')
        at = base_time = datetime.datetime(2026, 12, 1, tzinfo=UTC)
        figures = virt_base.HostFigures(
            read_at=at, cpus=4, cpu_busy_ns=1000, cpu_idle_ns=5000,
            memory_total_kb=4096, memory_free_kb=1024, instances=3)
        first = builder.build([], (), None, figures, {'on_host'})
        self.assertIsNone(first.host_record.cpu_percent)
        self.assertEqual(75.0, first.host_record.memory_percent)
        later = virt_base.HostFigures(
            read_at=base_time + datetime.timedelta(seconds=10), cpus=4,
            cpu_busy_ns=4000, cpu_idle_ns=6000, memory_total_kb=4096,
            memory_free_kb=4096, instances=3)
        record = builder.build([], (), None, later, {'on_host'}).host_record
        self.assertEqual(75.0, record.cpu_percent)
        self.assertEqual(0.0, record.memory_percent)
        self.assertEqual(10.0, record.interval_s)
        self.assertIs(later, record.figures)


class RamOnly(base.MetricPlugin):
    def __init__(self, conf, group, host):
        super().__init__(conf, group, host)
        self.seen = []

    def on_ram(self, records):
        self.seen.append(records)


class TestRam(ManagerTestCase):

    def test_only_cycles_that_read_memory_reach_on_ram(self):
        loader = Loader(ram=RamOnly)
        svc, plugins = self.make(loader, 'ram')
        svc.poll(('cpu',))
        svc.poll(('cpu', 'memory'))
        self.idle(plugins, 'ram')
        (records,) = loader.made['ram'][0].seen
        self.assertEqual([UUID0, UUID1],
                         sorted(r.instance.uuid for r in records))
        # The test driver's guests have no balloon statistics.
        self.assertEqual((64, None, None, None), (
            records[0].memory_mb, records[0].used_mb,
            records[0].available_mb, records[0].percent))

    def test_used_share_of_the_balloon_figures(self):
        usage = self.reader.read_host(('cpu', 'memory')).usages[0]
        usage.memory = virt_base.MemoryUsage(
            actual_kib=65536, available_kib=61440, usable_kib=40960)
        record = plugin_cycle.CycleBuilder._ram(usage)
        self.assertEqual((60.0, 20.0), (record.available_mb,
                                        record.used_mb))
        self.assertAlmostEqual(100 * 20 / 60, record.percent)


class TestIsolation(ManagerTestCase):

    def test_cycles_that_come_faster_than_they_are_built_are_dropped(
            self):
        loader = Loader(cpu=CpuOnly)
        svc, plugins = self.make(loader, 'cpu')
        usages = svc.reader.read_all()
        release = threading.Event()
        self.addCleanup(release.set)
        building = threading.Event()
        figures = svc.reader.read_host_figures

        def slow_figures():
            building.set()
            release.wait(30)
            return figures()

        # The builder reads the host figures when a plugin wants them.
        plugins._hooks = plugins._hooks | {'on_host'}
        self.assertTrue(plugins.dispatch(usages, ('cpu',),
                                         svc.ledger.totals, slow_figures))
        self.assertTrue(building.wait(10))
        handed = [plugins.dispatch(usages, ('cpu',), svc.ledger.totals,
                                   slow_figures) for _ in range(4)]
        # One held by the builder, two waiting, the rest dropped.
        self.assertEqual([True, True, False, False], handed)
        self.assertEqual(2, plugins.dropped)
        self.assertEqual(1, self.log.output.count(
            'built more slowly than they come'))
        release.set()
        self.idle(plugins, 'cpu')
        self.assertEqual(3, len(loader.made['cpu'][0].seen))

    def test_a_stuck_plugin_delays_neither_the_poll_nor_the_others(self):
        release = threading.Event()
        self.addCleanup(release.set)
        Stuck.release = release
        loader = Loader(stuck=Stuck, cpu=CpuOnly)
        svc, plugins = self.make(loader, 'stuck,cpu', queue_size=2)
        started = time.monotonic()
        for _ in range(6):
            svc.poll(('cpu',))
            # Each cycle through the builder before the next (a builder
            # two cycles behind drops one: another test's matter).
            self.idle(plugins, 'cpu')
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(6, len(loader.made['cpu'][0].seen))
        # One taken by the thread, two waiting, three dropped.
        self.assertEqual(3, plugins.runners['stuck'].stats.dropped)
        self.assertEqual(1, self.log.output.count('stuck is not keeping up'))
        release.set()
        self.idle(plugins, 'stuck')
        self.assertEqual(3, plugins.runners['stuck'].stats.cycles)

    def test_errors_logged_once_counted_then_disabled_until_reconfigured(
            self):
        loader = Loader(bad=Raising, cpu=CpuOnly)
        svc, plugins = self.make(loader, 'bad,cpu', max_failures=3)
        for _ in range(4):
            svc.poll(('cpu',))
            self.idle(plugins, 'bad')
        self.idle(plugins, 'cpu')
        runner = plugins.runners['bad']
        self.assertEqual(1, self.log.output.count(
            'metric plugin bad failed in on_cpu'))
        self.assertIn('ValueError: bad plugin', self.log.output)
        self.assertEqual({('on_cpu', 'ValueError'): 3},
                         dict(runner.stats.errors))
        self.assertTrue(runner.stats.disabled)
        self.assertIn('bad failed 3 cycles in a row and is disabled',
                      self.log.output)
        self.assertEqual(4, len(loader.made['cpu'][0].seen))
        plugins.reconfigure()
        self.assertFalse(runner.stats.disabled)
        svc.poll(('cpu',))
        self.idle(plugins, 'bad')
        self.assertEqual(4, runner.stats.errors['on_cpu', 'ValueError'])
        self.assertIs(runner, plugins.runners['bad'])

    def test_a_plugin_failing_to_start_or_unknown_is_skipped(self):
        class Broken(base.MetricPlugin):
            def __init__(self, *args):
                raise RuntimeError('no socket')

        svc, plugins = self.make(Loader(broken=Broken, cpu=CpuOnly),
                                 'nosuch, broken,cpu,cpu')
        self.assertEqual(['cpu'], list(plugins.runners))
        self.assertIn("no metric plugin 'nosuch' can be loaded",
                      self.log.output)
        self.assertIn('metric plugin broken failed to start',
                      self.log.output)
        svc.poll()


class TestReconfigure(ManagerTestCase):

    def test_sighup_loads_unloads_and_reconfigures(self):
        loader = Loader(rec=Recorder, cpu=CpuOnly)
        svc, plugins = self.make(loader, 'rec')
        rec = loader.made['rec'][0]
        self.assertEqual('x', self.conf.usage_ext_rec.label)
        self.configure('[usage_ext]\nmetric_plugins = rec,cpu\n'
                       '[usage_ext_rec]\nlabel = y\n')
        # What oslo.service does on SIGHUP with restart_method='mutate'.
        self.conf.mutate_config_files()
        self.assertEqual(['rec', 'cpu'], list(plugins.runners))
        self.assertEqual(1, rec.reconfigured)
        self.assertEqual('y', rec.options.label)
        self.configure('[usage_ext]\nmetric_plugins = cpu\n')
        self.conf.mutate_config_files()
        self.assertEqual(['cpu'], list(plugins.runners))
        self.assertTrue(rec.closed.wait(10))
        svc.poll()
        self.idle(plugins, 'cpu')
        self.assertEqual(1, len(loader.made['cpu'][0].seen))

    def test_closed_manager_ignores_later_reloads(self):
        loader = Loader(rec=Recorder)
        _svc, plugins = self.make(loader, 'rec')
        plugins.close()
        self.assertTrue(loader.made['rec'][0].closed.wait(10))
        self.conf.mutate_config_files()
        self.assertEqual({}, plugins.runners)
