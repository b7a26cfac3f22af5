"""The usage ledger: per instance and counter, what was used in the
current period, exactly, whatever the order of readings and events.

The hypervisor's counters count from the start of the guest's process
(its *generation*: libvirt's domain id). Per counter the ledger keeps the
last raw value, a total since first seen and the total at the start of the
current period. A reading moves them as follows:

* first sighting of a counter: the total starts at the raw value (all of
  it was used since the process, or the device, started on this host);
  except for the instances found running when the ledger had no state
  (first start, unusable state), whose usage before is unknown: their
  counters start from the first reading;
* a new generation: every counter restarted from 0, the raw value is
  added;
* same generation, raw >= last: the difference is added;
* same generation, raw < last (a vCPU unplugged, a device plugged again):
  nothing is added, the counter follows the new value (logged once per
  instance and generation). Without a generation (a reader that does not
  know it), a drop is a reset and the raw value is added;
* a kind that the reading does not hold (``InstanceUsage.kinds``) leaves
  its devices as they are: "not read" is never "no devices";
* a reading older than the last one counted (two threads' readings end in
  either order) counts only for the devices of its process that the
  newer one did not hold (a disk busy under NOWAIT);
* ``vcpu_time_ns`` read as the process's CPU time (vCPU entries missing
  from one reply) is not counted against a vCPU sum: the two count
  different things.

A period ends only when the message that reports it is queued durably in
the outbox (:meth:`Ledger.close_period`, one transaction): a failed send
delays usage, never drops it. An instance's state stays after its final
exists (a failed delete lets the guest run on, and its usage since is
counted from there); it is dropped when a complete read of the host no
longer lists it and it has nothing unreported. An instance that leaves
with unreported usage is returned by :meth:`Ledger.update`, so that the
caller sends its final-on-this-host message.

Invariant (tested over random event sequences): for every instance and
counter, the usage in all the messages queued plus the current period's
equals the counter's growth over the readings of its life on this host,
and is never negative.
"""

import dataclasses
import datetime
import threading

from oslo_log import log as logging

from nova_usage_ext.virt import base

LOG = logging.getLogger(__name__)

DEFAULT_DEVICE_GRACE = datetime.timedelta(days=1)
# SQLite integers are signed 64-bit; libvirt's counters never get there.
MAX_COUNTER = 2 ** 63 - 1

DISK = 'disk'
INTERFACE = 'interface'
# How each kind of reading maps onto the ledger: (kind in readings,
# ledger device kind, record attribute, device name attribute, counters).
DEVICE_KINDS = (
    (base.DISKS, DISK, 'disks', 'device', base.DISK_IO_COUNTERS),
    (base.INTERFACES, INTERFACE, 'interfaces', 'name',
     base.INTERFACE_COUNTERS),
)
COUNTERS = {DISK: base.DISK_IO_COUNTERS, INTERFACE: base.INTERFACE_COUNTERS}
_RECORD_FIELDS = {DISK: 'disks', INTERFACE: 'interfaces'}

# Power states without a guest process, whose devices are not read.
_NO_PROCESS_STATES = frozenset((base.NOSTATE, base.SHUTDOWN, base.CRASHED))

VCPU = 'vcpu'
PROCESS = 'process'


def _make_record(kind):
    names = COUNTERS[kind]
    return dataclasses.make_dataclass(
        {DISK: 'DiskCounters', INTERFACE: 'InterfaceCounters'}[kind],
        [(name, int | None, dataclasses.field(default=None))
         for name in names], slots=True)


# Counters of one device; None where never read. Built from the one list
# of counter names in the reader contract.
DiskCounters = _make_record(DISK)
InterfaceCounters = _make_record(INTERFACE)
_RECORDS = {DISK: DiskCounters, INTERFACE: InterfaceCounters}


@dataclasses.dataclass(slots=True)
class UsageCounters:
    """One instance's usage: totals since first seen, or the current period's.

    ``first_seen`` and ``read_at`` are the times (UTC) of the first and the
    last reading counted; ``period_start`` is when the current period
    began (None before the first). ``disks`` and ``interfaces`` are keyed
    by device and tap name.
    """
    uuid: str
    first_seen: datetime.datetime
    read_at: datetime.datetime
    period_start: datetime.datetime | None
    cpu_time_ns: int | None = None
    vcpu_time_ns: int | None = None
    disks: dict = dataclasses.field(default_factory=dict)
    interfaces: dict = dataclasses.field(default_factory=dict)


def utc(when):
    # nova's own times are naive UTC; the readers' are aware.
    if when.tzinfo is None:
        return when.replace(tzinfo=datetime.timezone.utc)
    return when.astimezone(datetime.timezone.utc)


def raw_value(value):
    """A counter value as read, or None: absent, libvirt's -1, or beyond
    what any real counter reaches."""
    if (isinstance(value, int) and not isinstance(value, bool) and
            0 <= value <= MAX_COUNTER):
        return value
    return None


class _Counter:
    """Last raw value, total, total at the period's start."""

    __slots__ = ('last', 'total', 'start')

    def __init__(self, last, total, start=0):
        self.last = last
        self.total = total
        self.start = start

    @property
    def unreported(self):
        return self.total - self.start


class _Device:
    __slots__ = ('seen_at', 'counters')

    def __init__(self, seen_at, counters=None):
        self.seen_at = seen_at
        self.counters = counters if counters is not None else {}

    def reported(self):
        return all(c.total == c.start for c in self.counters.values())


class _Instance:
    __slots__ = ('first_seen', 'read_at', 'period_start', 'counters',
                 'devices', 'generation', 'baseline_generation',
                 'vcpu_basis', 'closed', 'drop_logged')

    def __init__(self, first_seen, read_at, period_start=None):
        self.first_seen = first_seen
        self.read_at = read_at
        self.period_start = period_start
        self.counters = {}
        self.devices = {DISK: {}, INTERFACE: {}}
        self.generation = None
        # Counters first seen in this generation start from their first
        # reading: their earlier usage is unknown (no state at start).
        self.baseline_generation = None
        # What vcpu_time_ns counts: VCPU (sum of vCPU time and wait) or
        # PROCESS (the process's CPU time standing in).
        self.vcpu_basis = None
        # Its final exists is queued; a reading after it means the
        # instance is still here (a failed delete).
        self.closed = False
        self.drop_logged = False

    @property
    def fresh(self):
        """Its counters first seen in this process count from their first
        reading (no state at start)."""
        return (self.baseline_generation is not None and
                self.generation == self.baseline_generation)

    def all_counters(self):
        """(kind, device, name, counter); kind and device None for CPU."""
        for name, counter in self.counters.items():
            yield None, None, name, counter
        for kind, devices in self.devices.items():
            for dev_name, device in devices.items():
                for name, counter in device.counters.items():
                    yield kind, dev_name, name, counter

    def unreported(self):
        return any(c.total != c.start
                   for _k, _d, _n, c in self.all_counters())

    def close(self, ending, final):
        """Start the next period at ``ending``; returns what undoes it."""
        counters = [c for _k, _d, _n, c in self.all_counters()]
        starts = [c.start for c in counters]
        previous = (self.period_start, self.closed)

        def undo():
            self.period_start, self.closed = previous
            for counter, start in zip(counters, starts):
                counter.start = start

        for counter in counters:
            counter.start = counter.total
        self.period_start = utc(ending)
        self.closed = final
        return undo

    # -- rows in the store -------------------------------------------------

    def to_row(self):
        def counters(cs):
            return {name: [c.last, c.total, c.start]
                    for name, c in cs.items()}
        row = {
            'first_seen': self.first_seen.isoformat(),
            'read_at': self.read_at.isoformat(),
            'period_start': (self.period_start.isoformat()
                             if self.period_start is not None else None),
            'generation': self.generation,
            'baseline_generation': self.baseline_generation,
            'vcpu_basis': self.vcpu_basis,
            'closed': self.closed,
            'counters': counters(self.counters),
        }
        for kind, devices in self.devices.items():
            row[kind] = {name: {'seen_at': d.seen_at.isoformat(),
                                'counters': counters(d.counters)}
                         for name, d in devices.items()}
        return row

    @classmethod
    def from_row(cls, row):
        """Build from ``to_row``'s output, or the JSON cache of earlier
        releases (counters as ``{"last", "total", "start"}``).

        :raises ValueError, TypeError, KeyError, AttributeError: malformed.
        """
        period_start = row['period_start']
        instance = cls(_time(row['first_seen']), _time(row['read_at']),
                       _time(period_start) if period_start is not None
                       else None)
        instance.counters = _counters(row['counters'], base.CPU_COUNTERS)
        for kind, names in COUNTERS.items():
            instance.devices[kind] = {
                _name(name): _Device(_time(d['seen_at']),
                                     _counters(d['counters'], names))
                for name, d in row[kind].items()}
        instance.generation = _generation(row.get('generation'))
        instance.baseline_generation = _generation(
            row.get('baseline_generation'))
        basis = row.get('vcpu_basis')
        if basis not in (None, VCPU, PROCESS):
            raise ValueError('bad vcpu basis %r' % (basis,))
        instance.vcpu_basis = basis
        instance.closed = bool(row.get('closed', False))
        return instance


def _time(value):
    if not isinstance(value, str):
        raise TypeError('time %r is not a string' % (value,))
    return utc(datetime.datetime.fromisoformat(value))


def _name(value):
    if not isinstance(value, str) or not value:
        raise ValueError('bad name %r' % (value,))
    return value


def _generation(value):
    if isinstance(value, bool) or not isinstance(value, (int, str,
                                                         type(None))):
        raise ValueError('bad generation %r' % (value,))
    return value


def _count(value):
    raw = raw_value(value)
    if raw is None:
        raise ValueError('%r is not a counter value' % (value,))
    return raw


def _counters(data, names):
    counters = {}
    for name, c in data.items():
        if name not in names:
            raise ValueError('unknown counter %r' % (name,))
        if isinstance(c, dict):  # the JSON cache of earlier releases
            c = [c['last'], c['total'], c['start']]
        last, total, start = (_count(v) for v in c)
        if start > total:
            raise ValueError('counter %s starts above its total' % name)
        counters[name] = _Counter(last, total, start)
    return counters


@dataclasses.dataclass(slots=True)
class Closing:
    """A request to end an instance's period (see ``close_period``)."""
    uuid: str
    ending: datetime.datetime
    build: object
    final: bool = False
    held: bool = False


@dataclasses.dataclass(slots=True)
class Queued:
    """A message that closed a period, queued in the outbox."""
    seq: int
    message: dict
    period: UsageCounters


class Ledger:
    """The usage of the instances on this host; thread-safe.

    :param store: a :class:`nova_usage_ext.state.Store` (its instances
        are loaded now).
    :param device_grace: how long a device may be missing from readings
        of its running guest, its kind read, before it is dropped (once
        its usage has been reported).
    :param outbox_max: the most messages the outbox keeps.
    """

    def __init__(self, store, device_grace=DEFAULT_DEVICE_GRACE,
                 outbox_max=100000):
        if device_grace < datetime.timedelta(0):
            raise ValueError('device_grace must not be negative')
        self.store = store
        self.device_grace = device_grace
        self.outbox_max = max(1, outbox_max)
        self.dropped_messages = 0
        self._lock = threading.RLock()
        self._dirty = set()
        self._deleted = set()
        self._instances = {}
        self._load()

    def _load(self):
        rows = dict(self.store.legacy_instances)
        rows.update(self.store.load_instances())
        for uuid, row in rows.items():
            try:
                self._instances[_name(uuid)] = _Instance.from_row(row)
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                LOG.error('nova-usage-ext: usage state of instance %s is '
                          'malformed (%s: %s): its earlier usage is '
                          'unknown', uuid, type(exc).__name__, exc)
        if self.store.legacy_instances:
            self.store.finish_migration(
                {uuid: i.to_row() for uuid, i in self._instances.items()})
        # No state from before: whatever runs now ran before, metered by
        # whatever was there; count it from its first reading.
        self._baseline_next_full_read = (
            self.store.lost_state or (self.store.fresh and not rows))

    def __len__(self):
        with self._lock:
            return len(self._instances)

    def __contains__(self, uuid):
        with self._lock:
            return uuid in self._instances

    # -- readings ----------------------------------------------------------

    def update(self, reading):
        """Count one read of the whole host (a :class:`base.HostReading`).

        :returns: the uuids of the instances that a complete read no
            longer lists and that have unreported usage: they left the
            host, and the caller closes their period with a final message.
            Those with nothing unreported are dropped.
        """
        with self._lock:
            baseline = self._baseline_next_full_read
            # An instance this read skipped also ran before: the baseline
            # holds until a read of the whole host.
            self._baseline_next_full_read = baseline and not reading.complete
            for usage in reading.usages:
                self._add(usage, baseline=baseline)
            if baseline and reading.usages:
                LOG.info('nova-usage-ext: no usage state from before: the '
                         'usage of the %d instances on this host is counted '
                         'from now on', len(reading.usages))
            if not reading.complete:
                return []
            return self._gone(reading.usages)

    def update_one(self, usage):
        """Count one reading of one instance; never drops others.

        Before the first full read of a ledger without state, the instance
        ran before it too: it counts from this reading.
        """
        with self._lock:
            self._add(usage, baseline=self._baseline_next_full_read)

    @property
    def wants_baseline(self):
        """No state from before and no full read yet: the instances
        running now should be read once, to count from there."""
        return self._baseline_next_full_read

    def _add(self, usage, baseline):
        read_at = utc(usage.read_at)
        instance = self._instances.get(usage.uuid)
        if instance is None:
            instance = _Instance(read_at, read_at,
                                 read_at if baseline else None)
            if baseline:
                instance.baseline_generation = usage.generation
            self._instances[usage.uuid] = instance
        elif read_at < instance.read_at:
            # Two threads read and count independently, and end in either
            # order: an older reading than the last one counted says
            # nothing new, but for the devices the newer one did not hold
            # (a disk busy under NOWAIT).
            self._add_older(instance, usage, read_at)
            return
        self._dirty.add(usage.uuid)
        instance.read_at = read_at
        instance.closed = False
        if (usage.generation is not None and
                instance.generation is not None and
                usage.generation != instance.generation):
            LOG.info('nova-usage-ext: instance %s has a new guest process: '
                     'its counters restarted from 0', usage.uuid)
            for _k, _d, _n, counter in instance.all_counters():
                counter.last = 0
            instance.vcpu_basis = None
            instance.drop_logged = False
        if usage.generation is not None:
            instance.generation = usage.generation
        if base.CPU in usage.kinds:
            self._advance_cpu(instance, usage, instance.fresh)
        self._advance_devices(instance, usage, read_at)

    def _add_older(self, instance, usage, read_at):
        if usage.generation is None or usage.generation != \
                instance.generation:
            return
        if self._advance_devices(instance, usage, read_at, older=True):
            self._dirty.add(usage.uuid)

    def _advance_devices(self, instance, usage, read_at, older=False):
        """Count the devices of the kinds ``usage`` holds; of a reading
        ``older`` than the last counted, only those that the newer one did
        not hold. Returns how many devices were counted."""
        counted = 0
        for kind, dev_kind, attr, name_attr, names in DEVICE_KINDS:
            if kind not in usage.kinds:
                continue
            devices = instance.devices[dev_kind]
            for record in getattr(usage, attr):
                dev_name = getattr(record, name_attr)
                device = devices.get(dev_name)
                if older:
                    if device is None or device.seen_at >= read_at:
                        continue
                elif device is None:
                    device = devices[dev_name] = _Device(read_at)
                device.seen_at = read_at
                self._advance(instance, usage.uuid, device.counters, names,
                              record, instance.fresh)
                counted += 1
            if not older and usage.state not in _NO_PROCESS_STATES:
                self._drop_missing(usage.uuid, dev_kind, devices, read_at)
        return counted

    def _advance_cpu(self, instance, usage, fresh):
        names = base.CPU_COUNTERS
        basis = PROCESS if usage.vcpu_time_fallback else VCPU
        if instance.vcpu_basis == VCPU and basis == PROCESS:
            # One reply without some vCPU entries: not comparable.
            names = tuple(n for n in names if n != 'vcpu_time_ns')
        elif (instance.vcpu_basis == PROCESS and basis == VCPU and
              'vcpu_time_ns' in instance.counters):
            # vCPU entries came back: follow them from here.
            counter = instance.counters['vcpu_time_ns']
            value = raw_value(usage.vcpu_time_ns)
            if value is not None:
                counter.last = value
                instance.vcpu_basis = VCPU
            names = tuple(n for n in names if n != 'vcpu_time_ns')
        if instance.vcpu_basis is None and raw_value(
                usage.vcpu_time_ns) is not None:
            instance.vcpu_basis = basis
        self._advance(instance, usage.uuid, instance.counters, names, usage,
                      fresh)

    def _advance(self, instance, uuid, counters, names, record, fresh):
        for name in names:
            raw = raw_value(getattr(record, name))
            if raw is None:
                continue
            counter = counters.get(name)
            if counter is None:
                counters[name] = (_Counter(raw, 0) if fresh
                                  else _Counter(raw, raw))
            elif raw >= counter.last:
                counter.total += raw - counter.last
                counter.last = raw
            elif instance.generation is None:
                # Without a generation a drop is all the reset we see.
                counter.total += raw
                counter.last = raw
            else:
                if not instance.drop_logged:
                    instance.drop_logged = True
                    LOG.info('nova-usage-ext: counter %s of instance %s went '
                             'down within one guest process (%d -> %d); '
                             'counting on from the new value', name, uuid,
                             counter.last, raw)
                counter.last = raw

    def _drop_missing(self, uuid, kind, devices, read_at):
        for name in [name for name, device in devices.items()
                     if read_at - device.seen_at > self.device_grace and
                     device.reported()]:
            LOG.info('nova-usage-ext: dropping %s %s of instance %s: missing '
                     'since %s', kind, name, uuid, devices[name].seen_at)
            del devices[name]

    def _gone(self, usages):
        listed = {usage.uuid for usage in usages}
        # Counted by update_one after this read began: not gone.
        began = min((utc(usage.read_at) for usage in usages), default=None)
        left = []
        for uuid, instance in list(self._instances.items()):
            if uuid in listed or (began is not None and
                                  instance.read_at >= began):
                continue
            if instance.unreported():
                left.append(uuid)
            else:
                del self._instances[uuid]
                self._deleted.add(uuid)
                self._dirty.discard(uuid)
        return left

    # -- usage -------------------------------------------------------------

    def totals(self, uuid):
        """Totals since the instance was first seen; None if unknown."""
        with self._lock:
            return self._record(uuid, lambda c: c.total)

    def period_usage(self, uuid):
        """Usage in the current period; None if the instance is unknown.
        """
        with self._lock:
            return self._record(uuid, lambda c: c.unreported)

    def is_closed(self, uuid):
        """Its final message is queued and nothing was read since."""
        with self._lock:
            instance = self._instances.get(uuid)
            return instance is not None and instance.closed

    def _record(self, uuid, value):
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

    def close_period(self, uuid, ending, build, final=False, held=False):
        """End the instance's current period and queue its message.

        In one durable transaction: the message ``build(period)`` returns
        goes into the outbox, the period's usage leaves the period and the
        next one starts at ``ending``.

        :param build: ``period usage -> (ctxt, message, priority)``.
        :param final: the instance leaves the host (deleted, migrated):
            its state is dropped once it is no longer listed.
        :param held: the caller sends the message itself first; the
            delivery thread takes it only once released (or restarted).
        :returns: :class:`Queued`, or None when the instance is unknown.
        :raises Exception: whatever ``build`` or the store raise; nothing
            changed then.
        """
        (result,) = self.close_periods([Closing(uuid, ending, build, final,
                                                held)])
        if isinstance(result, Exception):
            raise result
        return result

    def close_periods(self, closings):
        """``close_period`` for several :class:`Closing`, in one
        transaction (one fsync for a burst of deletes).

        :returns: per closing, :class:`Queued`, None (instance unknown) or
            the exception its ``build`` raised (that one changed nothing).
        :raises Exception: the store failed; nothing changed.
        """
        results = [None] * len(closings)
        with self._lock:
            done = []
            try:
                for index, closing in enumerate(closings):
                    instance = self._instances.get(closing.uuid)
                    if instance is None:
                        continue
                    period = self._record(closing.uuid,
                                          lambda c: c.unreported)
                    try:
                        ctxt, message, priority = closing.build(period)
                    except Exception as exc:
                        results[index] = exc
                        continue
                    done.append((index, closing, instance.close(
                        closing.ending, closing.final), period,
                        (ctxt, message, priority)))
                if not done:
                    return results
                dropped = 0
                with self.store.transaction() as tx:
                    for index, closing, _undo, period, built in done:
                        ctxt, message, priority = built
                        seq, lost = tx.queue(closing.uuid, priority, ctxt,
                                             message, self.outbox_max,
                                             held=closing.held)
                        dropped += lost
                        results[index] = Queued(seq, message, period)
                    self._write(tx, extra=[c.uuid for _i, c, *_r in done])
            except BaseException:
                for _index, _closing, undo, _period, _built in reversed(done):
                    undo()
                raise
            self._saved()
            if dropped:
                self.dropped_messages += dropped
                LOG.error('nova-usage-ext: the outbox is full (%d messages):'
                          ' dropped the %d oldest undelivered ones (%d '
                          'dropped since start)', self.outbox_max, dropped,
                          self.dropped_messages)
            return results

    def forget(self, uuid):
        """Drop an instance's state now (it is gone and reported)."""
        with self._lock:
            if self._instances.pop(uuid, None) is None:
                return False
            self._deleted.add(uuid)
            self._dirty.discard(uuid)
            return True

    # -- persistence -------------------------------------------------------

    def save(self):
        """Write the instances that changed since the last save.

        :returns: how many rows were written or deleted.
        :raises Exception: the store failed; the changes stay pending.
        """
        with self._lock:
            if not self._dirty and not self._deleted:
                return 0
            with self.store.transaction() as tx:
                count = self._write(tx)
            self._saved()
            return count

    def _write(self, tx, extra=()):
        # With the lock held, inside a transaction.
        uuids = (self._dirty | set(extra)) & self._instances.keys()
        tx.put_instances({uuid: self._instances[uuid].to_row()
                          for uuid in uuids})
        tx.delete_instances(self._deleted)
        return len(uuids) + len(self._deleted)

    def _saved(self):
        # Only once committed: a failed transaction leaves them pending.
        # (A close_period writes the whole dirty set too.)
        self._dirty = set()
        self._deleted = set()
