"""The hook and the outbox on libvirt's test driver, with oslo.messaging's
in-memory ``test`` notification driver standing for the bus (the real bus
is in tests/functional)."""

import contextlib
import threading
import time
import uuid as uuidlib

import fixtures
import testtools
from oslo_config import cfg
import oslo_messaging
from oslo_messaging.notify import _impl_test

from nova_usage_ext import ledger
from nova_usage_ext import notifier
from nova_usage_ext import service as usage_service
from nova_usage_ext import state
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_calls
from tests import libvirt_node

BUDGET = 0.5


def _delete_start(uuid):
    return {'message_id': 'nova-%s' % uuid,
            'event_type': 'compute.instance.delete.start',
            'publisher_id': 'compute.compute-1', 'priority': 'INFO',
            'payload': {'instance_id': uuid, 'host': 'compute-1',
                        'tenant_id': 'p', 'user_id': 'u'},
            'timestamp': '2026-01-01 00:00:00'}


class Sends:
    """The package's own sends: fail, hang or go through on demand."""

    def __init__(self):
        self.mode = 'ok'
        self.release = threading.Event()
        self.sent = []
        self.lock = threading.Lock()

    def __call__(self, entry):
        if self.mode == 'refuse':
            raise oslo_messaging.MessageDeliveryFailure('broker refuses')
        if self.mode == 'hang':
            self.release.wait(30)
            raise oslo_messaging.MessageDeliveryFailure('timed out')
        with self.lock:
            self.sent.append(entry.message)


class HookTestCase(testtools.TestCase):

    domains = 3

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger())
        _impl_test.reset()
        self.node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(i) for i in range(self.domains)]))
        # As nova_test_domain names them.
        self.uuids = [str(uuidlib.UUID(int=i + 1))
                      for i in range(self.domains)]
        self.conf = cfg.ConfigOpts()
        self.conf([])
        from nova_usage_ext import conf as usage_conf
        usage_conf.register_opts(self.conf)
        self.conf.set_override('notification_drivers', ['test'],
                               group='usage_ext')
        self.conf.set_override('final_exists_budget', BUDGET,
                               group='usage_ext')
        self.sends = Sends()
        self.outbox_max = 10000

    def start(self):
        reader = libvirt_usage.LibvirtUsageReader(
            libvirt_calls.StaticConnection(self.node.conn))
        store = state.Store(self.useFixture(fixtures.TempDir()).path)
        book = ledger.Ledger(store, outbox_max=self.outbox_max)
        self.service = usage_service.UsageService(
            reader, book, 'compute-1', {}, send=self.sends)
        self.service.delivery._first_pause = 0.05
        self.service.delivery._max_pause = 0.1
        usage_service.register(self.service)
        self.addCleanup(usage_service.unregister, self.service)
        self.service.start()
        self.addCleanup(self.service.stop)
        self.service.poll()
        transport = oslo_messaging.get_notification_transport(
            self.conf, url='fake:/')
        self.addCleanup(transport.cleanup)
        self.driver = notifier.UsageNotifierDriver(
            self.conf, ['notifications'], transport)

    def nova_sent(self):
        return [m for _c, m, _p, _r in _impl_test.NOTIFICATIONS]

    def wait_for(self, predicate, timeout=10):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                self.fail('timed out')
            time.sleep(0.01)


class TestFinals(HookTestCase):

    def test_final_goes_out_before_delete_start(self):
        self.start()
        self.driver.notify({}, _delete_start(self.uuids[0]), 'INFO', -1)
        (final,) = self.sends.sent
        self.assertEqual('compute.instance.exists', final['event_type'])
        self.assertEqual(self.uuids[0], final['payload']['instance_id'])
        self.assertEqual('deleted', final['payload']['final_reason'])
        self.assertTrue(final['payload']['usage']['nova_object.data'][
            'final'])
        # nova's own message went on, unchanged, after it.
        self.assertEqual([_delete_start(self.uuids[0])], self.nova_sent())
        self.assertEqual(0, self.service.ledger.store.outbox_size())

    def test_final_on_the_source_after_a_resize_is_this_hosts(self):
        # nova sets instance.host to the destination before the source
        # sends resize.end: the final still reports this host's usage.
        self.start()
        resize_end = dict(_delete_start(self.uuids[0]),
                          event_type='compute.instance.resize.end')
        resize_end['payload'] = dict(resize_end['payload'],
                                     host='compute-2')
        self.driver.notify({}, resize_end, 'INFO', -1)
        (final,) = self.sends.sent
        self.assertEqual('migrated', final['payload']['final_reason'])
        self.assertEqual('compute.compute-1', final['publisher_id'])
        self.assertEqual('compute-1', final['payload']['host'])
        self.assertEqual('compute-1', final['payload']['usage'][
            'nova_object.data']['host'])

    def test_a_resize_to_the_same_host_is_no_departure(self):
        # resize.end names the instance's new host: this one.
        self.start()
        uuid = self.uuids[0]
        for event in ('compute.instance.resize.end', 'instance.resize.end'):
            message = dict(_delete_start(uuid), event_type=event)
            if event.startswith('instance.'):
                message['payload'] = {'nova_object.data': {
                    'uuid': uuid, 'host': 'compute-1'}}
            self.driver.notify({}, message, 'INFO', -1)
        self.assertEqual([], self.sends.sent)
        self.assertFalse(self.service.ledger.is_closed(uuid))

    def test_a_retried_delete_reports_the_usage_since_the_first_final(self):
        # nova's delete failed after delete.start (both formats, one
        # request); the guest ran on and the user deletes it again (a new
        # request) before any poll.
        self.start()
        uuid = self.uuids[0]
        first = {'request_id': 'req-1'}
        versioned = {'message_id': 'nova-v-%s' % uuid,
                     'event_type': 'instance.delete.start',
                     'publisher_id': 'nova-compute:compute-1',
                     'priority': 'INFO',
                     'payload': {'nova_object.data': {'uuid': uuid}}}
        self.driver.notify(first, _delete_start(uuid), 'INFO', -1)
        self.driver.notify(first, versioned, 'INFO', -1)
        self.assertEqual(1, len(self.sends.sent))
        time.sleep(0.01)  # the test driver's counters follow the clock
        retry = {'request_id': 'req-2'}
        self.driver.notify(retry, _delete_start(uuid), 'INFO', -1)
        self.driver.notify(retry, versioned, 'INFO', -1)
        finals = self.sends.sent
        self.assertEqual(['deleted', 'deleted'],
                         [m['payload']['final_reason'] for m in finals])
        periods = [m['payload']['usage']['nova_object.data']['period'][
            'nova_object.data'] for m in finals]
        self.assertGreater(periods[1]['cpu_time_ns'], 0)
        # All the usage, once.
        self.assertEqual(
            self.service.ledger.totals(uuid).cpu_time_ns,
            periods[0]['cpu_time_ns'] + periods[1]['cpu_time_ns'])

    def test_a_gone_instance_gets_no_second_final(self):
        # A complete poll found it gone (final: left_host); nova's
        # delete.start comes later.
        self.start()
        uuid = self.uuids[0]
        dom = self.node.conn.lookupByUUIDString(uuid)
        dom.destroy()
        dom.undefine()
        self.service.poll()
        self.driver.notify({'request_id': 'req-1'}, _delete_start(uuid),
                           'INFO', -1)
        self.wait_for(lambda: self.sends.sent)
        time.sleep(0.1)
        self.assertEqual(['left_host'], [m['payload']['final_reason']
                                         for m in self.sends.sent])

    def test_broker_refusing_keeps_finals_queued_then_sends_them(self):
        self.start()
        self.sends.mode = 'refuse'
        for uuid in self.uuids:
            began = time.monotonic()
            self.driver.notify({}, _delete_start(uuid), 'INFO', -1)
            self.assertLess(time.monotonic() - began, BUDGET + 0.25)
        self.assertEqual(len(self.uuids), len(self.nova_sent()))
        self.assertEqual(len(self.uuids),
                         self.service.ledger.store.outbox_size())
        self.sends.mode = 'ok'
        self.wait_for(lambda: len(self.sends.sent) == len(self.uuids))
        self.assertEqual(sorted(self.uuids), sorted(
            m['payload']['instance_id'] for m in self.sends.sent))
        self.assertEqual(0, self.service.ledger.store.outbox_size())

    def test_a_send_that_never_returns_holds_nova_for_the_budget_only(self):
        self.start()
        self.sends.mode = 'hang'
        self.addCleanup(self.sends.release.set)
        threads_before = threading.active_count()
        for uuid in self.uuids:
            began = time.monotonic()
            self.driver.notify({}, _delete_start(uuid), 'INFO', -1)
            self.assertLess(time.monotonic() - began, BUDGET + 0.25)
        self.assertEqual(len(self.uuids), len(self.nova_sent()))
        # The messages wait in the outbox, not in threads.
        # The two read workers and the closer, whatever the deletes.
        self.assertLessEqual(threading.active_count(), threads_before + 3)
        self.sends.mode = 'ok'
        self.sends.release.set()
        self.wait_for(lambda: len(self.sends.sent) == len(self.uuids))

    def test_a_slow_commit_holds_nova_for_the_budget_only(self):
        # A burst of deletes queues on the fsync of each commit: the hook
        # is bounded as a whole, and the final still goes out after.
        self.start()
        store = self.service.ledger.store
        real = store.transaction

        @contextlib.contextmanager
        def slow():
            time.sleep(BUDGET * 2)
            with real() as tx:
                yield tx
        self.useFixture(fixtures.MockPatchObject(store, 'transaction',
                                                 slow))
        began = time.monotonic()
        self.driver.notify({}, _delete_start(self.uuids[0]), 'INFO', -1)
        self.assertLess(time.monotonic() - began, BUDGET + 0.25)
        self.assertEqual([_delete_start(self.uuids[0])], self.nova_sent())
        self.wait_for(lambda: len(self.sends.sent) == 1)
        self.assertEqual(self.uuids[0],
                         self.sends.sent[0]['payload']['instance_id'])

    def test_outbox_at_its_bound_drops_the_oldest_and_says_so(self):
        self.outbox_max = 2
        self.start()
        self.sends.mode = 'refuse'
        for uuid in self.uuids:
            self.driver.notify({}, _delete_start(uuid), 'INFO', -1)
        pending = self.service.ledger.store.pending()
        self.assertEqual(self.uuids[1:], [e.uuid for e in pending])
        self.assertIn('outbox is full', self.log.output)
        self.assertEqual(1, self.service.ledger.dropped_messages)

    def test_a_restart_sends_what_was_queued_with_the_same_message_id(self):
        self.start()
        self.sends.mode = 'refuse'
        self.driver.notify({}, _delete_start(self.uuids[0]), 'INFO', -1)
        (queued,) = self.service.ledger.store.pending()
        self.service.stop()
        again = usage_service.UsageService(
            self.service.reader,
            ledger.Ledger(state.Store(self.service.ledger.store.state_dir)),
            'compute-1', {}, send=self.sends)
        self.sends.mode = 'ok'
        again.start()
        self.addCleanup(again.stop)
        self.wait_for(lambda: len(self.sends.sent) == 1)
        self.assertEqual(queued.message_id,
                         self.sends.sent[0]['message_id'])


class TestBurst(HookTestCase):

    domains = 200

    def test_200_deletes_at_once_give_200_finals(self):
        self.start()
        threads = [threading.Thread(
            target=self.driver.notify,
            args=({}, _delete_start(uuid), 'INFO', -1))
            for uuid in self.uuids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        self.wait_for(lambda: len(self.sends.sent) == 200)
        self.assertEqual(sorted(self.uuids), sorted(
            m['payload']['instance_id'] for m in self.sends.sent))
        self.assertEqual(200, len(self.nova_sent()))
        self.assertNotIn('gave up', self.log.output)


class TestNotHere(HookTestCase):

    def test_exists_of_an_instance_not_on_this_host_is_quiet(self):
        self.start()
        msg = {'message_id': 'x', 'event_type': 'compute.instance.exists',
               'payload': {'instance_id':
                           '00000000-0000-0000-0000-00000000dead',
                           'audit_period_ending': '2026-01-01 00:00:00'}}
        self.driver.notify({}, msg, 'INFO', -1)
        self.assertEqual([msg], self.nova_sent())
        self.assertNotIn('ERROR', self.log.output)
        self.assertNotIn('Traceback', self.log.output)


def _legacy_exists(uuid):
    return {'message_id': 'nova-exists-%s' % uuid,
            'event_type': 'compute.instance.exists',
            'publisher_id': 'compute.compute-1', 'priority': 'INFO',
            'payload': {'instance_id': uuid, 'host': 'compute-1',
                        'audit_period_beginning': '2026-01-01 00:00:00',
                        'audit_period_ending': '2026-01-01 01:00:00'},
            'timestamp': '2026-01-01 01:00:01'}


class TestExists(HookTestCase):

    def test_usage_rides_in_nova_s_exists_with_nova_s_retry(self):
        self.start()
        for retry in (-1, 0):
            _impl_test.reset()
            self.driver.notify({}, _legacy_exists(self.uuids[retry + 1]),
                               'INFO', retry)
            ((_ctxt, sent, _prio, used_retry),) = _impl_test.NOTIFICATIONS
            self.assertEqual(retry, used_retry)
            self.assertIn('period', sent['payload']['usage'][
                'nova_object.data'])
        # Sent on nova's path: nothing left for the package to send.
        self.assertEqual(0, self.service.ledger.store.outbox_size())
        self.assertEqual([], self.sends.sent)

    def test_a_driver_raising_on_nova_s_exists_leaves_it_to_the_outbox(self):
        self.start()
        real = _impl_test.TestDriver.notify

        def refuse_exists(driver, ctxt, message, priority, retry):
            if message['event_type'] == 'compute.instance.exists':
                raise oslo_messaging.MessageDeliveryFailure('no broker')
            return real(driver, ctxt, message, priority, retry)
        self.useFixture(fixtures.MockPatchObject(
            _impl_test.TestDriver, 'notify', refuse_exists))
        msg = _legacy_exists(self.uuids[0])
        self.driver.notify({}, msg, 'INFO', 0)
        self.assertIn('Problem', self.log.output)
        # The package sends it again, the same message with its usage.
        self.wait_for(lambda: len(self.sends.sent) == 1)
        (resent,) = self.sends.sent
        self.assertEqual(msg['message_id'], resent['message_id'])
        self.assertIn('usage', resent['payload'])
        self.wait_for(
            lambda: self.service.ledger.store.outbox_size() == 0)

    def test_nova_s_other_notifications_pass_untouched(self):
        self.start()
        msg = {'message_id': 'x', 'event_type': 'compute.instance.update',
               'payload': {'instance_id': self.uuids[0]}}
        self.driver.notify({'user': 'u'}, msg, 'INFO', -1)
        self.assertEqual([({'user': 'u'}, msg, 'INFO', -1)],
                         _impl_test.NOTIFICATIONS)


def _versioned_exists(uuid):
    period = {'nova_object.name': 'AuditPeriodPayload',
              'nova_object.data': {
                  'audit_period_beginning': '2026-01-01T00:00:00Z',
                  'audit_period_ending': '2026-01-01T01:00:00Z'}}
    return {'message_id': 'nova-v-%s' % uuid,
            'event_type': 'instance.exists',
            'publisher_id': 'nova-compute:compute-1', 'priority': 'INFO',
            'payload': {'nova_object.name': 'InstanceExistsPayload',
                        'nova_object.data': {'uuid': uuid,
                                             'host': 'compute-1',
                                             'audit_period': period}},
            'timestamp': '2026-01-01 01:00:01'}


class TestVersionedExists(HookTestCase):
    """notification_format = versioned: the package's instance.usage
    follows nova's instance.exists, before nova's next notification."""

    def test_usage_is_delivered_before_the_hook_returns(self):
        self.start()
        real = self.sends.__call__

        def slow(entry):
            time.sleep(0.1)
            real(entry)
        self.service.delivery._send = slow
        self.driver.notify({}, _versioned_exists(self.uuids[0]), 'INFO', -1)
        # Had the hook not waited, the delivery thread would still be in
        # its 0.1 s send and nova's next notification would go first.
        (usage,) = self.sends.sent
        self.assertEqual('instance.usage', usage['event_type'])
        self.assertIn('period', usage['payload']['nova_object.data'])
        self.assertEqual([_versioned_exists(self.uuids[0])],
                         self.nova_sent())

    def test_behind_a_backlog_nova_s_exists_is_not_held(self):
        # nova-compute restarted with messages left in the outbox, which
        # its delivery thread sends (slowly) from the start: nova's usage
        # audit sends one exists per instance, and behind the backlog each
        # would wait up to the budget.
        self.start()
        self.sends.mode = 'refuse'
        for uuid in self.uuids[1:]:
            self.driver.notify({}, _delete_start(uuid), 'INFO', -1)
        self.service.stop()
        usage_service.unregister(self.service)
        real = Sends.__call__

        def slow(sends, entry):
            time.sleep(0.2)
            real(sends, entry)
        self.useFixture(fixtures.MockPatchObject(Sends, '__call__', slow))
        self.sends.mode = 'ok'
        again = usage_service.UsageService(
            self.service.reader,
            ledger.Ledger(state.Store(self.service.ledger.store.state_dir)),
            'compute-1', {}, send=self.sends)
        usage_service.register(again)
        self.addCleanup(usage_service.unregister, again)
        again.start()
        self.addCleanup(again.stop)
        began = time.monotonic()
        self.driver.notify({}, _versioned_exists(self.uuids[0]), 'INFO', -1)
        self.assertLess(time.monotonic() - began, 0.15)
        self.wait_for(lambda: len(self.sends.sent) == len(self.uuids))
        self.assertEqual('instance.usage', self.sends.sent[-1]['event_type'])

    def test_a_hanging_bus_holds_nova_s_exists_for_the_budget_only(self):
        self.start()
        self.sends.mode = 'hang'
        self.addCleanup(self.sends.release.set)
        began = time.monotonic()
        self.driver.notify({}, _versioned_exists(self.uuids[0]), 'INFO', -1)
        self.assertLess(time.monotonic() - began, BUDGET + 0.25)
        self.assertEqual(1, len(self.nova_sent()))
        self.assertIn('was not delivered within', self.log.output)
        self.sends.mode = 'ok'
        self.sends.release.set()
        self.wait_for(lambda: len(self.sends.sent) == 1)
        self.assertEqual('instance.usage',
                         self.sends.sent[0]['event_type'])


class TestMisconfigured(HookTestCase):

    def test_a_zero_budget_or_no_driver_never_drops_nova_s_notifications(
            self):
        self.conf.set_override('final_exists_budget', 0, group='usage_ext')
        self.conf.set_override('notification_drivers', ['nova_usage_ext'],
                               group='usage_ext')
        self.start()
        self.assertEqual(0.1, self.driver.budget)
        # No real driver named: messagingv2 stands in (logged), and the
        # driver loaded, so nova's messages are passed on.
        self.assertEqual(['messagingv2'],
                         [e.name for e in self.driver._drivers.extensions])
        self.assertIn('names no driver', self.log.output)


class TestMessagingDriverFailures(HookTestCase):
    """oslo.messaging's messaging drivers log a failed send and return as
    if it went out: the hook must still see it."""

    def test_nova_s_exists_failed_in_messagingv2_stays_queued(self):
        self.conf.set_override('notification_drivers', ['messagingv2'],
                               group='usage_ext')
        self.start()
        transport = self.driver._transport._transport
        self.useFixture(fixtures.MockPatchObject(
            transport, '_send_notification',
            side_effect=oslo_messaging.MessageDeliveryFailure('no broker')))
        msg = _legacy_exists(self.uuids[0])
        self.driver.notify({}, msg, 'INFO', 0)
        self.assertIn('Could not send notification', self.log.output)
        self.wait_for(lambda: len(self.sends.sent) == 1)
        self.assertEqual(msg['message_id'],
                         self.sends.sent[0]['message_id'])


class TestTopics(HookTestCase):

    def test_the_package_s_messages_go_where_ceilometer_listens(self):
        # With notification_format = both nova makes the versioned
        # notifier (topic versioned_notifications) last: the finals must
        # still go on the legacy topics.
        transport = oslo_messaging.get_notification_transport(
            self.conf, url='fake:/')
        self.addCleanup(transport.cleanup)
        notifier.UsageNotifierDriver(self.conf, ['notifications'], transport)
        notifier.UsageNotifierDriver(self.conf, ['versioned_notifications'],
                                     transport)
        self.assertEqual(['notifications'], usage_service._sender._topics)
