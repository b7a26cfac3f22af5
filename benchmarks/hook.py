"""Part 3: what the notifier-driver hook adds to instance.delete.start.

nova calls its notifier and waits for it: whatever the ``nova_usage_ext``
driver does before it passes ``compute.instance.delete.start`` on (read
the instance, build and send the final exists) delays the delete by that
much. Measured over the real RabbitMQ, deletes alternating with a plain
``messagingv2`` notifier on the same transport:

- *passed on after*: from ``Notifier.info()`` being called to the wrapped
  messagingv2 driver receiving delete.start (for the plain notifier: to its
  driver receiving it);
- *call returns after*: the whole ``Notifier.info()`` (both include
  sending delete.start itself).

The usage service is registered and started as in nova-compute, over
libvirt's test driver in the daemon: its ledger (SQLite in a state
directory, as in nova-compute) holds ``host`` instances at every delete
(one run per host size): a window of the host's instances is polled and
saved (untimed) before each one. The hook queues the final exists in the
outbox (one durable transaction) and waits for the delivery thread to send
it over the package's own transport. Then the broker is taken away, in two
ways (as tests/functional/test_notifier.py TestBudget does): a port nobody
listens on, and a port that accepts connections and never answers; with
``[usage_ext] final_exists_budget`` = ``budget``.

Apart: what saving the ledger costs by number of changed instances, in a
ledger of 1000 (the poll saves after each read; the hook's transaction
writes what changed since).
"""

import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid as uuidlib

import libvirt
import oslo_messaging

from benchmarks import common
from benchmarks import testdriver
from nova_usage_ext import conf as usage_conf
from nova_usage_ext import ledger
from nova_usage_ext import state
from nova_usage_ext import notifier as usage_notifier
from nova_usage_ext import service as usage_service
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_calls
from tests.functional import bus
from tests.functional import test_notifier

DELETE_START = 'compute.instance.delete.start'
WARMUP = 10
delete_queues = bus.delete_queues


def drain(queue):
    """Every message in a queue (oslo envelopes opened), oldest first."""
    messages = []
    for raw in bus.drain(queue):
        body = json.loads(raw)
        if 'oslo.message' in body:
            body = json.loads(body['oslo.message'])
        messages.append(body)
    return messages


queue_depth = bus.queue_depth


class PassClock:
    """Wraps a driver object's ``notify``: when delete.start reaches it."""

    def __init__(self, driver):
        self.at = None
        self.event = threading.Event()
        real = driver.notify

        def notify(ctxt, msg, priority, retry):
            if msg.get('event_type') == DELETE_START:
                self.at = time.perf_counter()
                self.event.set()
            return real(ctxt, msg, priority, retry)

        driver.notify = notify

    def arm(self):
        self.at = None
        self.event.clear()


class Breakdown:
    """Time of the hook's steps per delete, by wrapping them on the
    instances (the package's code is not changed)."""

    def __init__(self):
        self.current = {}
        self.per_delete = []
        self.enabled = False

    def wrap(self, obj, attr, name, when=None):
        real = getattr(obj, attr)

        def timed(*args, **kwargs):
            if not self.enabled or (when is not None and
                                    not when(*args, **kwargs)):
                return real(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.current[name] = (self.current.get(name, 0.0) +
                                      time.perf_counter() - t0)

        setattr(obj, attr, timed)

    def start(self):
        self.current = {}
        self.enabled = True

    def stop(self, keep):
        self.enabled = False
        if keep:
            self.per_delete.append(self.current)

    def summary(self):
        names = sorted({n for d in self.per_delete for n in d})
        return {n: _ms_summary([d.get(n, 0.0) for d in self.per_delete])
                for n in names}


STEPS = (('read_bounded', 'read the instance (service.read_bounded, in '
                          'its reader thread)'),
         ('close_periods', 'build the final exists and queue it with the '
                           'period\'s end (one SQLite transaction, fsynced; '
                           'the closer thread)'),
         ('wait_delivered', 'wait for the delivery thread to send it'),
         ('send_final', 'of which: the send (messagingv2, own transport)'),
         ('outbox_remove', 'of which: its removal from the outbox (one '
                           'SQLite commit, not fsynced)'))


def _usage_driver(notifier):
    (ext,) = notifier._driver_mgr.extensions
    assert isinstance(ext.obj, usage_notifier.UsageNotifierDriver), ext.obj
    return ext.obj


def _inner_driver(usage_driver):
    (ext,) = usage_driver._drivers.extensions
    return ext.obj


def _ms_summary(values):
    s = common.summary([v * 1e3 for v in values])
    if s is not None:
        s['p99'] = common.percentile([v * 1e3 for v in values], 99)
        s['p50'] = s['median']
    return s


class HookBench:

    def __init__(self, deletes, down_deletes, host_sizes, log):
        self.log = log
        self.deletes = deletes
        self.down_deletes = down_deletes
        self.host_sizes = list(host_sizes)
        self.host = self.host_sizes[0]
        self.stack = contextlib.ExitStack()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        with common.shielded():
            self.stack.close()
        return False

    def setup(self):
        total = (len(self.host_sizes) * (WARMUP + self.deletes) +
                 2 * self.down_deletes + max(self.host_sizes))
        self.log('hook: %d test-driver domains, RabbitMQ at %s'
                 % (total, bus.RABBIT_URL))
        self.domains = testdriver.TestDomains('hook')
        self.stack.callback(self.domains.close)
        self.domains.grow_to(total)
        self.uuids = list(self.domains.uuids)
        self.next = 0

        raw = libvirt.openReadOnly(testdriver.URI)
        self.stack.callback(raw.close)
        self.visible = common.OnlyTheseDomains(raw, [])
        self.reader = libvirt_usage.LibvirtUsageReader(
            libvirt_calls.StaticConnection(self.visible))
        self.new_service()
        self.topic = '%s%d-%s' % (common.PREFIX, os.getpid(),
                                  uuidlib.uuid4().hex[:8])
        self.stack.callback(delete_queues, self.topic)

    def new_service(self):
        """A nova-compute's usage service on a state of its own, started
        (its outbox's delivery thread runs, as init_host leaves it)."""
        state_dir = tempfile.mkdtemp(prefix=common.PREFIX, dir='/var/tmp')
        self.stack.callback(shutil.rmtree, state_dir, True)
        self.service = usage_service.UsageService(
            self.reader, ledger.Ledger(state.Store(state_dir)),
            'bench-compute', {})
        usage_service.register(self.service)
        self.stack.callback(usage_service.unregister, self.service)
        self.service.start()
        self.stack.callback(self.service.stop)

    def conf(self, budget, url=bus.RABBIT_URL):
        conf = bus.make_conf()
        usage_conf.register_opts(conf)
        # nova's notifier and the package's own sender both take it from
        # nova.conf.
        oslo_messaging.get_notification_transport(conf, url=url).cleanup()
        conf.set_override('transport_url', url,
                          group='oslo_messaging_notifications')
        conf.set_override('notification_drivers', ['messagingv2'],
                          group='usage_ext')
        if budget is not None:
            conf.set_override('final_exists_budget', budget,
                              group='usage_ext')
        return conf

    def notifier(self, conf, url, driver, publisher, retry=None):
        transport = oslo_messaging.get_notification_transport(conf, url=url)
        self.stack.callback(transport.cleanup)
        return oslo_messaging.Notifier(
            transport, driver=driver, topics=[self.topic],
            publisher_id=publisher, retry=retry)

    def take(self):
        """The next instance to delete, with the ledger holding it and the
        next ones (``self.host`` in all), as on a busy host."""
        uuid = self.uuids[self.next]
        window = self.uuids[self.next:self.next + self.host]
        self.next += 1
        self.visible.uuids = set(window)
        # The periodic poll: count and save (the deleted instance that
        # left the window had its final: it is dropped quietly).
        self.service.poll()
        return uuid

    # -- broker up -----------------------------------------------------------

    def broker_up(self, host):
        self.host = host
        conf = self.conf(None)
        budget = conf.usage_ext.final_exists_budget
        ours = self.notifier(conf, bus.RABBIT_URL, 'nova_usage_ext',
                             'compute.bench-compute')
        base = self.notifier(conf, bus.RABBIT_URL, 'messagingv2',
                             'compute.bench-base')
        usage_driver = _usage_driver(ours)
        ours_clock = PassClock(_inner_driver(usage_driver))
        steps = Breakdown()
        steps.wrap(self.service, 'read_bounded', 'read_bounded')
        # Finals are queued by the service's closer thread, in batches.
        steps.wrap(self.service.ledger, 'close_periods', 'close_periods')
        steps.wrap(self.service.delivery, 'wait_delivered', 'wait_delivered')
        # In the delivery thread, during wait_delivered.
        steps.wrap(self.service.delivery, '_send', 'send_final')
        # Also in the delivery thread, before the waiter is told.
        steps.wrap(self.service.delivery.store, 'remove', 'outbox_remove')
        (base_ext,) = base._driver_mgr.extensions
        base_clock = PassClock(base_ext.obj)
        times = {'ours_pass': [], 'ours_total': [], 'base_pass': [],
                 'base_total': []}
        ours_uuids = []
        self.log('hook: %d deletes each, alternating with messagingv2 '
                 'alone (+%d warm-up), ledger of %d instances'
                 % (self.deletes, WARMUP, host))

        def one(notifier, clock, uuid, who):
            payload = test_notifier.legacy_payload(uuid)
            clock.arm()
            t0 = time.perf_counter()
            notifier.info({}, DELETE_START, payload)
            t1 = time.perf_counter()
            return clock.at - t0, t1 - t0

        for i in range(WARMUP + self.deletes):
            uuid = self.take()
            order = ('base', 'ours') if i % 2 == 0 else ('ours', 'base')
            for who in order:
                if who == 'ours':
                    steps.start()
                    p, t = one(ours, ours_clock, uuid, who)
                    steps.stop(keep=i >= WARMUP)
                    ours_uuids.append(uuid)
                else:
                    p, t = one(base, base_clock, str(uuidlib.uuid4()), who)
                if i >= WARMUP:
                    times[who + '_pass'].append(p)
                    times[who + '_total'].append(t)
        out = {key: _ms_summary(values) for key, values in times.items()}
        out['steps'] = steps.summary()
        out['deletes'] = self.deletes
        out['budget_s'] = budget
        out['host_instances'] = self.host
        out['added_p50_ms'] = (out['ours_total']['p50'] -
                               out['base_total']['p50'])
        out['added_p99_ms'] = (out['ours_total']['p99'] -
                               out['base_total']['p99'])
        out['order'] = self._check_order(ours_uuids)
        return out

    def _check_order(self, uuids):
        """The final exists of each deleted instance is on the bus before
        its delete.start."""
        queue = '%s.info' % self.topic
        expected = 3 * len(uuids)
        deadline = time.monotonic() + 15
        while (queue_depth(queue) or 0) < expected and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        wanted = set(uuids)
        events = {}
        for msg in drain(queue):
            payload = msg.get('payload') or {}
            uuid = payload.get('instance_id')
            if uuid in wanted:
                events.setdefault(uuid, []).append(
                    (msg.get('event_type'),
                     bool((payload.get('usage') or {}).get(
                         'nova_object.data', {}).get('final'))))
        good = sum(1 for u in uuids if events.get(u) == [
            ('compute.instance.exists', True), (DELETE_START, False)])
        return {'deletes': len(uuids), 'final_exists_then_delete_start': good}

    # -- broker down ---------------------------------------------------------

    def broker_down(self, budget, kind):
        # Each outage starts on a healthy bus (delivery knows of no
        # failure), not on the previous case's outbox.
        self.new_service()
        if kind == 'refused':
            probe = socket.socket()
            probe.bind(('127.0.0.1', 0))
            port = probe.getsockname()[1]
            probe.close()
            hole = None
        else:
            hole = test_notifier.Blackhole()
            hole.setUp()
            self.stack.callback(hole.cleanUp)
            port = hole.port
        url = 'rabbit://guest:guest@127.0.0.1:%d/' % port
        conf = self.conf(budget, url)
        ours = self.notifier(conf, url, 'nova_usage_ext',
                             'compute.bench-compute', retry=0)
        clock = PassClock(_inner_driver(_usage_driver(ours)))
        self.log('hook: broker %s, budget %.2f s: %d deletes'
                 % ('refusing connections' if kind == 'refused' else
                    'accepting and never answering', budget,
                    self.down_deletes))
        delays = []
        senders = []
        threads_before = threading.active_count()
        outbox_before = self.service.ledger.store.outbox_size()
        for _ in range(self.down_deletes):
            uuid = self.take()
            clock.arm()
            t0 = time.perf_counter()
            sender = threading.Thread(
                target=ours.info, daemon=True,
                args=({}, DELETE_START, test_notifier.legacy_payload(uuid)))
            sender.start()
            senders.append(sender)
            if not clock.event.wait(budget + 30):
                delays.append(None)
                continue
            delays.append(clock.at - t0)
            if kind == 'refused':
                sender.join(30)
        # Finals wait in the outbox, not in threads (the package's: the
        # nova threads of this benchmark still sending are left out).
        threads_added = (threading.active_count() - threads_before -
                         sum(1 for s in senders if s.is_alive()))
        waiting = self.service.ledger.store.outbox_size() - outbox_before
        if hole is not None:
            hole.close()
        for sender in senders:
            sender.join(30)
        passed = [d for d in delays if d is not None]
        out = _ms_summary(passed) or {}
        out.update({
            'deletes': len(delays), 'budget_s': budget,
            'never_passed': len(delays) - len(passed),
            'finals_in_outbox': waiting,
            'threads_added': threads_added,
            # Passed on well before the budget: the hook did not wait
            # (delivery already knew the bus was away).
            'passed_before_half_budget': sum(1 for d in passed
                                             if d < budget / 2),
            'senders_still_hanging': sum(1 for s in senders
                                         if s.is_alive())})
        return out


def _bench_usage(i, now, step):
    from nova_usage_ext.virt import base
    return base.InstanceUsage(
        uuid=str(uuidlib.UUID(int=i + 1)), name='instance-%08x' % i,
        display_name='vm', project_id='p' * 32, user_id='u' * 32,
        flavor=base.Flavor('m1.tiny', 1, 64, 1, 0), state=base.RUNNING,
        read_at=now, cpu_time_ns=10 ** 9 + i + step, vcpus=1, memory_mb=64,
        disks=[base.DiskUsage('vda', 1 + step, 2, 3, 4, 0, 10 ** 9)],
        interfaces=[base.InterfaceUsage('tap%d' % i, None, 1 + step, 2, 0,
                                        0, 3, 4, 0, 0)],
        generation=1)


def ledger_save_cost(changed_sizes, log, instances=1000, repeat=20):
    """What saving the ledger costs by number of instances changed since
    the last save, in a ledger of ``instances`` on the SQLite store (one
    transaction, fsynced)."""
    import datetime
    from nova_usage_ext.virt import base
    out = {}
    tmp = tempfile.mkdtemp(prefix=common.PREFIX, dir='/var/tmp')
    try:
        book = ledger.Ledger(state.Store(tmp))
        now = base.utcnow()
        book.update(base.HostReading(
            [_bench_usage(i, now, 0) for i in range(instances)]))
        book.save()
        step = 0
        for size in changed_sizes:
            times = []
            for _ in range(repeat):
                step += 1
                now += datetime.timedelta(seconds=1)
                for i in range(size):
                    book.update_one(_bench_usage(i, now, step))
                t0 = time.perf_counter()
                written = book.save()
                times.append(time.perf_counter() - t0)
                assert written == size, (written, size)
            out[size] = _ms_summary(times)
            out[size]['instances'] = instances
        out_bytes = sum(os.path.getsize(os.path.join(tmp, name))
                        for name in os.listdir(tmp))
        for size in out:
            out[size]['bytes'] = out_bytes
        book.store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log('hook: ledger save (of %d instances): %s' % (instances, ', '.join(
        '%d changed %.1f ms' % (k, v['p50']) for k, v in out.items())))
    return out


def run(deletes, down_deletes, budget, host_sizes, log):
    with HookBench(deletes, down_deletes, host_sizes, log) as bench:
        bench.setup()
        result = {'broker_up': []}
        for host in host_sizes:
            up = bench.broker_up(host)
            result['broker_up'].append(up)
            log('hook: delete.start passed on after p50 %.2f ms p99 %.2f ms '
                '(messagingv2 alone: p50 %.2f p99 %.2f)' % (
                    up['ours_pass']['p50'], up['ours_pass']['p99'],
                    up['base_pass']['p50'], up['base_pass']['p99']))
        # The largest window still: a smaller one would make instances
        # leave without a delete (final exists with final_reason
        # left_host, queued with the ones measured).
        bench.host = host_sizes[-1]
        for kind in ('refused', 'hanging'):
            result['broker_' + kind] = bench.broker_down(budget, kind)
            r = result['broker_' + kind]
            log('hook: broker %s: passed on after p50 %.0f ms p99 %.0f ms'
                % (kind, r.get('p50') or -1, r.get('p99') or -1))
    result['ledger_save'] = ledger_save_cost((1, 20, 200, 1000), log)
    return result
