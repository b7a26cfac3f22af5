"""The periodic host.usage message: when the loop reads memory for it, what
it carries, and that a slow bus never holds the loop."""

import threading
import time

import fixtures
import libvirt
import testtools

from nova_usage_ext import host_usage
from nova_usage_ext import ledger
from nova_usage_ext import objects
from nova_usage_ext import service as usage_service
from nova_usage_ext import state
from nova_usage_ext.objects import base as obj_base
from nova_usage_ext.virt import base
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_calls
from tests import libvirt_node

objects.register_all()

BALLOON = "<memballoon model='virtio'/></devices>"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Collect:
    """A send function keeping what it was given; ``gate`` holds it."""

    def __init__(self):
        self.entries = []
        self.gate = threading.Event()
        self.gate.set()
        self.error = None

    def __call__(self, entry):
        self.gate.wait(30)
        if self.error is not None:
            raise self.error
        self.entries.append(entry)

    def payloads(self):
        return [e.message['payload'] for e in self.entries]


class HostUsageTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger())
        # nova gives every guest a virtio balloon.
        self.node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(i, n_disks=2).replace(
                '</devices>', BALLOON) for i in range(3)]))
        self.counting = libvirt_calls.CountingConnection(self.node.conn)
        self.seen_groups = []
        real = self.counting.getAllDomainStats

        def spy(stats, flags=0):
            self.seen_groups.append(stats)
            return real(stats, flags)

        self.counting.getAllDomainStats = spy
        self.reader = libvirt_usage.LibvirtUsageReader(
            libvirt_calls.StaticConnection(self.counting), stats_workers=1)
        self.clock = Clock()
        self.send = Collect()

    def make_service(self, intervals, interval=300, max_instances=100):
        store = state.Store(self.useFixture(fixtures.TempDir()).path)
        self.sender = host_usage.HostUsageSender(
            'compute-1', interval, max_instances, self.send)
        svc = usage_service.UsageService(
            self.reader, ledger.Ledger(store), 'compute-1', intervals,
            clock=self.clock, host_usage=self.sender)
        self.addCleanup(svc.stop)
        return svc


class TestSchedule(HostUsageTestCase):

    def test_memory_is_read_only_when_the_message_is_due(self):
        svc = self.make_service({'cpu': 50, 'interfaces': 600,
                                 'disks': 600}, interval=500)
        self.assertEqual(50, svc.poll_due())
        # The first cycle: every kind and the balloon, one bulk call.
        self.assertTrue(self.seen_groups[0] &
                        libvirt.VIR_DOMAIN_STATS_BALLOON)
        self.assertTrue(self.sender.wait_idle(10))
        self.assertEqual(1, len(self.send.entries))
        for _ in range(9):
            self.clock.now += 50
            svc.poll_due()
        # CPU-only cycles from 50 s to 450 s: no balloon, no message.
        self.assertEqual([libvirt.VIR_DOMAIN_STATS_STATE |
                          libvirt.VIR_DOMAIN_STATS_CPU_TOTAL |
                          libvirt.VIR_DOMAIN_STATS_VCPU] * 9,
                         self.seen_groups[1:])
        self.assertEqual(1, len(self.send.entries))
        self.clock.now += 50
        svc.poll_due()
        # 500 s: the message's cycle reads the balloon and every kind.
        self.assertTrue(self.seen_groups[10] &
                        libvirt.VIR_DOMAIN_STATS_BALLOON)
        self.assertTrue(self.seen_groups[10] &
                        libvirt.VIR_DOMAIN_STATS_BLOCK)
        self.assertTrue(self.sender.wait_idle(10))
        self.assertEqual(2, len(self.send.entries))
        # The disks were read with it: at 600 s they are not due again.
        self.clock.now += 100
        svc.poll_due()
        self.assertFalse(self.seen_groups[11] &
                         libvirt.VIR_DOMAIN_STATS_BLOCK)

    def test_off(self):
        svc = self.make_service({'cpu': 60}, interval=0)
        svc.poll_due()
        self.assertFalse(self.seen_groups[0] &
                         libvirt.VIR_DOMAIN_STATS_BALLOON)
        self.assertEqual({'cpu': 60}, svc.intervals)
        self.assertTrue(self.sender.wait_idle(1))
        self.assertEqual([], self.send.entries)

    def test_only_the_message_is_on(self):
        svc = self.make_service({}, interval=300)
        self.assertEqual(300, svc.poll_due())
        self.assertTrue(self.sender.wait_idle(10))
        self.assertEqual(1, len(self.send.entries))
        # Its reading is counted too.
        self.assertIsNotNone(svc.ledger.totals(
            '00000000-0000-0000-0000-000000000001').cpu_time_ns)


class TestMessage(HostUsageTestCase):

    def test_what_the_message_carries(self):
        svc = self.make_service({}, interval=300)
        svc.poll_due()
        self.assertTrue(self.sender.wait_idle(10))
        (entry,) = self.send.entries
        message = entry.message
        self.assertEqual('host.usage', message['event_type'])
        self.assertEqual('INFO', entry.priority)
        self.assertEqual('nova-compute:compute-1', message['publisher_id'])
        payload = obj_base.UsageObject.obj_from_primitive(message['payload'])
        self.assertEqual('compute-1', payload.host)
        self.assertEqual((1, 1), (payload.part, payload.parts))
        by_uuid = {i.instance_uuid: i for i in payload.instances}
        self.assertEqual(sorted(u.uuid for u in svc.reader.read_all()),
                         sorted(by_uuid))
        dom = self.node.conn.lookupByUUIDString(
            '00000000-0000-0000-0000-000000000001')
        stats = dom.memoryStats()
        instance = by_uuid['00000000-0000-0000-0000-000000000001']
        self.assertEqual(stats['available'], instance.memory_available_kib)
        self.assertEqual(stats['usable'], instance.memory_usable_kib)
        self.assertEqual(libvirt.VIR_DOMAIN_RUNNING,
                         instance.hypervisor_state)
        self.assertEqual(['vda', 'vdb'], [d.device for d in instance.disks])
        self.assertEqual(1, len(instance.interfaces))
        self.assertGreater(instance.cpu_time_ns, 0)
        # The loop's latest reading holds the memory too.
        self.assertEqual(
            stats['available'], svc.latest(instance.instance_uuid)
            .memory.available_kib)

    def test_parts_of_at_most_max_instances(self):
        svc = self.make_service({}, interval=300, max_instances=2)
        svc.poll_due()
        self.assertTrue(self.sender.wait_idle(10))
        parts = [p['nova_object.data'] for p in self.send.payloads()]
        self.assertEqual([(1, 2, 2), (2, 2, 1)],
                         [(p['part'], p['parts'], len(p['instances']))
                          for p in parts])
        self.assertEqual(1, len({p['read_at'] for p in parts}))
        self.assertEqual(2, len({e.message['message_id']
                                 for e in self.send.entries}))


class TestSlowBus(HostUsageTestCase):

    def test_a_stuck_send_never_holds_the_loop(self):
        svc = self.make_service({}, interval=300)
        self.send.gate.clear()  # the broker hangs
        self.addCleanup(self.send.gate.set)
        started = time.monotonic()
        svc.poll_due()
        for _ in range(3):
            self.clock.now += 300
            svc.poll_due()
        self.assertLess(time.monotonic() - started, 5)
        # One reading is being sent; the three after it were skipped.
        self.assertEqual(3, self.sender.skipped)
        self.assertIn('still being sent; skipping', self.log.output)
        self.assertEqual([], self.send.entries)
        self.send.gate.set()
        self.assertTrue(self.sender.wait_idle(10))
        self.assertEqual(1, len(self.send.entries))
        # The next reading goes again.
        self.clock.now += 300
        svc.poll_due()
        self.assertTrue(self.sender.wait_idle(10))
        self.assertEqual(2, len(self.send.entries))

    def test_a_failed_send_is_dropped_and_counted(self):
        svc = self.make_service({}, interval=300, max_instances=1)
        self.send.error = RuntimeError('broker away')
        svc.poll_due()
        self.assertTrue(self.sender.wait_idle(10))
        # The first of three parts failed: the other two are not tried.
        self.assertEqual((0, 3), (self.sender.sent, self.sender.failed))
        self.assertIn('cannot send host.usage (3 of 3 parts not sent',
                      self.log.output)
        self.send.error = None
        self.clock.now += 300
        svc.poll_due()
        self.assertTrue(self.sender.wait_idle(10))
        self.assertEqual(3, self.sender.sent)

    def test_stopped_sender_takes_nothing(self):
        self.make_service({}, interval=300)
        self.sender.stop()
        self.assertFalse(self.sender.submit(base.utcnow(), []))
