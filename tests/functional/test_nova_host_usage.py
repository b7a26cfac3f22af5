"""host.usage as nova-compute sends it: released nova 34's ComputeManager
and the usage driver's ``init_host`` (nova's database, the real libvirtd
and QEMU guest, nova's own notifiers through the package's notifier
driver, all as in ``test_nova``) start the loop, whose first cycle sends
host.usage with the guest on nova's legacy notifier topics, where
ceilometer listens.
"""

import time

from nova_usage_ext import ceilometer_meters
from nova_usage_ext.objects import decode
from tests.functional import test_nova


class TestHostUsageFromNovaCompute(test_nova.NovaComputeTestCase):

    def wait_for_host_usage(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.listener.messages
                     if m['event_type'] == 'host.usage']
            if found:
                return found
            time.sleep(0.05)
        self.fail('no host.usage within %ds; got %s' % (
            timeout, [m['event_type'] for m in self.listener.messages]))

    def test_init_host_starts_the_host_usage_notification(self):
        # The first reading's parts (the daemon is shared: other test
        # processes' nova guests come in it too, maybe in several parts).
        first = self.wait_for_host_usage()[0]
        payload = decode.host_usage_from_wire(first['payload'])
        deadline = time.monotonic() + 30
        while True:
            parts = [m for m in self.wait_for_host_usage()
                     if m['payload']['nova_object.data']['read_at'] ==
                     first['payload']['nova_object.data']['read_at']]
            if len(parts) == payload.parts or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        payloads = [decode.host_usage_from_wire(m['payload'])
                    for m in parts]
        self.assertEqual(list(range(1, payload.parts + 1)),
                         sorted(p.part for p in payloads))
        for message, part in zip(parts, payloads):
            self.assertEqual('nova-compute:%s' % self.compute.host,
                             message['publisher_id'])
            self.assertEqual(self.compute.host, part.host)
        mine = [(message, i) for message, part in zip(parts, payloads)
                for i in part.instances
                if i.instance_uuid == self.guest.uuid]
        self.assertEqual(1, len(mine))
        ((message, instance),) = mine
        self.assertEqual('running', instance.power_state)
        self.assertEqual(1, instance.hypervisor_state)
        self.assertGreater(instance.vcpu_time_ns, 0)
        self.assertEqual([self.guest.disk_device],
                         [d.device for d in instance.disks])
        self.assertEqual([self.guest.tap],
                         [i.name for i in instance.interfaces])
        # The same reading the loop keeps for nova's own calls.
        self.assertEqual(self.cached.vcpu_time_ns, instance.vcpu_time_ns)
        samples = [s for s in ceilometer_meters.samples(message)
                   if self.guest.uuid in s['resource_id']]
        self.assertEqual({'power.state', 'cpu'} | {
            name for name, _f, _u in ceilometer_meters.DISK_METERS +
            ceilometer_meters.INTERFACE_METERS},
            {s['name'] for s in samples})
