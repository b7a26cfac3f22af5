"""The libvirt reader against a real libvirtd with tiny QEMU (TCG) guests.

The daemon is shared with other test processes, which start and remove
guests of their own at the same time: every check looks at this test's
guests only, and exact call counts are asserted over cycles in which the
set of domains did not change.

Their readers also query this test's guests: libvirt runs one job at a
time per domain, and under NOWAIT a domain whose job another client holds
comes back without its block counters (state, CPU and interface counters
need no job). Tests that check disk counters therefore read until no guest
of theirs came back busy (``read_settled``); what the reader makes of a busy
domain is checked on its own (``TestConcurrentClient``).
"""

import collections
import logging
import threading
import time

import fixtures
import libvirt
import testtools

from nova_usage_ext.virt import base
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_calls
from tests.functional import fixtures as qemu_fixtures

BLOCK_FIELDS = ('read_requests', 'read_bytes', 'write_requests',
                'write_bytes')  # dom.blockStats() order, then errors
NET_FIELDS = ('rx_bytes', 'rx_packets', 'rx_errors', 'rx_drops',
              'tx_bytes', 'tx_packets', 'tx_errors', 'tx_drops')
INACTIVE = (libvirt.VIR_DOMAIN_NOSTATE, libvirt.VIR_DOMAIN_SHUTOFF,
            libvirt.VIR_DOMAIN_CRASHED)


class _UuidCountingDomain(libvirt_calls.CountingDomain):
    """Counts calls by API name and also by (uuid, API name)."""

    def __init__(self, dom, counter, by_uuid):
        super().__init__(dom, counter)
        self._by_uuid = by_uuid

    def __getattr__(self, attr):
        value = super().__getattr__(attr)
        if callable(value) and attr not in libvirt_calls.LOCAL_DOMAIN_METHODS:
            uuid = self._dom.UUIDString()

            def call(*args, **kwargs):
                self._by_uuid[uuid, attr] += 1
                return value(*args, **kwargs)
            return call
        return value


class ListingCounter(libvirt_calls.CountingConnection):
    """CountingConnection that also keeps what each bulk call listed."""

    def __init__(self, conn):
        super().__init__(conn)
        self.by_uuid = collections.Counter()
        self.listings = []

    def reset_counts(self):
        super().reset_counts()
        self.by_uuid.clear()

    def _wrap(self, result):
        if type(result).__name__ == 'virDomain':
            return _UuidCountingDomain(result, self.calls, self.by_uuid)
        return super()._wrap(result)

    def getAllDomainStats(self, *args, **kwargs):
        result = self.__getattr__('getAllDomainStats')(*args, **kwargs)
        self.listings.append({dom.UUIDString(): (dom.ID(), stats)
                              for dom, stats in result})
        return result


def _complete(stats):
    """Whether the reader can use these bulk stats without more calls."""
    return (stats.get('state.state') in INACTIVE or 'cpu.time' in stats)


def _settled(usage):
    """Not busy: a running guest's disk came with its counters."""
    if usage.state != base.RUNNING:
        return True
    return any(d.device == qemu_fixtures.DISK_DEVICE and
               d.read_requests is not None for d in usage.disks)


def _same_domains(before, after):
    return ({uuid: dom_id for uuid, (dom_id, _) in before.items()} ==
            {uuid: dom_id for uuid, (dom_id, _) in after.items()})


class QemuReaderTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(120, gentle=True))
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.DEBUG))

    def make_guests(self, count=2, nova=True):
        return self.useFixture(qemu_fixtures.QemuGuests(count, nova=nova))

    def make_reader(self):
        connection = libvirt_usage.LibvirtConnection(qemu_fixtures.URI)
        reader = libvirt_usage.LibvirtUsageReader(connection)
        self.addCleanup(reader.close)
        return reader

    def read_ours(self, reader, guests):
        """read_all, keeping only this test's guests (by uuid)."""
        wanted = {g.uuid for g in guests}
        return {u.uuid: u for u in reader.read_all() if u.uuid in wanted}

    def read_settled(self, reader, guests, timeout=10):
        """read_ours until every running guest of ours has disk counters."""
        deadline = time.monotonic() + timeout
        while True:
            usages = self.read_ours(reader, guests)
            busy = [u.name for u in usages.values() if not _settled(u)]
            if not busy:
                return usages
            if time.monotonic() > deadline:
                self.fail('%s came back without disk counters in every '
                          'cycle for %d s' % (busy, timeout))
            time.sleep(0.05)

    def per_domain(self, node, guest):
        """What libvirt's per-domain calls say now."""
        dom = node.domain(guest)
        return {
            'cpu': dom.getCPUStats(True)[0]['cpu_time'],
            'disk': dom.blockStats(guest.disk_device),
            'net': dom.interfaceStats(guest.tap),
        }

    def assert_between(self, low, value, high, what):
        self.assertIsNotNone(value, what)
        self.assertTrue(low <= value <= high, '%s: %r not within [%r, %r]'
                        % (what, value, low, high))

    def assert_counters_between(self, before, usage, after, guest):
        disk = usage.disk(guest.disk_device)
        for index, attr in enumerate(BLOCK_FIELDS):
            self.assert_between(before['disk'][index], getattr(disk, attr),
                                after['disk'][index],
                                '%s %s' % (guest.name, attr))
        self.assertEqual(-1, after['disk'][4])  # QEMU keeps no error count
        self.assertIsNone(disk.errors)
        iface = usage.interface(guest.tap)
        for index, attr in enumerate(NET_FIELDS):
            self.assert_between(before['net'][index], getattr(iface, attr),
                                after['net'][index],
                                '%s %s' % (guest.name, attr))


class TestBulkPath(QemuReaderTestCase):

    def test_real_qemu_returns_the_bulk_groups(self):
        node = self.make_guests(1)
        (guest,) = node.guests
        # Without NOWAIT: wait for the job if another client holds it.
        (stats,) = [stats for dom, stats in node.conn.getAllDomainStats(
            libvirt_usage.STAT_GROUPS) if dom.UUIDString() == guest.uuid]
        self.assertEqual(libvirt.VIR_DOMAIN_RUNNING, stats['state.state'])
        self.assertIn('cpu.time', stats)
        self.assertEqual(1, stats['block.count'])
        self.assertEqual('vda', stats['block.0.name'])
        self.assertEqual(qemu_fixtures.DISK_SIZE, stats['block.0.capacity'])
        self.assertEqual(1, stats['net.count'])
        self.assertEqual(guest.tap, stats['net.0.name'])
        self.assertIn('net.0.rx.bytes', stats)

    def test_call_counts_first_and_steady_cycles(self):
        node = self.make_guests(2)
        ours = {g.uuid for g in node.guests}
        readonly = libvirt.openReadOnly(qemu_fixtures.URI)
        self.addCleanup(readonly.close)

        # First cycle of a new reader: one bulk call, one XMLDesc per
        # listed domain (ours and any other process's), nothing else.
        for _attempt in range(10):
            counting = ListingCounter(readonly)
            # One call per cycle (the split cycles: TestSplitCycles).
            reader = libvirt_usage.LibvirtUsageReader(
                libvirt_calls.StaticConnection(counting), stats_workers=1)
            usages = reader.read_all()
            (listing,) = counting.listings
            self.assertTrue(ours <= set(listing))
            for uuid in ours:  # running: the groups are there (block
                # counters only when no other client held the domain's job)
                self.assertIn('cpu.time', listing[uuid][1])
                self.assertEqual('vda', listing[uuid][1]['block.0.name'])
                self.assertIn('net.0.rx.bytes', listing[uuid][1])
            self.assertTrue(ours <= {u.uuid for u in usages})
            for uuid in ours:
                self.assertEqual({(uuid, 'XMLDesc'): 1},
                                 {k: v for k, v in counting.by_uuid.items()
                                  if k[0] == uuid})
            if all(_complete(stats) for _, stats in listing.values()):
                break
            # Another process's guest was busy starting or stopping: the
            # reader rightly read it one by one; try a quiet cycle again.
        else:
            self.fail('no cycle without a busy domain in 10 attempts')
        self.assertEqual(
            collections.Counter({'getAllDomainStats': 1,
                                 'domain.XMLDesc': len(listing)}),
            counting.calls)
        self.assertEqual(1 + len(listing), counting.total)

        # Steady state: exactly one call, the bulk one, whenever the set of
        # domains is the same as in the cycle before.
        for _attempt in range(10):
            counting.reset_counts()
            usages = reader.read_all()
            previous, listing = counting.listings[-2:]
            self.assertTrue(ours <= {u.uuid for u in usages})
            self.assertFalse([k for k in counting.by_uuid if k[0] in ours])
            if _same_domains(previous, listing) and \
                    all(_complete(stats) for _, stats in listing.values()):
                break
        else:
            self.fail('the domains changed in each of 10 cycles')
        self.assertEqual(collections.Counter({'getAllDomainStats': 1}),
                         counting.calls)
        self.assertEqual(1, counting.total)

    def test_bulk_call_is_not_announced_as_a_fallback(self):
        node = self.make_guests(1)
        self.read_ours(self.make_reader(), node.guests)
        self.assertNotIn('no bulk', self.log.output)
        self.assertNotIn('one by one', self.log.output)


class TestSplitCycles(QemuReaderTestCase):

    def make_split_reader(self):
        """A reader splitting its cycles in two, on a counted connection."""
        # Events reach a connection opened after the event loop exists.
        libvirt_usage.libvirt_domains.ensure_event_loop()
        readonly = libvirt.openReadOnly(qemu_fixtures.URI)
        self.addCleanup(readonly.close)
        counting = ListingCounter(readonly)
        reader = libvirt_usage.LibvirtUsageReader(
            libvirt_calls.StaticConnection(counting), stats_workers=2)
        self.addCleanup(reader.close)
        return reader, counting

    def test_split_cycles_read_every_guest_and_counters_only_grow(self):
        node = self.make_guests(8)
        ours = {g.uuid for g in node.guests}
        reader, counting = self.make_split_reader()
        previous = self.read_ours(reader, node.guests)
        split_cycles = 0
        # Other test processes start and stop guests on this daemon: each
        # of their lifecycle events makes the next cycle a full one.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counting.reset_counts()
            usages = self.read_ours(reader, node.guests)
            self.assertEqual(ours, set(usages))
            calls = {k: v for k, v in counting.calls.items()
                     if not k.startswith('domain.')}
            if calls == {'domainListGetStats': 2}:
                split_cycles += 1
            else:
                self.assertEqual({'getAllDomainStats': 1}, calls)
            for uuid, usage in usages.items():
                before = previous[uuid]
                self.assertEqual(before.generation, usage.generation)
                self.assertGreaterEqual(usage.cpu_time_ns,
                                        before.cpu_time_ns)
                self.assertGreaterEqual(usage.vcpu_time_ns,
                                        before.vcpu_time_ns)
                (iface,) = usage.interfaces
                self.assertGreaterEqual(
                    iface.rx_bytes, before.interfaces[0].rx_bytes)
                # A disk is missing from a cycle in which another client
                # held the guest's job (NOWAIT); when there, it only grows.
                for disk in usage.disks:
                    self.assertEqual(qemu_fixtures.DISK_DEVICE, disk.device)
                    for old in before.disks:
                        self.assertGreaterEqual(disk.read_bytes,
                                                old.read_bytes)
            previous = usages
            if split_cycles >= 3:
                break
            time.sleep(0.05)
        self.assertGreaterEqual(split_cycles, 3,
                                'fewer than 3 split cycles in 60 s')

    def test_guest_started_after_the_listing_is_read(self):
        node = self.make_guests(8)
        reader, _counting = self.make_split_reader()
        self.read_ours(reader, node.guests)
        self.read_ours(reader, node.guests)
        late = self.make_guests(1)
        # The guest's start event reaches the reader in well under a
        # second; the cycle after it must list the guest.
        deadline = time.monotonic() + 10
        while late.guests[0].uuid not in self.read_ours(reader, late.guests):
            self.assertLess(time.monotonic(), deadline,
                            'a started guest was not read within 10 s')
            time.sleep(0.1)


class TestNovaInstanceFilter(QemuReaderTestCase):

    def test_only_nova_guests_are_reported(self):
        nova = self.make_guests(2)
        other = self.make_guests(1, nova=False)
        (foreign,) = other.guests
        reader = self.make_reader()
        usages = reader.read_all()
        reported = {u.uuid for u in usages}
        self.assertTrue({g.uuid for g in nova.guests} <= reported)
        self.assertNotIn(foreign.uuid, reported)
        # Whatever else is reported (other processes' guests) is nova's.
        for usage in usages:
            self.assertIsNotNone(usage.project_id)
        self.assertIn('has no nova metadata', self.log.output)
        self.assertRaises(base.InstanceNotFound, reader.read_instance,
                          foreign.uuid)


class TestCounters(QemuReaderTestCase):

    def test_cpu_time_grows_between_reads(self):
        node = self.make_guests(2)
        reader = self.make_reader()
        first = self.read_ours(reader, node.guests)
        time.sleep(0.2)
        deadline = time.monotonic() + 10
        while True:
            later = self.read_ours(reader, node.guests)
            grown = [g.uuid for g in node.guests
                     if later[g.uuid].cpu_time_ns > first[g.uuid].cpu_time_ns]
            for guest in node.guests:
                self.assertGreaterEqual(later[guest.uuid].cpu_time_ns,
                                        first[guest.uuid].cpu_time_ns)
            if len(grown) == len(node.guests) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(len(node.guests), len(grown),
                         'cpu_time_ns did not grow within 10 s')

    def test_counters_match_per_domain_calls(self):
        node = self.make_guests(3)
        reader = self.make_reader()
        before = {g.uuid: self.per_domain(node, g) for g in node.guests}
        usages = self.read_settled(reader, node.guests)
        after = {g.uuid: self.per_domain(node, g) for g in node.guests}
        self.assertEqual({g.uuid for g in node.guests}, set(usages))
        for guest in node.guests:
            usage = usages[guest.uuid]
            self.assertEqual(base.RUNNING, usage.state)
            self.assertEqual('running', usage.state_name)
            self.assert_between(before[guest.uuid]['cpu'], usage.cpu_time_ns,
                                after[guest.uuid]['cpu'], 'cpu_time_ns')
            self.assert_counters_between(before[guest.uuid], usage,
                                         after[guest.uuid], guest)

    def test_devices_and_metadata(self):
        node = self.make_guests(2)
        usages = self.read_settled(self.make_reader(), node.guests)
        for guest in node.guests:
            usage = usages[guest.uuid]
            self.assertEqual(guest.name, usage.name)
            self.assertEqual(guest.display_name, usage.display_name)
            self.assertEqual(guest.project_id, usage.project_id)
            self.assertEqual(guest.user_id, usage.user_id)
            self.assertEqual(guest.flavor, usage.flavor.name)
            self.assertEqual(64, usage.flavor.memory_mb)
            self.assertEqual(1, usage.flavor.vcpus)
            self.assertEqual(64, usage.memory_mb)
            self.assertEqual(1, usage.vcpus)
            self.assertEqual(['vda'], [d.device for d in usage.disks])
            disk = usage.disk('vda')
            self.assertEqual(qemu_fixtures.DISK_SIZE, disk.capacity_bytes)
            self.assertIsNone(disk.volume_id)
            self.assertEqual([guest.tap], [i.name for i in usage.interfaces])
            self.assertEqual(guest.mac, usage.interface(guest.tap).mac)
            self.assertIs(usage.interface(guest.tap),
                          usage.interface(guest.mac.upper()))

    def test_disk_reads_of_a_reset_guest_are_counted(self):
        node = self.make_guests(2)
        guest, idle = node.guests
        reader = self.make_reader()
        first = self.read_settled(reader, node.guests)
        node.make_disk_io(guest)
        later = self.read_settled(reader, node.guests)
        before_disk = first[guest.uuid].disk('vda')
        after_disk = later[guest.uuid].disk('vda')
        # SeaBIOS reads the boot sector: one request of 512 bytes per boot.
        self.assertGreaterEqual(
            after_disk.read_requests, before_disk.read_requests + 1)
        self.assertGreaterEqual(
            after_disk.read_bytes, before_disk.read_bytes + 512)
        self.assertEqual(before_disk.write_bytes, after_disk.write_bytes)
        self.assertEqual(after_disk.read_requests,
                         node.domain(guest).blockStats('vda')[0])


class TestTapInterface(QemuReaderTestCase):

    def test_managed_ethernet_tap_has_real_interface_stats(self):
        node = self.make_guests(2)
        reader = self.make_reader()
        for guest in node.guests:
            dom = node.domain(guest)
            stats = dom.interfaceStats(guest.tap)
            self.assertEqual(8, len(stats))
            self.assertTrue(all(value >= 0 for value in stats), stats)
            # The same counters are reachable by MAC address.
            self.assertEqual(len(stats), len(dom.interfaceStats(guest.mac)))
        usages = self.read_ours(reader, node.guests)
        for guest in node.guests:
            iface = usages[guest.uuid].interface(guest.tap)
            for attr in NET_FIELDS:
                self.assertIsInstance(getattr(iface, attr), int, attr)
            one = reader.read_instance(guest.uuid).interface(guest.tap)
            for attr in NET_FIELDS:
                self.assertIsInstance(getattr(one, attr), int, attr)


class TestReadInstance(QemuReaderTestCase):

    def test_read_instance_gives_the_same_devices(self):
        node = self.make_guests(2)
        reader = self.make_reader()
        bulk = self.read_settled(reader, node.guests)
        for guest in node.guests:
            before = self.per_domain(node, guest)
            one = reader.read_instance(guest.uuid)
            after = self.per_domain(node, guest)
            listed = bulk[guest.uuid]
            self.assertEqual(guest.uuid, one.uuid)
            self.assertEqual([d.device for d in listed.disks],
                             [d.device for d in one.disks])
            self.assertEqual([(i.name, i.mac) for i in listed.interfaces],
                             [(i.name, i.mac) for i in one.interfaces])
            self.assertEqual(listed.disk('vda').capacity_bytes,
                             one.disk('vda').capacity_bytes)
            self.assertIsNone(one.disk('vda').volume_id)
            self.assert_counters_between(before, one, after, guest)
            self.assertIsNotNone(one.cpu_time_ns)
            self.assertEqual(listed.flavor, one.flavor)

    def test_single_reads_never_fall_below_the_cycle_before(self):
        # The counter cache takes a drop for a guest restart: a single read
        # (the final exists) must use the same clock as the bulk cycle.
        node = self.make_guests(1)
        (guest,) = node.guests
        reader = self.make_reader()
        for _ in range(20):
            cycle = self.read_ours(reader, node.guests)[guest.uuid]
            one = reader.read_instance(guest.uuid)
            self.assertGreaterEqual(one.cpu_time_ns, cycle.cpu_time_ns)
            cpu_only = reader.read_instance(guest.uuid, devices=False)
            self.assertGreaterEqual(cpu_only.cpu_time_ns, one.cpu_time_ns)

    def test_read_instance_without_devices(self):
        node = self.make_guests(1)
        (guest,) = node.guests
        usage = self.make_reader().read_instance(guest.uuid, devices=False)
        self.assertEqual('running', usage.state_name)
        self.assertIsNotNone(usage.cpu_time_ns)
        self.assertEqual([], usage.disks)
        self.assertEqual([], usage.interfaces)


class TestShutOff(QemuReaderTestCase):

    def test_shut_off_guest_is_reported_without_counters(self):
        node = self.make_guests(2)
        running, stopped = node.guests
        reader = self.make_reader()
        self.assertEqual(2, len(self.read_ours(reader, node.guests)))
        node.domain(stopped).destroy()

        usages = self.read_settled(reader, node.guests)
        off = usages[stopped.uuid]
        self.assertEqual(base.SHUTDOWN, off.state)
        self.assertEqual('shutdown', off.state_name)
        self.assertIsNone(off.cpu_time_ns)
        self.assertEqual([], off.disks)
        self.assertEqual([], off.interfaces)
        self.assertEqual(stopped.project_id, off.project_id)
        self.assertEqual(stopped.flavor, off.flavor.name)
        on = usages[running.uuid]
        self.assertEqual('running', on.state_name)
        self.assertIsNotNone(on.cpu_time_ns)
        self.assertEqual(['vda'], [d.device for d in on.disks])

        one = reader.read_instance(stopped.uuid)
        self.assertEqual('shutdown', one.state_name)
        self.assertIsNone(one.cpu_time_ns)
        self.assertEqual([], one.disks)
        self.assertEqual([], one.interfaces)

    def test_restarted_guest_is_read_again(self):
        node = self.make_guests(1)
        (guest,) = node.guests
        reader = self.make_reader()
        self.read_ours(reader, node.guests)
        dom = node.domain(guest)
        dom.destroy()
        self.assertEqual('shutdown',
                         self.read_ours(reader, node.guests)[guest.uuid]
                         .state_name)
        dom.create()
        usage = self.read_settled(reader, node.guests)[guest.uuid]
        self.assertEqual('running', usage.state_name)
        self.assertIsNotNone(usage.cpu_time_ns)
        self.assertEqual(['vda'], [d.device for d in usage.disks])
        self.assertEqual([guest.tap], [i.name for i in usage.interfaces])


class TestConcurrentClient(QemuReaderTestCase):

    def test_busy_guest_never_gets_made_up_disk_counters(self):
        # Another client (here a thread; on a compute host ceilometer or
        # nova) asks for the same stats all the time. Whenever it holds a
        # guest's job, NOWAIT returns that guest without block counters;
        # the reader must then report no disk counters for it this cycle,
        # never zeros or stale values. State, CPU and interfaces need no
        # job and are always there.
        node = self.make_guests(2)
        reader = self.make_reader()
        stop = threading.Event()

        def other_client():
            # Only this test's guests, so as to leave other processes'
            # guests alone.
            conn = libvirt.openReadOnly(qemu_fixtures.URI)
            try:
                doms = [conn.lookupByUUIDString(g.uuid) for g in node.guests]
                while not stop.is_set():
                    conn.domainListGetStats(doms, libvirt_usage.STAT_GROUPS,
                                            libvirt_usage.NOWAIT)
            finally:
                conn.close()

        thread = threading.Thread(target=other_client, daemon=True)
        thread.start()

        def stop_client():
            stop.set()
            thread.join(10)
        self.addCleanup(stop_client)
        busy = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and busy < 5:
            before = {g.uuid: self.per_domain(node, g) for g in node.guests}
            usages = self.read_ours(reader, node.guests)
            after = {g.uuid: self.per_domain(node, g) for g in node.guests}
            for guest in node.guests:
                usage = usages[guest.uuid]
                self.assertEqual('running', usage.state_name)
                self.assert_between(before[guest.uuid]['cpu'],
                                    usage.cpu_time_ns,
                                    after[guest.uuid]['cpu'], 'cpu_time_ns')
                iface = usage.interface(guest.tap)
                self.assertIsNotNone(iface.rx_bytes)
                if _settled(usage):
                    self.assert_counters_between(
                        before[guest.uuid], usage, after[guest.uuid], guest)
                    continue
                busy += 1
                # Busy: the disk is left out, or has no counters at all.
                for disk in usage.disks:
                    self.assertEqual(
                        (None,) * 5,
                        (disk.read_requests, disk.read_bytes,
                         disk.write_requests, disk.write_bytes,
                         disk.errors), disk)
