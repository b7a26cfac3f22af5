"""Usage totals per instance that survive counter resets and restarts.

The hypervisor's counters count from the start of the guest's process:
they drop back to zero when the guest is restarted (a new QEMU process) or
a device is plugged again, and nova-compute sees nothing of what happens
while it is down. The cache keeps, per instance and per device, the last
raw value of each counter and a total accumulated since the instance was
first seen, so that billing gets usage that only grows; and the total at
the start of the current audit period, so that it gets the period's usage.

Per counter:

* first sighting: the total starts at the raw value (everything since the
  guest's process started);
* a reading from a new guest process (its ``generation``, libvirt's domain
  id, changed): every counter was reset, and the raw value is added, even
  when it is above the last one;
* raw >= last raw: the difference is added;
* raw < last raw: the counter was reset, and the raw value (what was
  counted since the reset) is added, never a negative difference;
* None (absent) or negative (libvirt's -1): nothing changes.

A device missing from a reading keeps its state: a busy domain may come
back without its block group for a cycle. It is dropped once it has been
missing for longer than ``device_grace`` (default one day) and its usage
has been reported, i.e. it has no usage in the current period: detached
devices do not pile up, and no unreported usage is lost whatever the audit
period. A guest without a process (shut off, crashed) reports no devices,
which says nothing about them: its devices are not dropped then.

Instances are dropped by ``forget`` or when a complete read of the host no
longer lists them, so memory stays O(instances x devices).

The cache is kept in a JSON file, replaced atomically by ``save`` and read
back on construction; an unusable file is set aside and the cache starts
afresh. The file::

    {"version": 1,
     "saved_at": "<ISO 8601 UTC>",
     "instances": {
       "<uuid>": {
         "first_seen": "<ISO>", "read_at": "<ISO>",
         "period_start": "<ISO>" or null,
         "counters": {"cpu_time_ns": COUNTER, "vcpu_time_ns": COUNTER},
         "generation": <domain id> or null,
         "disk": {"<device>": {"seen_at": "<ISO>",
                               "counters": {"read_bytes": COUNTER, ...}}},
         "interface": {"<tap>": {"seen_at": "<ISO>",
                                 "counters": {"rx_bytes": COUNTER, ...}}}}}}

where COUNTER is ``{"last": raw, "total": total, "start": total at the
start of the period}``, all non-negative integers.
"""

import contextlib
import dataclasses
import datetime
import glob
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator

from oslo_log import log as logging

from nova_usage_ext.virt import base

LOG = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_DEVICE_GRACE = datetime.timedelta(days=1)
_TEMP_SUFFIX = '.tmp'

DISK = 'disk'
INTERFACE = 'interface'
CPU_COUNTERS = base.CPU_COUNTERS
DISK_COUNTERS = base.DISK_IO_COUNTERS
INTERFACE_COUNTERS = base.INTERFACE_COUNTERS
COUNTERS = {DISK: DISK_COUNTERS, INTERFACE: INTERFACE_COUNTERS}

# Power states without a guest process, whose devices are not read (as
# virt.libvirt.INACTIVE_STATES).
_NO_PROCESS_STATES = frozenset((base.NOSTATE, base.SHUTDOWN, base.CRASHED))


@dataclasses.dataclass(slots=True)
class DiskCounters:
    """Counters of one disk; None where never read."""
    read_bytes: int | None = None
    read_requests: int | None = None
    write_bytes: int | None = None
    write_requests: int | None = None


@dataclasses.dataclass(slots=True)
class InterfaceCounters:
    """Counters of one interface, seen from the guest; None where never read.
    """
    rx_bytes: int | None = None
    rx_packets: int | None = None
    rx_errors: int | None = None
    rx_drops: int | None = None
    tx_bytes: int | None = None
    tx_packets: int | None = None
    tx_errors: int | None = None
    tx_drops: int | None = None


@dataclasses.dataclass(slots=True)
class UsageCounters:
    """One instance's usage: totals since first seen, or the current period's.

    ``first_seen`` and ``read_at`` are the times (UTC) of the first and the
    last reading counted; ``period_start`` is the ``when`` of the last
    ``start_period``, None before the first. ``disks`` and ``interfaces``
    are keyed by device and tap name.
    """
    uuid: str
    first_seen: datetime.datetime
    read_at: datetime.datetime
    period_start: datetime.datetime | None
    cpu_time_ns: int | None = None
    vcpu_time_ns: int | None = None
    disks: dict[str, DiskCounters] = dataclasses.field(default_factory=dict)
    interfaces: dict[str, InterfaceCounters] = dataclasses.field(
        default_factory=dict)


_RECORDS = {DISK: DiskCounters, INTERFACE: InterfaceCounters}
_RECORD_FIELDS = {DISK: 'disks', INTERFACE: 'interfaces'}


def _utc(when: datetime.datetime) -> datetime.datetime:
    # nova's own times are naive UTC; the readers' are aware.
    if when.tzinfo is None:
        return when.replace(tzinfo=datetime.timezone.utc)
    return when.astimezone(datetime.timezone.utc)


def _raw(value: object) -> int | None:
    # Absent counters are None; libvirt says -1 for counters it lacks.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


class _Counter:
    """One counter: last raw value, total, total at the period's start."""

    __slots__ = ('last', 'total', 'start')

    def __init__(self, last: int, total: int, start: int = 0):
        self.last = last
        self.total = total
        self.start = start

    def advance(self, raw: int) -> None:
        if raw >= self.last:
            self.total += raw - self.last
        else:
            # Reset (new guest process, device plugged again): the raw
            # value is what was counted since.
            self.total += raw
        self.last = raw


def _advance(counters: dict[str, _Counter], names: tuple[str, ...],
             record: object) -> None:
    for name in names:
        raw = _raw(getattr(record, name))
        if raw is None:
            continue
        if name in counters:
            counters[name].advance(raw)
        else:
            # First sighting: everything since the guest's process started
            # (or the device was plugged), all in the current period.
            counters[name] = _Counter(raw, raw)


class _Device:
    __slots__ = ('seen_at', 'counters')

    def __init__(self, seen_at: datetime.datetime,
                 counters: dict[str, _Counter] | None = None):
        self.seen_at = seen_at
        self.counters = counters if counters is not None else {}

    def reported(self) -> bool:
        # No usage in the current period: dropping it loses nothing.
        return all(c.total == c.start for c in self.counters.values())


class _Instance:
    __slots__ = ('first_seen', 'read_at', 'period_start', 'counters',
                 'devices', 'generation')

    def __init__(self, first_seen: datetime.datetime,
                 read_at: datetime.datetime,
                 period_start: datetime.datetime | None = None,
                 counters: dict[str, _Counter] | None = None,
                 devices: dict[str, dict[str, _Device]] | None = None):
        self.first_seen = first_seen
        self.read_at = read_at
        self.period_start = period_start
        self.counters = counters if counters is not None else {}
        self.devices = devices if devices is not None else {
            DISK: {}, INTERFACE: {}}
        self.generation = None

    def new_generation(self, generation: int | str | None) -> bool:
        """Note the guest process a reading comes from.

        A new process restarts every counter from 0, even when the first
        raw value seen from it is above the last one of the old process
        (the guest ran a while before being read): count it as a reset.
        """
        changed = (generation is not None and
                   self.generation is not None and
                   generation != self.generation)
        if changed:
            for _kind, _dev, _name, counter in self.all_counters():
                counter.last = 0
        if generation is not None:
            self.generation = generation
        return changed

    def all_counters(self) -> Iterator[
            tuple[str | None, str | None, str, _Counter]]:
        """(kind, device name, counter name, counter) of every counter.

        kind and device name are None for the instance's own (CPU).
        """
        for name, counter in self.counters.items():
            yield None, None, name, counter
        for kind, devices in self.devices.items():
            for dev_name, device in devices.items():
                for name, counter in device.counters.items():
                    yield kind, dev_name, name, counter

    def to_primitive(self) -> dict:
        def counters(cs: dict[str, _Counter]) -> dict:
            return {name: {'last': c.last, 'total': c.total,
                           'start': c.start} for name, c in cs.items()}
        data = {
            'first_seen': self.first_seen.isoformat(),
            'read_at': self.read_at.isoformat(),
            'period_start': (self.period_start.isoformat()
                             if self.period_start is not None else None),
            'counters': counters(self.counters),
            'generation': self.generation,
        }
        for kind, devices in self.devices.items():
            data[kind] = {name: {'seen_at': d.seen_at.isoformat(),
                                 'counters': counters(d.counters)}
                          for name, d in devices.items()}
        return data

    @classmethod
    def from_primitive(cls, data: dict) -> '_Instance':
        """Build from ``to_primitive``'s output.

        :raises ValueError, TypeError, KeyError, AttributeError: malformed.
        """
        period_start = data['period_start']
        devices = {}
        for kind, names in COUNTERS.items():
            devices[kind] = {
                _name(name): _Device(_time(d['seen_at']),
                                     _counters(d['counters'], names))
                for name, d in data[kind].items()}
        instance = cls(
            _time(data['first_seen']), _time(data['read_at']),
            _time(period_start) if period_start is not None else None,
            _counters(data['counters'], CPU_COUNTERS), devices)
        generation = data.get('generation')
        if not isinstance(generation, (int, str, type(None))) or \
                isinstance(generation, bool):
            raise ValueError('bad generation %r' % (generation,))
        instance.generation = generation
        return instance


def _time(value: object) -> datetime.datetime:
    if not isinstance(value, str):
        raise TypeError('time %r is not a string' % (value,))
    return _utc(datetime.datetime.fromisoformat(value))


def _name(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError('bad name %r' % (value,))
    return value


def _non_negative(value: object) -> int:
    raw = _raw(value)
    if raw is None:
        raise ValueError('%r is not a non-negative integer' % (value,))
    return raw


def _counters(data: dict, names: tuple[str, ...]) -> dict[str, _Counter]:
    counters = {}
    for name, c in data.items():
        if name not in names:
            raise ValueError('unknown counter %r' % (name,))
        counter = _Counter(_non_negative(c['last']),
                           _non_negative(c['total']),
                           _non_negative(c['start']))
        if counter.start > counter.total:
            raise ValueError('counter %s starts above its total' % name)
        counters[name] = counter
    return counters


class CounterCache:
    """Usage totals of the instances on this host; thread-safe.

    :param path: the JSON file the cache is kept in, read now if it exists
        (its directory is created on save); None keeps it in memory only.
    :param device_grace: how long a device may be missing from readings
        of its running guest before it is dropped (once its usage has been
        reported).
    :param baseline_first_read: when the cache starts empty (no file, or
        one set aside), the instances of the first full read of the host
        have been running for an unknown time, metered by whatever was
        there before: their current period starts at that read instead of
        at their process's start. Instances first seen later count whole
        (they started since, or came with a new process).
    """

    def __init__(self, path: str | os.PathLike | None,
                 device_grace: datetime.timedelta = DEFAULT_DEVICE_GRACE,
                 baseline_first_read: bool = True):
        if device_grace < datetime.timedelta(0):
            raise ValueError('device_grace must not be negative')
        self.path = os.fspath(path) if path is not None else None
        self.device_grace = device_grace
        self._lock = threading.Lock()
        # Serialises saves so that an older snapshot never replaces a newer
        # one; the state lock is held only while taking the snapshot.
        self._save_lock = threading.Lock()
        self._changes = 0
        self._saved_changes = 0
        self._instances: dict[str, _Instance] = {}
        if self.path is not None:
            _remove_temp_files(self.path)
            self._instances = _load(self.path)
        self._baseline_next_full_read = (baseline_first_read and
                                         not self._instances and
                                         not os.path.exists(self.path or ''))

    def __len__(self) -> int:
        """The number of instances cached."""
        with self._lock:
            return len(self._instances)

    # -- readings ----------------------------------------------------------

    def update(self, usages: Iterable[base.InstanceUsage],
               complete: bool = True) -> None:
        """Count one read of the whole host.

        :param usages: the :class:`~nova_usage_ext.virt.base.InstanceUsage`
            of every instance read.
        :param complete: the read listed every nova instance on the host:
            instances cached but not listed are gone, and dropped (unless
            counted from a reading taken after this read began). False
            when the read skipped some: nothing is dropped.
        """
        usages = list(usages)
        with self._lock:
            baseline = self._baseline_next_full_read
            self._baseline_next_full_read = False
            for usage in usages:
                new = usage.uuid not in self._instances
                self._add(usage)
                if baseline and new:
                    self._start_period_locked(usage.uuid, usage.read_at)
            if baseline and usages:
                LOG.info('Usage counter cache started empty: the current '
                         'period of the %d instances on this host starts '
                         'now (their earlier usage is not counted)',
                         len(usages))
            if complete:
                self._drop_gone(usages)
            self._changes += 1

    def update_one(self, usage: base.InstanceUsage) -> None:
        """Count one reading of one instance; never drops other instances.
        """
        with self._lock:
            self._add(usage)
            self._changes += 1

    def _add(self, usage: base.InstanceUsage) -> None:
        read_at = _utc(usage.read_at)
        instance = self._instances.get(usage.uuid)
        if instance is None:
            instance = _Instance(read_at, read_at)
            self._instances[usage.uuid] = instance
        elif read_at < instance.read_at:
            # The two threads read and count independently: a reading
            # taken before the one counted last would look like a reset.
            LOG.debug('Not counting a reading of instance %s taken at %s, '
                      'before the last one counted (%s)', usage.uuid,
                      read_at, instance.read_at)
            return
        instance.read_at = read_at
        if instance.new_generation(usage.generation):
            LOG.info('Instance %s has a new guest process: its counters '
                     'restarted from 0', usage.uuid)
        _advance(instance.counters, CPU_COUNTERS, usage)
        for kind, readings, name_field in ((DISK, usage.disks, 'device'),
                                           (INTERFACE, usage.interfaces,
                                            'name')):
            devices = instance.devices[kind]
            for reading in readings:
                name = getattr(reading, name_field)
                device = devices.get(name)
                if device is None:
                    device = devices[name] = _Device(read_at)
                device.seen_at = read_at
                _advance(device.counters, COUNTERS[kind], reading)
            if usage.state not in _NO_PROCESS_STATES:
                self._drop_missing(usage.uuid, kind, devices, read_at)

    def _drop_missing(self, uuid: str, kind: str,
                      devices: dict[str, _Device],
                      read_at: datetime.datetime) -> None:
        for name in [name for name, device in devices.items()
                     if read_at - device.seen_at > self.device_grace and
                     device.reported()]:
            LOG.info('Dropping counters of %s %s of instance %s: missing '
                     'since %s', kind, name, uuid, devices[name].seen_at)
            del devices[name]

    def _drop_gone(self, usages: list[base.InstanceUsage]) -> None:
        listed = {usage.uuid for usage in usages}
        # An instance counted by update_one after this read began is not
        # gone, only missing from a read that started before it appeared.
        began = min((_utc(usage.read_at) for usage in usages), default=None)
        for uuid in [uuid for uuid, instance in self._instances.items()
                     if uuid not in listed and
                     (began is None or instance.read_at < began)]:
            LOG.info('Dropping counters of instance %s: no longer on this '
                     'host', uuid)
            del self._instances[uuid]

    # -- usage -------------------------------------------------------------

    def totals(self, uuid: str) -> UsageCounters | None:
        """Totals since the instance was first seen; None if not cached."""
        with self._lock:
            return self._record(uuid, lambda c: c.total)

    def period_usage(self, uuid: str) -> UsageCounters | None:
        """Usage since the current period started (totals minus totals at
        the period's start; everything before the first ``start_period``);
        None if the instance is not cached.
        """
        with self._lock:
            return self._record(uuid, lambda c: c.total - c.start)

    def _record(self, uuid: str, value: Callable[[_Counter], int]
                ) -> UsageCounters | None:
        instance = self._instances.get(uuid)
        if instance is None:
            return None
        record = UsageCounters(uuid, instance.first_seen, instance.read_at,
                               instance.period_start)
        for name, counter in instance.counters.items():
            setattr(record, name, value(counter))
        for kind, devices in instance.devices.items():
            getattr(record, _RECORD_FIELDS[kind]).update(
                (dev_name, _RECORDS[kind](**{
                    name: value(counter)
                    for name, counter in device.counters.items()}))
                for dev_name, device in sorted(devices.items()))
        return record

    def start_period(self, uuid: str, when: datetime.datetime,
                     reported: UsageCounters | None = None) -> bool:
        """Start a new audit period, after the last one's exists was sent.

        :param when: the new period's beginning (naive means UTC).
        :param reported: the ``period_usage`` record the exists carried:
            only that usage leaves the period, and what was counted since
            it was taken (by the other thread) stays in the new one.
            None: everything counted so far leaves the period.
        :returns: False if the instance is not cached (nothing to do).
        :raises ValueError: ``reported`` is another instance's.
        """
        if reported is not None and reported.uuid != uuid:
            raise ValueError('usage of instance %s given to start a period '
                             'of %s' % (reported.uuid, uuid))
        with self._lock:
            return self._start_period_locked(uuid, when, reported)

    def _start_period_locked(self, uuid, when, reported=None):
        instance = self._instances.get(uuid)
        if instance is None:
            return False
        instance.period_start = _utc(when)
        for kind, dev_name, name, counter in instance.all_counters():
            if reported is None:
                counter.start = counter.total
                continue
            used = _reported(reported, kind, dev_name, name)
            if used is not None:
                # Never above the total: the device may have been
                # dropped and seen anew since.
                counter.start = min(counter.start + used, counter.total)
        self._changes += 1
        return True

    def forget(self, uuid: str) -> bool:
        """Drop an instance (after the final exists of a deleted instance).

        :returns: False if it was not cached.
        """
        with self._lock:
            if self._instances.pop(uuid, None) is None:
                return False
            self._changes += 1
            return True

    # -- file --------------------------------------------------------------

    def save(self) -> bool:
        """Write the cache to its file atomically if it changed.

        The file is written whole under a temporary name in the same
        directory, synced, then renamed over the old one: a crash or an
        error leaves the previous file intact.

        :returns: True if written; False if unchanged since the last save
            or kept in memory only.
        :raises OSError: the file could not be written (the previous one
            is intact).
        """
        path = self.path
        if path is None:
            return False
        with self._save_lock:
            with self._lock:
                if self._changes == self._saved_changes:
                    return False
                changes = self._changes
                instances = {uuid: instance.to_primitive()
                             for uuid, instance in self._instances.items()}
            text = json.dumps({'version': FORMAT_VERSION,
                               'saved_at': base.utcnow().isoformat(),
                               'instances': instances},
                              sort_keys=True, separators=(',', ':'))
            _write_atomically(path, text)
            self._saved_changes = changes
            return True


def _load(path: str) -> dict[str, _Instance]:
    """The instances kept in ``path``; none if missing or set aside."""
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except FileNotFoundError:
        LOG.debug('No usage counter cache at %s; starting afresh', path)
        return {}
    except (OSError, ValueError) as exc:  # ValueError: not JSON/UTF-8
        _set_aside(path, 'unreadable: %s' % exc)
        return {}
    if not isinstance(data, dict):
        _set_aside(path, 'not a JSON object')
        return {}
    version = data.get('version')
    if type(version) is not int or version != FORMAT_VERSION:
        _set_aside(path, 'format version %r, not %d'
                   % (version, FORMAT_VERSION))
        return {}
    try:
        instances = {_name(uuid): _Instance.from_primitive(instance)
                     for uuid, instance in data['instances'].items()}
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        _set_aside(path, 'malformed: %s %s' % (type(exc).__name__, exc))
        return {}
    LOG.debug('Loaded usage counters of %d instances from %s',
              len(instances), path)
    return instances


def _set_aside(path: str, reason: str) -> None:
    # Kept for whoever wants to look into it; the cache starts afresh
    # either way: usage counted from now on beats no nova-compute.
    aside = '%s.corrupt-%s' % (path,
                               base.utcnow().strftime('%Y%m%dT%H%M%SZ'))
    try:
        os.replace(path, aside)
    except OSError as exc:
        LOG.warning('Usage counter cache %(path)s is unusable '
                    '(%(reason)s) and cannot be set aside (%(error)s); '
                    'starting afresh',
                    {'path': path, 'reason': reason, 'error': exc})
        return
    LOG.warning('Usage counter cache %(path)s is unusable (%(reason)s); '
                'set aside as %(aside)s, starting afresh',
                {'path': path, 'reason': reason, 'aside': aside})


def _remove_temp_files(path: str) -> None:
    # Left by a save that a crash interrupted before the rename.
    pattern = glob.escape(_temp_prefix(path)) + '*' + _TEMP_SUFFIX
    for name in glob.glob(pattern):
        with contextlib.suppress(OSError):
            os.unlink(name)


def _reported(record: UsageCounters, kind: str | None,
              dev_name: str | None, name: str) -> int | None:
    if kind is None:
        return getattr(record, name)
    device = getattr(record, _RECORD_FIELDS[kind]).get(dev_name)
    return getattr(device, name) if device is not None else None


def _temp_prefix(path: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, '.%s.' % name)


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(path) or '.'
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # mkstemp creates the file 0600: the cache names the instances.
    fd, temp = tempfile.mkstemp(dir=directory,
                                prefix=os.path.basename(_temp_prefix(path)),
                                suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    # The rename is durable only once the directory is synced; some file
    # systems refuse to sync a directory, which costs only durability.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
