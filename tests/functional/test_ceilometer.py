"""etc/ceilometer/meters.d/nova-usage-ext.yaml through ceilometer 27's code.

1. The definitions in ceilometer's own ProcessMeterNotifications, next to
   ceilometer's packaged ones, on the documented samples and on messages
   built by this package.
2. Parity with ceilometer's compute pollsters on real QEMU guests: the same
   meters, resource ids, owners, types and units; volumes within the
   counters' movement between two polls.
3. ceilometer's notification agent on the real RabbitMQ: a final exists sent
   through this package's notifier driver comes out of its file publisher.
"""

import copy
import dataclasses
import datetime
import glob
import json
import logging
import os
import time
import uuid as uuidlib

import fixtures
import oslo_messaging
import testtools
import yaml
from testtools import content

from nova_usage_ext import conf as usage_conf
from nova_usage_ext import ledger
from nova_usage_ext import state
from nova_usage_ext import exists
from nova_usage_ext import service as usage_service
from nova_usage_ext.virt import base
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_node
from tests.functional import bus
from tests.functional import ceilometer_fixtures as cf
from tests.functional import fixtures as qemu_fixtures

SAMPLES_DIR = os.path.join(cf.REPO, 'doc', 'notification_samples')
HOST = 'compute-1'
PACKAGED_INSTANCE_METERS = {'memory', 'vcpus', 'disk.root.size',
                            'disk.ephemeral.size'}
PER_DISK = [m for m, spec in cf.METERS.items() if spec[2] == 'disk']
PER_VNIC = [m for m, spec in cf.METERS.items() if spec[2] == 'vnic']


def _record_data(usage):
    """A reader's InstanceUsage as payload data, written out here from the
    record (not through the package's serialization)."""
    def present(record, names):
        return {n: getattr(record, n) for n in names
                if getattr(record, n) is not None}

    data = {'instance_uuid': usage.uuid, 'instance_name': usage.name,
            'project_id': usage.project_id, 'user_id': usage.user_id,
            'read_at': usage.read_at.replace(microsecond=0).isoformat()}
    data.update(present(usage, ['cpu_time_ns', 'vcpu_time_ns']))
    data['disks'] = [{'nova_object.data': dict(
        present(d, [cf.METERS[m][3] for m in PER_DISK]), device=d.device)}
        for d in usage.disks]
    data['interfaces'] = [{'nova_object.data': dict(
        present(i, [cf.METERS[m][3] for m in PER_VNIC]), name=i.name)}
        for i in usage.interfaces]
    return data


def _legacy_payload(uuid):
    """What nova 34's legacy delete.start carries (a subset)."""
    return {'tenant_id': 'p' * 32, 'user_id': 'u' * 32,
            'instance_id': uuid, 'display_name': 'vm-0',
            'instance_type': 'm1.tiny', 'instance_flavor_id': '1',
            'memory_mb': 64, 'vcpus': 1, 'root_gb': 1, 'ephemeral_gb': 0,
            'disk_gb': 1, 'host': HOST, 'state': 'active',
            'launched_at': '2026-11-20T08:00:00.000000'}


class CeilometerTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(60, gentle=True))
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.INFO))
        self.conf = self.useFixture(cf.CeilometerConf()).conf


class TestMeterDefinitions(CeilometerTestCase):
    """The definitions in ceilometer's ProcessMeterNotifications."""

    def processor(self, *dirs):
        return cf.meter_processor(self.conf, dirs or (cf.METERS_DIR,
                                                      cf.PACKAGED_METERS_DIR))

    def doc_samples(self):
        paths = sorted(glob.glob(os.path.join(SAMPLES_DIR, '*.json')))
        self.assertEqual(3, len(paths), paths)
        for path in paths:
            with open(path) as f:
                yield os.path.basename(path), json.load(f)

    def test_definitions_load_next_to_ceilometers_without_clash(self):
        with open(cf.METERS_FILE) as f:
            entries = yaml.safe_load(f)['metric']
        ours = self.processor(cf.METERS_DIR)
        packaged = self.processor(cf.PACKAGED_METERS_DIR)
        both = self.processor(cf.METERS_DIR, cf.PACKAGED_METERS_DIR)
        # ceilometer only logs a definition it rejects: count them.
        self.assertEqual(len(cf.OURS), len(entries))
        self.assertEqual(len(entries), len(ours.definitions))
        # ... and it skips a name it has seen (in any file): none skipped.
        self.assertEqual(len(ours.definitions) + len(packaged.definitions),
                         len(both.definitions))
        self.assertNotIn('Skipping duplicate meter definition',
                         self.log.output)
        self.assertNotIn('Error loading meter definition', self.log.output)
        packaged_names = {d.cfg['name'] for d in packaged.definitions}
        self.assertEqual(set(), cf.OURS & packaged_names)
        self.assertTrue(PACKAGED_INSTANCE_METERS <= packaged_names)
        # What each file makes of the usage messages: ours only our meters,
        # ceilometer's none of them.
        for name, message in self.doc_samples():
            from_ours = {s.name for s in cf.build_samples(ours, message)}
            from_packaged = {s.name
                             for s in cf.build_samples(packaged, message)}
            self.assertEqual(cf.OURS, from_ours, name)
            self.assertEqual(set(), from_packaged & cf.OURS, name)

    def test_documented_samples(self):
        processor = self.processor()
        for name, message in self.doc_samples():
            samples = cf.build_samples(processor, message)
            data = cf.usage_data(message)
            expected = cf.expected_samples(data)
            # one cpu, two disks, one interface: every counter present;
            # and the disks summed
            self.assertEqual(1 + 2 * len(PER_DISK) + len(PER_VNIC) +
                             len(cf.AGGREGATE_DISK_METERS),
                             len(expected), name)
            self.assertEqual(expected, cf.ours(samples), name)
            for sample in samples:
                if sample.name not in cf.OURS:
                    continue
                meta = sample.resource_metadata
                self.assertEqual(data['instance_uuid'], meta['instance_id'])
                self.assertEqual(data['display_name'], meta['display_name'])
                self.assertEqual(data['host'], meta['host'])
                self.assertEqual(data['flavor_name'], meta['instance_type'])
                self.assertEqual(data['source'], meta['usage_source'])
                self.assertEqual(message['event_type'], meta['event_type'])
                self.assertEqual(data['final'], meta.get('final', False))
                if message['event_type'] == exists.EVENT_TYPE:
                    self.assertEqual(message['payload']['instance_flavor_id'],
                                     meta['flavor_id'])
            # ceilometer's own instance meters still come from the exists
            others = {s.name for s in samples if s.name not in cf.OURS}
            self.assertEqual(PACKAGED_INSTANCE_METERS
                             if message['event_type'] == exists.EVENT_TYPE
                             else set(), others, name)

    def read_test_node(self, *domains):
        node = self.useFixture(libvirt_node.TestNode(list(domains)))
        reader = libvirt_usage.LibvirtUsageReader(node.connection)
        return node, reader

    def package_messages(self, usage):
        """The three messages this package sends for one reading."""
        legacy = exists.exists_notification(usage, HOST)
        versioned = exists.notification(
            exists.usage_primitive(usage, HOST), HOST, usage.read_at,
            event_type='instance.usage')
        versioned['publisher_id'] = 'nova-compute:%s' % HOST
        final = exists.notification(exists.exists_payload(
            exists.legacy_fields(usage, HOST),
            exists.usage_primitive(usage, HOST, final=True),
            exists.audit_period_start(usage.read_at, 'hour'),
            usage.read_at), HOST, usage.read_at)
        return {'exists': legacy, 'instance.usage': versioned,
                'final exists': final}

    def test_messages_built_by_this_package(self):
        _node, reader = self.read_test_node(
            libvirt_node.nova_test_domain(0, n_disks=2, n_nics=2),
            libvirt_node.nova_test_domain(1, n_disks=1, n_nics=3))
        processor = self.processor()
        usages = reader.read_all()
        self.assertEqual(2, len(usages))
        for usage in usages:
            expected = cf.expected_samples(_record_data(usage))
            self.assertEqual(
                1 + len(usage.disks) * len(PER_DISK) +
                len(usage.interfaces) * len(PER_VNIC) +
                len(cf.AGGREGATE_DISK_METERS), len(expected))
            for what, message in self.package_messages(usage).items():
                samples = cf.build_samples(processor, message)
                self.assertEqual(expected, cf.ours(samples),
                                 '%s of %s' % (what, usage.name))
                final = [s.resource_metadata.get('final') for s in samples
                         if s.name in cf.OURS]
                self.assertEqual(
                    [True if what == 'final exists' else None] *
                    len(expected), final)

    def test_absent_counters_give_no_sample(self):
        node, reader = self.read_test_node(
            libvirt_node.nova_test_domain(0, n_disks=2, n_nics=2),
            libvirt_node.nova_test_domain(1))
        node.conn.lookupByUUIDString(str(uuidlib.UUID(int=2))).destroy()
        processor = self.processor()
        usages = {u.uuid: u for u in reader.read_all()}
        running = usages[str(uuidlib.UUID(int=1))]
        stopped = usages[str(uuidlib.UUID(int=2))]
        self.assertEqual(base.SHUTDOWN, stopped.state)

        # A busy disk (its counters missed this cycle) and counters the
        # hypervisor does not keep.
        partial = copy.deepcopy(running)
        partial.disks[0] = dataclasses.replace(
            partial.disks[0], read_bytes=None, read_requests=None,
            write_bytes=None, write_requests=None)
        partial.disks[1].write_requests = None
        partial.interfaces[1].rx_drops = None
        partial.interfaces[1].tx_errors = None

        # cpu, the second disk's 3 counters, the interfaces' less 2, and
        # 3 of the 4 sums (no disk has write_requests)
        for usage, count in ((stopped, 0),
                             (partial, 1 + 3 + 2 * len(PER_VNIC) - 2 + 3)):
            for what, message in self.package_messages(usage).items():
                samples = cf.build_samples(processor, message)
                self.assertEqual(cf.expected_samples(_record_data(usage)),
                                 cf.ours(samples), what)
                self.assertEqual(count, len(cf.ours(samples)), what)
                # never a sample without a volume (the pipeline would drop
                # it with a warning)
                self.assertEqual([], [s.name for s in samples
                                      if s.volume is None], what)
        self.assertNotIn('fetched meters contain', self.log.output)


class TestParityWithComputePollsters(CeilometerTestCase):
    """The same guests through ceilometer's pollsters and through this
    package's exists and the definitions."""

    def setUp(self):
        super().setUp()
        self.guests = self.useFixture(qemu_fixtures.QemuGuests(2))
        self.conf.set_override('libvirt_uri', qemu_fixtures.URI)
        self.pollsters = self.useFixture(cf.ComputePollsters(self.conf))
        self.processor = cf.meter_processor(self.conf, [cf.METERS_DIR])
        connection = libvirt_usage.LibvirtConnection(qemu_fixtures.URI)
        self.reader = libvirt_usage.LibvirtUsageReader(connection)
        self.addCleanup(self.reader.close)

    def read_ours(self, timeout=10):
        """This package's readings of the guests, once every disk came with
        its counters (another test process's reader may hold a guest's job
        for a moment, and the reader does not wait for it)."""
        wanted = {g.uuid for g in self.guests.guests}
        deadline = time.monotonic() + timeout
        while True:
            usages = [u for u in self.reader.read_all() if u.uuid in wanted]
            if len(usages) == len(wanted) and all(
                    d.read_requests is not None
                    for u in usages for d in u.disks):
                return usages
            if time.monotonic() > deadline:
                self.fail('no complete reading of %s within %d s'
                          % (sorted(wanted), timeout))
            time.sleep(0.05)

    def test_same_meters_as_ceilometer_compute_pollsters(self):
        # Every compute pollster is classified: ours, or out of scope.
        entry_points = self.pollsters.entry_points()
        self.assertEqual(sorted(entry_points),
                         sorted(set(cf.METERS) | set(cf.OUT_OF_SCOPE)))
        self.assertEqual(set(), set(cf.METERS) & set(cf.OUT_OF_SCOPE))
        self.assertEqual(set(), entry_points &
                         set(cf.AGGREGATE_DISK_METERS))

        instances = cf.discover(self.conf,
                                [g.uuid for g in self.guests.guests])
        self.assertEqual(sorted(g.uuid for g in self.guests.guests),
                         sorted(i.id for i in instances))

        low = self.pollsters.poll(instances)
        usages = self.read_ours()
        ours = []
        for usage in usages:
            legacy = cf.build_samples(
                self.processor, exists.exists_notification(usage, HOST))
            versioned = cf.build_samples(self.processor, exists.notification(
                exists.usage_primitive(usage, HOST), HOST, usage.read_at,
                event_type='instance.usage'))
            self.assertEqual(cf.ours(legacy), cf.ours(versioned))
            ours.extend(legacy)
        high = self.pollsters.poll(instances)

        self.assertEqual([], sorted({s.name for s in low + high} -
                                    set(cf.METERS) - set(cf.OUT_OF_SCOPE)))
        low = {cf.sample_key(s): s for s in cf.ours(low)}
        high = {cf.sample_key(s): s for s in cf.ours(high)}
        ours = {cf.sample_key(s): s for s in cf.ours(ours)}
        # The disks summed: ceilometer 27 has no pollster for them; they
        # must lie between the sums of its per-disk samples.
        summed = {key: ours.pop(key) for key in list(ours)
                  if key[0] in cf.AGGREGATE_DISK_METERS}
        self.assertEqual(sorted((name, g.uuid)
                                for name in cf.AGGREGATE_DISK_METERS
                                for g in self.guests.guests), sorted(summed))
        for (name, uuid), mine in summed.items():
            per_disk = 'disk.device.' + name[len('disk.'):]
            total = [sum(s['volume'] for (n, rid), s in side.items()
                         if n == per_disk and rid.startswith(uuid + '-'))
                     for side in (low, high)]
            self.assertTrue(total[0] <= mine['volume'] <= total[1],
                            '%s of %s: %s not within %s'
                            % (name, uuid, mine['volume'], total))
            self.assertEqual(cf.METERS[per_disk][:2],
                             (mine['type'], mine['unit']))
        self.addDetail('samples', content.text_content(json.dumps(
            {'ceilometer, first poll': list(low.values()),
             'nova-usage-ext': list(ours.values()),
             'ceilometer, second poll': list(high.values())},
            indent=1, default=str)))

        # Each guest: 1 cpu, 1 disk, 1 vNIC; every meter from both sides.
        per_guest = 1 + len(PER_DISK) + len(PER_VNIC)
        self.assertEqual(2 * per_guest, len(low))
        self.assertEqual(sorted(low), sorted(high))
        self.assertEqual(sorted(low), sorted(ours),
                         'missing or extra meters')
        by_resource = {}
        for key in sorted(low):
            name, resource_id = key
            mine, first, second = ours[key], low[key], high[key]
            for attr in ('type', 'unit', 'project_id', 'user_id'):
                self.assertEqual(first[attr], mine[attr], (key, attr))
                self.assertEqual(first[attr], second[attr], (key, attr))
            bounds = (first['volume'], second['volume'])
            self.assertTrue(bounds[0] <= mine['volume'] <= bounds[1],
                            '%s: %s not within %s' % (key, mine['volume'],
                                                      bounds))
            by_resource.setdefault(resource_id, set()).add(name)
        # The guests' counters, owners and names as the test defined them.
        for guest in self.guests.guests:
            tap = '%s-%s-%s' % (guest.name, guest.uuid, guest.tap)
            disk = '%s-%s' % (guest.uuid, guest.disk_device)
            self.assertEqual({'cpu'}, by_resource[guest.uuid])
            self.assertEqual(set(PER_DISK), by_resource[disk])
            self.assertEqual(set(PER_VNIC), by_resource[tap])
            self.assertEqual(guest.project_id, ours[('cpu', guest.uuid)][
                'project_id'])
            self.assertEqual(guest.user_id, ours[('cpu', guest.uuid)][
                'user_id'])

    def test_gnocchi_resource_attributes(self):
        """Gnocchi's resource attributes from both kinds of samples, with
        the attributes of etc/ceilometer/gnocchi-resources-*.yaml."""
        instances = cf.discover(self.conf,
                                [g.uuid for g in self.guests.guests])
        polled = [s for s in self.pollsters.poll(instances)
                  if s.name in cf.METERS]
        notified = []
        for usage in self.read_ours():
            notified.extend(
                s for s in cf.build_samples(
                    self.processor, exists.exists_notification(usage, HOST))
                if s.name in cf.METERS)
        with open(cf.GNOCCHI_ATTRIBUTES_FILE) as f:
            snippet = yaml.safe_load(f)['resources']
        packaged = cf.load_gnocchi_resources()
        amended = cf.load_gnocchi_resources(snippet)

        def attributes(definitions, samples):
            return {(s.name, s.resource_id): (
                definitions[s.name].cfg['resource_type'],
                definitions[s.name].sample_attributes(s)) for s in samples}

        from_pollsters = attributes(packaged, polled)
        self.assertEqual(from_pollsters, attributes(amended, polled))
        from_ours = attributes(amended, notified)
        for key, (resource_type, attrs) in sorted(from_ours.items()):
            expected_type, expected = from_pollsters[key]
            self.assertEqual(expected_type, resource_type, key)
            # the attributes gnocchi requires for the resource type
            for attr in ('name', 'instance_id'):
                if key[0] != 'cpu':
                    self.assertEqual(expected[attr], attrs[attr], key)
            if key[0] == 'cpu':
                for attr in ('host', 'display_name', 'flavor_name'):
                    self.assertIn(attr, attrs, key)
        # Without the amended attributes gnocchi could not create the
        # disk and vNIC resources of these samples (no name).
        unamended = attributes(packaged, notified)
        self.assertEqual([], [k for k, (_t, a) in unamended.items()
                              if k[0] != 'cpu' and 'name' in a])


class TestNotificationAgent(CeilometerTestCase):
    """ceilometer's notification agent on the real bus."""

    def test_final_exists_reaches_ceilometer_as_samples(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        topic = 'usage-ext-ceilometer-%s' % uuidlib.uuid4().hex
        agent = self.useFixture(cf.NotificationAgent(
            self.conf, topic, [cf.METERS_DIR, cf.PACKAGED_METERS_DIR],
            os.path.join(tmp, 'samples.json')))

        # nova-compute's side: its notifier, through this package's driver,
        # on exchange "nova"; a listener of ours gets a copy.
        sender = bus.make_conf()
        usage_conf.register_opts(sender)
        oslo_messaging.get_notification_transport(
            sender, url=bus.RABBIT_URL).cleanup()
        sender.set_override('control_exchange', 'nova')
        # The package sends its final exists over a transport of its own
        # made from the same option as nova's notifier.
        sender.set_override('transport_url', bus.RABBIT_URL,
                            group='oslo_messaging_notifications')
        sender.set_override('notification_drivers', ['messagingv2'],
                            group='usage_ext')
        listener = self.useFixture(bus.Listener(sender))
        node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(0, n_disks=2, n_nics=2)]))
        service = usage_service.UsageService(
            libvirt_usage.LibvirtUsageReader(node.connection),
            ledger.Ledger(state.Store(tmp)),
            HOST, {})
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
        data = cf.usage_data(final)
        self.assertTrue(data['final'])
        expected = cf.expected_samples(data)
        self.assertEqual(1 + 2 * len(PER_DISK) + 2 * len(PER_VNIC) +
                         len(cf.AGGREGATE_DISK_METERS), len(expected))

        # Both messages processed: ceilometer's own memory meter comes from
        # each of them.
        deadline = time.monotonic() + 15
        while True:
            published = agent.published()
            memory = [s for s in published if s['name'] == 'memory']
            if len(memory) >= 2 and len(cf.ours(published)) >= len(expected):
                break
            if time.monotonic() > deadline:
                self.fail('ceilometer published %d samples of ours (of %d) '
                          'and %d memory samples (of 2): %s'
                          % (len(cf.ours(published)), len(expected),
                             len(memory), sorted(cf.sample_key(s) for s in
                                                 cf.ours(published))))
            time.sleep(0.05)
        self.assertEqual(expected, cf.ours(published))
        for sample in published:
            if sample['name'] in cf.OURS:
                self.assertTrue(sample['resource_metadata']['final'])
                self.assertEqual(uuid,
                                 sample['resource_metadata']['instance_id'])
        self.assertEqual([uuid, uuid], [s['resource_id'] for s in memory])
        # The samples are stamped with the moment of the final reading.
        read_at = datetime.datetime.fromisoformat(
            data['read_at'].replace('Z', '+00:00'))
        self.assertEqual({read_at.isoformat()},
                         {s['timestamp'] for s in cf.ours(published)})
