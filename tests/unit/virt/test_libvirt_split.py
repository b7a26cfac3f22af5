"""Cycles split over concurrent stats calls, against libvirt's test driver.

The reader lists the domains with one full call, then splits them over
``stats_workers`` calls until libvirt's lifecycle events say the set of
domains may have changed. The events come from the test driver through
libvirt's default event loop, as they would from libvirtd.
"""

import logging
import threading

import fixtures
import libvirt
import testtools

from nova_usage_ext.virt import base
from nova_usage_ext.virt import libvirt as libvirt_usage
from nova_usage_ext.virt import libvirt_domains
from tests import libvirt_calls
from tests import libvirt_node

EVENT_TIMEOUT = 10


def _uuid(index):
    return '00000000-0000-0000-0000-%012x' % (index + 1)


class NoEvents:
    """A connection whose driver offers no domain events."""

    def __init__(self, conn):
        self._conn = conn

    def domainEventRegister(self, *args):
        raise libvirt.libvirtError('this connection has no events')

    def __getattr__(self, name):
        return getattr(self._conn, name)


class SplitTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.DEBUG))

    def make_node(self, count):
        return self.useFixture(libvirt_node.TestNode(
            [libvirt_node.nova_test_domain(i) for i in range(count)]))

    def make_reader(self, conn, workers=2, own_events=True):
        counting = libvirt_calls.CountingConnection(conn)
        reader = libvirt_usage.LibvirtUsageReader(
            libvirt_calls.StaticConnection(counting), stats_workers=workers,
            own_events=own_events)
        self.addCleanup(reader.close)
        return reader, counting

    def cycle(self, reader, counting):
        """One cycle: the instances read and the connection calls made."""
        counting.reset_counts()
        usages = reader.read_all()
        calls = {name: n for name, n in counting.calls.items()
                 if not name.startswith('domain.')}
        return sorted(u.uuid for u in usages), calls

    def cycle_log(self, reader):
        """What one cycle logged."""
        before = len(self.log.output)
        reader.read_all()
        return self.log.output[before:]

    def wait_for_event(self, conn, change, last_event):
        """Run ``change`` and wait until ``last_event``, the last lifecycle
        event it causes, was dispatched: callbacks run in the order they
        were registered, so the reader's has run when this one has."""
        seen = threading.Event()

        def on_event(_conn, _dom, event, _detail, _opaque):
            if event == last_event:
                seen.set()

        callback_id = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_event, None)
        try:
            change()
            self.assertTrue(seen.wait(EVENT_TIMEOUT),
                            'no lifecycle event within %ss' % EVENT_TIMEOUT)
        finally:
            conn.domainEventDeregisterAny(callback_id)


class TestSplitCycles(SplitTestCase):

    def test_steady_cycles_split_the_listed_domains(self):
        node = self.make_node(10)
        reader, counting = self.make_reader(node.conn)
        all_uuids = sorted(_uuid(i) for i in range(10))
        uuids, calls = self.cycle(reader, counting)
        self.assertEqual(all_uuids, uuids)
        self.assertEqual({'getAllDomainStats': 1,
                          'domainEventRegister': 1}, calls)
        for _ in range(3):
            uuids, calls = self.cycle(reader, counting)
            self.assertEqual(all_uuids, uuids)
            self.assertEqual({'domainListGetStats': 2}, calls)

    def test_split_cycle_reads_what_a_single_call_reads(self):
        node = self.make_node(12)
        split, split_calls = self.make_reader(node.conn, workers=3)
        single, _ = self.make_reader(node.conn, workers=1)
        split.read_all()
        split_calls.reset_counts()
        by_split = {u.uuid: u for u in split.read_all()}
        self.assertEqual(3, split_calls.calls['domainListGetStats'])
        by_single = {u.uuid: u for u in single.read_all()}
        self.assertEqual(sorted(by_single), sorted(by_split))
        for uuid, one in by_single.items():
            other = by_split[uuid]
            self.assertEqual((one.name, one.project_id, one.generation,
                              one.state, one.flavor.name),
                             (other.name, other.project_id, other.generation,
                              other.state, other.flavor.name))
            self.assertEqual([d.device for d in one.disks],
                             [d.device for d in other.disks])
            self.assertEqual([i.mac for i in one.interfaces],
                             [i.mac for i in other.interfaces])
            self.assertIsNotNone(other.cpu_time_ns)

    def test_new_domain_is_read_in_the_cycle_after_its_event(self):
        node = self.make_node(8)
        reader, counting = self.make_reader(node.conn)
        self.cycle(reader, counting)
        self.cycle(reader, counting)

        def define_and_start():
            node.conn.defineXML(libvirt_node.nova_test_domain(8)).create()

        self.wait_for_event(node.conn, define_and_start,
                            libvirt.VIR_DOMAIN_EVENT_STARTED)
        uuids, calls = self.cycle(reader, counting)
        self.assertIn(_uuid(8), uuids)
        self.assertEqual({'getAllDomainStats': 1}, calls)
        uuids, calls = self.cycle(reader, counting)
        self.assertEqual(9, len(uuids))
        self.assertEqual({'domainListGetStats': 2}, calls)

    def test_undefined_domain_is_gone_from_the_next_cycle(self):
        node = self.make_node(9)
        reader, counting = self.make_reader(node.conn)
        self.cycle(reader, counting)

        def remove():
            dom = node.conn.lookupByUUIDString(_uuid(3))
            dom.destroy()
            dom.undefine()

        self.wait_for_event(node.conn, remove,
                            libvirt.VIR_DOMAIN_EVENT_UNDEFINED)
        uuids, calls = self.cycle(reader, counting)
        self.assertNotIn(_uuid(3), uuids)
        self.assertEqual(8, len(uuids))
        self.assertEqual({'getAllDomainStats': 1}, calls)

    def test_stale_list_still_gives_current_domain_ids(self):
        # Were an event lost, a listed domain that was restarted must still
        # show its new id (the counter generation) and state.
        self.useFixture(fixtures.MockPatch(
            'nova_usage_ext.virt.libvirt_domains.RELIST_EVENTS',
            frozenset()))
        node = self.make_node(8)
        reader, counting = self.make_reader(node.conn)
        before = {u.uuid: u for u in reader.read_all()}
        dom = node.conn.lookupByUUIDString(_uuid(2))
        dom.destroy()
        dom.create()
        stopped = node.conn.lookupByUUIDString(_uuid(5))
        stopped.destroy()
        uuids, calls = self.cycle(reader, counting)
        self.assertEqual({'domainListGetStats': 2}, calls)
        after = {u.uuid: u for u in reader.read_all()}
        self.assertEqual(node.conn.lookupByUUIDString(_uuid(2)).ID(),
                         after[_uuid(2)].generation)
        self.assertNotEqual(before[_uuid(2)].generation,
                            after[_uuid(2)].generation)
        self.assertEqual(base.SHUTDOWN, after[_uuid(5)].state)
        self.assertIsNone(after[_uuid(5)].cpu_time_ns)

    def test_too_few_domains_are_read_in_one_call(self):
        node = self.make_node(libvirt_usage.MIN_DOMAINS_PER_CALL * 2 - 1)
        reader, counting = self.make_reader(node.conn)
        for _ in range(3):
            _uuids, calls = self.cycle(reader, counting)
            self.assertEqual(1, calls['getAllDomainStats'])
            self.assertNotIn('domainListGetStats', calls)

    def test_one_worker_is_one_call_and_no_events(self):
        node = self.make_node(10)
        reader, counting = self.make_reader(node.conn, workers=1)
        for _ in range(3):
            _uuids, calls = self.cycle(reader, counting)
            self.assertEqual({'getAllDomainStats': 1}, calls)

    def test_without_events_every_cycle_is_one_full_call(self):
        node = self.make_node(10)
        reader, counting = self.make_reader(NoEvents(node.conn))
        for _ in range(3):
            uuids, calls = self.cycle(reader, counting)
            self.assertEqual(10, len(uuids))
            self.assertEqual(1, calls['getAllDomainStats'])
            self.assertNotIn('domainListGetStats', calls)
        self.assertEqual(1, self.log.output.count(
            'libvirt gives no domain events on this connection'))

    def test_workers_must_be_positive(self):
        node = self.make_node(1)
        self.assertRaises(ValueError, libvirt_usage.LibvirtUsageReader,
                          node.connection, stats_workers=0)

    def test_failed_part_raises_after_the_others_finished(self):
        node = self.make_node(8)
        finished = []
        real = node.conn.domainListGetStats

        class FailFirstPart:
            def __init__(self, conn):
                self._conn = conn

            def domainListGetStats(self, doms, stats, flags=0):
                if doms[0].UUIDString() == first_listed[0]:
                    # a genuine libvirt error, message included
                    self._conn.lookupByName('part-failed')
                result = real(doms, stats, flags)
                finished.append(len(doms))
                return result

            def __getattr__(self, name):
                return getattr(self._conn, name)

        first_listed = []
        reader, counting = self.make_reader(FailFirstPart(node.conn))
        first_listed.append(reader.read_all()[0].uuid)
        exc = self.assertRaises(base.HypervisorUnavailable, reader.read_all)
        self.assertIn('libvirt failed to list domains: Domain not found',
                      str(exc))
        self.assertEqual([4], finished)

    def test_reconnect_lists_and_watches_the_new_connection(self):
        node = self.make_node(8)
        reader = libvirt_usage.LibvirtUsageReader(node.connection)
        self.addCleanup(reader.close)
        all_uuids = sorted(_uuid(i) for i in range(8))
        reader.read_all()
        self.assertIn('concurrent stats calls', self.cycle_log(reader))
        node.conn.close()  # libvirtd restarted: the connection is dead
        # The reader's connection reopens; its first cycle is a full call on
        # the new connection, then the split resumes there.
        self.assertNotIn('concurrent stats calls', self.cycle_log(reader))
        self.assertIn('concurrent stats calls', self.cycle_log(reader))
        self.assertEqual(all_uuids, sorted(u.uuid for u in reader.read_all()))

    def test_close_stops_watching(self):
        node = self.make_node(8)
        reader, counting = self.make_reader(node.conn)
        reader.read_all()
        reader.close()
        self.assertEqual(1, counting.calls['domainEventDeregister'])

    def test_stats_calls_run_on_daemon_threads_that_end_with_the_cycle(self):
        node = self.make_node(8)
        real = node.conn.domainListGetStats
        threads = []

        class Spy:
            def domainListGetStats(self, *args):
                threads.append(threading.current_thread())
                return real(*args)

            def __getattr__(self, name):
                return getattr(node.conn, name)

        reader, counting = self.make_reader(Spy())
        reader.read_all()
        reader.read_all()
        self.assertEqual(2, len(threads))
        self.assertIn(threading.current_thread(), threads)
        (other,) = set(threads) - {threading.current_thread()}
        self.assertTrue(other.daemon)
        self.assertEqual('usage-ext-stats', other.name)
        self.assertFalse(other.is_alive())


class TestEventsFromTheOwner(SplitTestCase):
    """Inside nova the reader registers no callback on nova's connection:
    nova's Host gets the events and its driver passes them on."""

    def test_no_callback_of_its_own_and_split_cycles(self):
        node = self.make_node(8)
        reader, counting = self.make_reader(node.conn, own_events=False)
        uuids, calls = self.cycle(reader, counting)
        self.assertEqual({'getAllDomainStats': 1}, calls)
        uuids, calls = self.cycle(reader, counting)
        self.assertEqual({'domainListGetStats': 2}, calls)
        reader.close()
        self.assertNotIn('domainEventDeregister', counting.calls)

    def test_a_change_passed_on_lists_the_domains_again(self):
        node = self.make_node(8)
        reader, counting = self.make_reader(node.conn, own_events=False)
        self.cycle(reader, counting)
        node.conn.defineXML(libvirt_node.nova_test_domain(8)).create()
        # No event of its own: the list stands until the owner says.
        uuids, calls = self.cycle(reader, counting)
        self.assertNotIn(_uuid(8), uuids)
        reader.domains_changed()
        uuids, calls = self.cycle(reader, counting)
        self.assertEqual({'getAllDomainStats': 1}, calls)
        self.assertIn(_uuid(8), uuids)
        uuids, calls = self.cycle(reader, counting)
        self.assertEqual({'domainListGetStats': 2}, calls)
        self.assertIn(_uuid(8), uuids)


class TestDomainList(SplitTestCase):

    def test_list_expires_after_max_age(self):
        node = self.make_node(2)
        now = [100.0]
        domains = libvirt_domains.DomainList(max_age=60,
                                             clock=lambda: now[0])
        self.addCleanup(domains.close)
        listed = node.conn.listAllDomains()
        token = domains.begin_listing(node.conn)
        domains.store(token, listed)
        self.assertEqual(listed, domains.current(node.conn))
        now[0] += 61
        self.assertIsNone(domains.current(node.conn))

    def test_event_during_listing_voids_the_listing(self):
        node = self.make_node(2)
        domains = libvirt_domains.DomainList()
        self.addCleanup(domains.close)
        token = domains.begin_listing(node.conn)
        listed = node.conn.listAllDomains()
        self.wait_for_event(
            node.conn,
            lambda: node.conn.defineXML(libvirt_node.nova_test_domain(5)),
            libvirt.VIR_DOMAIN_EVENT_DEFINED)
        domains.store(token, listed)
        self.assertIsNone(domains.current(node.conn))
        # The next listing, with no event meanwhile, is kept.
        token = domains.begin_listing(node.conn)
        listed = node.conn.listAllDomains()
        domains.store(token, listed)
        self.assertEqual(3, len(domains.current(node.conn)))

    def test_other_connection_is_not_served_the_list(self):
        node = self.make_node(2)
        other = self.make_node(2)
        domains = libvirt_domains.DomainList()
        self.addCleanup(domains.close)
        token = domains.begin_listing(node.conn)
        domains.store(token, node.conn.listAllDomains())
        self.assertIsNone(domains.current(other.conn))
        self.assertIsNotNone(domains.current(node.conn))
