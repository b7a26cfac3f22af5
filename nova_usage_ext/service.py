"""The extension's state inside one nova-compute process.

The compute driver creates the :class:`UsageService` in ``init_host`` and
registers it here; the notification hook finds it with :func:`current`. In
processes without a hypervisor (nova-api, conductor) nothing registers one,
and the hook passes every notification through untouched.

Periodic caching: one loop on oslo.service's threading-aware looping call.
Each kind of counter (cpu, interfaces, disks) has its own interval; when any
is due, one bulk read serves all that are due. The loop never overlaps
itself: a slow read delays the next one.
"""

import collections
import dataclasses
import os
import threading
import time

from oslo_log import log as logging
from oslo_service import loopingcall

from nova_usage_ext import conf as usage_conf
from nova_usage_ext import counters
from nova_usage_ext import exists
from nova_usage_ext.virt import base

LOG = logging.getLogger(__name__)

CPU = base.CPU
INTERFACES = base.INTERFACES
DISKS = base.DISKS
KINDS = base.ALL_KINDS

# How many deleted instances to remember, so that each gets exactly one
# final exists even when nova sends both delete.start formats.
FINALS_REMEMBERED = 10000

_current = None
_current_lock = threading.Lock()


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


def only_kinds(usage, kinds):
    """A copy of a reading keeping only the counters of ``kinds``."""
    return dataclasses.replace(
        usage,
        cpu_time_ns=usage.cpu_time_ns if CPU in kinds else None,
        vcpu_time_ns=usage.vcpu_time_ns if CPU in kinds else None,
        disks=list(usage.disks) if DISKS in kinds else [],
        interfaces=list(usage.interfaces) if INTERFACES in kinds else [])


def merge(previous, new, kinds):
    """``new`` with the counters of kinds not in ``kinds`` from ``previous``.
    """
    if previous is None or set(kinds) >= set(KINDS):
        return new
    merged = only_kinds(new, kinds)
    if CPU not in kinds:
        merged.cpu_time_ns = previous.cpu_time_ns
        merged.vcpu_time_ns = previous.vcpu_time_ns
    if DISKS not in kinds:
        merged.disks = list(previous.disks)
    if INTERFACES not in kinds:
        merged.interfaces = list(previous.interfaces)
    return merged


class UsageService:
    """Reader, counter cache and periodic loop of one nova-compute.

    :param reader: a :class:`base.UsageReader`.
    :param cache: a :class:`counters.CounterCache`.
    :param host: nova's host name, for payloads.
    :param intervals: kind -> seconds; 0 or less disables that kind.
    """

    def __init__(self, reader, cache, host, intervals, clock=time.monotonic,
                 audit_period_start=None):
        self.reader = reader
        self.cache = cache
        self.host = host
        self.intervals = {kind: seconds for kind, seconds in intervals.items()
                          if seconds and seconds > 0}
        self._clock = clock
        # now (aware UTC) -> start of nova's current audit period; nova's
        # glue gives nova's own computation (offsets such as month@15).
        self._audit_period_start = audit_period_start or (
            lambda now: exists.audit_period_start(now, 'month'))
        self._next_due = {kind: 0.0 for kind in self.intervals}
        self._latest = {}
        self._latest_lock = threading.Lock()
        self._reported = {}
        self._reported_lock = threading.Lock()
        self._finals = collections.OrderedDict()
        self._finals_lock = threading.Lock()
        self._loop = None

    @classmethod
    def from_conf(cls, conf, reader, host, audit_period_start=None):
        usage_conf.register_opts(conf)
        volume_interval = getattr(conf, 'volume_usage_poll_interval', 0)
        intervals = {CPU: conf.usage_ext.cpu_poll_interval,
                     INTERFACES: conf.bandwidth_poll_interval,
                     DISKS: volume_interval}
        state_dir = conf.usage_ext.state_dir or os.path.join(
            getattr(conf, 'state_path', None) or '/var/lib/nova', 'usage_ext')
        cache = counters.CounterCache(os.path.join(state_dir, 'counters.json'))
        if audit_period_start is None:
            unit = exists.audit_unit(conf)

            def audit_period_start(now):
                return exists.audit_period_start(now, unit)
        return cls(reader, cache, host, intervals,
                   audit_period_start=audit_period_start)

    # -- the periodic loop ------------------------------------------------

    def start(self):
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
        from nova_usage_ext import periodic
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

    def poll_due(self):
        """Run the due kinds; return seconds until the next one is due."""
        now = self._clock()
        due = {kind for kind, at in self._next_due.items() if at <= now}
        if due:
            try:
                self.poll(due)
            except Exception:
                LOG.exception('nova-usage-ext: usage poll failed')
            for kind in due:
                self._next_due[kind] = now + self.intervals[kind]
        if not self._next_due:
            return None
        return max(0.0, min(self._next_due.values()) - self._clock())

    def poll(self, kinds=KINDS):
        """One bulk read of the host, cached for ``kinds``."""
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
            self._latest = {u.uuid: merge(self._latest.get(u.uuid), u, kinds)
                            for u in usages}
        if reading.complete:
            with self._reported_lock:
                self._reported = {uuid: last for uuid, last
                                  in self._reported.items()
                                  if uuid in self._latest}
        # An instance the reader had to skip must not be pruned.
        self.cache.update([only_kinds(u, kinds) for u in usages],
                          complete=reading.complete)
        self._save()
        return usages

    def _save(self):
        try:
            self.cache.save()
        except Exception as exc:
            LOG.warning('nova-usage-ext: cannot save the counter cache: %s',
                        exc)

    # -- what the notification hook asks ----------------------------------

    def latest(self, uuid):
        """The last cached reading of an instance, or None."""
        with self._latest_lock:
            return self._latest.get(uuid)

    def read_now(self, uuid):
        """Read one instance from the hypervisor and cache it.

        :raises base.UsageReaderError: it could not be read.
        """
        usage = self.reader.read_instance(uuid)
        with self._latest_lock:
            self._latest[uuid] = usage
        self.cache.update_one(usage)
        return usage

    def period_usage(self, uuid):
        return self.cache.period_usage(uuid)

    def period_for_exists(self, uuid, ending):
        """The period usage an exists ending at ``ending`` reports.

        The next period starts at ``ending``, once: nova sends the legacy
        and the versioned exists of the same period when
        ``notification_format = both``, and both report the same usage.
        nova writes the legacy ending with microseconds and the versioned
        one in whole seconds: they are compared to the second.
        """
        if ending is not None:
            ending = ending.replace(microsecond=0)
        with self._reported_lock:
            last = self._reported.get(uuid)
            if last is not None and ending is not None and last[0] == ending:
                return last[1]
            period = self.cache.period_usage(uuid)
            if period is not None and ending is not None:
                self.cache.start_period(uuid, ending, reported=period)
                self._reported[uuid] = (ending, period)
            return period

    def audit_period_start(self, now):
        """Start of nova's audit period containing ``now``: the beginning
        of an exists sent mid-period, as nova's own are. (What the usage
        in it covers is ``period.period_beginning``.)"""
        return self._audit_period_start(now)

    def claim_final(self, uuid):
        """True the first time it is asked for ``uuid``, False after."""
        with self._finals_lock:
            if uuid in self._finals:
                return False
            self._finals[uuid] = True
            while len(self._finals) > FINALS_REMEMBERED:
                self._finals.popitem(last=False)
            return True

    def forget(self, uuid, save=True):
        """The instance is gone: drop its cached state.

        :param save: write the cache file now. The delete hook leaves it to
            the next poll: a save fsyncs the whole file, and nova's
            delete.start would wait for it.
        """
        with self._latest_lock:
            self._latest.pop(uuid, None)
        with self._reported_lock:
            self._reported.pop(uuid, None)
        self.cache.forget(uuid)
        if save:
            self._save()
