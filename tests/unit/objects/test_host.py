"""The host usage payload: wire format, parts, absent figures."""

import datetime

import testtools

from nova_usage_ext import objects
from nova_usage_ext.objects import base as obj_base
from nova_usage_ext.objects import host as host_objects
from nova_usage_ext.virt import base

objects.register_all()

READ_AT = datetime.datetime(2026, 11, 22, 10, 30, 0, 250000,
                            tzinfo=datetime.timezone.utc)


def usage(index, memory=True, state=base.RUNNING, hypervisor_state=1):
    return base.InstanceUsage(
        uuid='1b1c7e5e-5f4a-4c1e-9d55-0c3f6b1a%04d' % index,
        name='instance-%08x' % index, display_name='web-%d' % index,
        project_id='p' * 32, user_id='u' * 32,
        flavor=base.Flavor('m1.small', 1, 2048, 20, 5, 0, id='42'),
        image_ref='5d8a1b8e-6f0e-4c1b-9a57-3c2f0e7d0000',
        state=state, read_at=READ_AT, cpu_time_ns=123456789,
        vcpu_time_ns=120000000, vcpus=1, memory_mb=2048,
        hypervisor_state=hypervisor_state,
        memory=(base.MemoryUsage(actual_kib=2097152, available_kib=2030000,
                                 usable_kib=1500000, unused_kib=1200000,
                                 rss_kib=600000) if memory else None),
        disks=[base.DiskUsage('vda', 10, 1, 20, 2, None, 21474836480)],
        interfaces=[base.InterfaceUsage('tap1', 'fa:16:3e:00:00:01',
                                        100, 5, 0, 0, 200, 6, 0, 0)])


class TestHostUsagePayload(testtools.TestCase):

    def parts(self, records, max_instances=100):
        return host_objects.HostUsagePayload.wire_parts(
            'compute-1', READ_AT, records, max_instances)

    def test_wire_is_what_oslo_versionedobjects_reads_back(self):
        (wire,) = self.parts([usage(1), usage(2, memory=False)])
        obj = obj_base.UsageObject.obj_from_primitive(wire)
        self.assertIsInstance(obj, host_objects.HostUsagePayload)
        # Serialized again by oslo.versionedobjects: the same dicts.
        self.assertEqual(wire, obj.to_wire())
        self.assertEqual('nova_usage_ext', wire['nova_object.namespace'])
        self.assertEqual('1.0', wire['nova_object.version'])

    def test_instance_fields(self):
        (wire,) = self.parts([usage(1)])
        data = wire['nova_object.data']
        self.assertEqual('compute-1', data['host'])
        self.assertEqual('2026-11-22T10:30:00Z', data['read_at'])
        (instance,) = data['instances']
        self.assertEqual('HostInstanceUsagePayload',
                         instance['nova_object.name'])
        fields = instance['nova_object.data']
        self.assertEqual('1b1c7e5e-5f4a-4c1e-9d55-0c3f6b1a0001',
                         fields['instance_uuid'])
        self.assertEqual('running', fields['power_state'])
        self.assertEqual(1, fields['hypervisor_state'])
        self.assertEqual(120000000, fields['vcpu_time_ns'])
        self.assertEqual((20, 5, 0), (fields['root_gb'],
                                      fields['ephemeral_gb'],
                                      fields['swap_mb']))
        self.assertEqual(('m1.small', '42'), (fields['flavor_name'],
                                              fields['flavor_id']))
        self.assertEqual('5d8a1b8e-6f0e-4c1b-9a57-3c2f0e7d0000',
                         fields['image_ref'])
        self.assertEqual({'memory_actual_kib': 2097152,
                          'memory_available_kib': 2030000,
                          'memory_usable_kib': 1500000,
                          'memory_unused_kib': 1200000,
                          'memory_rss_kib': 600000},
                         {k: v for k, v in fields.items()
                          if k.startswith('memory_') and k != 'memory_mb'})
        (disk,) = fields['disks']
        self.assertEqual('DiskUsagePayload', disk['nova_object.name'])
        self.assertEqual(10, disk['nova_object.data']['read_bytes'])
        (iface,) = fields['interfaces']
        self.assertEqual(200, iface['nova_object.data']['tx_bytes'])

    def test_absent_figures_are_absent_not_zero(self):
        record = usage(1, memory=False, state=base.SHUTDOWN,
                       hypervisor_state=5)
        record.cpu_time_ns = record.vcpu_time_ns = None
        record.disks = []
        record.interfaces = []
        (wire,) = self.parts([record])
        (instance,) = wire['nova_object.data']['instances']
        fields = instance['nova_object.data']
        self.assertEqual([], [k for k in fields
                              if k.startswith('memory_') and
                              k != 'memory_mb'])
        self.assertNotIn('cpu_time_ns', fields)
        self.assertEqual('shutdown', fields['power_state'])
        self.assertEqual(5, fields['hypervisor_state'])
        record.memory = base.MemoryUsage(actual_kib=65536, rss_kib=4000)
        (wire,) = self.parts([record])
        fields = wire['nova_object.data']['instances'][0]['nova_object.data']
        self.assertNotIn('memory_available_kib', fields)
        self.assertEqual(65536, fields['memory_actual_kib'])

    def test_parts(self):
        records = [usage(i) for i in range(5)]
        parts = self.parts(records, max_instances=2)
        self.assertEqual([(1, 3), (2, 3), (3, 3)],
                         [(p['nova_object.data']['part'],
                           p['nova_object.data']['parts']) for p in parts])
        uuids = [i['nova_object.data']['instance_uuid']
                 for p in parts for i in p['nova_object.data']['instances']]
        self.assertEqual([r.uuid for r in records], uuids)
        self.assertEqual({'2026-11-22T10:30:00Z'},
                         {p['nova_object.data']['read_at'] for p in parts})
        # A host without instances still says so, in one part.
        (empty,) = self.parts([])
        self.assertEqual((1, 1, []), (empty['nova_object.data']['part'],
                                      empty['nova_object.data']['parts'],
                                      empty['nova_object.data']['instances']))
