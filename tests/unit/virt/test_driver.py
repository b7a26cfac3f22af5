"""The driver methods, in nova's formats, over libvirt's test driver."""

import types

import fixtures
import testtools

from nova_usage_ext import ledger
from nova_usage_ext import state
from nova_usage_ext import service as usage_service
from nova_usage_ext.virt import base
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_calls
from tests import libvirt_node

VOLUME = '8e1f7a2b-3c4d-4e5f-9a6b-7c8d9e0f1a2b'


def _uuid(index):
    return '00000000-0000-0000-0000-%012x' % (index + 1)


def instance(index):
    """The attributes of nova's Instance that the methods use."""
    return types.SimpleNamespace(uuid=_uuid(index),
                                 name='instance-%08x' % index)


class DriverTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger())
        self.node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.domain_xml(
                'instance-00000000', _uuid(0), libvirt_node.nova_metadata(),
                disks=[('vda', '/var/lib/nova/disk', None),
                       ('vdb', '/dev/sdx', VOLUME)],
                interfaces=[('tap0', 'fa:16:3e:00:00:01'),
                            ('tap1', 'fa:16:3e:00:00:02')]),
            libvirt_node.nova_test_domain(1),
            libvirt_node.domain_xml('not-nova', _uuid(2)),
        ]))
        self.driver = libvirt_usage.LibvirtUsageHost(self.node.connection)

    def dom(self, index):
        return self.node.conn.lookupByUUIDString(_uuid(index))


class TestInterfaceStats(DriverTestCase):

    def test_by_tap_and_by_mac(self):
        for interface_id in ('tap1', 'FA:16:3E:00:00:02'):
            before = self.dom(0).interfaceStats('tap1')
            stats = self.driver.interface_stats(instance(0), interface_id)
            after = self.dom(0).interfaceStats('tap1')
            self.assertEqual(8, len(stats))
            for low, value, high in zip(before, stats, after):
                self.assertTrue(low <= value <= high)

    def test_unknown_interface_or_instance_is_none(self):
        self.assertIsNone(self.driver.interface_stats(instance(0), 'tap9'))
        self.assertIsNone(self.driver.interface_stats(instance(5), 'tap0'))
        self.assertIsNone(self.driver.interface_stats(instance(2), 'tap0'))


class TestBlockStats(DriverTestCase):

    def test_nova_format(self):
        before = self.dom(0).blockStats('vdb')
        stats = self.driver.block_stats(instance(0), 'vdb')
        after = self.dom(0).blockStats('vdb')
        self.assertEqual(5, len(stats))
        for low, value, high in zip(before[:4], stats[:4], after[:4]):
            self.assertTrue(low <= value <= high)

    def test_missing_disk_is_none(self):
        self.assertIsNone(self.driver.block_stats(instance(0), 'vdz'))

    def test_shut_off_instance_is_none(self):
        self.dom(0).destroy()
        self.assertIsNone(self.driver.block_stats(instance(0), 'vda'))


class TestVolumeUsage(DriverTestCase):

    def test_nova_format_from_bdms(self):
        inst0, inst1 = instance(0), instance(1)
        bdms = [
            {'instance': inst0, 'instance_bdms': [
                {'device_name': '/dev/vdb', 'volume_id': VOLUME},
                {'device_name': '/dev/vdq', 'volume_id': 'detached'}]},
            {'instance': instance(7), 'instance_bdms': [
                {'device_name': '/dev/vdb', 'volume_id': 'elsewhere'}]},
            {'instance': inst1, 'instance_bdms': []},
        ]
        before = self.dom(0).blockStats('vdb')
        (usage,) = self.driver.get_all_volume_usage(None, bdms)
        after = self.dom(0).blockStats('vdb')
        self.assertEqual({'volume', 'instance', 'rd_req', 'rd_bytes',
                          'wr_req', 'wr_bytes'}, set(usage))
        self.assertEqual(VOLUME, usage['volume'])
        self.assertIs(inst0, usage['instance'])
        for index, key in enumerate(('rd_req', 'rd_bytes', 'wr_req',
                                     'wr_bytes')):
            self.assertTrue(before[index] <= usage[key] <= after[index], key)

    def test_volume_found_by_its_id_when_the_device_name_is_stale(self):
        bdms = [{'instance': instance(0), 'instance_bdms': [
            {'device_name': '/dev/vdc', 'volume_id': VOLUME}]}]
        (usage,) = self.driver.get_all_volume_usage(None, bdms)
        self.assertEqual(VOLUME, usage['volume'])
        self.assertGreater(usage['rd_bytes'], 0)

    def test_hypervisor_down_gives_empty_list(self):
        driver = libvirt_usage.LibvirtUsageHost(
            libvirt_usage.LibvirtConnection(
                'qemu+unix:///system?socket=/nonexistent/sock'))
        bdms = [{'instance': instance(0), 'instance_bdms': [
            {'device_name': '/dev/vdb', 'volume_id': VOLUME}]}]
        self.assertEqual([], driver.get_all_volume_usage(None, bdms))


class TestBandwidthCounters(DriverTestCase):

    def test_format_nova_used_before_23(self):
        counters = self.driver.get_all_bw_counters(
            [instance(0), instance(1), instance(2), instance(9)])
        self.assertEqual(
            [(_uuid(0), 'fa:16:3e:00:00:01'), (_uuid(0), 'fa:16:3e:00:00:02'),
             (_uuid(1), 'fa:16:3e:00:01:00')],
            [(c['uuid'], c['mac_address']) for c in counters])
        for c in counters:
            self.assertEqual({'uuid', 'mac_address', 'bw_in', 'bw_out'},
                             set(c))
            self.assertGreater(c['bw_in'], 0)
            self.assertGreater(c['bw_out'], 0)


class TestGetInfo(DriverTestCase):

    def test_plain_driver_gets_our_instance_info(self):
        before = self.dom(1).info()[4]
        info = self.driver.get_info(instance(1))
        after = self.dom(1).info()[4]
        self.assertIsInstance(info, base.UsageInstanceInfo)
        self.assertEqual(base.RUNNING, info.state)
        self.assertTrue(before <= info.cpu_time_ns <= after)

    def test_shut_off(self):
        self.dom(1).destroy()
        info = self.driver.get_info(instance(1))
        self.assertEqual(base.SHUTDOWN, info.state)
        self.assertIsNone(info.cpu_time_ns)

    def test_unknown_instance_raises_not_found(self):
        self.assertRaises(base.InstanceNotFound, self.driver.get_info,
                          instance(4))

    def novalike_driver(self, connection):
        class NovaInfo:
            def __init__(self, state):
                self.state = state

        class NovaLikeDriver:
            def get_info(self, instance, use_cache=True):
                if instance.uuid == _uuid(4):
                    raise LookupError('nova: no such instance')
                return NovaInfo(state='from-nova')

        class Driver(libvirt_usage.LibvirtUsageMixin, NovaLikeDriver):
            pass

        driver = Driver()
        driver._usage_reader = libvirt_usage.LibvirtUsageReader(connection)
        return driver, NovaInfo

    def usage_service(self, reader):
        state_dir = self.useFixture(fixtures.TempDir()).path
        cache = ledger.Ledger(state.Store(state_dir))
        svc = usage_service.UsageService(reader, cache, 'compute-1',
                                         {base.CPU: 600})
        usage_service.register(svc)
        self.addCleanup(usage_service.unregister, svc)
        return svc

    def test_on_nova_driver_cpu_time_is_the_last_reading_no_call(self):
        counting = libvirt_calls.CountingConnection(self.node.conn)
        driver, nova_info = self.novalike_driver(
            libvirt_calls.StaticConnection(counting))
        svc = self.usage_service(driver.usage_reader)
        svc.poll()
        counting.reset_counts()
        info = driver.get_info(instance(0))
        self.assertIsInstance(info, nova_info)
        self.assertEqual('from-nova', info.state)
        self.assertEqual(svc.latest(_uuid(0)).cpu_time_ns, info.cpu_time_ns)
        self.assertGreater(info.cpu_time_ns, 0)
        # nova calls get_info every half second while a guest stops.
        self.assertEqual(0, counting.total, counting.calls)

    def test_on_nova_driver_cpu_time_none_without_a_reading(self):
        driver, _ = self.novalike_driver(self.node.connection)
        self.assertIsNone(driver.get_info(instance(0)).cpu_time_ns)
        svc = self.usage_service(driver.usage_reader)
        self.assertIsNone(driver.get_info(instance(0)).cpu_time_ns)
        svc.poll()
        # not a nova instance: nova's answer, no cpu time
        info = driver.get_info(instance(2))
        self.assertEqual('from-nova', info.state)
        self.assertIsNone(info.cpu_time_ns)

    def test_on_nova_driver_novas_errors_are_novas(self):
        driver, _ = self.novalike_driver(self.node.connection)
        self.assertRaises(LookupError, driver.get_info, instance(4))

    def test_on_nova_driver_a_broken_service_never_raises(self):
        driver, _ = self.novalike_driver(self.node.connection)
        svc = self.usage_service(driver.usage_reader)
        self.useFixture(fixtures.MockPatchObject(
            svc, 'latest', side_effect=AttributeError('broken')))
        info = driver.get_info(instance(0))
        self.assertEqual('from-nova', info.state)
        self.assertIsNone(info.cpu_time_ns)
        self.assertIn('get_info failed', self.log.output)
        self.assertIn('AttributeError: broken', self.log.output)


class NotLibvirt:
    """A connection object without libvirt's API (nova's tests hand the
    driver such fakes): every call the reader makes raises AttributeError.
    """


class TestNothingRaisesIntoNova(DriverTestCase):

    def setUp(self):
        super().setUp()
        self.driver = libvirt_usage.LibvirtUsageHost(
            libvirt_calls.StaticConnection(NotLibvirt()))

    def assert_logged(self, method, error='AttributeError'):
        self.assertIn('nova-usage-ext: %s failed' % method, self.log.output)
        self.assertIn(error, self.log.output)

    def test_block_stats(self):
        self.assertIsNone(self.driver.block_stats(instance(0), 'vda'))
        self.assert_logged('block_stats')

    def test_interface_stats(self):
        self.assertIsNone(self.driver.interface_stats(instance(0), 'tap0'))
        self.assert_logged('interface_stats')

    def test_get_all_volume_usage(self):
        bdms = [{'instance': instance(0), 'instance_bdms': [
            {'device_name': '/dev/vdb', 'volume_id': VOLUME}]}]
        self.assertEqual([], self.driver.get_all_volume_usage(None, bdms))
        self.assert_logged('get_all_volume_usage')

    def test_get_all_bw_counters(self):
        self.assertEqual([], self.driver.get_all_bw_counters([instance(0)]))
        self.assert_logged('get_all_bw_counters')

    def test_malformed_bdms(self):
        # A BDM without the keys nova's manager puts there.
        self.driver = libvirt_usage.LibvirtUsageHost(self.node.connection)
        bdms = [{'instance': instance(0), 'instance_bdms': [{}]}]
        self.assertEqual([], self.driver.get_all_volume_usage(None, bdms))
        self.assert_logged('get_all_volume_usage', "KeyError: 'volume_id'")
