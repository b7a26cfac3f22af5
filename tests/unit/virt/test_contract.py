"""One contract, every backend: the same tests on libvirt and on Hyper-V.

Each backend fixture builds the same host: two running nova instances
(the first with a local disk, a Cinder volume and two NICs) and one guest
nova did not create. Where the hypervisors differ by design (Hyper-V
records no owner or flavor on its VMs, and counts no disk requests) the
fixture says so, and the tests hold each backend to its own declaration.
"""

import uuid as uuidlib

import fixtures
import testscenarios
import testtools

from nova_usage_ext.virt import base
from nova_usage_ext.virt import hyperv
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_node
from tests.unit.virt import fake_hyperv

UUID0 = '00000000-0000-0000-0000-000000000001'
UUID1 = '00000000-0000-0000-0000-000000000002'
NAMES = {UUID0: 'instance-00000000', UUID1: 'instance-00000001'}
VOLUME = '8e1f7a2b-3c4d-4e5f-9a6b-7c8d9e0f1a2b'
MAC0 = 'fa:16:3e:00:00:01'
MAC1 = 'fa:16:3e:00:00:02'
MAC_OTHER = 'fa:16:3e:00:01:00'
PROJECT = 'p' * 32
USER = 'u' * 32
FLAVOR = 'm1.small'


class Instance:
    """The attributes of nova's Instance that the driver methods use."""

    def __init__(self, uuid):
        self.uuid = uuid
        self.name = NAMES.get(uuid, 'instance-ffffffff')


class LibvirtBackend(fixtures.Fixture):
    knows_owner = True
    counts_requests = True
    disk_id = 'vdb'
    volume_device = '/dev/vdb'
    interface_id = 'tap1'

    def _setUp(self):
        meta = dict(flavor=FLAVOR, project_id=PROJECT, user_id=USER)
        self.node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.domain_xml(
                NAMES[UUID0], UUID0, libvirt_node.nova_metadata(**meta),
                disks=[('vda', '/var/lib/nova/disk', None),
                       ('vdb', '/dev/sdx', VOLUME)],
                interfaces=[('tap0', MAC0), ('tap1', MAC1)]),
            libvirt_node.nova_test_domain(1, **meta),
            libvirt_node.domain_xml('not-nova'),
        ]))
        self.reader = libvirt_usage.LibvirtUsageReader(self.node.connection)
        self.driver = libvirt_usage.LibvirtUsageHost(self.node.connection)

    def stop(self, uuid):
        self.node.conn.lookupByUUIDString(uuid).destroy()


class HyperVBackend(fixtures.Fixture):
    knows_owner = False
    counts_requests = False
    disk_id = 'volume-%s.vhdx' % VOLUME
    volume_device = 'volume-%s.vhdx' % VOLUME
    interface_id = 'port-b'

    def _setUp(self):
        self.host = self.useFixture(fake_hyperv.FakeHyperVFixture()).host
        self.host.add_vm(
            NAMES[UUID0], [UUID0], vcpus=2, cpu_mhz=900,
            disks=[(r'C:\Instances\instance-00000000\root.vhdx', 40, 12),
                   (r'\\smb\volumes\volume-%s.vhdx' % VOLUME, 3, 2)],
            nics=[('port-a', 'FA163E000001', 120, 30),
                  ('port-b', 'FA163E000002', 5, 1)])
        self.host.add_vm(NAMES[UUID1], [UUID1], cpu_mhz=100,
                         disks=[(r'C:\Instances\instance-00000001\root.vhdx',
                                 1, 1)],
                         nics=[('port-c', 'FA163E000100', 2, 2)])
        self.host.add_vm('not-nova', ['a VM made by hand'])
        self.reader = hyperv.HyperVUsageReader()
        self.driver = hyperv.HyperVUsageHost()

    def stop(self, uuid):
        self.host.stop(NAMES[uuid])


# Scenario ids (test_x(libvirt), test_x(hyperv)) in listings too.
load_tests = testscenarios.load_tests_apply_scenarios


class ContractTestCase(testtools.TestCase):

    scenarios = [
        ('libvirt', {'backend_class': LibvirtBackend}),
        ('hyperv', {'backend_class': HyperVBackend}),
    ]

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.FakeLogger())
        self.backend = self.useFixture(self.backend_class())
        self.reader = self.backend.reader
        self.driver = self.backend.driver

    def assertCounter(self, value, what):
        if value is not None:
            self.assertIsInstance(value, int, what)
            self.assertNotIsInstance(value, bool, what)
            self.assertGreaterEqual(value, 0, what)

    def assertCounters(self, usage):
        self.assertCounter(usage.cpu_time_ns, 'cpu_time_ns')
        for disk in usage.disks:
            for field in ('read_bytes', 'read_requests', 'write_bytes',
                          'write_requests', 'errors', 'capacity_bytes'):
                self.assertCounter(getattr(disk, field),
                                   '%s.%s' % (disk.device, field))
        for iface in usage.interfaces:
            for field in ('rx_bytes', 'rx_packets', 'rx_errors', 'rx_drops',
                          'tx_bytes', 'tx_packets', 'tx_errors', 'tx_drops'):
                self.assertCounter(getattr(iface, field),
                                   '%s.%s' % (iface.name, field))


class TestReader(ContractTestCase):

    def test_read_all_reports_only_nova_instances(self):
        reading = self.reader.read_host()
        for usage in reading.usages:
            self.assertIsInstance(usage, base.InstanceUsage)
        self.assertEqual(NAMES, {u.uuid: u.name for u in reading.usages})
        self.assertTrue(reading.complete)

    def test_owner_and_flavor_when_the_hypervisor_keeps_them(self):
        for usage in self.reader.read_all():
            if self.backend.knows_owner:
                self.assertEqual(PROJECT, usage.project_id)
                self.assertEqual(USER, usage.user_id)
                self.assertEqual(FLAVOR, usage.flavor.name)
            else:
                # Absent, never made up.
                self.assertIsNone(usage.project_id)
                self.assertIsNone(usage.user_id)
                self.assertIsNone(usage.flavor)

    def test_counters_are_ints_or_absent(self):
        for _ in range(2):
            for usage in self.reader.read_all():
                self.assertEqual(base.RUNNING, usage.state)
                self.assertIsNotNone(usage.cpu_time_ns)
                self.assertCounters(usage)
        usage = self.reader.read_instance(UUID0)
        self.assertCounters(usage)
        self.assertIsNotNone(usage.disk(self.backend.disk_id).read_bytes)
        self.assertEqual(VOLUME, usage.disk(self.backend.disk_id).volume_id)
        self.assertIsNotNone(usage.interface(MAC1).rx_bytes)
        self.assertEqual(self.backend.interface_id,
                         usage.interface(MAC1).name)

    def test_stopped_instance_has_no_counters(self):
        self.backend.stop(UUID1)
        usages = {u.uuid: u for u in self.reader.read_all()}
        self.assertEqual(base.SHUTDOWN, usages[UUID1].state)
        self.assertIsNone(usages[UUID1].cpu_time_ns)
        self.assertEqual([], usages[UUID1].disks)
        self.assertEqual([], usages[UUID1].interfaces)

    def test_read_instance(self):
        usage = self.reader.read_instance(UUID0)
        self.assertEqual((UUID0, NAMES[UUID0]), (usage.uuid, usage.name))
        self.assertEqual(2, len(usage.interfaces))
        usage = self.reader.read_instance(UUID1, devices=False)
        self.assertIsNotNone(usage.cpu_time_ns)
        self.assertEqual(([], []), (usage.disks, usage.interfaces))

    def test_read_instance_of_unknown_uuid_raises_not_found(self):
        self.assertRaises(base.InstanceNotFound, self.reader.read_instance,
                          str(uuidlib.uuid4()))


class TestDriverMethods(ContractTestCase):

    def test_block_stats(self):
        stats = self.driver.block_stats(Instance(UUID0), self.backend.disk_id)
        self.assertEqual(5, len(stats))
        rd_req, rd_bytes, wr_req, wr_bytes, errs = stats
        for value in (rd_req, rd_bytes, wr_req, wr_bytes):
            self.assertCounter(value, 'block_stats')
        self.assertIsNotNone(rd_bytes)
        self.assertIsNotNone(wr_bytes)
        self.assertIsInstance(errs, int)
        self.assertGreaterEqual(errs, -1)
        self.assertIsNone(self.driver.block_stats(Instance(UUID0), 'nope'))
        self.assertIsNone(self.driver.block_stats(
            Instance(str(uuidlib.uuid4())), self.backend.disk_id))

    def test_interface_stats(self):
        for interface_id in (self.backend.interface_id, MAC1.upper()):
            stats = self.driver.interface_stats(Instance(UUID0),
                                                interface_id)
            self.assertEqual(8, len(stats))
            for value in stats:
                self.assertCounter(value, 'interface_stats')
            self.assertIsNotNone(stats[0])  # rx_bytes
            self.assertIsNotNone(stats[4])  # tx_bytes
        self.assertIsNone(self.driver.interface_stats(Instance(UUID0),
                                                      'nope'))

    def test_get_all_volume_usage(self):
        instance = Instance(UUID0)
        bdms = [{'instance': instance, 'instance_bdms': [
            {'device_name': self.backend.volume_device, 'volume_id': VOLUME},
            {'device_name': '/dev/vdq', 'volume_id': 'detached'}]},
            {'instance': Instance(str(uuidlib.uuid4())), 'instance_bdms': [
                {'device_name': '/dev/vdb', 'volume_id': 'elsewhere'}]}]
        usages = self.driver.get_all_volume_usage(None, bdms)
        for usage in usages:
            self.assertEqual({'volume', 'instance', 'rd_req', 'rd_bytes',
                              'wr_req', 'wr_bytes'}, set(usage))
            for key in ('rd_req', 'rd_bytes', 'wr_req', 'wr_bytes'):
                self.assertIsInstance(usage[key], int, key)
        if self.backend.counts_requests:
            self.assertEqual([(VOLUME, instance)],
                             [(u['volume'], u['instance']) for u in usages])
        else:
            # nova's volume usage needs request counts.
            self.assertEqual([], usages)

    def test_get_all_bw_counters(self):
        counters = self.driver.get_all_bw_counters(
            [Instance(UUID0), Instance(UUID1),
             Instance(str(uuidlib.uuid4()))])
        self.assertEqual([(UUID0, MAC0), (UUID0, MAC1), (UUID1, MAC_OTHER)],
                         [(c['uuid'], c['mac_address']) for c in counters])
        for c in counters:
            self.assertEqual({'uuid', 'mac_address', 'bw_in', 'bw_out'},
                             set(c))
            self.assertCounter(c['bw_in'], 'bw_in')
            self.assertCounter(c['bw_out'], 'bw_out')

    def test_get_info(self):
        info = self.driver.get_info(Instance(UUID0))
        self.assertEqual(base.RUNNING, info.state)
        self.assertIsNotNone(info.cpu_time_ns)
        self.assertCounter(info.cpu_time_ns, 'cpu_time_ns')
        self.backend.stop(UUID1)
        info = self.driver.get_info(Instance(UUID1))
        self.assertEqual(base.SHUTDOWN, info.state)
        self.assertIsNone(info.cpu_time_ns)
        self.assertRaises(base.InstanceNotFound, self.driver.get_info,
                          Instance(str(uuidlib.uuid4())))
