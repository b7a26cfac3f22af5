"""Faults of the message bus, on the real RabbitMQ through a TCP proxy.

The machine's broker is never touched: nova's notifier and the package's
own sender both take their transport URL from the configuration, which
points at a proxy (tests/functional/tcp_proxy.py) that the test turns off
(``refuse``: a broker that is down) or makes hang (``blackhole``). A
listener connected to the broker directly counts what arrives.

Each run plays one nova-compute as the hook sees it: nova's own
``oslo_messaging.Notifier`` on nova's transport (``retry`` from
``[oslo_messaging_notifications]``, -1 by default) with ``driver =
nova_usage_ext``, the usage service registered over a state directory and
libvirt's test driver; nova's notifications are the shapes nova 34 sends.
The control runs the same sequence with ``driver = messagingv2`` alone.

:class:`FaultRun` is also what ``benchmarks/faults.py`` runs with the
figures of the issue (a 60 s outage); the tests use shorter outages.
"""

import collections
import dataclasses
import os
import threading
import time
import types
import uuid as uuidlib

import fixtures
from oslo_config import cfg
from oslo_config import fixture as config_fixture
import oslo_messaging
import testtools

from nova_usage_ext import conf as usage_conf
from nova_usage_ext import ledger
from nova_usage_ext import notifier as usage_notifier
from nova_usage_ext import service as usage_service
from nova_usage_ext import state
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_node
from tests.functional import bus
from tests.functional import tcp_proxy
from tests.functional.test_notifier import legacy_payload

HOST = 'compute-1'
PUBLISHER = 'compute.' + HOST
DELETE_START = 'compute.instance.delete.start'
DELETE_END = 'compute.instance.delete.end'
EXISTS = 'compute.instance.exists'
# Threads the package may run, whatever the number of deletes: the
# delivery thread, the hook's two read workers and its closer.
PACKAGE_THREADS = 4
# How long a test waits for the last message once the bus is back.
# (The delivery retries with a pause that doubles up to a minute.)
SETTLE = float(os.environ.get('NOVA_USAGE_EXT_FAULT_SETTLE', '90'))


def is_final(message):
    return (message['event_type'] == EXISTS and
            'final_reason' in (message['payload'] or {}))


def _uuid(message):
    payload = message['payload'] or {}
    return payload.get('instance_id')


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


class _Arrivals(list):
    """The listener's messages, each stamped with its arrival time."""

    def append(self, message):
        message['arrived'] = time.monotonic()
        super().append(message)


@dataclasses.dataclass
class Outcome:
    """What one run sent, what arrived, and what it cost nova."""
    package: bool
    mode: str
    deletes: int
    outage_s: float
    finals_queued: int = 0
    finals_arrived: int = 0
    finals_duplicates: int = 0
    finals_before_delete_start: int = 0
    nova_expected: dict = dataclasses.field(default_factory=dict)
    nova_arrived: dict = dataclasses.field(default_factory=dict)
    nova_duplicates: int = 0
    hold_s: list = dataclasses.field(default_factory=list)
    budget_s: float | None = None
    threads_max: int = 0
    threads_before: int = 0
    package_threads_max: int = 0
    last_final_after_recovery_s: float | None = None
    last_nova_after_recovery_s: float | None = None
    outbox_left: int = 0
    nova_calls_unfinished: int = 0
    duration_s: float = 0.0

    @property
    def finals_lost(self):
        return self.finals_queued - self.finals_arrived

    def hold_ms(self, q):
        value = percentile(self.hold_s, q)
        return None if value is None else value * 1000.0

    def as_dict(self):
        data = dataclasses.asdict(self)
        data['finals_lost'] = self.finals_lost
        data['hold_ms'] = {'p50': self.hold_ms(0.5), 'p99': self.hold_ms(
            0.99), 'max': self.hold_ms(1.0)}
        del data['hold_s']
        return data


class Compute:
    """One nova-compute process: nova's notifier on nova's transport and,
    with the package, the usage service over ``state_dir``.

    :param pool: connections opened in nova's pool before the run, as a
        busy nova-compute has them (oslo.messaging keeps them for reuse).
    """

    def __init__(self, conf, topic, state_dir, reader, package, pool=0):
        self.conf = conf
        self.package = package
        self.service = None
        if package:
            self.service = usage_service.UsageService(
                reader, ledger.Ledger(state.Store(state_dir)), HOST, {})
            self.queued = []
            real_close = self.service.close_final

            def close_final(uuid, *args, **kwargs):
                seq = real_close(uuid, *args, **kwargs)
                if seq is not None:
                    self.queued.append(uuid)
                return seq

            self.service.close_final = close_final
            usage_service.register(self.service)
            self.service.poll()
            self.service.start()
        self.transport = oslo_messaging.get_notification_transport(conf)
        if pool:
            connections = self._pool()
            opened = [connections.get() for _ in range(pool)]
            for connection in opened:
                connections.put(connection)
        self.notifier = oslo_messaging.Notifier(
            self.transport, driver='nova_usage_ext' if package
            else 'messagingv2', topics=[topic], publisher_id=PUBLISHER)
        self.forwarded = {}
        self.sender = None
        if package:
            self._clock_forwards()
            # The sender the hook registered: its transport is released
            # with this nova-compute.
            self.sender = usage_service._sender

    def _pool(self):
        # oslo.messaging's pool of nova's transport (no public handle).
        return self.transport._driver._connection_pool

    def _clock_forwards(self):
        # When delete.start reaches the real driver behind the hook: the
        # hook held nova that long (the driver object is wrapped; the
        # package's code is unchanged).
        (ext,) = self.notifier._driver_mgr.extensions
        hook = ext.obj
        assert isinstance(hook, usage_notifier.UsageNotifierDriver), hook
        self.budget = hook.budget
        driver = hook._drivers.extensions[0].obj
        real = driver.notify

        def notify(ctxt, msg, priority, retry):
            if msg.get('event_type') == DELETE_START:
                self.forwarded[_uuid(msg)] = time.monotonic()
            return real(ctxt, msg, priority, retry)

        driver.notify = notify

    def stop(self):
        """nova-compute stops (its driver's cleanup_host)."""
        if self.service is not None:
            self.service.stop()
            usage_service.unregister(self.service)

    def close(self):
        if self.sender is not None:
            self.sender.close()
        self.transport.cleanup()


def _call(target, *args):
    # nova's threads: a daemon, as a send blocked for ever (retry = -1 on
    # a bus that never comes back) must not keep the tests from exiting.
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


class FaultRun(fixtures.Fixture):
    """Deletes (and nova's audit exists) sent while the bus is faulty.

    :param package: ``driver = nova_usage_ext``, else messagingv2 alone.
    :param mode: the proxy's mode during the outage (tcp_proxy.MODES).
    :param deletes: instances deleted (delete.start, then delete.end, each
        in its own thread, spread over the first 60% of the outage).
    :param audits: instances that get nova's audit exists during it.
    :param outage_s: how long the bus is faulty (0: healthy).
    :param restart: nova-compute restarts at the middle of the outage (a
        new service, notifier and transport over the same state_dir).
    :param pool: connections already open in nova's pool.
    :param budget: ``[usage_ext] final_exists_budget``.
    """

    def __init__(self, package, mode=tcp_proxy.REFUSE, deletes=20,
                 audits=5, outage_s=10.0, restart=False, pool=0,
                 budget=usage_conf.DEFAULT_BUDGET, settle=SETTLE):
        super().__init__()
        self.package = package
        self.mode = mode
        self.deletes = deletes
        self.audits = audits
        self.outage_s = outage_s
        self.restart = restart
        self.pool = pool
        self.budget = budget
        self.settle = settle

    def _setUp(self):
        self.conf = bus.make_conf()
        usage_conf.register_opts(self.conf)
        self.conf.set_override('notification_drivers', ['messagingv2'],
                               group='usage_ext')
        self.conf.set_override('final_exists_budget', self.budget,
                               group='usage_ext')
        self.listener = self.useFixture(bus.Listener(self.conf))
        with self.listener.endpoint.cond:
            self.listener.endpoint.messages = _Arrivals()
        self.proxy = self.useFixture(tcp_proxy.ProxyFixture()).proxy
        # nova's notifier and the package's sender both take this URL.
        self.conf.set_override('transport_url', self.proxy.url,
                               group='oslo_messaging_notifications')
        count = self.deletes + self.audits
        self.node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(i) for i in range(count)]))
        self.reader = libvirt_usage.LibvirtUsageReader(self.node.connection)
        self.uuids = [d.UUIDString() for d in
                      self.node.conn.listAllDomains()]
        self.uuids.sort()
        self.state_dir = self.useFixture(fixtures.TempDir()).path
        # Deployed before the instances started: usage counts from there.
        state.Store(self.state_dir).close()
        self.computes = []
        self.addCleanup(self._close_computes)

    def _close_computes(self):
        for compute in self.computes:
            compute.stop()
        for compute in self.computes:
            compute.close()

    def _start_compute(self):
        # A nova-compute that starts again has no connections yet.
        compute = Compute(self.conf, self.listener.topic, self.state_dir,
                          self.reader, self.package,
                          pool=0 if self.computes else self.pool)
        self.computes.append(compute)
        return compute

    def run(self):
        started = time.monotonic()
        outcome = Outcome(self.package, self.mode if self.outage_s else
                          'healthy', self.deletes, self.outage_s)
        outcome.threads_before = sum(
            type(t).__module__ != 'futurist._thread'
            for t in threading.enumerate())
        current = [self._start_compute()]
        deleted = self.uuids[:self.deletes]
        audited = self.uuids[self.deletes:]
        called = {}
        sampling = threading.Event()
        sampler = threading.Thread(target=self._sample,
                                   args=(outcome, sampling))
        sampler.start()

        def delete(uuid):
            notifier = current[0].notifier
            called[uuid] = time.monotonic()
            notifier.info({}, DELETE_START, legacy_payload(uuid))
            notifier.info({}, DELETE_END, legacy_payload(
                uuid, state='deleted'))

        def audit():
            for uuid in audited:
                current[0].notifier.info({}, EXISTS, legacy_payload(
                    uuid, audit_period_beginning='2026-11-22 09:00:00',
                    audit_period_ending='2026-11-22 10:00:00'))

        calls = []
        try:
            if self.outage_s:
                self.proxy.set_mode(self.mode)
            fault_started = time.monotonic()
            spread = 0.6 * self.outage_s
            for index, uuid in enumerate(deleted):
                if self.restart and index == len(deleted) // 2:
                    self._restart(current, fault_started)
                at = fault_started + spread * index / max(1, len(deleted))
                time.sleep(max(0.0, at - time.monotonic()))
                calls.append(_call(delete, uuid))
                if index == len(deleted) // 4 and audited:
                    calls.append(_call(audit))
            if not deleted and audited:
                calls.append(_call(audit))
            time.sleep(max(0.0, fault_started + self.outage_s -
                           time.monotonic()))
            recovered = time.monotonic()
            if self.outage_s:
                self.proxy.set_mode(tcp_proxy.PASS)
            expected = self._expected(outcome, deleted, audited)
            # Done when nova's calls returned and the outbox is empty.
            deadline = recovered + self.settle
            for call in calls:
                call.join(max(0.0, deadline - time.monotonic()))
            while (self.package and time.monotonic() < deadline and
                   current[0].service.ledger.store.outbox_size()):
                time.sleep(0.1)
            self.listener.wait_for(expected, timeout=2.0,
                                   raise_on_timeout=False)
            # Copies (a resend of what arrived) would come soon after.
            time.sleep(1.0)
        finally:
            sampling.set()
            sampler.join()
        outcome.nova_calls_unfinished = sum(c.is_alive() for c in calls)
        self._count(outcome, deleted, called, recovered)
        outcome.duration_s = time.monotonic() - started
        return outcome

    def _restart(self, current, fault_started):
        # The middle of the outage: nova-compute stops (its queued finals
        # stay in the state) and starts again over the same state_dir.
        time.sleep(max(0.0, fault_started + self.outage_s / 2 -
                       time.monotonic()))
        current[0].stop()
        current[0] = self._start_compute()

    def _expected(self, outcome, deleted, audited):
        outcome.nova_expected = {DELETE_START: len(deleted),
                                 DELETE_END: len(deleted),
                                 EXISTS: len(audited)}
        total = sum(outcome.nova_expected.values())
        return total + (len(deleted) if self.package else 0)

    def _sample(self, outcome, done):
        while not done.wait(0.05):
            # The test listener's dispatch workers (futurist's) are not
            # nova-compute's: they follow what arrives.
            count = sum(type(t).__module__ != 'futurist._thread'
                        for t in threading.enumerate())
            outcome.threads_max = max(outcome.threads_max, count)
            mine = [t for t in threading.enumerate()
                    if t.name.startswith('nova-usage-ext')]
            outcome.package_threads_max = max(outcome.package_threads_max,
                                              len(mine))

    def _count(self, outcome, deleted, called, recovered):
        messages = self.listener.messages
        nova = {}
        finals = collections.Counter()
        first_final = {}
        for index, message in enumerate(messages):
            if is_final(message):
                finals[message['message_id']] += 1
                first_final.setdefault(_uuid(message), index)
            else:
                nova.setdefault(message['event_type'], collections.Counter(
                    ))[message['message_id']] += 1
        # nova's messages counted once each (a copy has the same id).
        outcome.nova_arrived = {event: len(nova.get(event, ()))
                                for event in outcome.nova_expected}
        outcome.nova_duplicates = sum(n - 1 for ids in nova.values()
                                      for n in ids.values())
        nova_at = [m['arrived'] for m in messages if not is_final(m)]
        if nova_at and self.outage_s:
            outcome.last_nova_after_recovery_s = max(nova_at) - recovered
        if not self.package:
            return
        outcome.finals_queued = sum(len(c.queued) for c in self.computes)
        outcome.budget_s = self.computes[0].budget
        outcome.finals_arrived = len({_uuid(m) for m in messages
                                      if is_final(m)} & set(deleted))
        outcome.finals_duplicates = sum(n - 1 for n in finals.values())
        for index, message in enumerate(messages):
            if message['event_type'] == DELETE_START:
                final_at = first_final.get(_uuid(message))
                if final_at is not None and final_at < index:
                    outcome.finals_before_delete_start += 1
        outcome.hold_s = [
            compute.forwarded[uuid] - called[uuid]
            for compute in self.computes
            for uuid in compute.forwarded if uuid in called]
        outcome.outbox_left = sum(c.service.ledger.store.outbox_size()
                                  for c in self.computes[-1:])
        finals_at = [m['arrived'] for m in messages if is_final(m)]
        if finals_at and self.outage_s:
            outcome.last_final_after_recovery_s = max(finals_at) - recovered


# The outage of the tests (the reliability command runs the 60 s).
OUTAGE = float(os.environ.get('NOVA_USAGE_EXT_FAULT_OUTAGE', '10'))


class FaultTestCase(testtools.TestCase):

    budget = usage_conf.DEFAULT_BUDGET

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger())

    def run_faults(self, **kwargs):
        kwargs.setdefault('budget', self.budget)
        return self.useFixture(FaultRun(**kwargs)).run()

    def assert_finals_all_arrived(self, outcome):
        self.assertEqual(outcome.deletes, outcome.finals_queued)
        self.assertEqual(outcome.deletes, outcome.finals_arrived,
                         outcome.as_dict())
        self.assertEqual(0, outcome.finals_lost)
        self.assertEqual(0, outcome.outbox_left)

    def assert_hold_within_budget(self, outcome):
        # The budget the hook runs with (a bad value is clamped).
        self.assertEqual(outcome.deletes, len(outcome.hold_s))
        self.assertLessEqual(max(outcome.hold_s), outcome.budget_s + 0.05,
                             outcome.as_dict()['hold_ms'])

    def assert_package_threads(self, outcome, services=1):
        # The delivery thread, two read workers and the closer, whatever
        # the number of deletes (around a restart, the old ones end as the
        # new ones start).
        self.assertLessEqual(outcome.package_threads_max,
                             PACKAGE_THREADS * services)

    def assert_nova_unaffected(self, with_package, control):
        """nova's own notifications arrive as they do without the
        package (the count of each event type, copies left out).

        nova's exists may arrive where nova alone loses it: when nova's
        send fails, the outbox keeps it and sends it again.
        """
        got, want = with_package.nova_arrived, control.nova_arrived
        message = 'with the package: %s; without: %s' % (got, want)
        for event in (DELETE_START, DELETE_END):
            self.assertEqual(want[event], got[event], message)
        self.assertGreaterEqual(got[EXISTS], want[EXISTS], message)


class TestBurst(FaultTestCase):

    def test_200_deletes_at_once_on_a_healthy_broker(self):
        outcome = self.run_faults(package=True, deletes=200, audits=0,
                                  outage_s=0)
        # None given up. (Each comes before its delete.start unless its
        # delivery took longer than the budget: a figure, not a target.)
        self.assert_finals_all_arrived(outcome)
        self.assertEqual(outcome.nova_expected, outcome.nova_arrived)
        self.assert_package_threads(outcome)
        # The hook is bounded as a whole: the reads queue behind each
        # other and the finals' commits are grouped, within the budget.
        self.assert_hold_within_budget(outcome)


class TestOutage(FaultTestCase):
    """20 deletes while the broker is away, nova's default retry = -1."""

    def test_refused_with_a_restart_in_the_middle(self):
        # A nova-compute with no connection yet: nova's own sends during
        # the outage open new connections, which kombu's path does not
        # retry (nova's behaviour, with or without the package).
        kwargs = dict(mode=tcp_proxy.REFUSE, deletes=20, audits=5,
                      outage_s=OUTAGE, restart=True, pool=0)
        with_package = self.run_faults(package=True, **kwargs)
        control = self.run_faults(package=False, **kwargs)
        self.assert_finals_all_arrived(with_package)
        self.assert_nova_unaffected(with_package, control)
        self.assert_hold_within_budget(with_package)
        self.assert_package_threads(with_package, services=2)

    def test_refused_with_a_busy_connection_pool(self):
        kwargs = dict(mode=tcp_proxy.REFUSE, deletes=20, audits=5,
                      outage_s=OUTAGE, pool=22)
        with_package = self.run_faults(package=True, **kwargs)
        control = self.run_faults(package=False, **kwargs)
        self.assert_finals_all_arrived(with_package)
        # The pool's connections retry for ever: all of nova's arrive.
        self.assertEqual(control.nova_expected, control.nova_arrived)
        self.assert_nova_unaffected(with_package, control)
        self.assert_hold_within_budget(with_package)
        self.assert_package_threads(with_package)

    def test_broker_accepting_and_never_answering(self):
        kwargs = dict(mode=tcp_proxy.BLACKHOLE, deletes=20, audits=5,
                      outage_s=OUTAGE, pool=22)
        with_package = self.run_faults(package=True, **kwargs)
        control = self.run_faults(package=False, **kwargs)
        self.assert_finals_all_arrived(with_package)
        self.assertEqual(control.nova_expected, control.nova_arrived)
        self.assert_nova_unaffected(with_package, control)
        self.assert_hold_within_budget(with_package)
        self.assert_package_threads(with_package)


class _NovaHost:
    """What the driver mixin takes from nova's libvirt ``Host``: its
    connection (here libvirt's test driver)."""

    def __init__(self, conn):
        self._conn = conn

    def get_connection(self):
        return self._conn


class _Driver(libvirt_usage.LibvirtUsageMixin):

    def __init__(self, host):
        self._host = host


class TestMisconfigured(FaultTestCase):
    """Options out of range never break nova."""

    budget = 0.0

    def test_zero_budget_loads_the_driver_and_passes_everything(self):
        outcome = self.run_faults(package=True, deletes=3, audits=2,
                                  outage_s=0)
        # Read as the minimum of the range, logged once per process.
        self.assertEqual(usage_conf.BUDGET_RANGE[0], outcome.budget_s)
        self.assertEqual(outcome.nova_expected, outcome.nova_arrived)
        self.assert_finals_all_arrived(outcome)
        self.assert_hold_within_budget(outcome)

    def test_stats_workers_out_of_range_never_raise(self):
        usage_conf.register_opts(cfg.CONF)
        node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(0)]))
        instance = types.SimpleNamespace(uuid=str(uuidlib.UUID(int=1)))
        for value, used in ((0, usage_conf.STATS_WORKERS_RANGE[0]),
                            (100, usage_conf.STATS_WORKERS_RANGE[1])):
            self.useFixture(config_fixture.Config(cfg.CONF)).config(
                libvirt_stats_workers=value, group='usage_ext')
            driver = _Driver(_NovaHost(node.conn))
            info = driver.get_info(instance)
            self.assertGreater(info.cpu_time_ns, 0)
            self.assertEqual(5, len(driver.block_stats(instance, 'vda')))
            self.assertEqual(used, driver.usage_reader.stats_workers)
            self.assertEqual(
                [instance.uuid],
                [c['uuid'] for c in driver.get_all_bw_counters([instance])])
