"""The usage service: periodic caching, intervals, restarts."""

import os
import time

import fixtures
import testtools
from oslo_config import cfg

from nova_usage_ext import ledger
from nova_usage_ext import state
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
        cache = ledger.Ledger(state.Store(self.state))
        return usage_service.UsageService(reader or self.reader, cache,
                                          'compute-1', intervals,
                                          clock=self.clock)


class TestIntervals(ServiceTestCase):

    def test_one_bulk_read_serves_every_due_kind(self):
        svc = self.make_service({'cpu': 60, 'interfaces': 120,
                                 'disks': 600})
        self.assertEqual(60, svc.poll_due())
        self.assertEqual(1, self.counting.calls['getAllDomainStats'])
        totals = svc.ledger.totals(UUID0)
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
        first = svc.ledger.totals(UUID0)
        first_read = svc.latest(UUID0).disk('vda').read_bytes
        self.clock.now += 60
        svc.poll_due()  # cpu only
        second = svc.ledger.totals(UUID0)
        self.assertGreater(second.cpu_time_ns, first.cpu_time_ns)
        self.assertEqual(first.disks, second.disks)
        self.assertEqual(first_read,
                         svc.latest(UUID0).disk('vda').read_bytes)
        self.clock.now += 540
        svc.poll_due()  # both
        third = svc.ledger.totals(UUID0)
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
        totals = svc.ledger.totals(UUID0)
        self.assertIsNone(totals.cpu_time_ns)
        self.assertEqual({}, totals.interfaces)
        self.assertEqual(['vda'], list(totals.disks))

    def test_all_disabled_starts_no_loop(self):
        svc = self.make_service({'cpu': 0, 'interfaces': 0, 'disks': 0})
        svc.start()
        self.addCleanup(svc.stop)
        self.assertIsNone(svc._loop)
        self.assertIsNone(svc.poll_due())
        self.assertIn('every usage poll interval is 0 or less',
                      self.log.output)
        # One read at start (a new state's baseline: what ran before is
        # not billed later), then none.
        self.assertEqual(1, self.counting.calls['getAllDomainStats'])
        calls = self.counting.total
        restarted = self.make_service({'cpu': 0, 'interfaces': 0,
                                       'disks': 0})
        restarted.start()
        self.addCleanup(restarted.stop)
        self.assertEqual(calls, self.counting.total)
        self.assertEqual(0, restarted.ledger.period_usage(UUID0).cpu_time_ns)


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
        self.assertIsNotNone(svc.ledger.totals(UUID1))

    def test_instance_that_left_gets_a_final_then_is_dropped(self):
        svc = self.make_service({'cpu': 60})
        svc.poll_due()
        self.clock.now += 60
        svc.poll_due()  # UUID1 has usage in its period now
        dom = self.node.conn.lookupByUUIDString(UUID1)
        dom.destroy()
        dom.undefine()
        self.clock.now += 60
        svc.poll_due()
        (entry,) = svc.ledger.store.pending()
        usage = entry.message['payload']['usage']['nova_object.data']
        self.assertEqual(UUID1, entry.uuid)
        self.assertEqual('left_host', entry.message['payload']['final_reason'])
        self.assertTrue(usage['final'])
        self.assertGreater(
            usage['period']['nova_object.data']['cpu_time_ns'], 0)
        self.assertIsNotNone(svc.ledger.totals(UUID1))
        self.clock.now += 60
        svc.poll_due()
        self.assertIsNone(svc.ledger.totals(UUID1))
        self.assertIsNone(svc.latest(UUID1))


def _period_cpu(entry):
    usage = entry.message['payload']['usage']
    return usage['nova_object.data']['period']['nova_object.data'].get(
        'cpu_time_ns', 0)


def _build(usage_wire):
    return {}, {'message_id': 'm', 'event_type': 'compute.instance.exists',
                'payload': {'usage': usage_wire}}, 'INFO'


class TestRestart(ServiceTestCase):

    def test_totals_survive_a_nova_compute_restart(self):
        svc = self.make_service({'cpu': 60})
        svc.poll_due()
        before = svc.ledger.totals(UUID0)
        restarted = self.make_service({'cpu': 60})
        after = restarted.ledger.totals(UUID0)
        self.assertEqual(before.cpu_time_ns, after.cpu_time_ns)
        restarted.poll_due()
        self.assertGreater(restarted.ledger.totals(UUID0).cpu_time_ns,
                           before.cpu_time_ns)

    def test_restart_right_after_an_exists_never_bills_it_again(self):
        # The period moved at the exists is durable with its message,
        # before any save of the poll loop.
        svc = self.make_service({'cpu': 60})
        svc.poll_due()
        self.clock.now += 60
        svc.poll_due()
        _wire, seq = svc.close_audit_period(UUID0, base.utcnow(), _build)
        (entry,) = svc.ledger.store.pending()
        billed = _period_cpu(entry)
        self.assertGreater(billed, 0)
        restarted = self.make_service({'cpu': 60})
        self.assertEqual(0, restarted.period_usage(UUID0).cpu_time_ns)
        # The queued message survived too, to be sent after the restart.
        self.assertEqual([seq], [e.seq for e in
                                 restarted.ledger.store.pending()])

    def test_stop_saves(self):
        svc = self.make_service({'cpu': 60})
        svc.poll_due()
        svc.read_now(UUID0)
        read = svc.ledger.totals(UUID0).cpu_time_ns
        svc.stop()
        restarted = self.make_service({'cpu': 60})
        self.assertEqual(read, restarted.ledger.totals(UUID0).cpu_time_ns)


class TestFinals(ServiceTestCase):

    def test_one_final_per_instance_until_it_is_read_again(self):
        svc = self.make_service({'cpu': 60})
        svc.poll_due()
        self.assertIsNotNone(svc.close_final(UUID0, None, {}, 'INFO', 2.0))
        # nova sends delete.start in both formats.
        self.assertIsNone(svc.close_final(UUID0, None, {}, 'INFO', 2.0))
        self.assertEqual(1, len(svc.ledger.store.pending()))

    def test_failed_delete_counts_on_from_the_final(self):
        svc = self.make_service({'cpu': 60})
        svc.poll_due()
        self.clock.now += 60
        svc.poll_due()
        svc.close_final(UUID0, None, {}, 'INFO', 2.0)
        final = svc.ledger.totals(UUID0).cpu_time_ns
        # nova's delete failed: the guest runs on and is polled.
        self.clock.now += 60
        svc.poll_due()
        self.assertEqual(svc.ledger.totals(UUID0).cpu_time_ns - final,
                         svc.period_usage(UUID0).cpu_time_ns)
        # The retried delete reports only what was used since.
        svc.close_final(UUID0, None, {}, 'INFO', 2.0)
        first, second = svc.ledger.store.pending()
        self.assertEqual(svc.ledger.totals(UUID0).cpu_time_ns,
                         _period_cpu(first) + _period_cpu(second))

    def test_final_of_an_instance_not_here_is_none_and_quiet(self):
        svc = self.make_service({'cpu': 60})
        self.assertIsNone(svc.close_final(
            '00000000-0000-0000-0000-00000000dead', None, {}, 'INFO', 2.0))
        self.assertEqual([], svc.ledger.store.pending())
        self.assertNotIn('ERROR', self.log.output)
        self.assertNotIn('Traceback', self.log.output)

    def test_both_exists_formats_close_one_period(self):
        svc = self.make_service({'cpu': 60})
        svc.poll_due()
        ending = base.utcnow()
        first, seq1 = svc.close_audit_period(UUID0, ending, _build)
        second, seq2 = svc.close_audit_period(
            UUID0, ending.replace(microsecond=0), _build)
        self.assertIsNotNone(seq1)
        self.assertIsNone(seq2)
        self.assertEqual(first, second)
        self.assertEqual(1, len(svc.ledger.store.pending()))


class TestLoop(ServiceTestCase):
    """The real oslo.service looping call, on native threads."""

    def test_runs_never_overlap_and_slow_reads_delay_the_next(self):
        svc = usage_service.UsageService(
            self.reader, ledger.Ledger(state.Store(None)), 'compute-1',
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
        # memory: the host.usage message, every 300 s by default.
        self.assertEqual({'cpu': 600, 'interfaces': 600, 'disks': 300,
                          'memory': 300}, svc.intervals)
        self.assertEqual((300, 100), (svc.host_usage.interval,
                                      svc.host_usage.max_instances))
        self.assertEqual(os.path.join(state, 'usage_ext', 'usage.db'),
                         svc.ledger.store.path)

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
        conf.set_override('host_usage_interval', 0, group='usage_ext')
        svc = usage_service.UsageService.from_conf(conf, None, 'compute-1')
        # Disks are polled by default, whatever nova's own volume poll.
        self.assertEqual({'interfaces': 30, 'disks': 600}, svc.intervals)
        self.assertEqual(os.path.join(state, 'usage.db'),
                         svc.ledger.store.path)


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

    def test_memory_is_kept_until_read_again(self):
        def reading(cpu, memory=None, kinds=base.ALL_KINDS):
            return base.InstanceUsage(
                UUID0, 'i', None, None, None, None, base.RUNNING,
                base.utcnow(), cpu_time_ns=cpu, memory=memory,
                kinds=frozenset(kinds))
        first = reading(1, base.MemoryUsage(available_kib=2048,
                                            usable_kib=1024),
                        base.EVERY_KIND)
        # A cycle of counters only: the last memory figures stand.
        second = usage_service.merge(first, reading(2), base.ALL_KINDS)
        self.assertEqual(2, second.cpu_time_ns)
        self.assertEqual(1.0, second.memory.used_mb)
        self.assertIn(base.MEMORY, second.kinds)
        # A reading that holds memory replaces them.
        third = usage_service.merge(
            second, reading(3, base.MemoryUsage(available_kib=2048,
                                                usable_kib=512),
                            base.EVERY_KIND), base.EVERY_KIND)
        self.assertEqual(1.5, third.memory.used_mb)
        # The ledger's copy of a reading has no memory (a gauge).
        self.assertIsNone(usage_service.only_kinds(third,
                                                   base.ALL_KINDS).memory)
