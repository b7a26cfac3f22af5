"""The package's ceilometer sample endpoint through ceilometer 27's code.

1. Parity with ceilometer's own compute pollsters on the same real QEMU
   guests: ceilometer polls, the package reads them as its host usage
   cycle does and the endpoint turns host.usage (and the exists with
   usage) into samples, ceilometer polls again. Every meter of ceilometer's
   default polling.yaml that ceilometer gives comes from the endpoint too,
   with the same type, unit, resource id, owner, metadata, gnocchi
   resource attributes, and a volume between ceilometer's two polls.
2. The entry point as ceilometer's notification agent loads it.
3. ceilometer's notification agent on the real RabbitMQ: host.usage from
   the service's loop and a final exists sent through the package's
   notifier driver come out of its file publisher.
"""

import datetime
import json
import os
import time
import uuid as uuidlib

import fixtures
import oslo_messaging
import testtools
from stevedore import extension
from testtools import content

from nova_usage_ext import ceilometer_endpoint
from nova_usage_ext import ceilometer_meters
from nova_usage_ext import exists
from nova_usage_ext import host_usage
from nova_usage_ext import ledger
from nova_usage_ext import service as usage_service
from nova_usage_ext import state
from nova_usage_ext.virt import base
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_node
from tests.functional import balloon_guest
from tests.functional import bus
from tests.functional import ceilometer_fixtures as cf
from tests.functional import fixtures as qemu_fixtures
from tests.functional import test_notifier

HOST = 'compute-1'

# ceilometer 27's default polling.yaml, compute meters.
DEFAULT_POLLED = ('power.state', 'cpu', 'memory.available', 'memory.usage',
                  'network.incoming.bytes', 'network.incoming.packets',
                  'network.outgoing.bytes', 'network.outgoing.packets',
                  'disk.device.read.bytes', 'disk.device.read.requests',
                  'disk.device.write.bytes', 'disk.device.write.requests')
# The endpoint's meters beyond those (ceilometer has pollsters for them).
ALSO = ('network.incoming.packets.drop', 'network.incoming.packets.error',
        'network.outgoing.packets.drop', 'network.outgoing.packets.error')
# Metadata ceilometer's pollsters set and the endpoint gives the same.
SAME_METADATA = ('display_name', 'name', 'instance_id', 'instance_type',
                 'host', 'instance_host', 'status', 'state', 'task_state',
                 'image', 'image_ref', 'image_ref_url', 'vcpus',
                 'memory_mb', 'disk_gb', 'ephemeral_gb', 'root_gb',
                 'disk_name', 'vnic_name', 'mac', 'fref')
# ...and the keys the endpoint leaves out, why: the guest's nova metadata
# has them, the package's reader does not parse them (not read by gnocchi).
LEFT_OUT = {'os_type', 'architecture', 'image_meta', 'parameters',
            'cpu_number', 'user_metadata'}
GAUGES_WITHOUT_MOVEMENT = ('power.state', 'memory.available',
                           'memory.usage')


class TestParityWithCeilometerPolling(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = self.useFixture(cf.CeilometerConf()).conf
        self.guests = self.useFixture(qemu_fixtures.QemuGuests(2))
        self.conf.set_override('libvirt_uri', qemu_fixtures.URI)
        self.pollsters = self.useFixture(cf.ComputePollsters(self.conf))
        self.reader = libvirt_usage.LibvirtUsageReader(
            libvirt_usage.LibvirtConnection(qemu_fixtures.URI))
        self.addCleanup(self.reader.close)
        self.endpoint = ceilometer_endpoint.UsageNotifications(
            self.conf, None)

    def read_ours(self, timeout=10):
        """The host usage cycle's reading of the guests, once every disk
        came with its counters (another process may hold a guest's job)."""
        wanted = {g.uuid for g in self.guests.guests}
        deadline = time.monotonic() + timeout
        while True:
            usages = [u for u in self.reader.read_all(base.EVERY_KIND)
                      if u.uuid in wanted]
            if len(usages) == len(wanted) and all(
                    base.DISKS in u.kinds for u in usages):
                return usages
            if time.monotonic() > deadline:
                self.fail('no complete reading of %s' % sorted(wanted))
            time.sleep(0.05)

    def test_same_meters_as_ceilometer_polling(self):
        instances = cf.discover(self.conf,
                                [g.uuid for g in self.guests.guests])
        low = self.pollsters.poll(instances)
        usages = self.read_ours()
        (message,) = host_usage.messages(self.conf.host, usages[0].read_at,
                                         usages, 100)
        ours = list(self.endpoint.build_sample(cf.as_received(message)))
        high = self.pollsters.poll(instances)

        def keyed(samples, names):
            return {(s.name, s.resource_id): s for s in samples
                    if s.name in names}

        low = keyed(low, DEFAULT_POLLED)
        high = keyed(high, DEFAULT_POLLED)
        mine = keyed(ours, DEFAULT_POLLED)
        self.addDetail('samples', content.text_content(json.dumps(
            {'ceilometer': [s.as_dict() for s in low.values()],
             'nova-usage-ext': [s.as_dict() for s in ours]},
            indent=1, default=str)))
        self.assertEqual(sorted(low), sorted(high))
        # Every meter ceilometer gave, from the endpoint, and no other
        # meter of the default set.
        self.assertEqual(sorted(low), sorted(mine))
        # Each guest: power.state, cpu, 4 per disk, 4 per vNIC (no-OS
        # guests give no memory.* on either side).
        self.assertEqual(2 * (1 + 1 + 4 + 4), len(low))
        for key in sorted(low):
            first, second, ours_ = low[key], high[key], mine[key]
            for attr in ('type', 'unit', 'user_id', 'project_id'):
                self.assertEqual(getattr(first, attr), getattr(ours_, attr),
                                 (key, attr))
            bounds = (first.volume, second.volume)
            if key[0] in GAUGES_WITHOUT_MOVEMENT:
                self.assertEqual(first.volume, ours_.volume, key)
            else:
                self.assertTrue(bounds[0] <= ours_.volume <= bounds[1],
                                '%s: %s not within %s'
                                % (key, ours_.volume, bounds))
            theirs, ours_meta = (first.resource_metadata,
                                 ours_.resource_metadata)
            for name in SAME_METADATA:
                self.assertEqual(theirs.get(name), ours_meta.get(name),
                                 (key, name))
            for name in ('name', 'vcpus', 'ram', 'disk', 'ephemeral',
                         'swap'):
                self.assertEqual(theirs['flavor'][name],
                                 ours_meta['flavor'][name], (key, name))
            # ceilometer's discovery falls back to the flavor name for its
            # id where nova's API does not answer (this test has none).
            self.assertIn(theirs['flavor']['id'],
                          (ours_meta['flavor']['id'],
                           ours_meta['flavor']['name']))
            missing = set(theirs) - set(ours_meta) - LEFT_OUT
            self.assertEqual(set(), missing, key)
        # The rest of the endpoint's meters: ceilometer's pollsters give
        # them too (not polled by default).
        extra = keyed(ours, ALSO)
        polled_extra = keyed(self.pollsters.poll(instances), ALSO)
        self.assertEqual(sorted(polled_extra), sorted(extra))

    def test_exists_gives_the_same_counters(self):
        instances = cf.discover(self.conf,
                                [g.uuid for g in self.guests.guests])
        low = self.pollsters.poll(instances)
        ours = []
        for usage in self.read_ours():
            legacy = list(self.endpoint.build_sample(cf.as_received(
                exists.exists_notification(usage, self.conf.host))))
            versioned = list(self.endpoint.build_sample(cf.as_received(
                exists.notification(
                    exists.usage_primitive(usage, self.conf.host),
                    self.conf.host, usage.read_at,
                    event_type='instance.usage'))))
            self.assertEqual([cf.sample_dict(s) for s in legacy],
                             [cf.sample_dict(s) for s in versioned])
            ours.extend(legacy)
        high = self.pollsters.poll(instances)
        counters = {name for name, spec in cf.METERS.items()
                    if spec[0] == cf.CUMULATIVE and name in DEFAULT_POLLED}

        def keyed(samples):
            return {(s.name, s.resource_id): s for s in samples
                    if s.name in counters}

        low, high, ours = keyed(low), keyed(high), keyed(ours)
        self.assertEqual(sorted(low), sorted(ours))
        self.assertEqual(2 * (1 + 4 + 4), len(low))
        for key in sorted(low):
            first, mine = low[key], ours[key]
            for attr in ('type', 'unit', 'user_id', 'project_id'):
                self.assertEqual(getattr(first, attr), getattr(mine, attr),
                                 (key, attr))
            self.assertTrue(first.volume <= mine.volume <= high[key].volume,
                            key)
            for name in ('display_name', 'name', 'instance_id',
                         'instance_type', 'host', 'instance_host',
                         'disk_name', 'vnic_name', 'mac'):
                self.assertEqual(first.resource_metadata.get(name),
                                 mine.resource_metadata.get(name),
                                 (key, name))
            self.assertFalse(mine.resource_metadata['final'])

    def test_gnocchi_resource_attributes(self):
        """Gnocchi's resources and attributes (ceilometer's packaged
        gnocchi_resources.yaml) are the same from both kinds of samples:
        the endpoint needs no change there."""
        instances = cf.discover(self.conf,
                                [g.uuid for g in self.guests.guests])
        polled = [s for s in self.pollsters.poll(instances)
                  if s.name in DEFAULT_POLLED]
        usages = self.read_ours()
        (message,) = host_usage.messages(self.conf.host, usages[0].read_at,
                                         usages, 100)
        notified = [s for s in self.endpoint.build_sample(
            cf.as_received(message)) if s.name in DEFAULT_POLLED]
        definitions = cf.load_gnocchi_resources()

        def attributes(samples):
            return {(s.name, s.resource_id): (
                definitions[s.name].cfg['resource_type'],
                definitions[s.name].sample_attributes(s)) for s in samples}

        from_pollsters = attributes(polled)
        from_ours = attributes(notified)
        self.assertEqual(sorted(from_pollsters), sorted(from_ours))
        self.assertEqual(from_pollsters, from_ours)
        types = {t for t, _a in from_ours.values()}
        self.assertEqual({'instance', 'instance_disk',
                          'instance_network_interface'}, types)
        for resource_type, attrs in from_ours.values():
            # gnocchi requires a name for disks and vNICs.
            if resource_type != 'instance':
                self.assertTrue(attrs['name'])

    def test_shut_off_guest_gives_nothing_on_either_side(self):
        guest = self.guests.guests[0]
        self.guests.domain(guest).destroy()
        instances = cf.discover(self.conf, [guest.uuid])
        polled = self.pollsters.poll(instances)
        usages = [u for u in self.reader.read_all(base.EVERY_KIND)
                  if u.uuid == guest.uuid]
        (message,) = host_usage.messages(self.conf.host, base.utcnow(),
                                         usages, 100)
        ours = list(self.endpoint.build_sample(cf.as_received(message)))
        self.assertEqual([], [s.name for s in polled
                              if s.name in DEFAULT_POLLED])
        self.assertEqual([], ours)


class TestBalloonGuestParity(testtools.TestCase):
    """A guest that boots Linux with a balloon driver: memory.usage and
    memory.available with real values, and every other default meter, as
    ceilometer's pollsters give them."""

    def setUp(self):
        super().setUp()
        self.conf = self.useFixture(cf.CeilometerConf()).conf
        self.balloon = self.useFixture(balloon_guest.BalloonGuest())
        self.conf.set_override('libvirt_uri', qemu_fixtures.URI)
        self.pollsters = self.useFixture(cf.ComputePollsters(self.conf))
        self.reader = libvirt_usage.LibvirtUsageReader(
            libvirt_usage.LibvirtConnection(qemu_fixtures.URI))
        self.addCleanup(self.reader.close)
        self.endpoint = ceilometer_endpoint.UsageNotifications(
            self.conf, None)

    def test_memory_meters_with_real_values(self):
        guest = self.balloon.guest
        instances = cf.discover(self.conf, [guest.uuid])
        low = self.pollsters.poll(instances)
        (usage,) = [u for u in self.reader.read_all(base.EVERY_KIND)
                    if u.uuid == guest.uuid]
        (message,) = host_usage.messages(self.conf.host, usage.read_at,
                                         [usage], 100)
        ours = list(self.endpoint.build_sample(cf.as_received(message)))
        high = self.pollsters.poll(instances)

        def keyed(samples):
            return {(s.name, s.resource_id): s for s in samples
                    if s.name in DEFAULT_POLLED}

        low, high, mine = keyed(low), keyed(high), keyed(ours)
        self.addDetail('memory', content.text_content(json.dumps(
            {k[0]: [low[k].volume, mine.get(k) and mine[k].volume,
                    high[k].volume] for k in low
             if k[0].startswith('memory')})))
        # All twelve default meters, memory included, on both sides.
        self.assertEqual(set(DEFAULT_POLLED), {name for name, _ in low})
        self.assertEqual(sorted(low), sorted(mine))
        for name in ('memory.usage', 'memory.available'):
            key = (name, guest.uuid)
            first, second, ours_ = low[key], high[key], mine[key]
            self.assertEqual(('gauge', 'MiB'), (ours_.type, ours_.unit))
            self.assertGreater(ours_.volume, 0)
            bounds = sorted((first.volume, second.volume))
            self.assertTrue(bounds[0] <= ours_.volume <= bounds[1],
                            '%s: %s not within %s' % (name, ours_.volume,
                                                      bounds))
            for meta in SAME_METADATA:
                self.assertEqual(first.resource_metadata.get(meta),
                                 ours_.resource_metadata.get(meta),
                                 (name, meta))
        # The guest's own figures, read in the one bulk call.
        stats = self.balloon.domain().memoryStats()
        self.assertEqual(stats['available'] / 1024,
                         mine[('memory.available', guest.uuid)].volume)


class TestNotificationAgent(testtools.TestCase):
    """host.usage from the service's loop, over the real RabbitMQ, through
    ceilometer's notification agent, which loads the endpoint from its
    entry point; the message as it arrives matches the documented
    sample."""

    def setUp(self):
        super().setUp()
        self.conf = self.useFixture(cf.CeilometerConf()).conf

    def test_every_compute_pollster_is_classified(self):
        pollsters = self.useFixture(cf.ComputePollsters(self.conf))
        self.assertEqual(sorted(pollsters.entry_points()),
                         sorted(set(cf.METERS) | set(cf.OUT_OF_SCOPE)))
        self.assertEqual(set(), set(cf.METERS) & set(cf.OUT_OF_SCOPE))
        self.assertEqual(set(DEFAULT_POLLED) | set(ALSO), set(cf.METERS))

    def test_entry_point(self):
        manager = extension.ExtensionManager(
            namespace='ceilometer.sample.endpoint', invoke_on_load=True,
            invoke_args=(self.conf, None))
        endpoint = {ext.name: ext.obj for ext in manager}['nova_usage_ext']
        self.assertIsInstance(endpoint,
                              ceilometer_endpoint.UsageNotifications)
        for event_type, wanted in (('host.usage', True),
                                   ('compute.instance.exists', True),
                                   ('instance.usage', True),
                                   ('compute.instance.delete.start', False),
                                   ('instance.exists', False),
                                   ('host.usage.x', False)):
            self.assertEqual(wanted, endpoint.filter_rule.match(
                {}, 'nova-compute:h', event_type, {}, {}), event_type)

    def test_host_usage_reaches_ceilometer_as_samples(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        topic = 'usage-ext-host-%s' % uuidlib.uuid4().hex
        agent = self.useFixture(cf.NotificationAgent(
            self.conf, topic, [cf.PACKAGED_METERS_DIR],
            os.path.join(tmp, 'samples.json')))
        # nova-compute's side: the notification drivers' sender on
        # exchange "nova", a listener of ours on a topic beside.
        sender_conf = bus.nova_sender_conf()
        listener = self.useFixture(bus.Listener(sender_conf))
        # nova's legacy notifier's topics, where ceilometer listens.
        sender_conf.set_override('topics', [topic, listener.topic],
                                 group='oslo_messaging_notifications')
        send = host_usage.DriversOnNovaTopics(sender_conf, ['messagingv2'])
        node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(i, n_disks=2).replace(
                '</devices>', "<memballoon model='virtio'/></devices>")
            for i in range(3)]))
        sender = host_usage.HostUsageSender(HOST, 300, 2, send)
        service = usage_service.UsageService(
            libvirt_usage.LibvirtUsageReader(node.connection),
            ledger.Ledger(state.Store(tmp)), HOST, {}, host_usage=sender)
        self.addCleanup(service.stop)
        service.poll_due()
        self.assertTrue(sender.wait_idle(20))
        self.assertEqual((2, 0, 0), (sender.sent, sender.failed,
                                     sender.skipped))
        received = listener.wait_for(2)
        self.assertEqual(['host.usage'] * 2,
                         [m['event_type'] for m in received])
        # The documented sample is what goes on the wire.
        with open(os.path.join(cf.REPO, 'doc', 'notification_samples',
                               'host.usage.json')) as f:
            sample = json.load(f)
        for message in received:
            self.assertEqual(sample['publisher_id'],
                             message['publisher_id'])
            self.assertEqual(sample['priority'], message['priority'])
            self.assertEqual([], test_notifier.shape_mismatches(
                sample['payload'], message['payload']))
        expected = sorted(
            (s['name'], s['resource_id'], s['volume'])
            for message in received
            for s in ceilometer_meters.samples(message))
        self.assertEqual(3 * (1 + 1 + 2 + 2 * 4 + 8), len(expected))
        deadline = time.monotonic() + 20
        while True:
            published = sorted(
                (s['name'], s['resource_id'], s['volume'])
                for s in agent.published() if s['source'] ==
                'nova-usage-ext')
            if len(published) >= len(expected) or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(expected, published)

    def test_final_exists_reaches_ceilometer_as_samples(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        topic = 'usage-ext-ceilometer-%s' % uuidlib.uuid4().hex
        agent = self.useFixture(cf.NotificationAgent(
            self.conf, topic, [cf.PACKAGED_METERS_DIR],
            os.path.join(tmp, 'samples.json')))
        # nova-compute's side: its notifier, through this package's driver,
        # on exchange "nova"; a listener of ours gets a copy.
        sender = bus.nova_sender_conf()
        sender.set_override('notification_drivers', ['messagingv2'],
                            group='usage_ext')
        listener = self.useFixture(bus.Listener(sender))
        node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(0, n_disks=2, n_nics=2)]))
        service = usage_service.UsageService(
            libvirt_usage.LibvirtUsageReader(node.connection),
            ledger.Ledger(state.Store(tmp)), HOST, {})
        usage_service.register(service)
        self.addCleanup(usage_service.unregister, service)
        service.start()  # the outbox's delivery, as init_host starts it
        self.addCleanup(service.stop)
        transport = oslo_messaging.get_notification_transport(
            sender, url=bus.RABBIT_URL)
        self.addCleanup(transport.cleanup)
        notifier = oslo_messaging.Notifier(
            transport, driver='nova_usage_ext',
            topics=[topic, listener.topic], publisher_id='compute.%s' % HOST)

        uuid = str(uuidlib.UUID(int=1))
        notifier.info({}, 'compute.instance.delete.start',
                      _legacy_payload(uuid))
        final, delete = listener.wait_for(2)
        self.assertEqual(exists.EVENT_TYPE, final['event_type'])
        self.assertEqual('compute.instance.delete.start',
                         delete['event_type'])
        expected = sorted((s['name'], s['resource_id'], s['volume'])
                          for s in ceilometer_meters.samples(final))
        # cpu, 2 disks, 2 vNICs
        self.assertEqual(1 + 2 * 4 + 2 * 8, len(expected))

        # Both messages processed: ceilometer's own memory meter comes from
        # each of them.
        deadline = time.monotonic() + 15
        while True:
            published = agent.published()
            memory = [s for s in published if s['name'] == 'memory']
            ours = [s for s in published if s['source'] == 'nova-usage-ext']
            if len(memory) >= 2 and len(ours) >= len(expected):
                break
            if time.monotonic() > deadline:
                self.fail('ceilometer published %d samples of ours (of %d) '
                          'and %d memory samples (of 2)'
                          % (len(ours), len(expected), len(memory)))
            time.sleep(0.05)
        self.assertEqual(expected, sorted(
            (s['name'], s['resource_id'], s['volume']) for s in ours))
        for sample in ours:
            self.assertTrue(sample['resource_metadata']['final'])
            self.assertEqual('deleted',
                             sample['resource_metadata']['final_reason'])
            self.assertEqual(uuid,
                             sample['resource_metadata']['instance_id'])
        self.assertEqual([uuid, uuid], [s['resource_id'] for s in memory])
        # The samples are stamped with the moment of the final reading.
        data = final['payload']['usage']['nova_object.data']
        read_at = datetime.datetime.fromisoformat(
            data['read_at'].replace('Z', '+00:00'))
        self.assertEqual({read_at.isoformat()},
                         {s['timestamp'] for s in ours})


def _legacy_payload(uuid):
    """What nova 34's legacy delete.start carries (a subset)."""
    return {'tenant_id': 'p' * 32, 'user_id': 'u' * 32,
            'instance_id': uuid, 'display_name': 'vm-0',
            'instance_type': 'm1.tiny', 'instance_flavor_id': '1',
            'memory_mb': 64, 'vcpus': 1, 'root_gb': 1, 'ephemeral_gb': 0,
            'disk_gb': 1, 'host': HOST, 'state': 'active',
            'launched_at': '2026-11-20T08:00:00.000000'}
