"""Ceilometer's compute meters from host.usage and the exists with usage,
as plain samples (tests/functional/test_ceilometer_endpoint.py runs them
through ceilometer itself and against its own pollsters)."""

import hashlib

import fixtures
import libvirt
import testtools

from nova_usage_ext import ceilometer_meters
from nova_usage_ext import exists
from nova_usage_ext import host_usage
from nova_usage_ext.virt import base
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_node

HOST = 'compute-1'
BALLOON = "<memballoon model='virtio'/></devices>"
UUID0 = '00000000-0000-0000-0000-000000000001'
UUID1 = '00000000-0000-0000-0000-000000000002'


class MetersTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.FakeLogger())
        domains = [libvirt_node.nova_test_domain(
            0, n_disks=2, n_nics=2, flavor='m1.small', root_gb=20,
            ephemeral_gb=5, user_id='u' * 32, project_id='p' * 32
        ).replace('</devices>', BALLOON).replace(
            '<nova:flavor name="m1.small">',
            '<nova:flavor name="m1.small" id="42">'),
            # no balloon: no memory figures from the guest
            libvirt_node.nova_test_domain(1)]
        self.node = self.useFixture(libvirt_node.TestNode(domains))
        self.reader = libvirt_usage.LibvirtUsageReader(self.node.connection)
        self.addCleanup(self.reader.close)

    def host_samples(self):
        usages = self.reader.read_all(base.EVERY_KIND)
        (message,) = host_usage.messages(HOST, usages[0].read_at, usages,
                                         100)
        samples = ceilometer_meters.samples(message)
        return {u.uuid: u for u in usages}, samples

    def by_key(self, samples):
        keyed = {(s['name'], s['resource_id']): s for s in samples}
        self.assertEqual(len(samples), len(keyed), 'a meter twice')
        return keyed


class TestHostUsage(MetersTestCase):

    def test_meters_names_types_units_and_resources(self):
        usages, samples = self.host_samples()
        keyed = self.by_key(samples)
        usage = usages[UUID0]
        expected = {('power.state', UUID0): ('gauge', ''),
                    ('cpu', UUID0): ('cumulative', 'ns'),
                    ('memory.usage', UUID0): ('gauge', 'MiB'),
                    ('memory.available', UUID0): ('gauge', 'MiB')}
        for dev in ('vda', 'vdb'):
            for name, unit in (('read.bytes', 'B'), ('write.bytes', 'B'),
                               ('read.requests', 'request'),
                               ('write.requests', 'request')):
                expected[('disk.device.' + name, '%s-%s' % (UUID0, dev))] = (
                    'cumulative', unit)
        for tap in ('tap00000000-00', 'tap00000000-01'):
            rid = 'instance-00000000-%s-%s' % (UUID0, tap)
            for way in ('incoming', 'outgoing'):
                for name, unit in (('bytes', 'B'), ('packets', 'packet'),
                                   ('packets.drop', 'packet'),
                                   ('packets.error', 'packet')):
                    expected[('network.%s.%s' % (way, name), rid)] = (
                        'cumulative', unit)
        ours = {key: (s['type'], s['unit']) for key, s in keyed.items()
                if UUID0 in key[1]}
        self.assertEqual(expected, ours)
        for sample in samples:
            if UUID0 in sample['resource_id']:
                self.assertEqual(('u' * 32, 'p' * 32),
                                 (sample['user_id'], sample['project_id']))
        # Volumes: the reading's own figures.
        self.assertEqual(usage.vcpu_time_ns,
                         keyed[('cpu', UUID0)]['volume'])
        self.assertEqual(libvirt.VIR_DOMAIN_RUNNING,
                         keyed[('power.state', UUID0)]['volume'])
        memory = usage.memory
        self.assertEqual(memory.used_mb,
                         keyed[('memory.usage', UUID0)]['volume'])
        self.assertEqual(memory.available_mb,
                         keyed[('memory.available', UUID0)]['volume'])
        self.assertEqual(usage.disk('vdb').write_bytes, keyed[(
            'disk.device.write.bytes', UUID0 + '-vdb')]['volume'])
        self.assertEqual(usage.interface('tap00000000-01').rx_bytes, keyed[(
            'network.incoming.bytes',
            'instance-00000000-%s-tap00000000-01' % UUID0)]['volume'])

    def test_each_sample_has_its_own_resource_metadata(self):
        _usages, samples = self.host_samples()
        keyed = self.by_key(samples)
        cpu = keyed[('cpu', UUID0)]['resource_metadata']
        self.assertEqual('vm-0', cpu['display_name'])
        self.assertEqual('instance-00000000', cpu['name'])
        self.assertEqual(UUID0, cpu['instance_id'])
        self.assertEqual('m1.small', cpu['instance_type'])
        self.assertEqual(HOST, cpu['instance_host'])
        self.assertEqual(hashlib.sha224(('p' * 32 + HOST).encode())
                         .hexdigest(), cpu['host'])
        self.assertEqual({'id': '42', 'name': 'm1.small', 'vcpus': 1,
                          'ram': 64, 'disk': 20, 'ephemeral': 5, 'swap': 0},
                         cpu['flavor'])
        self.assertEqual((20, 5, 15), (cpu['disk_gb'], cpu['ephemeral_gb'],
                                       cpu['root_gb']))
        self.assertEqual(('active', 'running'), (cpu['status'],
                                                 cpu['state']))
        self.assertEqual({'id': cpu['image_ref']}, cpu['image'])
        self.assertEqual(1, cpu['cpu_number'])
        vdb = keyed[('disk.device.read.bytes', UUID0 + '-vdb')]
        self.assertEqual('vdb', vdb['resource_metadata']['disk_name'])
        vda = keyed[('disk.device.read.bytes', UUID0 + '-vda')]
        self.assertEqual('vda', vda['resource_metadata']['disk_name'])
        nic = keyed[('network.outgoing.bytes',
                     'instance-00000000-%s-tap00000000-01' % UUID0)]
        self.assertEqual('tap00000000-01',
                         nic['resource_metadata']['vnic_name'])
        self.assertEqual('fa:16:3e:00:00:01', nic['resource_metadata']['mac'])
        # The other instance's samples describe the other instance.
        other = keyed[('cpu', UUID1)]['resource_metadata']
        self.assertEqual(('vm-1', 'm1.tiny'), (other['display_name'],
                                               other['instance_type']))

    def test_no_memory_meters_without_balloon_figures(self):
        usages, samples = self.host_samples()
        self.assertIsNone(usages[UUID1].memory.available_kib)
        names = {s['name'] for s in samples if s['resource_id'] == UUID1}
        self.assertEqual({'cpu', 'power.state'}, names)

    def test_a_shut_off_instance_gives_no_sample(self):
        self.node.conn.lookupByUUIDString(UUID1).destroy()
        _usages, samples = self.host_samples()
        self.assertEqual([], [s for s in samples
                              if UUID1 in s['resource_id']])
        self.assertIn(('cpu', UUID0), self.by_key(samples))

    def test_timestamp_is_the_reading(self):
        usages, samples = self.host_samples()
        read_at = usages[UUID0].read_at.strftime('%Y-%m-%dT%H:%M:%SZ')
        self.assertEqual({read_at}, {s['timestamp'] for s in samples})


class TestExists(MetersTestCase):

    def test_exists_with_usage(self):
        usages = {u.uuid: u for u in self.reader.read_all()}
        message = exists.exists_notification(usages[UUID0], HOST)
        keyed = self.by_key(ceilometer_meters.samples(message))
        self.assertEqual(
            {'cpu'} | {n for n, _f, _u in ceilometer_meters.DISK_METERS} |
            {n for n, _f, _u in ceilometer_meters.INTERFACE_METERS},
            {name for name, _rid in keyed})
        self.assertEqual(1 + 2 * 4 + 2 * 8, len(keyed))
        cpu = keyed[('cpu', UUID0)]
        self.assertEqual(usages[UUID0].vcpu_time_ns, cpu['volume'])
        self.assertFalse(cpu['resource_metadata']['final'])
        self.assertEqual('vm-0', cpu['resource_metadata']['display_name'])
        self.assertEqual(HOST, cpu['resource_metadata']['instance_host'])
        # Only counters: no power state or memory in an exists.
        self.assertNotIn(('power.state', UUID0), keyed)

    def test_final_exists_and_instance_usage(self):
        usage = self.reader.read_all()[0]
        wire = exists.usage_primitive(usage, HOST, final=True)
        final = exists.notification(
            exists.exists_payload(exists.legacy_fields(usage, HOST), wire,
                                  usage.read_at, usage.read_at),
            HOST, usage.read_at)
        final['payload']['final_reason'] = 'deleted'
        samples = ceilometer_meters.samples(final)
        self.assertTrue(samples)
        for sample in samples:
            self.assertTrue(sample['resource_metadata']['final'])
            self.assertEqual('deleted',
                             sample['resource_metadata']['final_reason'])
        versioned = exists.notification(wire, HOST, usage.read_at,
                                        event_type='instance.usage')
        self.assertEqual(
            sorted((s['name'], s['resource_id'], s['volume'])
                   for s in samples),
            sorted((s['name'], s['resource_id'], s['volume'])
                   for s in ceilometer_meters.samples(versioned)))

    def test_other_and_malformed_messages_give_nothing(self):
        self.assertEqual([], ceilometer_meters.samples(
            {'event_type': 'compute.instance.exists',
             'payload': {'instance_id': UUID0}}))
        self.assertEqual([], ceilometer_meters.samples(
            {'event_type': 'compute.instance.delete.start',
             'payload': {'instance_id': UUID0}}))
        self.assertEqual([], ceilometer_meters.samples(
            {'event_type': 'host.usage', 'payload': 'text'}))
