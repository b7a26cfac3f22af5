"""The libvirt reader's bulk parsing, on replies recorded from real guests.

libvirt's test driver, which the other unit tests run on, answers the bulk
stats calls with the state group only. The recordings in ``recordings/``
(made by ``tools/record-domain-stats.py`` from no-OS QEMU guests on
libvirt 9.0) hold what libvirt really returned: each domain's name, UUID,
ID, XML and stats. ``RecordedConnection`` serves them back to the reader's
real code; it stands in for libvirt's connection only.

Expected counters are written out from the recording's raw keys, and
identities from what the tool defined, not from the reader's own parse.
One recording, ``vcpu-missing-derived``, is DERIVED (entries removed from
a real reply), and says so in its ``derived`` field.
"""

import json
import logging
import os
import re

import fixtures
import libvirt
import testtools

from nova_usage_ext.virt import base
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_calls

RECORDINGS = os.path.join(os.path.dirname(__file__), 'recordings')
VOLUME_ID = '5d8a1b8e-6f0e-4c1b-9a57-3c2f0e7d9b21'
NOVA_ROLES = ('running', 'paused', 'shutoff', 'vcpu-hotplugged')


def load(name):
    with open(os.path.join(RECORDINGS, name + '.json')) as f:
        return json.load(f)


class RecordedDomain:
    """A virDomain as it was when the reply was recorded."""

    def __init__(self, entry):
        self.entry = entry

    def UUIDString(self):
        return self.entry['uuid']

    def ID(self):
        return self.entry['id']

    def name(self):
        return self.entry['name']

    def XMLDesc(self, flags=0):
        return self.entry['xml']


class RecordedConnection:
    """A virConnect answering the bulk calls with one recorded reply.

    It answers only the groups and flags the reply was recorded with, and
    has no per-domain calls (``info``, ``blockStats``): a reader asking
    for other groups, or falling back to per-domain reads, fails the test.
    """

    def __init__(self, recording):
        self.recording = recording
        self.domains = [RecordedDomain(e) for e in recording['domains']]

    def _reply(self, domains, groups, flags):
        recorded = (self.recording['groups'], self.recording['flags'])
        if (groups, flags) != recorded:
            raise AssertionError('asked for groups %#x flags %#x; the '
                                 'recording has %#x %#x'
                                 % ((groups, flags) + recorded))
        # A copy, as libvirt returns a new dict on every call.
        return [(dom, dict(dom.entry['stats'])) for dom in domains]

    def getAllDomainStats(self, stats=0, flags=0):
        return self._reply(self.domains, stats, flags)

    def domainListGetStats(self, doms, stats=0, flags=0):
        return self._reply(doms, stats, flags)

    def lookupByUUIDString(self, uuid):
        (dom,) = [d for d in self.domains if d.UUIDString() == uuid]
        return dom

    def getURI(self):
        return 'recorded:///' + self.recording['call']


class RecordedTestCase(testtools.TestCase):

    recording_name = None
    kinds = base.ALL_KINDS

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.FakeLogger(level=logging.DEBUG))
        self.recording = load(self.recording_name)
        self.reader = libvirt_usage.LibvirtUsageReader(
            libvirt_calls.StaticConnection(
                RecordedConnection(self.recording)),
            stats_workers=1)

    def read(self):
        """One cycle over the recording: (HostReading, usages by role)."""
        reading = self.reader.read_host(self.kinds)
        by_uuid = {u.uuid: u for u in reading.usages}
        return reading, {d['role']: by_uuid.get(d['uuid'])
                         for d in self.recording['domains']}

    def stats(self, role):
        return self.entry(role)['stats']

    def entry(self, role):
        (entry,) = [d for d in self.recording['domains']
                    if d['role'] == role]
        return entry

    def assertDiskCounters(self, disk, stats, index):
        self.assertEqual(stats['block.%d.name' % index], disk.device)
        self.assertEqual(stats['block.%d.rd.bytes' % index], disk.read_bytes)
        self.assertEqual(stats['block.%d.rd.reqs' % index],
                         disk.read_requests)
        self.assertEqual(stats['block.%d.wr.bytes' % index],
                         disk.write_bytes)
        self.assertEqual(stats['block.%d.wr.reqs' % index],
                         disk.write_requests)
        self.assertEqual(stats['block.%d.capacity' % index],
                         disk.capacity_bytes)
        self.assertIsNone(disk.errors)  # QEMU keeps no error count

    def assertInterfaceCounters(self, iface, stats, index):
        key = 'net.%d.' % index
        self.assertEqual(stats[key + 'name'], iface.name)
        self.assertEqual(stats[key + 'rx.bytes'], iface.rx_bytes)
        self.assertEqual(stats[key + 'rx.pkts'], iface.rx_packets)
        self.assertEqual(stats[key + 'rx.errs'], iface.rx_errors)
        self.assertEqual(stats[key + 'rx.drop'], iface.rx_drops)
        self.assertEqual(stats[key + 'tx.bytes'], iface.tx_bytes)
        self.assertEqual(stats[key + 'tx.pkts'], iface.tx_packets)
        self.assertEqual(stats[key + 'tx.errs'], iface.tx_errors)
        self.assertEqual(stats[key + 'tx.drop'], iface.tx_drops)


class TestFullCycle(RecordedTestCase):
    """getAllDomainStats with the groups of every kind, NOWAIT."""

    recording_name = 'all-kinds'

    def test_only_nova_instances_are_reported(self):
        reading, usages = self.read()
        self.assertTrue(reading.complete)
        self.assertIsNone(usages['not-nova'])
        self.assertEqual(
            sorted(self.entry(role)['uuid'] for role in NOVA_ROLES),
            sorted(u.uuid for u in reading.usages))

    def test_identity_from_nova_metadata(self):
        _reading, usages = self.read()
        for role in NOVA_ROLES:
            entry, usage = self.entry(role), usages[role]
            defined = entry['defined']
            self.assertEqual(entry['uuid'], usage.uuid)
            self.assertEqual(entry['name'], usage.name)
            self.assertEqual(defined['display_name'], usage.display_name)
            self.assertEqual(defined['project_id'], usage.project_id)
            self.assertEqual(defined['user_id'], usage.user_id)
            self.assertEqual('m1.nano', usage.flavor.name)
            self.assertEqual(defined['vcpus'], usage.flavor.vcpus)
            self.assertEqual(64, usage.flavor.memory_mb)
            self.assertEqual(64, usage.memory_mb)
        self.assertEqual('func-vm-0', usages['running'].display_name)
        self.assertEqual(2, usages['running'].vcpus)

    def test_states_and_generations(self):
        _reading, usages = self.read()
        self.assertEqual(libvirt.VIR_DOMAIN_RUNNING,
                         self.stats('running')['state.state'])
        self.assertEqual(libvirt.VIR_DOMAIN_PAUSED,
                         self.stats('paused')['state.state'])
        self.assertEqual(libvirt.VIR_DOMAIN_SHUTOFF,
                         self.stats('shutoff')['state.state'])
        self.assertEqual('running', usages['running'].state_name)
        self.assertEqual('running', usages['vcpu-hotplugged'].state_name)
        self.assertEqual('paused', usages['paused'].state_name)
        self.assertEqual('shutdown', usages['shutoff'].state_name)
        # The generation is the domain id: new with every QEMU process.
        for role in ('running', 'paused', 'vcpu-hotplugged'):
            self.assertGreater(self.entry(role)['id'], 0)
            self.assertEqual(self.entry(role)['id'], usages[role].generation)
        self.assertEqual(-1, self.entry('shutoff')['id'])
        self.assertIsNone(usages['shutoff'].generation)

    def test_each_disk_carries_its_own_counters(self):
        _reading, usages = self.read()
        stats, usage = self.stats('running'), usages['running']
        self.assertEqual(2, stats['block.count'])
        self.assertEqual(['vda', 'vdb'], [d.device for d in usage.disks])
        vda, vdb = usage.disks
        self.assertDiskCounters(vda, stats, 0)
        self.assertDiskCounters(vdb, stats, 1)
        # The boot sector reads vdb too, other amounts: a swap shows.
        self.assertGreater(vdb.read_bytes, 0)
        self.assertNotEqual(vda.read_bytes, vdb.read_bytes)
        # The Cinder volume id nova wrote in the disk's <serial>.
        self.assertIsNone(vda.volume_id)
        self.assertEqual(VOLUME_ID, vdb.volume_id)

    def test_each_interface_carries_its_own_counters(self):
        _reading, usages = self.read()
        stats, usage = self.stats('running'), usages['running']
        self.assertEqual(2, stats['net.count'])
        defined = self.entry('running')['defined']['interfaces']
        self.assertEqual([tuple(i) for i in defined],
                         [(i.name, i.mac) for i in usage.interfaces])
        first, second = usage.interfaces
        self.assertInterfaceCounters(first, stats, 0)
        self.assertInterfaceCounters(second, stats, 1)
        # The frames the host sent beyond each tap's queue: different
        # counts, so an interface swap cannot pass.
        self.assertNotEqual(first.rx_drops, second.rx_drops)

    def test_cpu_time_and_vcpu_time(self):
        _reading, usages = self.read()
        stats, usage = self.stats('running'), usages['running']
        # Each vCPU ran (the boot sector wakes them), so a vCPU left out
        # of the sum shows. (wait is 0 where the kernel keeps no
        # scheduler statistics, as on the recording host.)
        self.assertGreater(stats['vcpu.1.time'], 0)
        self.assertEqual(stats['cpu.time'], usage.cpu_time_ns)
        self.assertEqual(stats['vcpu.0.time'] + stats['vcpu.0.wait'] +
                         stats['vcpu.1.time'] + stats['vcpu.1.wait'],
                         usage.vcpu_time_ns)
        self.assertFalse(usage.vcpu_time_fallback)

    def test_hot_plugged_vcpu_leaves_a_hole_that_is_no_fallback(self):
        # vCPUs 0 and 2 online of 3: libvirt numbers the entries by vCPU.
        stats = self.stats('vcpu-hotplugged')
        self.assertEqual((2, 3), (stats['vcpu.current'],
                                  stats['vcpu.maximum']))
        self.assertNotIn('vcpu.1.time', stats)
        self.assertGreater(stats['vcpu.2.time'], 0)
        _reading, usages = self.read()
        usage = usages['vcpu-hotplugged']
        self.assertEqual(stats['vcpu.0.time'] + stats['vcpu.0.wait'] +
                         stats['vcpu.2.time'] + stats['vcpu.2.wait'],
                         usage.vcpu_time_ns)
        self.assertFalse(usage.vcpu_time_fallback)
        self.assertEqual(stats['cpu.time'], usage.cpu_time_ns)

    def test_paused_guest_keeps_its_counters(self):
        _reading, usages = self.read()
        stats, usage = self.stats('paused'), usages['paused']
        self.assertEqual(stats['cpu.time'], usage.cpu_time_ns)
        self.assertEqual(stats['vcpu.0.time'] + stats['vcpu.0.wait'],
                         usage.vcpu_time_ns)
        (disk,) = usage.disks
        self.assertDiskCounters(disk, stats, 0)
        (iface,) = usage.interfaces
        self.assertInterfaceCounters(iface, stats, 0)

    def test_shut_off_guest_has_no_counters(self):
        stats = self.stats('shutoff')
        # libvirt 9.0 fills the cpu group of a shut-off domain (with
        # libvirtd's own CPU time) and lists its disks: none of it is the
        # guest's usage.
        self.assertIn('cpu.time', stats)
        self.assertEqual('vda', stats['block.0.name'])
        _reading, usages = self.read()
        usage = usages['shutoff']
        self.assertIsNone(usage.cpu_time_ns)
        self.assertIsNone(usage.vcpu_time_ns)
        self.assertEqual([], usage.disks)
        self.assertEqual([], usage.interfaces)

    def test_every_reading_holds_every_kind(self):
        _reading, usages = self.read()
        for role in NOVA_ROLES:
            self.assertEqual(frozenset(base.ALL_KINDS), usages[role].kinds)


class TestBalloonCycle(RecordedTestCase):
    """A full cycle plus the balloon group, for the memory meters."""

    recording_name = 'balloon'
    kinds = base.EVERY_KIND

    def test_memory_of_guests_without_a_balloon_driver(self):
        reading, usages = self.read()
        self.assertTrue(reading.complete)
        self.assertIsNone(usages['not-nova'])
        for role in ('running', 'paused', 'vcpu-hotplugged'):
            stats, usage = self.stats(role), usages[role]
            self.assertEqual(frozenset(base.EVERY_KIND), usage.kinds)
            # No-OS guests: the balloon's size and QEMU's resident memory,
            # nothing the guest itself reports.
            self.assertNotIn('balloon.available', stats)
            self.assertEqual(stats['balloon.current'],
                             usage.memory.actual_kib)
            self.assertEqual(stats['balloon.rss'], usage.memory.rss_kib)
            self.assertIsNone(usage.memory.available_kib)
            self.assertIsNone(usage.memory.usable_kib)
            self.assertIsNone(usage.memory.unused_kib)
            # So no memory.available or memory.usage: absent, never 0.
            self.assertIsNone(usage.memory.available_mb)
            self.assertIsNone(usage.memory.used_mb)
        # The other groups are read as in a cycle without the balloon.
        stats, usage = self.stats('running'), usages['running']
        self.assertEqual(stats['cpu.time'], usage.cpu_time_ns)
        vda, vdb = usage.disks
        self.assertDiskCounters(vda, stats, 0)
        self.assertDiskCounters(vdb, stats, 1)
        first, second = usage.interfaces
        self.assertInterfaceCounters(first, stats, 0)
        self.assertInterfaceCounters(second, stats, 1)

    def test_image_from_the_recorded_xml(self):
        _reading, usages = self.read()
        for role in NOVA_ROLES:
            xml = self.entry(role)['xml']
            (recorded,) = re.findall(
                r':root type="image" uuid="([^"]+)"', xml)
            self.assertEqual(recorded, usages[role].image_ref)
        self.assertEqual('d6b2c5d1-1e30-4df3-8eca-9240dbeb6e2c',
                         usages['running'].image_ref)

    def test_shut_off_guest_has_no_memory(self):
        # libvirt fills the balloon's size from the definition.
        self.assertIn('balloon.current', self.stats('shutoff'))
        _reading, usages = self.read()
        self.assertIsNone(usages['shutoff'].memory)
        self.assertNotIn(base.MEMORY, usages['shutoff'].kinds)

    def test_power_state_as_ceilometer_reports_it(self):
        _reading, usages = self.read()
        for role in ('running', 'paused', 'shutoff', 'vcpu-hotplugged'):
            self.assertEqual(self.stats(role)['state.state'],
                             usages[role].hypervisor_state)
        self.assertEqual(libvirt.VIR_DOMAIN_SHUTOFF,
                         usages['shutoff'].hypervisor_state)


class TestCpuCycle(RecordedTestCase):
    """A steady cycle asking for CPU time only."""

    recording_name = 'cpu'
    kinds = (base.CPU,)

    def test_cpu_only(self):
        reading, usages = self.read()
        self.assertTrue(reading.complete)
        self.assertIsNone(usages['not-nova'])
        stats, usage = self.stats('running'), usages['running']
        self.assertEqual(stats['cpu.time'], usage.cpu_time_ns)
        self.assertEqual(stats['vcpu.0.time'] + stats['vcpu.0.wait'] +
                         stats['vcpu.1.time'] + stats['vcpu.1.wait'],
                         usage.vcpu_time_ns)
        self.assertFalse(usage.vcpu_time_fallback)
        for role in NOVA_ROLES:
            # No disks or interfaces here means "not read", not "none".
            self.assertEqual({base.CPU}, usages[role].kinds)
            self.assertEqual([], usages[role].disks)
            self.assertEqual([], usages[role].interfaces)
        self.assertEqual(self.entry('running')['id'],
                         usages['running'].generation)


class TestInterfaceCycle(RecordedTestCase):
    """A steady cycle asking for interface counters only."""

    recording_name = 'interfaces'
    kinds = (base.INTERFACES,)

    def test_interfaces_only(self):
        reading, usages = self.read()
        self.assertTrue(reading.complete)
        stats, usage = self.stats('running'), usages['running']
        first, second = usage.interfaces
        self.assertInterfaceCounters(first, stats, 0)
        self.assertInterfaceCounters(second, stats, 1)
        self.assertEqual([], usage.disks)
        for role in NOVA_ROLES:
            self.assertEqual({base.INTERFACES}, usages[role].kinds)
            # No CPU group asked for: no CPU time, and no claim that the
            # process's time stands in for the vCPUs'.
            self.assertIsNone(usages[role].cpu_time_ns)
            self.assertIsNone(usages[role].vcpu_time_ns)
            self.assertFalse(usages[role].vcpu_time_fallback)


class TestDiskCycle(RecordedTestCase):
    """A steady cycle asking for disk counters only."""

    recording_name = 'disks'
    kinds = (base.DISKS,)

    def test_disks_only(self):
        reading, usages = self.read()
        self.assertTrue(reading.complete)
        stats, usage = self.stats('running'), usages['running']
        vda, vdb = usage.disks
        self.assertDiskCounters(vda, stats, 0)
        self.assertDiskCounters(vdb, stats, 1)
        self.assertEqual(VOLUME_ID, vdb.volume_id)
        self.assertEqual([], usage.interfaces)
        for role in NOVA_ROLES:
            self.assertEqual({base.DISKS}, usages[role].kinds)
            self.assertIsNone(usages[role].cpu_time_ns)
            self.assertFalse(usages[role].vcpu_time_fallback)


class TestBusyDisk(RecordedTestCase):
    """A full cycle while another client held a job on the running guest:
    under NOWAIT libvirt names its disks but gives no counters."""

    recording_name = 'busy-disk'

    def test_busy_disks_are_not_read_and_the_rest_is(self):
        stats = self.stats('running')
        self.assertEqual(2, stats['block.count'])
        self.assertEqual(('vda', 'vdb'), (stats['block.0.name'],
                                          stats['block.1.name']))
        self.assertNotIn('block.0.rd.reqs', stats)
        reading, usages = self.read()
        # The instance was read, without its disks: the host read is
        # complete, and the reading says its disks were not read.
        self.assertTrue(reading.complete)
        usage = usages['running']
        self.assertEqual({base.CPU, base.INTERFACES}, usage.kinds)
        self.assertEqual([], usage.disks)
        self.assertEqual(stats['cpu.time'], usage.cpu_time_ns)
        first, second = usage.interfaces
        self.assertInterfaceCounters(first, stats, 0)
        self.assertInterfaceCounters(second, stats, 1)
        # The guests nobody held are read in full.
        for role in ('paused', 'vcpu-hotplugged'):
            self.assertEqual(frozenset(base.ALL_KINDS), usages[role].kinds)
            (disk,) = usages[role].disks
            self.assertDiskCounters(disk, self.stats(role), 0)


class TestMissingVcpuEntries(RecordedTestCase):
    """DERIVED: all-kinds with vCPU 1's entries removed from the running
    guest, so the entries no longer add up to vcpu.current."""

    recording_name = 'vcpu-missing-derived'

    def test_falls_back_to_the_process_cpu_time(self):
        derived = self.recording['derived']
        self.assertEqual('all-kinds.json', derived['from'])
        self.assertEqual(self.entry('running')['uuid'], derived['domain'])
        stats = self.stats('running')
        self.assertEqual(2, stats['vcpu.current'])
        self.assertNotIn('vcpu.1.time', stats)
        _reading, usages = self.read()
        usage = usages['running']
        self.assertEqual(stats['cpu.time'], usage.cpu_time_ns)
        self.assertEqual(stats['cpu.time'], usage.vcpu_time_ns)
        self.assertTrue(usage.vcpu_time_fallback)
        self.assertEqual(frozenset(base.ALL_KINDS), usage.kinds)
        self.assertFalse(usages['vcpu-hotplugged'].vcpu_time_fallback)


class TestInterfaceWithoutCounters(RecordedTestCase):
    """DERIVED in the test: all-kinds with the running guest's first
    interface named and its counters left out, as libvirt 9.0 answers when
    it could not read them (seen once in CI, on a paused guest), and an
    interface without a host-side device (SR-IOV: neither name nor
    counters)."""

    recording_name = 'all-kinds'

    def test_named_without_counters_is_kept_without_them(self):
        stats = self.stats('running')
        for key in [k for k in stats if k.startswith('net.0.') and
                    k != 'net.0.name']:
            del stats[key]
        _reading, usages = self.read()
        usage = usages['running']
        self.assertEqual(frozenset(base.ALL_KINDS), usage.kinds)
        first, second = usage.interfaces
        self.assertEqual(stats['net.0.name'], first.name)
        for name in base.INTERFACE_COUNTERS:
            self.assertIsNone(getattr(first, name))
        self.assertInterfaceCounters(second, stats, 1)

    def test_without_a_host_side_device_is_left_out(self):
        stats = self.stats('running')
        stats['net.count'] += 1
        _reading, usages = self.read()
        usage = usages['running']
        self.assertEqual(frozenset(base.ALL_KINDS), usage.kinds)
        self.assertEqual([stats['net.0.name'], stats['net.1.name']],
                         [i.name for i in usage.interfaces])


class TestZeroVcpuTime(RecordedTestCase):
    """DERIVED in the test: all-kinds with the running guest's vCPU 0 time
    set to 0 in one reply, as libvirt 9.0 now and then answers for a vCPU
    that has run (seen on this project's functional guests)."""

    recording_name = 'all-kinds'

    def set_vcpu_times(self, change):
        stats = self.stats('running')
        for index in range(stats['vcpu.maximum']):
            key = 'vcpu.%d.time' % index
            if key in stats:
                stats[key] = change(stats[key])

    def test_a_zero_between_two_readings_is_never_billed_twice(self):
        from nova_usage_ext import ledger
        from nova_usage_ext import state
        book = ledger.Ledger(state.Store(None))
        uuid = self.entry('running')['uuid']
        second = 10 ** 9
        original = dict(self.stats('running'))

        _reading, usages = self.read()
        book.update_one(usages['running'])
        self.assertFalse(usages['running'].vcpu_time_fallback)
        # The glitch: vCPU 0 reads 0. The reading holds no CPU time (not
        # the process's standing in: a jump in ceilometer's cumulative cpu
        # meter), and its other counters.
        self.stats('running')['vcpu.0.time'] = 0
        _reading, usages = self.read()
        glitch = usages['running']
        self.assertIsNone(glitch.vcpu_time_ns)
        self.assertIsNone(glitch.cpu_time_ns)
        self.assertFalse(glitch.vcpu_time_fallback)
        self.assertEqual({base.DISKS, base.INTERFACES}, glitch.kinds)
        book.update_one(glitch)
        # Then each vCPU ran one more second.
        self.stats('running').update(original)
        self.set_vcpu_times(lambda t: t + second)
        _reading, usages = self.read()
        book.update_one(usages['running'])
        vcpus = original['vcpu.current']
        self.assertEqual(vcpus * second, book.totals(uuid).vcpu_time_ns)


class TestOneParsePerProcess(RecordedTestCase):
    """DERIVED in the test: the running guest of all-kinds with a config
    drive (a cdrom, which libvirt's block stats list), then a volume
    attached."""

    recording_name = 'all-kinds'

    def setUp(self):
        super().setUp()
        self.add_disk("<disk type='file' device='cdrom'>"
                      "<source file='/d/disk.config'/>"
                      "<target dev='hdd' bus='ide'/><readonly/></disk>",
                      'hdd', reqs=3, read=9)
        self.parses = []
        real = RecordedDomain.XMLDesc

        def xml(dom, flags=0):
            self.parses.append(dom.entry['role'])
            return real(dom, flags)
        self.useFixture(fixtures.MockPatchObject(RecordedDomain, 'XMLDesc',
                                                 xml))

    def add_disk(self, xml, name, reqs, read):
        """A disk in the running guest's XML and in its stats reply."""
        entry = self.entry('running')
        entry['xml'] = entry['xml'].replace('</devices>',
                                            xml + '</devices>', 1)
        stats = self.stats('running')
        n = stats['block.count']
        stats.update({'block.count': n + 1, 'block.%d.name' % n: name,
                      'block.%d.rd.reqs' % n: reqs,
                      'block.%d.rd.bytes' % n: read,
                      'block.%d.wr.reqs' % n: 0, 'block.%d.wr.bytes' % n: 0})

    def test_a_config_drive_costs_no_parse_and_the_vcpu_history_stays(self):
        for _ in range(3):
            _reading, usages = self.read()
        # One parse of each domain: the cdrom is a known device.
        self.assertEqual(1, self.parses.count('running'))
        self.assertEqual(['vda', 'vdb'],
                         [d.device for d in usages['running'].disks])
        # A volume attached: the XML is parsed again, the process's vCPU
        # history stays with it.
        self.add_disk("<disk type='block' device='disk'>"
                      "<source dev='/dev/sdz'/>"
                      "<target dev='vdc' bus='virtio'/></disk>",
                      'vdc', reqs=1, read=512)
        self.stats('running')['vcpu.0.time'] = 0
        _reading, usages = self.read()
        self.assertEqual(2, self.parses.count('running'))
        self.assertIn('vdc', [d.device for d in usages['running'].disks])
        self.assertIsNone(usages['running'].vcpu_time_ns)


class TestReadInstance(RecordedTestCase):
    """One instance through domainListGetStats, the same parsing."""

    recording_name = 'all-kinds'

    def test_read_one_instance(self):
        entry = self.entry('running')
        usage = self.reader.read_instance(entry['uuid'])
        stats = entry['stats']
        self.assertEqual(entry['id'], usage.generation)
        self.assertEqual(stats['cpu.time'], usage.cpu_time_ns)
        vda, vdb = usage.disks
        self.assertDiskCounters(vda, stats, 0)
        self.assertDiskCounters(vdb, stats, 1)
        first, second = usage.interfaces
        self.assertInterfaceCounters(first, stats, 0)
        self.assertInterfaceCounters(second, stats, 1)
        self.assertEqual(frozenset(base.ALL_KINDS), usage.kinds)

    def test_not_nova_instance_is_not_found(self):
        self.assertRaises(base.InstanceNotFound, self.reader.read_instance,
                          self.entry('not-nova')['uuid'])


class TestReadInstanceCpuOnly(RecordedTestCase):

    recording_name = 'cpu'

    def test_read_one_instance_without_devices(self):
        entry = self.entry('paused')
        usage = self.reader.read_instance(entry['uuid'], devices=False)
        self.assertEqual('paused', usage.state_name)
        self.assertEqual(entry['stats']['cpu.time'], usage.cpu_time_ns)
        self.assertEqual({base.CPU}, usage.kinds)
        self.assertEqual([], usage.disks)
