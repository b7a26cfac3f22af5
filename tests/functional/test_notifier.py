"""The notification hook on a real RabbitMQ, read back by a real listener.

The hypervisor is libvirt's test driver (in process); the notifications
are the shapes nova 34 sends.
"""

import json
import os
import socket
import threading
import time

import fixtures
import oslo_messaging
import testtools
from oslo_context import context as oslo_context
from oslo_messaging.notify import _impl_test

from nova_usage_ext import conf as usage_conf
from nova_usage_ext import ledger
from nova_usage_ext import state
from nova_usage_ext.objects import usage as usage_objects
from nova_usage_ext import service as usage_service
from nova_usage_ext.virt import base
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_node
from tests.functional import bus

UUID0 = '00000000-0000-0000-0000-000000000001'
UUID1 = '00000000-0000-0000-0000-000000000002'


def legacy_payload(uuid, **extra):
    """The fields nova's info_from_instance gives (a subset)."""
    payload = {'tenant_id': 'p' * 32, 'user_id': 'u' * 32,
               'instance_id': uuid, 'display_name': 'vm',
               'instance_type': 'm1.tiny', 'memory_mb': 64, 'vcpus': 1,
               'root_gb': 1, 'ephemeral_gb': 0, 'disk_gb': 1,
               'host': 'compute-1', 'state': 'active',
               'launched_at': '2026-11-20T08:00:00.000000'}
    payload.update(extra)
    return payload


def versioned_payload(uuid, name='InstanceActionPayload', **extra):
    data = {'uuid': uuid, 'tenant_id': 'p' * 32, 'user_id': 'u' * 32,
            'host': 'compute-1', 'display_name': 'vm', 'state': 'active',
            'flavor': {'nova_object.name': 'FlavorPayload',
                       'nova_object.namespace': 'nova',
                       'nova_object.version': '1.4',
                       'nova_object.data': {'name': 'm1.tiny',
                                            'flavorid': '1',
                                            'memory_mb': 64, 'vcpus': 1,
                                            'root_gb': 1,
                                            'ephemeral_gb': 0}}}
    data.update(extra)
    return {'nova_object.name': name, 'nova_object.namespace': 'nova',
            'nova_object.version': '1.9', 'nova_object.data': data}


class ContextSerializer(oslo_messaging.NoOpSerializer):
    """What nova's RequestContextSerializer does to a context: the
    drivers get its dict (request_id included)."""

    def serialize_context(self, ctxt):
        return ctxt.to_dict() if hasattr(ctxt, 'to_dict') else ctxt


def nova_context(request_id):
    return oslo_context.RequestContext(request_id=request_id)


class HookTestCase(testtools.TestCase):

    drivers = ['messagingv2']
    budget = 2.0

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger())
        self.conf = bus.make_conf()
        usage_conf.register_opts(self.conf)
        self.conf.set_override('notification_drivers', self.drivers,
                               group='usage_ext')
        self.conf.set_override('final_exists_budget', self.budget,
                               group='usage_ext')
        self.node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(0),
            libvirt_node.nova_test_domain(1)]))
        self.reader = libvirt_usage.LibvirtUsageReader(self.node.connection)
        self.service = self.start_service(self.deployed_state_dir())
        # Each test's notifier driver registers the sender the outbox goes
        # through: none may be left for the next test (its topic is gone).
        self.addCleanup(usage_service.register_sender, None)
        self.listener = self.useFixture(bus.Listener(self.conf))

    def deployed_state_dir(self):
        """State of a package deployed before the instances started: it
        exists (empty), so their usage counts from their process's start.
        (A fresh state baselines the first read: see
        test_instances_found_by_a_new_deployment_count_from_then.)"""
        path = self.useFixture(fixtures.TempDir()).path
        state.Store(path).close()
        return path

    def start_service(self, state_dir, reader=None):
        """A registered service whose outbox delivery runs, as
        ``init_host`` leaves it."""
        service = usage_service.UsageService(
            reader or self.reader, ledger.Ledger(state.Store(state_dir)),
            'compute-1', {})
        usage_service.register(service)
        self.addCleanup(usage_service.unregister, service)
        service.start()
        self.addCleanup(service.stop)
        return service

    def notifier(self, url=bus.RABBIT_URL, publisher_id='compute.compute-1',
                 retry=None):
        # nova's notifier and the package's own sender both take the
        # notification transport_url from nova.conf.
        transport = oslo_messaging.get_notification_transport(self.conf,
                                                              url=url)
        self.conf.set_override('transport_url', url,
                               group='oslo_messaging_notifications')
        self.addCleanup(transport.cleanup)
        return oslo_messaging.Notifier(
            transport, driver='nova_usage_ext', topics=[self.listener.topic],
            publisher_id=publisher_id, retry=retry,
            serializer=ContextSerializer())

    def dom(self, uuid):
        return self.node.conn.lookupByUUIDString(uuid)


class TestPassThrough(HookTestCase):

    def test_outside_nova_compute_nothing_changes(self):
        usage_service.unregister(self.service)
        notifier = self.notifier()
        for event in ('compute.instance.exists',
                      'compute.instance.delete.start'):
            notifier.info({}, event, legacy_payload(UUID0))
        first, second = self.listener.wait_for(2)
        self.assertEqual(legacy_payload(UUID0), first['payload'])
        self.assertEqual('compute.instance.delete.start',
                         second['event_type'])
        time.sleep(0.3)
        self.assertEqual(2, len(self.listener.messages))

    def test_other_notifications_pass_unchanged(self):
        self.notifier().info({}, 'compute.instance.create.end',
                             legacy_payload(UUID0))
        (message,) = self.listener.wait_for(1)
        self.assertEqual(legacy_payload(UUID0), message['payload'])
        self.assertEqual('compute.compute-1', message['publisher_id'])


class TestExists(HookTestCase):

    def exists_usage(self, uuid=UUID0):
        self.notifier().info({}, 'compute.instance.exists', legacy_payload(
            uuid, audit_period_beginning='2026-11-22 09:00:00',
            audit_period_ending='2026-11-22 10:00:00'))
        (message,) = self.listener.wait_for(1)
        self.assertEqual('2026-11-22 10:00:00',
                         message['payload']['audit_period_ending'])
        usage = message['payload']['usage']
        self.assertEqual('InstanceUsagePayload', usage['nova_object.name'])
        return usage['nova_object.data']

    def test_legacy_exists_carries_usage_read_for_it(self):
        # nova sends exists of the current period right before rebuild,
        # rescue or shelve end the guest's process: the last poll is old.
        self.service.poll()
        polled = self.service.latest(UUID0).cpu_time_ns
        before = self.dom(UUID0).info()[4]
        data = self.exists_usage()
        after = self.dom(UUID0).info()[4]
        self.assertEqual(UUID0, data['instance_uuid'])
        self.assertEqual('hypervisor', data['source'])
        self.assertFalse(data['final'])
        self.assertTrue(before <= data['cpu_time_ns'] <= after)
        self.assertGreater(data['cpu_time_ns'], polled)
        # Its first period: everything since the guest started here.
        period = data['period']['nova_object.data']
        self.assertEqual(data['cpu_time_ns'], period['cpu_time_ns'])
        self.assertIsNone(period['period_beginning'])

    def test_exists_carries_the_last_poll_when_the_read_fails(self):
        self.service.poll()
        polled = self.service.latest(UUID0)
        self.useFixture(fixtures.MockPatchObject(
            self.reader, 'read_instance',
            side_effect=base.UsageReaderError('libvirt: timed out')))
        data = self.exists_usage()
        self.assertEqual('cache', data['source'])
        self.assertEqual(polled.cpu_time_ns, data['cpu_time_ns'])
        self.assertEqual(polled.cpu_time_ns, data['period'][
            'nova_object.data']['cpu_time_ns'])
        self.assertIn('libvirt: timed out', self.log.output)

    def test_instances_found_by_a_new_deployment_count_from_then(self):
        # The first poll of a fresh state (the package was just deployed):
        # the instances were running, metered by something else.
        service = self.start_service(
            self.useFixture(fixtures.TempDir()).path)
        # With every poll off, its start read the host once: the baseline.
        first = service.latest(UUID0)
        self.assertIsNotNone(first)
        self.assertEqual(0, service.period_usage(UUID0).cpu_time_ns)
        service.poll()
        self.notifier().info({}, 'compute.instance.exists', legacy_payload(
            UUID0, audit_period_ending='2026-11-22 10:00:00'))
        (message,) = self.listener.wait_for(1)
        data = message['payload']['usage']['nova_object.data']
        period = data['period']['nova_object.data']
        self.assertEqual(data['cpu_time_ns'] - first.cpu_time_ns,
                         period['cpu_time_ns'])
        self.assertEqual(
            first.read_at.strftime('%Y-%m-%dT%H:%M:%SZ'),
            period['period_beginning'])

    def test_next_period_counts_from_the_exists(self):
        self.service.poll()
        notifier = self.notifier()
        notifier.info({}, 'compute.instance.exists', legacy_payload(
            UUID0, audit_period_ending='2026-11-22 10:00:00'))
        self.service.poll()
        notifier.info({}, 'compute.instance.exists', legacy_payload(
            UUID0, audit_period_ending='2026-11-22 11:00:00'))
        first, second = self.listener.wait_for(2)
        raw1 = first['payload']['usage']['nova_object.data']['cpu_time_ns']
        data = second['payload']['usage']['nova_object.data']
        period = data['period']['nova_object.data']
        self.assertEqual('2026-11-22T10:00:00Z', period['period_beginning'])
        # The second period has what the guest used between the two reads.
        self.assertEqual(data['cpu_time_ns'] - raw1, period['cpu_time_ns'])

    def test_exists_of_an_uncached_instance_is_read_live(self):
        before = self.dom(UUID1).info()[4]
        self.notifier().info({}, 'compute.instance.exists',
                             legacy_payload(UUID1))
        (message,) = self.listener.wait_for(1)
        data = message['payload']['usage']['nova_object.data']
        self.assertEqual('hypervisor', data['source'])
        self.assertGreaterEqual(data['cpu_time_ns'], before)

    def test_exists_of_an_unknown_instance_goes_out_without_usage(self):
        uuid = '00000000-0000-0000-0000-0000000000ff'
        self.notifier().info({}, 'compute.instance.exists',
                             legacy_payload(uuid))
        (message,) = self.listener.wait_for(1)
        self.assertEqual(legacy_payload(uuid), message['payload'])

    def test_versioned_exists_is_followed_by_usage(self):
        self.service.poll()
        notifier = self.notifier(publisher_id='nova-compute:compute-1')
        notifier.info({}, 'instance.exists', versioned_payload(
            UUID1, name='InstanceExistsPayload'))
        exists, usage = self.listener.wait_for(2)
        self.assertEqual('instance.exists', exists['event_type'])
        self.assertEqual('instance.usage', usage['event_type'])
        self.assertEqual('nova-compute:compute-1', usage['publisher_id'])
        self.assertEqual(UUID1, usage['payload']['nova_object.data'][
            'instance_uuid'])
        self.assertNotEqual(exists['message_id'], usage['message_id'])


class TestFinalExists(HookTestCase):

    def _final_and_delete(self, event='compute.instance.delete.start',
                          payload=None):
        dom = self.dom(UUID0)
        before = dom.info()[4]
        self.notifier().info({}, event, payload or legacy_payload(UUID0))
        after = dom.info()[4]
        messages = self.listener.wait_for(2)
        return before, after, messages

    def test_final_exists_strictly_before_delete_start(self):
        before, after, (final, delete) = self._final_and_delete()
        self.assertEqual('compute.instance.exists', final['event_type'])
        self.assertEqual('compute.instance.delete.start',
                         delete['event_type'])
        # (Arrival order is what counts: nova stamped delete.start when it
        # built it, before the hook read the instance.)
        payload = final['payload']
        self.assertEqual(UUID0, payload['instance_id'])
        self.assertEqual('p' * 32, payload['tenant_id'])
        self.assertIn('audit_period_beginning', payload)
        self.assertEqual('deleted', payload['final_reason'])
        data = payload['usage']['nova_object.data']
        self.assertTrue(data['final'])
        self.assertEqual('hypervisor', data['source'])
        # What the hypervisor held at that moment.
        self.assertTrue(before <= data['cpu_time_ns'] <= after)
        self.assertEqual(['vda'], [d['nova_object.data']['device']
                                   for d in data['disks']])
        self.assertEqual(legacy_payload(UUID0), delete['payload'])

    def test_exactly_one_final_exists_when_both_formats_are_sent(self):
        notifier = self.notifier()
        # One delete request: nova sends both with its context.
        ctxt = nova_context('req-1')
        notifier.info(ctxt, 'compute.instance.delete.start',
                      legacy_payload(UUID0))
        notifier.info(ctxt, 'instance.delete.start', versioned_payload(UUID0))
        messages = self.listener.wait_for(3)
        time.sleep(0.5)
        events = [m['event_type'] for m in self.listener.messages]
        self.assertEqual(['compute.instance.exists',
                          'compute.instance.delete.start',
                          'instance.delete.start'], events)
        self.assertEqual(3, len(messages))

    def test_leaving_by_migration_or_shelve_offload_gets_a_final(self):
        self.service.poll()
        notifier = self.notifier()
        for uuid, event, reason in (
                (UUID0, 'compute.instance.live_migration._post.start',
                 'migrated'),
                (UUID1, 'compute.instance.shelve_offload.end',
                 'shelved_offloaded')):
            notifier.info({}, event, legacy_payload(uuid))
            final, passed = self.listener.wait_for(2)
            with self.listener.endpoint.cond:
                self.listener.endpoint.messages.clear()
            self.assertEqual(('compute.instance.exists', event),
                             (final['event_type'], passed['event_type']))
            self.assertEqual(reason, final['payload']['final_reason'])
            self.assertEqual(uuid, final['payload']['instance_id'])
            self.assertTrue(
                final['payload']['usage']['nova_object.data']['final'])
            self.assertTrue(self.service.ledger.is_closed(uuid))

    def test_versioned_only_deployment_gets_a_legacy_final_exists(self):
        _b, _a, (final, delete) = self._final_and_delete(
            'instance.delete.start', versioned_payload(UUID0))
        self.assertEqual('compute.instance.exists', final['event_type'])
        self.assertEqual('instance.delete.start', delete['event_type'])
        payload = final['payload']
        self.assertEqual(('p' * 32, 'm1.tiny', 1, 64),
                         (payload['tenant_id'], payload['instance_type'],
                          payload['vcpus'], payload['memory_mb']))
        self.assertTrue(payload['usage']['nova_object.data']['final'])

    def test_final_period_is_novas_and_its_usage_since_the_last_exists(self):
        self.service.poll()
        notifier = self.notifier()
        notifier.info({}, 'compute.instance.exists', legacy_payload(
            UUID0, audit_period_ending='2026-11-22 10:00:00'))
        notifier.info({}, 'compute.instance.delete.start',
                      legacy_payload(UUID0))
        exists_, final, _delete = self.listener.wait_for(3)
        # The message's period as nova sends one mid-period: from the start
        # of the audit period (monthly here) to now.
        ending = final['payload']['audit_period_ending']
        self.assertEqual(ending[:8] + '01 00:00:00',
                         final['payload']['audit_period_beginning'])
        # The usage: what the guest used since the last exists.
        data = final['payload']['usage']['nova_object.data']
        period = data['period']['nova_object.data']
        self.assertEqual('2026-11-22T10:00:00Z', period['period_beginning'])
        reported = exists_['payload']['usage']['nova_object.data']
        self.assertEqual(data['cpu_time_ns'] - reported['cpu_time_ns'],
                         period['cpu_time_ns'])

    def test_instance_gone_from_the_hypervisor_uses_the_cache(self):
        self.service.poll()
        cached = self.service.latest(UUID0)
        dom = self.dom(UUID0)
        dom.destroy()
        dom.undefine()
        self.notifier().info({}, 'compute.instance.delete.start',
                             legacy_payload(UUID0))
        final, delete = self.listener.wait_for(2)
        data = final['payload']['usage']['nova_object.data']
        self.assertEqual('cache', data['source'])
        self.assertTrue(data['final'])
        self.assertEqual(cached.cpu_time_ns, data['cpu_time_ns'])
        self.assertEqual('compute.instance.delete.start',
                         delete['event_type'])

    def test_an_exception_in_the_hook_never_reaches_nova(self):
        self.service.poll()
        self.useFixture(fixtures.MockPatchObject(
            self.reader, 'read_instance',
            side_effect=RuntimeError('hypervisor library bug')))
        self.notifier().info({}, 'compute.instance.delete.start',
                             legacy_payload(UUID0))
        final, delete = self.listener.wait_for(2)
        self.assertEqual('cache',
                         final['payload']['usage']['nova_object.data'][
                             'source'])
        self.assertEqual('compute.instance.delete.start',
                         delete['event_type'])
        self.assertIn('hypervisor library bug', self.log.output)

    def gone(self, uuid):
        dom = self.dom(uuid)
        dom.destroy()
        dom.undefine()

    def test_deleted_instance_is_dropped_once_gone_without_a_second_final(
            self):
        self.service.poll()
        self.notifier().info({}, 'compute.instance.delete.start',
                             legacy_payload(UUID0))
        self.listener.wait_for(2)
        # Its final is out; the state stays until the guest is gone (a
        # delete that fails leaves it running).
        self.assertTrue(self.service.ledger.is_closed(UUID0))
        self.gone(UUID0)
        self.service.poll()
        self.assertIsNone(self.service.latest(UUID0))
        self.assertIsNone(self.service.ledger.totals(UUID0))
        self.assertIsNotNone(self.service.ledger.totals(UUID1))
        self.assertEqual(0, self.service.ledger.store.outbox_size())
        time.sleep(0.5)
        self.assertEqual(['compute.instance.exists',
                          'compute.instance.delete.start'],
                         [m['event_type'] for m in self.listener.messages])

    def test_failed_delete_bills_the_usage_since_the_first_final(self):
        self.service.poll()
        notifier = self.notifier()
        notifier.info({}, 'compute.instance.delete.start',
                      legacy_payload(UUID0))
        first, _delete = self.listener.wait_for(2)
        # nova's delete failed: the guest runs on and is polled again.
        self.service.poll()
        self.assertFalse(self.service.ledger.is_closed(UUID0))
        notifier.info({}, 'compute.instance.delete.start',
                      legacy_payload(UUID0))
        _f, _d, second, _delete = self.listener.wait_for(4)
        self.assertEqual('compute.instance.exists', second['event_type'])
        before = first['payload']['usage']['nova_object.data']
        data = second['payload']['usage']['nova_object.data']
        period = data['period']['nova_object.data']
        # Only what the guest used after the first final: nothing twice.
        self.assertEqual(data['cpu_time_ns'] - before['cpu_time_ns'],
                         period['cpu_time_ns'])
        self.assertGreater(period['cpu_time_ns'], 0)
        self.assertEqual(
            first['payload']['audit_period_ending'].replace(' ', 'T')[:19],
            period['period_beginning'][:19])

    def test_delete_retried_before_any_poll_bills_the_usage_since(self):
        # nova's first delete failed after delete.start; the user deletes
        # again (another request) before the next poll.
        self.service.poll()
        notifier = self.notifier()
        notifier.info(nova_context('req-1'),
                      'compute.instance.delete.start', legacy_payload(UUID0))
        first, _delete = self.listener.wait_for(2)
        notifier.info(nova_context('req-2'),
                      'compute.instance.delete.start', legacy_payload(UUID0))
        _f, _d, second, _delete = self.listener.wait_for(4)
        self.assertEqual('compute.instance.exists', second['event_type'])
        before = first['payload']['usage']['nova_object.data']
        data = second['payload']['usage']['nova_object.data']
        self.assertEqual('hypervisor', data['source'])
        period = data['period']['nova_object.data']
        self.assertEqual(data['cpu_time_ns'] - before['cpu_time_ns'],
                         period['cpu_time_ns'])
        self.assertGreater(period['cpu_time_ns'], 0)

    def test_instance_that_left_the_host_gets_a_final_exists(self):
        # Migrated away (or deleted while nova-compute was down): no
        # delete.start, only a complete read without it.
        self.service.poll()
        self.notifier()  # the drivers the package sends through
        self.gone(UUID1)
        self.service.poll()
        (final,) = self.listener.wait_for(1)
        self.assertEqual('compute.instance.exists', final['event_type'])
        self.assertEqual('compute.compute-1', final['publisher_id'])
        payload = final['payload']
        self.assertEqual('left_host', payload['final_reason'])
        self.assertEqual(UUID1, payload['instance_id'])
        data = payload['usage']['nova_object.data']
        self.assertTrue(data['final'])
        self.assertEqual('cache', data['source'])
        # Everything it used here, up to the last reading.
        self.assertEqual(data['cpu_time_ns'],
                         data['period']['nova_object.data']['cpu_time_ns'])
        # Reported once: the next read drops it quietly.
        self.service.poll()
        self.assertIsNone(self.service.ledger.totals(UUID1))
        time.sleep(0.5)
        self.assertEqual(1, len(self.listener.messages))

    def test_a_burst_of_deletes_gets_every_final_before_its_delete(self):
        # Deletes running at once on one host (nova's default allows 10
        # concurrent builds and more deletes): no cap gives any up.
        count = 24
        node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(i) for i in range(count)]))
        service = self.start_service(
            self.deployed_state_dir(),
            libvirt_usage.LibvirtUsageReader(node.connection))
        service.poll()
        uuids = [u.uuid for u in service.reader.read_host().usages]
        self.assertEqual(count, len(uuids))
        notifier = self.notifier()
        threads = [threading.Thread(target=notifier.info, args=(
            {}, 'compute.instance.delete.start', legacy_payload(uuid)))
            for uuid in uuids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        messages = self.listener.wait_for(2 * count, timeout=30)
        time.sleep(0.5)
        self.assertEqual(2 * count, len(self.listener.messages))
        order = [(m['event_type'], m['payload']['instance_id'])
                 for m in messages]
        for uuid in uuids:
            final = order.index(('compute.instance.exists', uuid))
            delete = order.index(('compute.instance.delete.start', uuid))
            self.assertLess(final, delete)
        self.assertEqual(0, service.ledger.store.outbox_size())


class Blackhole(fixtures.Fixture):
    """A TCP port that accepts connections and never answers: a broker
    that hangs. Closing it ends every connection."""

    def _setUp(self):
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.closed = threading.Event()
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self.addCleanup(self.close)

    def _accept(self):
        while not self.closed.is_set():
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self):
        self.closed.set()
        for conn in self.conns:
            conn.close()
        self.sock.close()


class TestBudget(HookTestCase):
    """The broker is unreachable: delete.start goes on within the budget.

    The in-memory 'test' driver comes first in notification_drivers, so
    the time at which it sees delete.start is what the hook added.
    """

    drivers = ['test', 'messagingv2']
    budget = 0.5

    def setUp(self):
        super().setUp()
        _impl_test.reset()

    def _delete_start_delay(self, url):
        notifier = self.notifier(url=url, retry=0)
        started = time.monotonic()
        seen = {}

        def watch():
            while time.monotonic() - started < 30:
                events = [m['event_type']
                          for _c, m, _p, _r in _impl_test.NOTIFICATIONS]
                if 'compute.instance.delete.start' in events:
                    seen['at'] = time.monotonic() - started
                    seen['events'] = events
                    return
                time.sleep(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        sender = threading.Thread(target=notifier.info, args=(
            {}, 'compute.instance.delete.start', legacy_payload(UUID0)))
        sender.start()
        watcher.join(35)
        return seen, sender

    def test_port_nobody_listens_on(self):
        probe = socket.socket()
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
        probe.close()
        seen, sender = self._delete_start_delay(
            'rabbit://guest:guest@127.0.0.1:%d/' % port)
        sender.join(60)
        self.assertFalse(sender.is_alive())
        self.assertLess(seen['at'], self.budget + 1.0)
        self.assertEqual(['compute.instance.exists',
                          'compute.instance.delete.start'], seen['events'])

    def test_broker_that_hangs(self):
        hole = self.useFixture(Blackhole())
        seen, sender = self._delete_start_delay(
            'rabbit://guest:guest@127.0.0.1:%d/' % hole.port)
        self.assertGreaterEqual(seen['at'], self.budget)
        self.assertLess(seen['at'], self.budget + 1.0)
        # The final exists reached the driver that could take it.
        self.assertEqual(['compute.instance.exists',
                          'compute.instance.delete.start'], seen['events'])
        self.assertIn('was not delivered within', self.log.output)
        hole.close()
        sender.join(60)
        self.assertFalse(sender.is_alive())


SAMPLES = os.path.join(os.path.dirname(__file__), '..', '..', 'doc',
                       'notification_samples')


def load_sample(name):
    with open(os.path.join(SAMPLES, name + '.json')) as f:
        return json.load(f)


# Counters a backend may leave out (absent, not zero).
OPTIONAL = set(usage_objects.DiskUsagePayload.COUNTERS +
               usage_objects.InterfaceUsagePayload.COUNTERS +
               ('cpu_time_ns', 'vcpu_time_ns', 'vcpus', 'memory_mb'))


def shape_mismatches(sample, actual, path='$'):
    """Where ``actual`` is not shaped like ``sample``: keys, object names
    and versions, value types (None matches any type: nullable fields)."""
    if sample is None or actual is None:
        return []
    if isinstance(sample, dict):
        if not isinstance(actual, dict):
            return ['%s: %s is not an object' % (path, type(actual))]
        if (set(actual) - set(sample) or
                set(sample) - set(actual) - OPTIONAL):
            return ['%s: keys %s != %s' % (path, sorted(sample),
                                           sorted(actual))]
        problems = []
        for key in ('nova_object.name', 'nova_object.version',
                    'nova_object.namespace'):
            if key in sample and sample[key] != actual[key]:
                problems.append('%s.%s: %s != %s' % (path, key, sample[key],
                                                     actual[key]))
        for key in set(sample) & set(actual):
            if not key.startswith('nova_object.') or key == \
                    'nova_object.data':
                problems += shape_mismatches(sample[key], actual[key],
                                             '%s.%s' % (path, key))
        return problems
    if isinstance(sample, list):
        if not isinstance(actual, list):
            return ['%s: not a list' % path]
        problems = []
        for index, item in enumerate(actual):
            problems += shape_mismatches(sample[0], item,
                                         '%s[%d]' % (path, index))
        return problems
    if type(sample) is not type(actual):
        return ['%s: %s != %s' % (path, type(sample).__name__,
                                  type(actual).__name__)]
    return []


class TestSamples(HookTestCase):
    """doc/notification_samples match what the hook sends on the wire."""

    def test_exists_sample(self):
        self.service.poll()
        notifier = self.notifier()
        for hour in (9, 10):
            notifier.info({}, 'compute.instance.exists', legacy_payload(
                UUID0, audit_period_beginning='2026-11-22 %02d:00:00'
                % (hour - 1),
                audit_period_ending='2026-11-22 %02d:00:00' % hour))
        # The second carries a period with a beginning: every field set.
        _first, message = self.listener.wait_for(2)
        self.assertEqual('2026-11-22T09:00:00Z', message['payload'][
            'usage']['nova_object.data']['period']['nova_object.data'][
            'period_beginning'])
        sample = load_sample('compute.instance.exists')
        self.assertEqual(sample['event_type'], message['event_type'])
        self.assertEqual(sample['priority'], message['priority'])
        self.assertEqual([], shape_mismatches(sample['payload']['usage'],
                                              message['payload']['usage']))
        for key in ('audit_period_beginning', 'audit_period_ending'):
            self.assertIn(key, message['payload'])

    def test_final_exists_sample(self):
        self.notifier().info({}, 'compute.instance.delete.start',
                             legacy_payload(UUID0))
        final, _delete = self.listener.wait_for(2)
        sample = load_sample('compute.instance.exists-final')
        self.assertEqual(sample['event_type'], final['event_type'])
        self.assertTrue(sample['payload']['usage']['nova_object.data'][
            'final'])
        self.assertEqual([], shape_mismatches(sample['payload']['usage'],
                                              final['payload']['usage']))

    def test_instance_usage_sample(self):
        self.service.poll()
        self.notifier(publisher_id='nova-compute:compute-1').info(
            {}, 'instance.exists', versioned_payload(
                UUID0, name='InstanceExistsPayload'))
        _exists, usage = self.listener.wait_for(2)
        sample = load_sample('instance.usage')
        self.assertEqual(sample['event_type'], usage['event_type'])
        self.assertEqual(sample['publisher_id'], usage['publisher_id'])
        self.assertEqual([], shape_mismatches(sample['payload'],
                                              usage['payload']))


class TestProcessEnds(HookTestCase):

    def test_power_off_reads_the_last_counters_first(self):
        self.service.poll()
        polled = self.service.ledger.totals(UUID0).cpu_time_ns
        dom = self.dom(UUID0)
        notifier = self.notifier()
        notifier.info({}, 'compute.instance.power_off.start',
                      legacy_payload(UUID0))
        (message,) = self.listener.wait_for(1)
        self.assertEqual('compute.instance.power_off.start',
                         message['event_type'])
        self.assertEqual(legacy_payload(UUID0), message['payload'])
        # What the guest used since the last poll is in the cache before
        # its process ends.
        read = self.service.ledger.totals(UUID0).cpu_time_ns
        self.assertGreater(read, polled)
        self.assertLessEqual(read, dom.info()[4])

    def test_versioned_shelve_too(self):
        self.service.poll()
        polled = self.service.ledger.totals(UUID1).cpu_time_ns
        self.notifier(publisher_id='nova-compute:compute-1').info(
            {}, 'instance.shelve.start', versioned_payload(UUID1))
        self.listener.wait_for(1)
        self.assertGreater(self.service.ledger.totals(UUID1).cpu_time_ns,
                           polled)
