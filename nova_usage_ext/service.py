"""The extension's state inside one nova-compute process.

The compute driver creates the :class:`UsageService` in ``init_host`` and
registers it here; the notification hook finds it with :func:`current`. In
processes without a hypervisor (nova-api, conductor) nothing registers one,
and the hook passes every notification through untouched.

The service holds the reader, the ledger (and its store) and the delivery
of the outbox, and answers the hook's questions: the message that closes
an instance's period is built and queued here, below the hook.

Periodic reads: one loop on a daemon thread. Each kind of counter (cpu,
interfaces, disks) has its own interval; when any is due, one bulk read
serves all that are due. The loop never overlaps itself: a slow read
delays the next one.
"""

import dataclasses
import threading
import time

from oslo_log import log as logging

from nova_usage_ext import conf as usage_conf
from nova_usage_ext import delivery as usage_delivery
from nova_usage_ext import exists
from nova_usage_ext import host_usage as usage_host_usage
from nova_usage_ext import ledger as usage_ledger
from nova_usage_ext import periodic
from nova_usage_ext.plugins import manager as plugin_manager
from nova_usage_ext import state
from nova_usage_ext.virt import base

LOG = logging.getLogger(__name__)

CPU = base.CPU
INTERFACES = base.INTERFACES
DISKS = base.DISKS
KINDS = base.ALL_KINDS

# Why an instance's last period on this host ended (``final_reason``):
# deleted, migrated, shelved_offloaded (from nova's notifications), or
# left_host (a complete read no longer lists it and nova said nothing).
LEFT_DELETED = 'deleted'
LEFT_HOST = 'left_host'

_current = None
_current_lock = threading.Lock()
_sender = None


def register(service):
    global _current
    with _current_lock:
        if _current is not None and _current is not service:
            _current.stop()
        _current = service


def unregister(service):
    global _current
    with _current_lock:
        if _current is service:
            _current = None


def current():
    return _current


def register_sender(sender):
    """The notifier driver's sender for the outbox (see delivery)."""
    global _sender
    _sender = sender


def _send_through_drivers(entry):
    sender = _sender
    if sender is None:
        raise RuntimeError('no notification driver is set up to send '
                           'through ([oslo_messaging_notifications] driver '
                           '= nova_usage_ext)')
    sender(entry)


def only_kinds(usage, kinds):
    """A copy of a reading keeping only the counters of ``kinds``."""
    return dataclasses.replace(
        usage,
        kinds=frozenset(usage.kinds) & frozenset(kinds),
        cpu_time_ns=usage.cpu_time_ns if CPU in kinds else None,
        vcpu_time_ns=usage.vcpu_time_ns if CPU in kinds else None,
        disks=list(usage.disks) if DISKS in kinds else [],
        interfaces=list(usage.interfaces) if INTERFACES in kinds else [],
        memory=usage.memory if base.MEMORY in kinds else None)


def merge(previous, new, kinds):
    """``new`` with the counters of kinds not in ``kinds`` from ``previous``.
    """
    if previous is None or set(kinds) >= set(base.EVERY_KIND):
        return new
    merged = only_kinds(new, kinds)
    merged.kinds = frozenset(new.kinds) & frozenset(kinds) | (
        frozenset(previous.kinds) - frozenset(kinds))
    if CPU not in kinds:
        merged.cpu_time_ns = previous.cpu_time_ns
        merged.vcpu_time_ns = previous.vcpu_time_ns
        merged.vcpu_time_fallback = previous.vcpu_time_fallback
    if DISKS not in kinds:
        merged.disks = list(previous.disks)
    if INTERFACES not in kinds:
        merged.interfaces = list(previous.interfaces)
    if base.MEMORY not in kinds:
        merged.memory = previous.memory
    return merged


def _newer(previous, new, kinds):
    """``merge``, unless ``previous`` was read after ``new`` (two reads of
    one instance on two threads end in either order: the ledger counts
    the newer, the last reading must be the same)."""
    if previous is not None and previous.read_at > new.read_at:
        return previous
    return merge(previous, new, kinds)


class _Reads:
    """Reads of one instance for the hook, bounded in time.

    Two daemon threads take them in turn: a hypervisor that hangs holds
    those two, never nova's threads, and never keeps nova-compute from
    exiting. One instance is read by one thread at a time: two stats
    calls on one domain at once leave the second without the counters
    that need the domain's job (NOWAIT), and when it ends first the
    ledger takes the first's, older, as nothing new.
    """

    WORKERS = 2
    # Reads asked for without waiting (``read_soon``) beyond this many
    # waiting are dropped: a storm of events never builds a backlog.
    MAX_SOON = 64

    def __init__(self, read):
        self._read = read
        self._cond = threading.Condition()
        self._queue = []
        self._reading = set()
        self._threads = []
        self._stopped = False

    def stop(self):
        """The workers end, after a read under way: a stopped service
        leaves no thread behind."""
        with self._cond:
            self._stopped = True
            self._threads = []
            self._cond.notify_all()

    def _submit(self, job):
        # Under self._cond. The hook's reads, which nova waits for, go
        # before the reads nobody waits for.
        if len(self._threads) < self.WORKERS:
            thread = threading.Thread(target=self._work, daemon=True,
                                      name='nova-usage-ext-read')
            self._threads.append(thread)
            thread.start()
        if job.get('soon'):
            self._queue.append(job)
        else:
            first_soon = next((i for i, j in enumerate(self._queue)
                               if j.get('soon')), len(self._queue))
            self._queue.insert(first_soon, job)
        self._cond.notify()

    def read_soon(self, uuid):
        """Read ``uuid`` on a worker, without waiting; False when not
        queued (stopped, already waiting, or too many waiting)."""
        with self._cond:
            if self._stopped:
                return False
            soon = [j for j in self._queue if j.get('soon')]
            if (len(soon) >= self.MAX_SOON or uuid in self._reading or
                    any(j['uuid'] == uuid for j in soon)):
                return False
            self._submit({'uuid': uuid, 'done': threading.Event(),
                          'soon': True})
        return True

    def read(self, uuid, timeout):
        """The reading, or None when it did not come within ``timeout``.

        :raises base.UsageReaderError: it could not be read.
        """
        job = {'uuid': uuid, 'done': threading.Event()}
        with self._cond:
            self._submit(job)
        if not job['done'].wait(timeout):
            with self._cond:
                if job in self._queue:
                    self._queue.remove(job)
            return None
        if 'error' in job:
            raise job['error']
        return job['usage']

    def _next(self):
        # Under self._cond: the first job of an instance not being read.
        for i, job in enumerate(self._queue):
            if job['uuid'] not in self._reading:
                return self._queue.pop(i)
        return None

    def _work(self):
        while True:
            with self._cond:
                job = self._next()
                while job is None:
                    if self._stopped:
                        return
                    self._cond.wait()
                    job = self._next()
                self._reading.add(job['uuid'])
            try:
                job['usage'] = self._read(job['uuid'])
            except Exception as exc:
                job['error'] = exc
                if job.get('soon'):
                    # Nobody waits for it: say it here.
                    LOG.debug('nova-usage-ext: reading instance %s after '
                              'an event failed: %s', job['uuid'], exc)
            finally:
                with self._cond:
                    self._reading.discard(job['uuid'])
                    self._cond.notify_all()
            job['done'].set()


class _Closer:
    """Closes the final periods the hook asks for, on a daemon thread of
    its own: all those waiting go in one transaction (one fsync for a burst
    of deletes), and the hook waits for it no longer than its budget. A
    closing that was not committed when nova-compute died is not lost: the
    usage stays in the ledger and goes out in a ``left_host`` final.
    """

    def __init__(self, ledger):
        self._ledger = ledger
        self._cond = threading.Condition()
        self._jobs = []
        self._thread = None
        self._stopped = False

    def submit(self, closing, on_done):
        """Queue ``closing`` (a ledger ``Closing``); ``on_done(queued)``
        runs on the closer's thread once committed. Returns an Event set
        then (or on failure)."""
        done = threading.Event()
        with self._cond:
            if self._thread is None:
                self._stopped = False
                self._thread = threading.Thread(
                    target=self._run, daemon=True,
                    name='nova-usage-ext-close')
                self._thread.start()
            self._jobs.append((closing, on_done, done))
            self._cond.notify()
        return done

    def stop(self):
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _run(self):
        while True:
            with self._cond:
                while not self._jobs and not self._stopped:
                    self._cond.wait()
                if not self._jobs:
                    self._thread = None
                    return
                jobs, self._jobs = self._jobs, []
            try:
                results = self._ledger.close_periods([j[0] for j in jobs])
            except Exception:
                LOG.exception('nova-usage-ext: cannot queue %d final '
                              'exists; their usage stays in the ledger',
                              len(jobs))
                results = [None] * len(jobs)
            for (closing, on_done, done), result in zip(jobs, results):
                try:
                    if isinstance(result, Exception):
                        LOG.error('nova-usage-ext: cannot build the final '
                                  'exists of %s: %s', closing.uuid, result)
                    elif result is not None:
                        on_done(result)
                except Exception:
                    LOG.exception('nova-usage-ext: after queuing the final '
                                  'exists of %s', closing.uuid)
                finally:
                    done.result = result
                    done.set()


class UsageService:
    """Reader, ledger, delivery and periodic loop of one nova-compute.

    :param reader: a :class:`base.UsageReader`.
    :param ledger: a :class:`usage_ledger.Ledger`.
    :param host: nova's host name, for payloads.
    :param intervals: kind -> seconds; 0 or less disables that kind.
    :param send: ``outbox entry -> None`` for the delivery thread; raises
        when not sent. Default: the notifier driver's own sender.
    :param plugins: a :class:`plugin_manager.PluginManager` that each
        poll cycle is offered to, or None.
    :param host_usage: a :class:`usage_host_usage.HostUsageSender`, or
        None: when its interval is due, the cycle reads every kind and
        memory, and hands the reading to it.
    """

    def __init__(self, reader, ledger, host, intervals, clock=time.monotonic,
                 audit_period_start=None, send=None, plugins=None,
                 host_usage=None):
        self.reader = reader
        self.ledger = ledger
        self.host = host
        self.intervals = {kind: seconds for kind, seconds in intervals.items()
                          if seconds and seconds > 0}
        self.host_usage = host_usage
        if host_usage is not None and host_usage.interval > 0:
            # Memory is read for the host usage message only.
            self.intervals[base.MEMORY] = host_usage.interval
        self._clock = clock
        # now (aware UTC) -> start of nova's current audit period; nova's
        # glue gives nova's own computation (offsets such as month@15).
        self._audit_period_start = audit_period_start or (
            lambda now: exists.audit_period_start(now, 'month'))
        self._next_due = {kind: 0.0 for kind in self.intervals}
        self._latest = {}
        self._latest_lock = threading.Lock()
        # (uuid, ending) -> usage wire of the audit period already closed:
        # nova sends the legacy and the versioned exists of one period.
        self._closed_audits = {}
        # uuid -> request_id of the notification whose final closed it:
        # nova sends each event in both formats, in one request.
        self._final_requests = {}
        self._close_lock = threading.Lock()
        self._reads = _Reads(self.read_now)
        self._closer = _Closer(ledger)
        self.delivery = usage_delivery.Delivery(
            ledger.store, send or _send_through_drivers)
        self._loop = None
        self.plugins = plugins

    @classmethod
    def from_conf(cls, conf, reader, host, audit_period_start=None):
        settings = usage_conf.settings(conf)
        book = usage_ledger.Ledger(
            state.Store(settings.state_dir),
            outbox_max=settings.outbox_max_messages)
        if audit_period_start is None:
            unit = exists.audit_unit(conf)

            def audit_period_start(now):
                return exists.audit_period_start(now, unit)
        return cls(reader, book, host, settings.poll_intervals,
                   audit_period_start=audit_period_start,
                   plugins=plugin_manager.PluginManager(conf, host),
                   host_usage=usage_host_usage.HostUsageSender(
                       host, settings.host_usage_interval,
                       settings.host_usage_max_instances,
                       usage_host_usage.DriversOnNovaTopics(
                           conf, settings.notification_drivers)))

    # -- the periodic loop ------------------------------------------------

    def start(self):
        # Messages left from before (a restart, an outage) go out first.
        self.delivery.start()
        if self.plugins is not None:
            self.plugins.start()
        if not self.intervals and self.ledger.wants_baseline:
            # No state from before and no poll to take a first reading:
            # read once now, so that what ran before is not billed later.
            self.poll()
        if not self.intervals:
            LOG.info('nova-usage-ext: every usage poll interval is 0 or '
                     'less; counters are read only for exists and deletes')
            return
        LOG.info('nova-usage-ext: caching usage every %s',
                 ', '.join('%s: %ss' % item
                           for item in sorted(self.intervals.items())))
        # A daemon thread: oslo.service's looping call runs on a worker
        # that is not one, so a nova-compute that fails after init_host
        # and never reaches cleanup_host would not exit.
        self._loop = periodic.PeriodicRunner(
            self.poll_due, max(self.intervals.values()),
            name='usage-ext-poll')
        self._loop.start()

    def stop(self):
        """End the loop without waiting for a poll under way (it ends
        after that poll, whose reading is then only cached)."""
        if self._loop is not None:
            self._loop.stop()
            self._loop = None
        self.delivery.stop()
        self._reads.stop()
        # Whatever the hook asked to close is committed first.
        self._closer.stop()
        if self.plugins is not None:
            self.plugins.close()
        if self.host_usage is not None:
            self.host_usage.stop()
        self._save()

    def poll_due(self):
        """Run the due kinds; return seconds until the next one is due."""
        now = self._clock()
        due = {kind for kind, at in self._next_due.items() if at <= now}
        if base.MEMORY in due:
            # The host usage message carries every kind: they are read
            # now, and their own intervals start again.
            due |= set(KINDS) & set(self.intervals)
        if due:
            try:
                self.poll(set(base.EVERY_KIND) if base.MEMORY in due
                          else due)
            except Exception:
                LOG.exception('nova-usage-ext: usage poll failed')
            for kind in due:
                self._next_due[kind] = now + self.intervals[kind]
        if not self._next_due:
            return None
        return max(0.0, min(self._next_due.values()) - self._clock())

    def poll(self, kinds=KINDS):
        """One bulk read of the host, counted for ``kinds``; a read that
        holds memory goes to the host usage message too."""
        read_at = base.utcnow()
        try:
            # Only the stats groups due: libvirt asks each guest's QEMU for
            # every group, and block stats cost as much as the rest.
            reading = self.reader.read_host(tuple(sorted(kinds)))
        except base.UsageReaderError as exc:
            LOG.warning('nova-usage-ext: cannot read usage this cycle: %s',
                        exc)
            return None
        usages = reading.usages
        with self._latest_lock:
            previous = self._latest
            # Per reading, the kinds it holds: one left out of a reply
            # (a busy disk, CPU not read) keeps the last reading's.
            self._latest = {u.uuid: _newer(previous.get(u.uuid), u,
                                           set(kinds) & u.kinds)
                            for u in usages}
        left = self.ledger.update(base.HostReading(
            [only_kinds(u, kinds) for u in usages], reading.complete))
        for uuid in left:
            self._close_left(uuid, previous.get(uuid))
        self._save()
        if self.plugins is not None:
            # Builds the plugins' records and queues them; never waits.
            self.plugins.dispatch(usages, kinds, self.ledger.totals,
                                  self.reader.read_host_figures,
                                  reading.complete,
                                  self.ledger.store.outbox_size,
                                  reading.skipped)
        if self.host_usage is not None and base.MEMORY in kinds:
            # Hands the reading over; never waits for the bus.
            self.host_usage.submit(read_at, usages)
        return usages

    def _save(self):
        try:
            self.ledger.save()
        except Exception as exc:
            LOG.warning('nova-usage-ext: cannot save the usage state: %s',
                        exc)

    # -- what the notification hook asks ----------------------------------

    def latest(self, uuid):
        """The last reading of an instance, or None."""
        with self._latest_lock:
            return self._latest.get(uuid)

    def read_now(self, uuid):
        """Read one instance from the hypervisor and count it.

        :raises base.UsageReaderError: it could not be read.
        """
        usage = self.reader.read_instance(uuid)
        with self._latest_lock:
            self._latest[uuid] = _newer(self._latest.get(uuid), usage,
                                        usage.kinds)
        self.ledger.update_one(usage)
        return usage

    def read_bounded(self, uuid, timeout):
        """``read_now`` within ``timeout`` seconds; None when it could not
        read (logged), the last reading then stands."""
        try:
            usage = self._reads.read(uuid, timeout)
        except base.InstanceNotFound as exc:
            LOG.debug('nova-usage-ext: %s', exc)
            return None
        except base.UsageReaderError as exc:
            LOG.warning('nova-usage-ext: cannot read instance %s: %s', uuid,
                        exc)
            return None
        except Exception:
            # A bug in a reader or its library: the last reading stands,
            # and the final exists still goes out.
            LOG.exception('nova-usage-ext: reading instance %s failed', uuid)
            return None
        if usage is None:
            LOG.warning('nova-usage-ext: reading instance %s took more than '
                        '%.1fs; its last reading stands', uuid, timeout)
        return usage

    def read_soon(self, uuid):
        """Read ``uuid`` on the hook's read workers, without waiting: the
        reading is counted and stands as the instance's last. For the
        moments nova learns of from libvirt's events, when the counters
        stop (a guest paused for a live migration's switch-over)."""
        return self._reads.read_soon(uuid)

    def period_usage(self, uuid):
        return self.ledger.period_usage(uuid)

    def audit_period_start(self, now):
        """Start of nova's audit period containing ``now``: the beginning
        of an exists sent mid-period, as nova's own are. (What the usage
        in it covers is ``period.period_beginning``.)"""
        return self._audit_period_start(now)

    # -- closing periods ---------------------------------------------------

    def audit_closed(self, uuid, ending):
        """True when a message closed the period of the exists ending at
        ``ending`` already (nova's other format)."""
        if ending is not None:
            ending = ending.replace(microsecond=0)
        with self._close_lock:
            return (uuid, ending) in self._closed_audits

    def close_audit_period(self, uuid, ending, build,
                           source=exists.SOURCE_CACHE, held=False):
        """Close the period that nova's audit exists ending at ``ending``
        reports, once per (instance, ending).

        :param build: ``usage wire -> (ctxt, message, priority)``, the
            message that carries the usage; it is queued in the outbox in
            the transaction that ends the period.
        :param source: where the last reading comes from (the hook read
            it for this message: ``exists.SOURCE_HYPERVISOR``).
        :param held: the caller sends the message itself first
            (``delivery.send_here``), the delivery thread only if that
            fails.
        :returns: ``(usage wire, seq)``: seq is the queued message's, None
            when another message closed this period already (nova's
            other format) and the same usage is reported again; ``(None,
            None)`` when the instance is not known here.
        """
        if ending is not None:
            # nova writes the legacy ending with microseconds and the
            # versioned one in whole seconds.
            ending = ending.replace(microsecond=0)
        key = (uuid, ending)
        with self._close_lock:
            if key in self._closed_audits:
                return self._closed_audits[key], None
            usage = self.latest(uuid)
            if usage is None:
                return None, None
            wire = {}

            def build_with_usage(period):
                wire['usage'] = exists.usage_primitive(
                    usage, self.host, source=source, period=period)
                return build(wire['usage'])

            queued = self.ledger.close_period(
                uuid, ending or base.utcnow(), build_with_usage, held=held)
            if queued is None:
                return None, None
            self._closed_audits = {
                k: v for k, v in self._closed_audits.items()
                if k[0] != uuid}
            self._closed_audits[key] = wire['usage']
        if not held:
            self.delivery.wake()
        return wire['usage'], queued.seq

    def close_final(self, uuid, nova_payload, ctxt, priority, budget,
                    reason=LEFT_DELETED):
        """Read the instance one last time and queue its final exists.

        :param nova_payload: the payload of nova's notification (legacy
            or versioned) whose instance fields the exists carries; None
            when the instance left without one.
        :returns: the queued message's seq, or None when nothing was
            queued (unknown here, or final already queued).
        """
        deadline = time.monotonic() + budget
        request = ctxt.get('request_id') if isinstance(ctxt, dict) else None
        if (self.ledger.is_closed(uuid) and
                self._final_requests.get(uuid) == request):
            # nova's other format of the same event.
            return None
        # Another request (a delete retried after a failed one, a delete
        # after a resize to this same host) finds the guest still running
        # here: its usage since the last final is read and reported.
        usage = self.read_bounded(uuid, budget)
        source = exists.SOURCE_HYPERVISOR
        if usage is None:
            if self.ledger.is_closed(uuid):
                return None
            usage = self.latest(uuid)
            source = exists.SOURCE_CACHE
        if uuid not in self.ledger:
            return None
        ending = base.utcnow()
        build = self._final_builder(uuid, usage, source, nova_payload, ctxt,
                                    priority, ending, reason)

        def queued(result):
            with self._close_lock:
                self._final_requests = {
                    u: r for u, r in self._final_requests.items()
                    if u in self.ledger}
                self._final_requests[uuid] = request
            self.delivery.wake()

        done = self._closer.submit(usage_ledger.Closing(
            uuid, ending, build, final=True), queued)
        if not done.wait(max(0.0, deadline - time.monotonic())):
            LOG.warning('nova-usage-ext: the final exists of %s was not '
                        'queued within %.1fs; it follows nova\'s message',
                        uuid, budget)
            return None
        result = getattr(done, 'result', None)
        if not isinstance(result, usage_ledger.Queued):
            return None
        return result.seq

    def _final_builder(self, uuid, usage, source, nova_payload, ctxt,
                       priority, ending, reason):
        """``period -> (ctxt, message, priority)`` of a final exists."""

        def build(period):
            if nova_payload is not None and 'nova_object.data' in \
                    nova_payload:
                legacy = exists.legacy_fields_from_versioned(
                    nova_payload['nova_object.data'])
            elif nova_payload is not None:
                legacy = dict(nova_payload)
            elif usage is not None:
                legacy = exists.legacy_fields(usage, self.host)
            else:
                legacy = {'instance_id': uuid}
            wire = None
            if usage is not None:
                wire = exists.usage_primitive(usage, self.host, final=True,
                                              source=source, period=period)
            body = exists.exists_payload(
                legacy, wire, self.audit_period_start(ending), ending)
            # Why this instance's usage on this host ends here.
            body['final_reason'] = reason
            # The usage on this host, sent by this host: by resize.end nova
            # has already set the instance's host to the destination.
            body['host'] = self.host
            return ctxt, exists.notification(body, self.host,
                                             ending), priority

        return build

    def _close_left(self, uuid, usage):
        # A complete read no longer lists it and it has unreported usage:
        # it left the host (migrated, evacuated, deleted while nova-compute
        # was down) without a final exists.
        try:
            ending = base.utcnow()
            build = self._final_builder(uuid, usage, exists.SOURCE_CACHE,
                                        None, {}, 'INFO', ending, LEFT_HOST)
            self.ledger.close_period(uuid, ending, build, final=True)
            LOG.info('nova-usage-ext: instance %s left this host: its last '
                     'usage here is queued in a final exists', uuid)
            self.delivery.wake()
        except Exception:
            LOG.exception('nova-usage-ext: cannot queue the last usage of '
                          'instance %s, which left this host', uuid)
