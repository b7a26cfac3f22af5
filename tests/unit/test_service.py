"""The usage service: periodic caching, intervals, restarts."""

import os
import time

import fixtures
import testtools
from oslo_config import cfg

from nova_usage_ext import counters
from nova_usage_ext import service as usage_service
from nova_usage_ext.virt import base
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_calls
from tests import libvirt_node

UUID0 = '00000000-0000-0000-0000-000000000001'
UUID1 = '00000000-0000-0000-0000-000000000002'


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class ServiceTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger())
        self.node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(0),
            libvirt_node.nova_test_domain(1)]))
        self.counting = libvirt_calls.CountingConnection(self.node.conn)
        self.reader = libvirt_usage.LibvirtUsageReader(
            libvirt_calls.StaticConnection(self.counting))
        self.state = self.useFixture(fixtures.TempDir()).path
        self.clock = Clock()

    def make_service(self, intervals, reader=None):
        cache = counters.CounterCache(os.path.join(self.state, 'c.json'))
        return usage_service.UsageService(reader or self.reader, cache,
                                          'compute-1', intervals,
                                          clock=self.clock)


class TestIntervals(ServiceTestCase):

    def test_one_bulk_read_serves_every_due_kind(self):
        svc = self.make_service({'cpu': 60, 'interfaces': 120,
                                 'disks': 600})
        self.assertEqual(60, svc.poll_due())
        self.assertEqual(1, self.counting.calls['getAllDomainStats'])
        totals = svc.cache.totals(UUID0)
        self.assertIsNotNone(totals.cpu_time_ns)
        self.assertEqual(['vda'], list(totals.disks))
        self.assertEqual(['tap00000000-00'], list(totals.interfaces))

    def test_nothing_due_means_no_read(self):
        svc = self.make_service({'cpu': 60})
        svc.poll_due()
        self.clock.now += 30
        self.assertEqual(30, svc.poll_due())
        self.assertEqual(1, self.counting.calls['getAllDomainStats'])

    def test_only_due_kinds_are_refreshed(self):
        svc = self.make_service({'cpu': 60, 'disks': 600})
        svc.poll_due()
        first = svc.cache.totals(UUID0)
        self.clock.now += 60
        svc.poll_due()  # cpu only
        second = svc.cache.totals(UUID0)
        self.assertGreater(second.cpu_time_ns, first.cpu_time_ns)
        self.assertEqual(first.disks, second.disks)
        self.assertEqual(first.disks['vda'].read_bytes,
                         svc.latest(UUID0).disk('vda').read_bytes)
        self.clock.now += 540
        svc.poll_due()  # both
        third = svc.cache.totals(UUID0)
        self.assertGreater(third.disks['vda'].read_bytes,
                           second.disks['vda'].read_bytes)
        self.assertEqual(3, self.counting.calls['getAllDomainStats'])

    def test_only_the_due_kinds_stats_groups_are_asked_for(self):
        svc = self.make_service({'cpu': 60, 'disks': 600})
        asked = []
        real = self.reader.read_host

        def spy(kinds):
            asked.append(kinds)
            return real(kinds)

        self.useFixture(fixtures.MockPatchObject(
            self.reader, 'read_host', side_effect=spy))
        svc.poll_due()
        self.clock.now += 60
        svc.poll_due()
        self.assertEqual([('cpu', 'disks'), ('cpu',)], asked)

    def test_zero_or_negative_disables_a_kind(self):
        svc = self.make_service({'cpu': 0, 'interfaces': -1, 'disks': 300})
        self.assertEqual({'disks': 300}, svc.intervals)
        svc.poll_due()
        totals = svc.cache.totals(UUID0)
        self.assertIsNone(totals.cpu_time_ns)
        self.assertEqual({}, totals.interfaces)
        self.assertEqual(['vda'], list(totals.disks))

    def test_all_disabled_starts_no_loop(self):
        svc = self.make_service({'cpu': 0, 'interfaces': 0, 'disks': 0})
        svc.start()
        self.assertIsNone(svc._loop)
        self.assertIsNone(svc.poll_due())
        self.assertIn('every usage poll interval is 0 or less',
                      self.log.output)
        self.assertEqual(0, self.counting.total)


class TestFailures(ServiceTestCase):

    def test_unreachable_hypervisor_is_logged_and_retried_next_time(self):
        reader = libvirt_usage.LibvirtUsageReader(
            libvirt_usage.LibvirtConnection(
                'qemu+unix:///system?socket=/nonexistent/sock'))
        svc = self.make_service({'cpu': 60}, reader=reader)
        self.assertEqual(60, svc.poll_due())
        self.assertIn('cannot read usage this cycle', self.log.output)

    def test_unexpected_error_does_not_stop_polling(self):
        svc = self.make_service({'cpu': 60})
        self.useFixture(fixtures.MockPatchObject(
            self.reader, 'read_host', side_effect=RuntimeError('boom')))
        self.assertEqual(60, svc.poll_due())
        self.assertIn('usage poll failed', self.log.output)
        self.assertIn('boom', self.log.output)

    def test_skipped_instance_is_not_pruned(self):
        svc = self.make_service({'cpu': 60})
        svc.poll_due()
        # A read that could not read UUID1 must not drop its totals.
        real = self.reader.read_host

        def partial(*args):
            reading = real(*args)
            return base.HostReading(
                [u for u in reading.usages if u.uuid != UUID1], False)

        self.useFixture(fixtures.MockPatchObject(
            self.reader, 'read_host', side_effect=partial))
        self.clock.now += 60
        svc.poll_due()
        self.assertIsNotNone(svc.cache.totals(UUID1))

    def test_deleted_instance_is_pruned_on_a_complete_read(self):
        svc = self.make_service({'cpu': 60})
        svc.poll_due()
        dom = self.node.conn.lookupByUUIDString(UUID1)
        dom.destroy()
        dom.undefine()
        self.clock.now += 60
        svc.poll_due()
        self.assertIsNone(svc.cache.totals(UUID1))
        self.assertIsNone(svc.latest(UUID1))


class TestRestart(ServiceTestCase):

    def test_totals_survive_a_nova_compute_restart(self):
        svc = self.make_service({'cpu': 60})
        svc.poll_due()
        before = svc.cache.totals(UUID0)
        restarted = self.make_service({'cpu': 60})
        after = restarted.cache.totals(UUID0)
        self.assertEqual(before.cpu_time_ns, after.cpu_time_ns)
        restarted.poll_due()
        self.assertGreater(restarted.cache.totals(UUID0).cpu_time_ns,
                           before.cpu_time_ns)

    def test_forget_is_saved(self):
        svc = self.make_service({'cpu': 60})
        svc.poll_due()
        svc.forget(UUID0)
        restarted = self.make_service({'cpu': 60})
        self.assertIsNone(restarted.cache.totals(UUID0))
        self.assertIsNotNone(restarted.cache.totals(UUID1))


class TestFinals(ServiceTestCase):

    def test_claim_final_once_per_instance(self):
        svc = self.make_service({})
        self.assertTrue(svc.claim_final(UUID0))
        self.assertFalse(svc.claim_final(UUID0))
        self.assertTrue(svc.claim_final(UUID1))

    def test_memory_of_finals_is_bounded(self):
        self.useFixture(fixtures.MonkeyPatch(
            'nova_usage_ext.service.FINALS_REMEMBERED', 3))
        svc = self.make_service({})
        for i in range(5):
            svc.claim_final('uuid-%d' % i)
        self.assertEqual(3, len(svc._finals))
        self.assertTrue(svc.claim_final('uuid-0'))


class TestLoop(ServiceTestCase):
    """The real oslo.service looping call, on native threads."""

    def test_runs_never_overlap_and_slow_reads_delay_the_next(self):
        svc = usage_service.UsageService(
            self.reader, counters.CounterCache(None), 'compute-1',
            {'cpu': 0.01})
        running = []
        overlaps = []
        calls = []
        real = self.reader.read_host

        def slow_read(*args):
            running.append(1)
            if len(running) > 1:
                overlaps.append(len(running))
            calls.append(time.monotonic())
            time.sleep(0.05)
            running.pop()
            return real(*args)

        self.useFixture(fixtures.MockPatchObject(
            self.reader, 'read_host', side_effect=slow_read))
        svc.start()
        time.sleep(0.4)
        svc.stop()
        self.assertEqual([], overlaps)
        self.assertGreaterEqual(len(calls), 3)
        gaps = [b - a for a, b in zip(calls, calls[1:])]
        self.assertTrue(all(gap >= 0.05 for gap in gaps), gaps)
        self.assertIsNotNone(svc.latest(UUID0))
        # Stopped means stopped: no read after stop() returned.
        stopped_with = len(calls)
        time.sleep(0.1)
        self.assertEqual(stopped_with, len(calls))


class TestFromConf(testtools.TestCase):

    def test_intervals_and_state_dir_from_nova_conf(self):
        conf = cfg.ConfigOpts()
        conf.register_opt(cfg.IntOpt('volume_usage_poll_interval',
                                     default=0))
        conf.register_opt(cfg.StrOpt('state_path'))
        conf([])
        state = self.useFixture(fixtures.TempDir()).path
        conf.set_override('volume_usage_poll_interval', 300)
        conf.set_override('state_path', state)
        svc = usage_service.UsageService.from_conf(
            conf, reader=None, host='compute-1')
        self.assertEqual({'cpu': 600, 'interfaces': 600, 'disks': 300},
                         svc.intervals)
        self.assertEqual(os.path.join(state, 'usage_ext', 'counters.json'),
                         svc.cache.path)

    def test_nova_s_volume_interval_off_by_default(self):
        conf = cfg.ConfigOpts()
        conf([])
        conf.register_opts([])
        state = self.useFixture(fixtures.TempDir()).path
        from nova_usage_ext import conf as usage_conf
        usage_conf.register_opts(conf)
        conf.set_override('state_dir', state, group='usage_ext')
        conf.set_override('cpu_poll_interval', 0, group='usage_ext')
        conf.set_override('bandwidth_poll_interval', 30)
        svc = usage_service.UsageService.from_conf(conf, None, 'compute-1')
        self.assertEqual({'interfaces': 30}, svc.intervals)
        self.assertEqual(os.path.join(state, 'counters.json'),
                         svc.cache.path)


class TestOnlyKinds(testtools.TestCase):

    def test_merge_keeps_counters_of_kinds_not_read(self):
        old = base.InstanceUsage(
            UUID0, 'i', None, None, None, None, base.RUNNING,
            base.utcnow(), cpu_time_ns=5,
            disks=[base.DiskUsage('vda', read_bytes=1)])
        new = base.InstanceUsage(
            UUID0, 'i', None, None, None, None, base.RUNNING,
            base.utcnow(), cpu_time_ns=9,
            disks=[base.DiskUsage('vda', read_bytes=7)])
        merged = usage_service.merge(old, new, {'cpu'})
        self.assertEqual(9, merged.cpu_time_ns)
        self.assertEqual(1, merged.disk('vda').read_bytes)
