"""The payloads: fingerprints, wire format, absent counters."""

import datetime
import json

import testtools
from oslo_versionedobjects import fixture

from nova_usage_ext import ledger
from nova_usage_ext import objects
from nova_usage_ext.objects import base as obj_base
from nova_usage_ext.objects import usage as usage_objects
from nova_usage_ext.virt import base

objects.register_all()

# A change here means a field changed: bump the object's version, record
# why in its class comment, handle older versions in obj_make_compatible,
# then update the hash.
EXPECTED_FINGERPRINTS = {
    'AttachedVolumeUsagePayload': '1.0-370409d6e1798ef7371c5e8eda4aba82',
    'DiskUsagePayload': '1.0-0d4e84591e7f4bb005a7d78a0642eee2',
    'HostInstanceUsagePayload': '1.0-324b67f5d7086091216fe3ceb1ad9fea',
    'HostUsagePayload': '1.0-bdc2e5cdf9a9e0d59adc51dd6935631e',
    'InstanceUsagePayload': '1.2-2c090b7a815933765498fd2aba6b21b3',
    'InterfaceUsagePayload': '1.0-7e29e472326cacb5393a2d7d2b72048f',
    'PeriodUsagePayload': '1.1-ee1a40fd4a3bf93d03485f2181dfac92',
    'UsageAlertPayload': '1.0-d2031f66a3adb17979f02834c3d16348',
}

READ_AT = datetime.datetime(2026, 11, 22, 10, 30, 0, 250000,
                            tzinfo=datetime.timezone.utc)


def sample_usage():
    return base.InstanceUsage(
        uuid='1b1c7e5e-5f4a-4c1e-9d55-0c3f6b1a0001',
        name='instance-00000001', display_name='web-1',
        project_id='p' * 32, user_id='u' * 32,
        flavor=base.Flavor('m1.small', 1, 2048, 20, 0, 0),
        state=base.RUNNING, read_at=READ_AT, cpu_time_ns=123456789,
        vcpu_time_ns=120000000,
        vcpus=1, memory_mb=2048,
        disks=[base.DiskUsage('vda', 10, 1, 20, 2, None, 21474836480),
               base.DiskUsage('vdb', 30, 3, 40, 4, 0, 1073741824,
                              volume_id='8e1f7a2b-3c4d-4e5f-9a6b-'
                                        '7c8d9e0f1a2b')],
        interfaces=[base.InterfaceUsage('tap1', 'fa:16:3e:00:00:01',
                                        100, 5, 0, 0, 200, 6, 0, 0)])


class TestFingerprints(testtools.TestCase):

    def test_versions(self):
        checker = fixture.ObjectVersionChecker(
            obj_base.registered_classes())
        expected, actual = checker.test_hashes(EXPECTED_FINGERPRINTS)
        self.assertEqual(expected, actual,
                         'Fields of a payload changed without a version '
                         'bump (see the comment above the hashes)')

    def test_relationships_cover_every_version(self):
        checker = fixture.ObjectVersionChecker(
            obj_base.registered_classes())
        tree = checker.get_dependency_tree()
        for name, cls_list in obj_base.registered_classes().items():
            cls = cls_list[0]
            object_fields = [f for f, field in cls.fields.items()
                             if 'Object' in type(field).__name__]
            self.assertEqual(sorted(object_fields),
                             sorted(cls.obj_relationships), name)
        self.assertIn('PeriodUsagePayload', tree['InstanceUsagePayload'])

    def test_only_our_namespace(self):
        for name, classes in obj_base.registered_classes().items():
            self.assertEqual('nova_usage_ext',
                             classes[0].OBJ_PROJECT_NAMESPACE, name)


class TestWireFormat(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.wire = usage_objects.InstanceUsagePayload.from_record(
            sample_usage(), host='compute-1').to_wire()

    def test_envelope_is_nova_wire_format(self):
        self.assertEqual({'nova_object.name', 'nova_object.namespace',
                          'nova_object.version', 'nova_object.data'},
                         set(self.wire))
        self.assertEqual('InstanceUsagePayload',
                         self.wire['nova_object.name'])
        self.assertEqual('nova_usage_ext',
                         self.wire['nova_object.namespace'])
        self.assertEqual('1.2', self.wire['nova_object.version'])

    def test_fields(self):
        data = self.wire['nova_object.data']
        self.assertEqual('1b1c7e5e-5f4a-4c1e-9d55-0c3f6b1a0001',
                         data['instance_uuid'])
        self.assertEqual('compute-1', data['host'])
        self.assertEqual('p' * 32, data['project_id'])
        self.assertEqual('m1.small', data['flavor_name'])
        self.assertEqual('running', data['power_state'])
        self.assertEqual(123456789, data['cpu_time_ns'])
        # nova's DateTimeField wire format: whole seconds, UTC.
        self.assertEqual('2026-11-22T10:30:00Z', data['read_at'])

    def test_nested_objects_are_nested_wire_dicts(self):
        data = self.wire['nova_object.data']
        vda, vdb = data['disks']
        self.assertEqual('DiskUsagePayload', vda['nova_object.name'])
        self.assertEqual('nova_usage_ext', vda['nova_object.namespace'])
        self.assertEqual({'device': 'vda', 'read_bytes': 10,
                          'read_requests': 1, 'write_bytes': 20,
                          'write_requests': 2,
                          'capacity_bytes': 21474836480},
                         vda['nova_object.data'])
        (iface,) = data['interfaces']
        self.assertEqual('InterfaceUsagePayload', iface['nova_object.name'])
        self.assertEqual(100, iface['nova_object.data']['rx_bytes'])
        self.assertEqual('fa:16:3e:00:00:01', iface['nova_object.data']['mac'])
        (volume,) = data['volumes']
        self.assertEqual('AttachedVolumeUsagePayload',
                         volume['nova_object.name'])
        self.assertEqual({'volume_id': '8e1f7a2b-3c4d-4e5f-9a6b-7c8d9e0f1a2b',
                          'device': 'vdb', 'read_bytes': 30,
                          'read_requests': 3, 'write_bytes': 40,
                          'write_requests': 4}, volume['nova_object.data'])

    def test_no_change_tracking_on_the_wire(self):
        self.assertNotIn('nova_object.changes', str(self.wire))

    def test_absent_counters_are_absent_not_zero(self):
        usage = sample_usage()
        usage.cpu_time_ns = None
        usage.disks[0].read_bytes = None
        wire = usage_objects.InstanceUsagePayload.from_record(
            usage).to_wire()
        data = wire['nova_object.data']
        self.assertNotIn('cpu_time_ns', data)
        self.assertNotIn('read_bytes', data['disks'][0]['nova_object.data'])
        self.assertNotIn('errors', data['disks'][0]['nova_object.data'])
        self.assertEqual(0, data['disks'][1]['nova_object.data']['errors'])

    def test_final_and_source(self):
        data = self.wire['nova_object.data']
        self.assertFalse(data['final'])
        self.assertEqual('hypervisor', data['source'])
        self.assertIsNone(data['period'])
        wire = usage_objects.InstanceUsagePayload.from_record(
            sample_usage(), final=True, source='cache').to_wire()
        self.assertTrue(wire['nova_object.data']['final'])
        self.assertEqual('cache', wire['nova_object.data']['source'])

    def test_period_usage(self):
        start = datetime.datetime(2026, 11, 22, 10, 0,
                                  tzinfo=datetime.timezone.utc)
        period = ledger.UsageCounters(
            uuid='1b1c7e5e-5f4a-4c1e-9d55-0c3f6b1a0001',
            first_seen=start - datetime.timedelta(days=3), read_at=READ_AT,
            period_start=start, cpu_time_ns=5000,
            disks={'vda': ledger.DiskCounters(1, 2, 3, 4)},
            interfaces={'tap1': ledger.InterfaceCounters(
                10, 11, 0, 0, 20, 21, None, None)})
        wire = usage_objects.InstanceUsagePayload.from_record(
            sample_usage(), period=period).to_wire()
        data = wire['nova_object.data']['period']
        self.assertEqual('PeriodUsagePayload', data['nova_object.name'])
        data = data['nova_object.data']
        self.assertEqual('2026-11-22T10:00:00Z', data['period_beginning'])
        self.assertEqual(5000, data['cpu_time_ns'])
        self.assertEqual({'device': 'vda', 'read_bytes': 1,
                          'read_requests': 2, 'write_bytes': 3,
                          'write_requests': 4},
                         data['disks'][0]['nova_object.data'])
        iface = data['interfaces'][0]['nova_object.data']
        self.assertEqual('tap1', iface['name'])
        self.assertEqual(20, iface['tx_bytes'])
        self.assertNotIn('tx_errors', iface)

    def test_older_consumers_get_1_1(self):
        start = datetime.datetime(2026, 11, 22, 10, 0,
                                  tzinfo=datetime.timezone.utc)
        period = ledger.UsageCounters(
            uuid='1b1c7e5e-5f4a-4c1e-9d55-0c3f6b1a0001', first_seen=start,
            read_at=READ_AT, period_start=start, cpu_time_ns=50,
            vcpu_time_ns=40)
        wire = usage_objects.InstanceUsagePayload.from_record(
            sample_usage(), period=period).to_wire('1.1')
        self.assertEqual('1.1', wire['nova_object.version'])
        data = wire['nova_object.data']
        self.assertNotIn('vcpu_time_ns', data)
        self.assertEqual(123456789, data['cpu_time_ns'])
        self.assertEqual('1.0', data['period']['nova_object.version'])
        self.assertEqual({'period_beginning', 'cpu_time_ns', 'disks',
                          'interfaces'},
                         set(data['period']['nova_object.data']))
        current = usage_objects.InstanceUsagePayload.from_record(
            sample_usage(), period=period).to_wire()['nova_object.data']
        self.assertEqual(120000000, current['vcpu_time_ns'])
        self.assertEqual(40, current['period']['nova_object.data'][
            'vcpu_time_ns'])

    def test_older_consumers_get_1_0(self):
        wire = usage_objects.InstanceUsagePayload.from_record(
            sample_usage(), final=True, source='cache').to_wire('1.0')
        self.assertEqual('1.0', wire['nova_object.version'])
        data = wire['nova_object.data']
        for added_in_1_1 in ('final', 'source', 'period'):
            self.assertNotIn(added_in_1_1, data)
        self.assertEqual(123456789, data['cpu_time_ns'])
        self.assertEqual('1.0', data['disks'][0]['nova_object.version'])

    def test_round_trip(self):
        obj = usage_objects.InstanceUsagePayload.obj_from_primitive(self.wire)
        self.assertEqual(['vda', 'vdb'], [d.device for d in obj.disks])
        self.assertEqual(READ_AT.replace(microsecond=0), obj.read_at)
        self.assertEqual(self.wire, obj.to_wire())


class TestFastWire(testtools.TestCase):
    """The fast builder gives exactly what the objects serialize to."""

    def period(self, **overrides):
        start = datetime.datetime(2026, 11, 22, 9, 0,
                                  tzinfo=datetime.timezone.utc)
        values = dict(
            uuid='1b1c7e5e-5f4a-4c1e-9d55-0c3f6b1a0001',
            first_seen=start, read_at=READ_AT, period_start=start,
            cpu_time_ns=50, vcpu_time_ns=40,
            disks={'vdb': ledger.DiskCounters(1, 2, None, 4),
                   'vda': ledger.DiskCounters(5, 6, 7, 8)},
            interfaces={'tap1': ledger.InterfaceCounters(
                1, 2, None, 4, 5, 6, 7, None)})
        values.update(overrides)
        return ledger.UsageCounters(**values)

    def assertSameWire(self, usage, **kwargs):
        fast = usage_objects.InstanceUsagePayload.wire_from_record(
            usage, **kwargs)
        slow = usage_objects.InstanceUsagePayload.from_record(
            usage, **kwargs).to_wire()
        self.assertEqual(slow, fast)
        self.assertEqual(json.dumps(slow, sort_keys=True),
                         json.dumps(fast, sort_keys=True))

    def test_full_reading(self):
        self.assertSameWire(sample_usage(), host='compute-1')

    def test_final_from_the_cache_with_a_period(self):
        self.assertSameWire(sample_usage(), host='compute-1', final=True,
                            source='cache', period=self.period())

    def test_period_before_the_first_exists(self):
        self.assertSameWire(sample_usage(), period=self.period(
            period_start=None, vcpu_time_ns=None))

    def test_absent_counters_and_unknown_owner(self):
        usage = sample_usage()
        usage.cpu_time_ns = usage.vcpu_time_ns = usage.vcpus = None
        usage.project_id = usage.flavor = None
        usage.disks[0].read_bytes = None
        usage.interfaces[0].mac = None
        usage.interfaces[0].tx_drops = None
        self.assertSameWire(usage)

    def test_stopped_instance(self):
        usage = sample_usage()
        usage.state = base.SHUTDOWN
        usage.cpu_time_ns = usage.vcpu_time_ns = None
        usage.disks, usage.interfaces = [], []
        self.assertSameWire(usage)

    def test_times_in_any_zone_and_precision(self):
        utc = datetime.timezone.utc
        plus_two = datetime.timezone(datetime.timedelta(hours=2))
        for when in (datetime.datetime(2026, 1, 2, 3, 4, 5, 678901,
                                       tzinfo=utc),
                     datetime.datetime(2026, 12, 31, 23, 59, 59),
                     datetime.datetime(2026, 6, 1, 12, 0, tzinfo=plus_two),
                     datetime.datetime(999, 1, 1, tzinfo=utc)):
            usage = sample_usage()
            usage.read_at = when
            self.assertSameWire(usage, period=self.period(period_start=when))

    def test_bad_source_is_refused(self):
        self.assertRaises(ValueError,
                          usage_objects.InstanceUsagePayload.wire_from_record,
                          sample_usage(), source='guess')
