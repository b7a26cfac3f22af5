"""A stopped usage service leaves no thread of its own behind (nova may
stop a driver and make another in the same process; tests do)."""

import threading
import time

import fixtures
import testtools

from nova_usage_ext import ledger
from nova_usage_ext import service as usage_service
from nova_usage_ext import state
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_calls
from tests import libvirt_node


def _package_threads():
    return {t for t in threading.enumerate()
            if t.name.startswith('nova-usage-ext')}


class TestStoppedServiceThreads(testtools.TestCase):

    def test_read_workers_and_delivery_end_on_stop(self):
        self.useFixture(fixtures.FakeLogger())
        node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(i) for i in range(2)]))
        before = _package_threads()
        service = usage_service.UsageService(
            libvirt_usage.LibvirtUsageReader(
                libvirt_calls.StaticConnection(node.conn)),
            ledger.Ledger(state.Store(None)), 'compute-1', {})
        service.start()
        uuids = [d.UUIDString() for d in node.conn.listAllDomains()]
        # Two reads at once: both workers start.
        reads = [threading.Thread(target=service.read_bounded,
                                  args=(uuid, 5)) for uuid in uuids]
        for read in reads:
            read.start()
        for read in reads:
            read.join()
        started = _package_threads() - before
        self.assertEqual({'nova-usage-ext-delivery', 'nova-usage-ext-read'},
                         {t.name for t in started})
        service.stop()
        deadline = time.monotonic() + 5
        while (any(t.is_alive() for t in started) and
               time.monotonic() < deadline):
            time.sleep(0.01)
        self.assertEqual([], [t.name for t in started if t.is_alive()])


class TestReadSoon(testtools.TestCase):
    """Reads asked for by nova's lifecycle events: never waited for,
    counted when done, and never a backlog."""

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.FakeLogger())
        self.node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(i) for i in range(3)]))
        self.reader = libvirt_usage.LibvirtUsageReader(
            libvirt_calls.StaticConnection(self.node.conn))
        self.service = usage_service.UsageService(
            self.reader, ledger.Ledger(state.Store(None)), 'compute-1', {})
        self.service.start()
        self.addCleanup(self.service.stop)
        self.uuids = [d.UUIDString() for d in self.node.conn.listAllDomains()]

    def test_the_reading_is_counted_and_stands(self):
        uuid = self.uuids[0]
        before = self.service.latest(uuid).read_at
        self.assertTrue(self.service.read_soon(uuid))
        deadline = time.monotonic() + 5
        while self.service.latest(uuid).read_at == before:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        self.assertEqual(self.service.latest(uuid).read_at,
                         self.service.ledger.totals(uuid).read_at)

    def test_a_hanging_hypervisor_builds_no_backlog(self):
        release = threading.Event()
        self.addCleanup(release.set)
        hanging = threading.Semaphore(0)
        real = self.reader.read_instance

        def hang(uuid, *args):
            hanging.release()
            release.wait(10)
            return real(uuid, *args)
        self.useFixture(fixtures.MockPatchObject(
            self.reader, 'read_instance', side_effect=hang))
        began = time.monotonic()
        # Both workers take one and hang.
        self.assertTrue(self.service.read_soon(self.uuids[0]))
        self.assertTrue(self.service.read_soon(self.uuids[1]))
        for _ in range(2):
            self.assertTrue(hanging.acquire(timeout=5))
        self.useFixture(fixtures.MockPatchObject(
            usage_service._Reads, 'MAX_SOON', 1))
        # The next waits, once per instance, one at most here; an instance
        # being read is not queued again.
        self.assertTrue(self.service.read_soon(self.uuids[2]))
        self.assertFalse(self.service.read_soon(self.uuids[2]))
        self.assertFalse(self.service.read_soon(self.uuids[0]))
        self.assertFalse(self.service.read_soon(
            '00000000-0000-0000-0000-00000000beef'))
        self.assertLess(time.monotonic() - began, 1)
        # The hook's own reads still queue (and time out on their own).
        self.assertIsNone(self.service.read_bounded(self.uuids[1], 0.05))
        release.set()
        # What was queued is read in the end.
        self.assertTrue(hanging.acquire(timeout=5))

    def test_the_hook_s_reads_go_before_the_event_reads(self):
        self.useFixture(fixtures.MockPatchObject(
            usage_service._Reads, 'WORKERS', 1))
        release = threading.Event()
        self.addCleanup(release.set)
        order = []
        real = self.reader.read_instance

        def hang(uuid, *args):
            order.append(uuid)
            release.wait(10)
            return real(uuid, *args)
        self.useFixture(fixtures.MockPatchObject(
            self.reader, 'read_instance', side_effect=hang))
        service = usage_service.UsageService(
            self.reader, ledger.Ledger(state.Store(None)), 'compute-1', {})
        self.addCleanup(service.stop)
        self.assertTrue(service.read_soon(self.uuids[0]))
        deadline = time.monotonic() + 5
        while not order:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        # An event read waits; then a delete's read comes.
        self.assertTrue(service.read_soon(self.uuids[1]))
        hook = threading.Thread(target=service.read_bounded,
                                args=(self.uuids[2], 5))
        hook.start()
        time.sleep(0.05)
        release.set()
        hook.join()
        deadline = time.monotonic() + 5
        while len(order) < 3:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        self.assertEqual(self.uuids[:1] + [self.uuids[2], self.uuids[1]],
                         order)

    def test_one_instance_is_read_by_one_thread_at_a_time(self):
        # Two stats calls on one domain at once: the second, under NOWAIT,
        # would come back without the counters that need the domain's job.
        release = threading.Event()
        self.addCleanup(release.set)
        at_once, most = [0], [0]
        lock = threading.Lock()
        real = self.reader.read_instance

        def read(uuid, *args):
            with lock:
                at_once[0] += 1
                most[0] = max(most[0], at_once[0])
            release.wait(10)
            try:
                return real(uuid, *args)
            finally:
                with lock:
                    at_once[0] -= 1
        self.useFixture(fixtures.MockPatchObject(
            self.reader, 'read_instance', side_effect=read))
        uuid = self.uuids[0]
        self.assertTrue(self.service.read_soon(uuid))
        hook = threading.Thread(target=self.service.read_bounded,
                                args=(uuid, 5))
        hook.start()
        time.sleep(0.1)
        release.set()
        hook.join()
        self.assertEqual(1, most[0])

    def test_a_stopped_service_reads_nothing_more(self):
        self.service.stop()
        self.assertFalse(self.service.read_soon(self.uuids[0]))

    def test_an_older_reading_ending_last_never_replaces_a_newer(self):
        # Two reads of one instance on two threads (an event's and a
        # delete's) end in either order.
        uuid = self.uuids[0]
        older = self.reader.read_instance(uuid)
        newer = self.service.read_now(uuid)
        self.assertLess(older.read_at, newer.read_at)
        self.useFixture(fixtures.MockPatchObject(
            self.reader, 'read_instance', return_value=older))
        self.service.read_now(uuid)
        self.assertEqual(newer.read_at, self.service.latest(uuid).read_at)
        self.assertEqual(newer.read_at,
                         self.service.ledger.totals(uuid).read_at)
