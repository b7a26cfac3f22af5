"""The libvirt reader against libvirt's own test driver (in process)."""

import logging
import re

import fixtures
import libvirt
import testtools

from nova_usage_ext.virt import base
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_calls
from tests import libvirt_node


def _uuid(index):
    return '00000000-0000-0000-0000-%012x' % (index + 1)


class ReaderTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.DEBUG))

    def make_node(self, *domains):
        return self.useFixture(libvirt_node.TestNode(list(domains)))

    def make_reader(self, node):
        return libvirt_usage.LibvirtUsageReader(node.connection)

    def spy_on_bulk_calls(self, node):
        """The (stats, flags) of each getAllDomainStats call, as made."""
        seen = []
        real = node.conn.getAllDomainStats

        def spy(stats, flags=0):
            seen.append((stats, flags))
            return real(stats, flags)

        self.useFixture(fixtures.MockPatchObject(
            node.conn, 'getAllDomainStats', side_effect=spy))
        return seen


class TestNovaInstanceFilter(ReaderTestCase):

    def test_only_domains_with_nova_metadata_are_reported(self):
        node = self.make_node(
            libvirt_node.nova_test_domain(0),
            libvirt_node.nova_test_domain(1, namespace=libvirt_node.NS_1_0),
            libvirt_node.domain_xml('not-nova', disks=[
                ('vda', '/srv/x.img', None)]),
            libvirt_node.domain_xml(
                'foreign-namespace',
                metadata='<app:vm xmlns:app="http://example.com/app/1"/>'),
        )
        usages = self.make_reader(node).read_all()
        self.assertEqual({_uuid(0), _uuid(1)}, {u.uuid for u in usages})

    def test_metadata_fields_from_both_namespaces(self):
        for namespace in (libvirt_node.NS_1_1, libvirt_node.NS_1_0):
            node = self.make_node(libvirt_node.nova_test_domain(
                7, namespace=namespace, display_name='web <1>',
                flavor='m1.small', vcpus=2, memory_mb=2048,
                user_id='u' * 32, project_id='p' * 32))
            (usage,) = self.make_reader(node).read_all()
            self.assertEqual('web <1>', usage.display_name)
            self.assertEqual('instance-00000007', usage.name)
            self.assertEqual('p' * 32, usage.project_id)
            self.assertEqual('u' * 32, usage.user_id)
            self.assertEqual('m1.small', usage.flavor.name)
            self.assertEqual(2048, usage.memory_mb)
            self.assertEqual(1, usage.vcpus)  # from <vcpu>, what runs

    def test_flavor_id_and_image_as_nova_records_them(self):
        xml = libvirt_node.nova_test_domain(3)
        image = re.search(r'<nova:root type="image" uuid="([^"]+)"',
                          xml).group(1)
        # nova 34 writes the flavor's id beside its name.
        node = self.make_node(xml.replace(
            '<nova:flavor name="m1.tiny">',
            '<nova:flavor name="m1.tiny" id="42">'))
        (usage,) = self.make_reader(node).read_all()
        self.assertEqual(image, usage.image_ref)
        self.assertEqual('42', usage.flavor.id)
        # Booted from a volume, and a flavor without an id (older nova).
        node = self.make_node(re.sub(r'<nova:root [^>]*/>', '',
                                     libvirt_node.nova_test_domain(4)))
        (usage,) = self.make_reader(node).read_all()
        self.assertIsNone(usage.image_ref)
        self.assertIsNone(usage.flavor.id)

    def test_malformed_metadata_is_skipped_and_logged_once(self):
        broken = ('<nova:instance xmlns:nova="%s"><nova:name>x</nova:name>'
                  '</nova:instance>' % libvirt_node.NS_1_1)
        node = self.make_node(
            libvirt_node.nova_test_domain(0),
            libvirt_node.domain_xml('broken', metadata=broken))
        reader = self.make_reader(node)
        for _ in range(3):
            self.assertEqual([_uuid(0)], [u.uuid for u in reader.read_all()])
        self.assertEqual(1, self.log.output.count('malformed nova metadata'))
        self.assertIn('owner/user@uuid', self.log.output)

    def test_non_nova_domain_logged_once(self):
        node = self.make_node(libvirt_node.domain_xml('plain'))
        reader = self.make_reader(node)
        for _ in range(3):
            self.assertEqual([], reader.read_all())
        self.assertEqual(1, self.log.output.count('has no nova metadata'))


class TestCounters(ReaderTestCase):

    def test_per_domain_fallback_reads_real_counters(self):
        node = self.make_node(
            libvirt_node.nova_test_domain(0, n_disks=2, n_nics=2))
        dom = node.conn.lookupByUUIDString(_uuid(0))
        before_disk = dom.blockStats('vdb')
        before_net = dom.interfaceStats('tap00000000-01')
        before_cpu = dom.info()[4]
        (usage,) = self.make_reader(node).read_all()
        after_disk = dom.blockStats('vdb')
        after_net = dom.interfaceStats('tap00000000-01')
        after_cpu = dom.info()[4]

        self.assertEqual(base.RUNNING, usage.state)
        self.assertEqual('running', usage.state_name)
        self.assertTrue(before_cpu <= usage.cpu_time_ns <= after_cpu)
        # No per-vCPU times per domain: the process's stands in.
        self.assertEqual(usage.cpu_time_ns, usage.vcpu_time_ns)
        self.assertEqual(['vda', 'vdb'], [d.device for d in usage.disks])
        disk = usage.disk('vdb')
        for index, attr in enumerate(('read_requests', 'read_bytes',
                                      'write_requests', 'write_bytes')):
            self.assertTrue(
                before_disk[index] <= getattr(disk, attr) <=
                after_disk[index], attr)
        self.assertEqual(dom.blockInfo('vdb')[0], disk.capacity_bytes)
        iface = usage.interface('fa:16:3e:00:00:01')
        self.assertEqual('tap00000000-01', iface.name)
        for index, attr in enumerate(('rx_bytes', 'rx_packets', 'rx_errors',
                                      'rx_drops', 'tx_bytes', 'tx_packets',
                                      'tx_errors', 'tx_drops')):
            self.assertTrue(
                before_net[index] <= getattr(iface, attr) <=
                after_net[index], attr)

    def test_fallback_is_announced_once(self):
        node = self.make_node(libvirt_node.nova_test_domain(0))
        reader = self.make_reader(node)
        reader.read_all()
        reader.read_all()
        self.assertEqual(1, self.log.output.count('no bulk counters'))

    def test_volume_id_from_disk_serial(self):
        volume = '8e1f7a2b-3c4d-4e5f-9a6b-7c8d9e0f1a2b'
        node = self.make_node(libvirt_node.domain_xml(
            'instance-00000001', _uuid(0), libvirt_node.nova_metadata(),
            disks=[('vda', '/var/lib/nova/disk', None),
                   ('vdb', '/dev/sdx', volume)]))
        (usage,) = self.make_reader(node).read_all()
        self.assertIsNone(usage.disk('vda').volume_id)
        self.assertEqual(volume, usage.disk('vdb').volume_id)

    def test_shut_off_instance_reported_without_counters(self):
        node = self.make_node(libvirt_node.nova_test_domain(0),
                              libvirt_node.nova_test_domain(1))
        node.conn.lookupByUUIDString(_uuid(1)).destroy()
        usages = {u.uuid: u for u in self.make_reader(node).read_all()}
        stopped = usages[_uuid(1)]
        self.assertEqual('shutdown', stopped.state_name)
        # What ceilometer's power.state reports: libvirt's own code.
        self.assertEqual(libvirt.VIR_DOMAIN_SHUTOFF, stopped.hypervisor_state)
        self.assertEqual(libvirt.VIR_DOMAIN_RUNNING,
                         usages[_uuid(0)].hypervisor_state)
        self.assertIsNone(stopped.cpu_time_ns)
        self.assertEqual([], stopped.disks)
        self.assertEqual([], stopped.interfaces)
        self.assertIsNotNone(usages[_uuid(0)].cpu_time_ns)


class TestBulkCall(ReaderTestCase):

    def test_one_bulk_call_with_only_the_needed_groups_and_nowait(self):
        node = self.make_node(libvirt_node.nova_test_domain(0))
        seen = self.spy_on_bulk_calls(node)
        self.make_reader(node).read_all()
        self.assertEqual(1, len(seen))
        stats, flags = seen[0]
        self.assertEqual(libvirt.VIR_DOMAIN_STATS_STATE |
                         libvirt.VIR_DOMAIN_STATS_CPU_TOTAL |
                         libvirt.VIR_DOMAIN_STATS_VCPU |
                         libvirt.VIR_DOMAIN_STATS_INTERFACE |
                         libvirt.VIR_DOMAIN_STATS_BLOCK, stats)
        self.assertTrue(flags &
                        libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)
        # The balloon group queries the guest: never asked for.
        self.assertFalse(stats & libvirt.VIR_DOMAIN_STATS_BALLOON)

    def test_xml_parsed_once_per_domain_across_cycles(self):
        node = self.make_node(libvirt_node.nova_test_domain(0),
                              libvirt_node.nova_test_domain(1),
                              libvirt_node.domain_xml('plain'))
        counting = libvirt_calls.CountingConnection(node.conn)
        reader = libvirt_usage.LibvirtUsageReader(
            libvirt_calls.StaticConnection(counting))
        for _ in range(4):
            self.assertEqual(2, len(reader.read_all()))
        self.assertEqual(3, counting.calls['domain.XMLDesc'])
        self.assertEqual(4, counting.calls['getAllDomainStats'])

    def test_restarted_domain_is_parsed_again(self):
        node = self.make_node(libvirt_node.nova_test_domain(0))
        reader = self.make_reader(node)
        self.assertEqual('m1.tiny', reader.read_all()[0].flavor.name)
        # A resize redefines the guest with new metadata and restarts it.
        dom = node.conn.lookupByUUIDString(_uuid(0))
        dom.destroy()
        node.conn.defineXML(libvirt_node.nova_test_domain(0, flavor='m1.big'))
        dom.create()
        self.assertEqual('m1.big', reader.read_all()[0].flavor.name)

    def test_unsupported_bulk_api_falls_back_to_listing(self):
        node = self.make_node(libvirt_node.nova_test_domain(0))
        dom = node.conn.lookupByUUIDString(_uuid(0))

        def unsupported(stats, flags=0):
            # The test driver has no blockStatsFlags: a genuine
            # VIR_ERR_NO_SUPPORT from libvirt.
            return dom.blockStatsFlags('vda')

        self.useFixture(fixtures.MockPatchObject(
            node.conn, 'getAllDomainStats', side_effect=unsupported))
        reader = self.make_reader(node)
        (usage,) = reader.read_all()
        self.assertIsNotNone(usage.cpu_time_ns)
        self.assertEqual(1, len(usage.disks))
        reader.read_all()
        self.assertEqual(1, self.log.output.count('has no bulk stats API'))


class TestVcpuTime(testtools.TestCase):
    """ceilometer's cpu meter: each vCPU's time plus wait, all or none."""

    def test_sum_of_time_and_wait(self):
        self.assertEqual(10 + 1 + 20 + 2, libvirt_usage.vcpu_time({
            'vcpu.current': 2, 'vcpu.maximum': 4,
            'vcpu.0.time': 10, 'vcpu.0.wait': 1,
            'vcpu.1.time': 20, 'vcpu.1.wait': 2}))

    def test_holes_are_skipped(self):
        self.assertEqual(33, libvirt_usage.vcpu_time({
            'vcpu.current': 2, 'vcpu.maximum': 3,
            'vcpu.0.time': 10, 'vcpu.0.wait': 1,
            'vcpu.2.time': 20, 'vcpu.2.wait': 2}))

    def test_zero_for_a_vcpu_that_ran_in_this_process_is_unread(self):
        def reply(time0):
            # What libvirt 9.0 gave for a running vCPU that had run 10 ms,
            # in 2 of 45,752 reads while other clients read the same
            # guests (time0 0).
            return {'vcpu.current': 1, 'vcpu.maximum': 1, 'vcpu.0.state': 1,
                    'vcpu.0.time': time0, 'vcpu.0.wait': 0,
                    'vcpu.0.delay': 10149739, 'cpu.time': 274484000}
        ran = set()
        # A new process: 0 until its first tick, a value.
        self.assertEqual(0, libvirt_usage.vcpu_time(reply(0), ran))
        self.assertEqual(10000000, libvirt_usage.vcpu_time(reply(10000000),
                                                           ran))
        self.assertIs(libvirt_usage.VCPU_UNREAD,
                      libvirt_usage.vcpu_time(reply(0), ran))
        self.assertEqual(10000000, libvirt_usage.vcpu_time(reply(10000000),
                                                           ran))
        # Without the history (a reader's first reply): a value.
        self.assertEqual(0, libvirt_usage.vcpu_time(reply(0)))

    def test_incomplete_is_absent(self):
        self.assertIsNone(libvirt_usage.vcpu_time({
            'vcpu.current': 2, 'vcpu.maximum': 2,
            'vcpu.0.time': 10, 'vcpu.0.wait': 1, 'vcpu.1.time': 20}))
        self.assertIsNone(libvirt_usage.vcpu_time({'cpu.time': 5}))


class TestFailures(ReaderTestCase):

    def test_domain_vanishing_between_listing_and_reading(self):
        node = self.make_node(libvirt_node.nova_test_domain(0),
                              libvirt_node.nova_test_domain(1))
        conn = node.conn
        real = conn.getAllDomainStats

        def list_then_delete(stats, flags=0):
            result = real(stats, flags)
            gone = conn.lookupByUUIDString(_uuid(1))
            gone.destroy()
            gone.undefine()
            return result

        self.useFixture(fixtures.MockPatchObject(
            conn, 'getAllDomainStats', side_effect=list_then_delete))
        usages = self.make_reader(node).read_all()
        self.assertEqual([_uuid(0)], [u.uuid for u in usages])
        self.assertIn('vanished', self.log.output)

    def test_dropped_connection_is_reopened_next_cycle(self):
        node = self.make_node(libvirt_node.nova_test_domain(0))
        reader = self.make_reader(node)
        self.assertEqual(1, len(reader.read_all()))
        node.conn.close()  # the connection dies under the reader
        self.assertEqual(1, len(reader.read_all()))
        self.assertIn('connection to %s was lost' % node.uri,
                      self.log.output)

    def test_connection_error_mid_cycle_raises_ours_then_recovers(self):
        node = self.make_node(libvirt_node.nova_test_domain(0))
        static = libvirt_calls.StaticConnection(node.conn)
        reader = libvirt_usage.LibvirtUsageReader(static)
        static.conn.close()
        exc = self.assertRaises(base.HypervisorUnavailable, reader.read_all)
        self.assertIn('libvirt failed to list domains', str(exc))
        self.assertEqual(1, static.resets)
        static.conn = node.connection.get()
        self.assertEqual(1, len(reader.read_all()))

    def test_unreachable_hypervisor(self):
        connection = libvirt_usage.LibvirtConnection(
            'qemu+unix:///system?socket=/nonexistent/libvirt-sock')
        reader = libvirt_usage.LibvirtUsageReader(connection)
        exc = self.assertRaises(base.HypervisorUnavailable, reader.read_all)
        self.assertIn('cannot connect to libvirt', str(exc))


class TestReadInstance(ReaderTestCase):

    def test_read_one_instance(self):
        node = self.make_node(libvirt_node.nova_test_domain(0),
                              libvirt_node.nova_test_domain(1))
        usage = self.make_reader(node).read_instance(_uuid(1))
        self.assertEqual(_uuid(1), usage.uuid)
        self.assertEqual(1, len(usage.disks))
        self.assertEqual(1, len(usage.interfaces))

    def test_read_one_instance_without_devices(self):
        node = self.make_node(libvirt_node.nova_test_domain(0))
        usage = self.make_reader(node).read_instance(_uuid(0), devices=False)
        self.assertIsNotNone(usage.cpu_time_ns)
        self.assertEqual([], usage.disks)

    def test_unknown_and_foreign_instances_are_not_found(self):
        node = self.make_node(libvirt_node.domain_xml('plain', _uuid(5)))
        reader = self.make_reader(node)
        self.assertRaises(base.InstanceNotFound, reader.read_instance,
                          _uuid(5))
        self.assertRaises(base.InstanceNotFound, reader.read_instance,
                          _uuid(6))


class TestKinds(ReaderTestCase):

    def test_groups_asked_for_follow_the_kinds(self):
        node = self.make_node(libvirt_node.nova_test_domain(0))
        calls = self.spy_on_bulk_calls(node)
        reader = self.make_reader(node)
        (usage,) = reader.read_all((base.CPU,))
        self.assertEqual(libvirt.VIR_DOMAIN_STATS_STATE |
                         libvirt.VIR_DOMAIN_STATS_CPU_TOTAL |
                         libvirt.VIR_DOMAIN_STATS_VCPU, calls[0][0])
        # The per-domain fallback reads only what was asked too.
        self.assertIsNotNone(usage.cpu_time_ns)
        self.assertEqual([], usage.disks)
        self.assertEqual([], usage.interfaces)
        # ...and says so: no disks here is "not read", not "none".
        self.assertEqual({base.CPU}, usage.kinds)
        self.assertIsNone(usage.memory)
        (usage,) = reader.read_all((base.DISKS,))
        self.assertEqual({base.CPU, base.DISKS}, usage.kinds)
        self.assertEqual(libvirt.VIR_DOMAIN_STATS_STATE |
                         libvirt.VIR_DOMAIN_STATS_BLOCK, calls[1][0])
        self.assertEqual(['vda'], [d.device for d in usage.disks])
        self.assertEqual([], usage.interfaces)

    def test_memory_only_when_asked_for(self):
        # nova gives every guest a virtio balloon, which the test driver
        # needs to answer memoryStats().
        node = self.make_node(libvirt_node.nova_test_domain(0).replace(
            '</devices>', "<memballoon model='virtio'/></devices>"))
        calls = self.spy_on_bulk_calls(node)
        reader = self.make_reader(node)
        (usage,) = reader.read_all(base.ALL_KINDS)
        self.assertFalse(calls[0][0] & libvirt.VIR_DOMAIN_STATS_BALLOON)
        self.assertNotIn(base.MEMORY, usage.kinds)
        self.assertIsNone(usage.memory)
        (usage,) = reader.read_all((base.CPU, base.MEMORY))
        self.assertEqual(libvirt.VIR_DOMAIN_STATS_STATE |
                         libvirt.VIR_DOMAIN_STATS_CPU_TOTAL |
                         libvirt.VIR_DOMAIN_STATS_VCPU |
                         libvirt.VIR_DOMAIN_STATS_BALLOON, calls[1][0])
        self.assertEqual({base.CPU, base.MEMORY}, usage.kinds)
        # The test driver fills no balloon group: the per-domain fallback
        # reads memoryStats(), in KiB.
        stats = node.conn.lookupByUUIDString(_uuid(0)).memoryStats()
        memory = usage.memory
        self.assertEqual(stats['actual'], memory.actual_kib)
        self.assertEqual(stats['available'], memory.available_kib)
        self.assertEqual(stats['usable'], memory.usable_kib)
        self.assertEqual(stats['unused'], memory.unused_kib)
        self.assertEqual(stats['rss'], memory.rss_kib)
        # Ceilometer's memory.available and memory.usage, in MiB.
        self.assertEqual(stats['available'] / 1024, memory.available_mb)
        self.assertEqual((stats['available'] - stats['usable']) / 1024,
                         memory.used_mb)
        self.assertGreater(memory.used_mb, 0)

    def test_guest_without_balloon_stats_has_no_memory_figures(self):
        node = self.make_node(libvirt_node.nova_test_domain(0))
        self.assertEqual({}, node.conn.lookupByUUIDString(
            _uuid(0)).memoryStats())
        (usage,) = self.make_reader(node).read_all(base.EVERY_KIND)
        self.assertIn(base.MEMORY, usage.kinds)
        self.assertIsNone(usage.memory.available_mb)
        self.assertIsNone(usage.memory.used_mb)
        self.assertIsNone(usage.memory.actual_kib)


class NovaLikeHost:
    """What the mixin uses of nova's libvirt Host."""

    def __init__(self, conn):
        self.conn = conn

    def get_connection(self):
        if self.conn is None:
            raise RuntimeError('nova: libvirt is down')  # not libvirt's
        return self.conn


class TestOnNovasConnection(ReaderTestCase):
    """The reader nova's driver gets: nova's Host owns the connection and
    its lifecycle events."""

    def driver(self, conn):
        class NovaLikeDriver(libvirt_usage.LibvirtUsageMixin):
            _host = NovaLikeHost(conn)

        return NovaLikeDriver()

    def test_no_lifecycle_callback_of_its_own_on_novas_connection(self):
        node = self.make_node(*[libvirt_node.nova_test_domain(i)
                                for i in range(8)])
        counting = libvirt_calls.CountingConnection(node.conn)
        driver = self.driver(counting)
        driver.get_all_bw_counters([])
        driver.get_all_volume_usage(None, [])
        reader = driver.usage_reader
        self.assertEqual(8, len(reader.read_all()))
        # One full call lists the domains, later reads are split.
        self.assertEqual(1, counting.calls['getAllDomainStats'])
        self.assertEqual(4, counting.calls['domainListGetStats'])
        self.assertNotIn('domainEventRegister', counting.calls)
        self.assertNotIn('domainEventRegisterAny', counting.calls)

    def test_novas_errors_become_the_readers(self):
        driver = self.driver(None)
        exc = self.assertRaises(base.HypervisorUnavailable,
                                driver.usage_reader.read_all)
        self.assertIn('nova has no libvirt connection: nova: libvirt is '
                      'down', str(exc))
        self.assertEqual([], driver.get_all_volume_usage(None, [
            {'instance': None, 'instance_bdms': []}]))
