"""The ledger's invariant over random sequences of events.

For every instance and counter: the usage in all the messages queued plus
the current period's equals the counter's growth over the readings the
ledger took of its life on this host, and is never negative; whatever the
order of polls, partial readings, vCPU glitches, new guest processes,
nova-compute restarts (with or without a save), failed sends and stores,
failed and retried deletes, and instances leaving the host.

The model below is the truth: true counters per guest process that only
grow (or drop, within one process, when a vCPU is unplugged); "growth"
counts every rise between two readings of one process, and a new
process's first reading whole (it started from 0 on this host).
"""

import contextlib
import datetime
import shutil
import tempfile

import hypothesis
from hypothesis import strategies as st
import testtools

from nova_usage_ext import ledger
from nova_usage_ext import state
from nova_usage_ext.virt import base

UUIDS = ('11111111-1111-1111-1111-111111111111',
         '22222222-2222-2222-2222-222222222222')
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
# (kind the reading must hold, path of the counter in the ledger record)
COUNTERS = (
    (base.CPU, ('cpu_time_ns',)),
    (base.CPU, ('vcpu_time_ns',)),
    (base.DISKS, ('disks', 'vda', 'read_bytes')),
    (base.DISKS, ('disks', 'vdb', 'write_requests')),
    (base.INTERFACES, ('interfaces', 'tap0', 'rx_bytes')),
    (base.INTERFACES, ('interfaces', 'tap0', 'tx_packets')),
)
KIND_SETS = [frozenset(k) for k in (
    base.ALL_KINDS, (base.CPU,), (base.INTERFACES,), (base.DISKS,),
    (base.CPU, base.INTERFACES), ())]


class StoreFails(Exception):
    pass


class _Guest:
    """One instance as the hypervisor sees it, and what the ledger saw."""

    def __init__(self, uuid):
        self.uuid = uuid
        self.generation = 1
        self.true = {path: 0 for _kind, path in COUNTERS}
        self.on_host = True
        # Per counter: last value the ledger counted in this process,
        # and the growth it must have counted (saved and unsaved).
        self.seen = {}
        self.growth = {path: 0 for _kind, path in COUNTERS}
        self.saved = None

    @property
    def vcpu_seen_exact(self):
        # A glitch is one reply among exact ones: after the first of the
        # process (the ledger cannot tell otherwise).
        return (self.generation, ('vcpu_time_ns',)) in self.seen

    def reading(self, at, kinds, glitch=False):
        disks = [base.DiskUsage('vda', read_bytes=self.true[
                     ('disks', 'vda', 'read_bytes')]),
                 base.DiskUsage('vdb', write_requests=self.true[
                     ('disks', 'vdb', 'write_requests')])]
        nics = [base.InterfaceUsage('tap0', rx_bytes=self.true[
                    ('interfaces', 'tap0', 'rx_bytes')],
                    tx_packets=self.true[
                    ('interfaces', 'tap0', 'tx_packets')])]
        cpu = self.true[('cpu_time_ns',)]
        vcpu = cpu if glitch else self.true[('vcpu_time_ns',)]
        return base.InstanceUsage(
            uuid=self.uuid, name='instance', display_name=None,
            project_id=None, user_id=None, flavor=None, state=base.RUNNING,
            read_at=at, generation=self.generation, kinds=kinds,
            cpu_time_ns=cpu if base.CPU in kinds else None,
            vcpu_time_ns=vcpu if base.CPU in kinds else None,
            vcpu_time_fallback=glitch,
            disks=disks if base.DISKS in kinds else [],
            interfaces=nics if base.INTERFACES in kinds else [])

    def observe(self, kinds, glitch=False):
        """What the ledger must count from a reading of ``kinds``."""
        for kind, path in COUNTERS:
            if kind not in kinds:
                continue
            if path == ('vcpu_time_ns',) and glitch:
                continue
            key = (self.generation, path)
            value = self.true[path]
            last = self.seen.get(key)
            self.growth[path] += value if last is None else max(
                0, value - last)
            self.seen[key] = value

    def snapshot(self):
        self.saved = (dict(self.seen), dict(self.growth))

    def restore(self):
        # A crash before the save: the readings since were never taken.
        self.seen, self.growth = dict(self.saved[0]), dict(self.saved[1])


def _value(record, path):
    value = record
    for part in path:
        value = (value.get(part) if isinstance(value, dict)
                 else getattr(value, part, None))
        if value is None:
            return 0
    return value


_poll = st.tuples(st.just('poll'), st.sampled_from(KIND_SETS),
                  st.booleans())
_grow = st.tuples(st.just('grow'), st.integers(0, 1),
                  st.integers(1, 10 ** 6))
events = st.lists(st.one_of(
    _grow, _poll, _grow, _poll,
    st.tuples(st.just('read_one'), st.integers(0, 1)),
    st.tuples(st.just('glitch'), st.integers(0, 1)),
    st.tuples(st.just('unplug_vcpu'), st.integers(0, 1)),
    st.tuples(st.just('new_process'), st.integers(0, 1)),
    st.tuples(st.just('exists'), st.integers(0, 1), st.sampled_from(
        ['ok', 'build_fails', 'store_fails'])),
    st.tuples(st.just('delete'), st.integers(0, 1), st.booleans()),
    st.tuples(st.just('migrate_away'), st.integers(0, 1)),
    st.tuples(st.just('restart'), st.booleans()),
), min_size=10, max_size=50)


class TestInvariant(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)

    @hypothesis.settings(max_examples=300, deadline=None,
                         suppress_health_check=[
                             hypothesis.HealthCheck.too_slow])
    @hypothesis.given(events)
    def test_reported_plus_current_equals_growth(self, sequence):
        state_dir = tempfile.mkdtemp(dir=self.dir)
        fail_store = [None]

        def failing_transaction(real):
            @contextlib.contextmanager
            def transaction():
                with real() as tx:
                    yield tx
                    if fail_store[0] == 'store_fails':
                        # The commit fails: everything rolls back.
                        raise StoreFails()
            return transaction

        store = state.Store(state_dir)
        store.transaction = failing_transaction(store.transaction)
        book = ledger.Ledger(store, device_grace=datetime.timedelta(days=9))
        guests = [_Guest(uuid) for uuid in UUIDS]
        reported = {uuid: {path: 0 for _k, path in COUNTERS}
                    for uuid in UUIDS}
        clock = [T0]

        def tick():
            clock[0] += datetime.timedelta(seconds=1)
            return clock[0]

        def build(period):
            if fail_store[0] == 'build_fails':
                raise StoreFails()
            return {}, {'message_id': 'x', 'payload': {}}, 'INFO'

        def close(guest, final):
            queued = book.close_period(guest.uuid, tick(), build,
                                       final=final)
            if queued is not None:
                # The transaction wrote every pending change too.
                for g in guests:
                    g.snapshot()
                for _kind, path in COUNTERS:
                    value = _value(queued.period, path)
                    self.assertGreaterEqual(value, 0)
                    reported[guest.uuid][path] += value

        def save():
            book.save()
            for guest in guests:
                guest.snapshot()

        # nova-compute's first read of an empty host.
        book.update(base.HostReading([], True))
        save()
        for event in sequence:
            name, args = event[0], event[1:]
            if name == 'grow':
                guest, amount = guests[args[0]], args[1]
                for index, (_kind, path) in enumerate(COUNTERS):
                    guest.true[path] += amount * (index + 1)
            elif name == 'poll':
                kinds, complete = args
                at = tick()
                listed = [g for g in guests if g.on_host]
                if not complete and listed:
                    listed = listed[1:]
                for g in listed:
                    g.observe(kinds)
                left = book.update(base.HostReading(
                    [g.reading(at, kinds) for g in listed], complete))
                for uuid in left:
                    close(guests[UUIDS.index(uuid)], final=True)
                save()
            elif name == 'read_one':
                guest = guests[args[0]]
                if guest.on_host:
                    guest.observe(base.ALL_KINDS)
                    book.update_one(guest.reading(tick(), base.ALL_KINDS))
            elif name == 'glitch':
                guest = guests[args[0]]
                if guest.on_host and guest.vcpu_seen_exact:
                    kinds = frozenset((base.CPU,))
                    guest.observe(kinds, glitch=True)
                    book.update_one(guest.reading(tick(), kinds,
                                                  glitch=True))
            elif name == 'unplug_vcpu':
                guest = guests[args[0]]
                path = ('vcpu_time_ns',)
                guest.true[path] //= 2
            elif name == 'new_process':
                guest = guests[args[0]]
                guest.generation += 1
                guest.true = {path: 0 for path in guest.true}
            elif name == 'exists':
                guest, how = guests[args[0]], args[1]
                if how == 'ok' or guest.uuid not in book:
                    close(guest, final=False)
                else:
                    fail_store[0] = how
                    self.assertRaises(StoreFails, close, guest, False)
                    fail_store[0] = None
            elif name == 'delete':
                guest, succeeds = guests[args[0]], args[1]
                if guest.on_host:
                    guest.observe(base.ALL_KINDS)
                    book.update_one(guest.reading(tick(), base.ALL_KINDS))
                    close(guest, final=True)
                    # A failed delete leaves the guest running on.
                    guest.on_host = not succeeds
            elif name == 'migrate_away':
                guests[args[0]].on_host = False
            elif name == 'restart':
                if args[0]:
                    save()
                else:
                    for guest in guests:
                        guest.restore()
                store.close()
                store = state.Store(state_dir)
                store.transaction = failing_transaction(store.transaction)
                book = ledger.Ledger(
                    store, device_grace=datetime.timedelta(days=9))
            self.check(book, guests, reported)
        # Every instance that left has all its usage reported after the
        # next complete read.
        book.update(base.HostReading(
            [g.reading(tick(), frozenset()) for g in guests if g.on_host],
            True))
        store.close()

    def check(self, book, guests, reported):
        for guest in guests:
            current = book.period_usage(guest.uuid)
            for _kind, path in COUNTERS:
                now = _value(current, path) if current else 0
                self.assertGreaterEqual(now, 0)
                self.assertEqual(
                    guest.growth[path], reported[guest.uuid][path] + now,
                    '%s %s' % (guest.uuid, path))


class TestReadingsEndingOutOfOrder(testtools.TestCase):
    """Two threads read one instance at once (the poll's bulk call and a
    hook's read): the newer reading, under NOWAIT, may lack the disks,
    and end first."""

    def test_the_older_reading_counts_for_what_the_newer_lacked(self):
        book = ledger.Ledger(state.Store(None))
        guest = _Guest(UUIDS[0])
        minute = datetime.timedelta(minutes=1)
        book.update_one(guest.reading(T0, frozenset(base.ALL_KINDS)))
        vda = ('disks', 'vda', 'read_bytes')
        tap = ('interfaces', 'tap0', 'rx_bytes')
        guest.true[vda] += 512
        guest.true[tap] += 90
        older = guest.reading(T0 + minute, frozenset(base.ALL_KINDS))
        guest.true[tap] += 10
        newer = guest.reading(T0 + 2 * minute,
                              frozenset((base.CPU, base.INTERFACES)))
        book.update_one(newer)
        book.update_one(older)
        totals = book.totals(UUIDS[0])
        # The disk's rise, which only the older reading holds.
        self.assertEqual(512, totals.disks['vda'].read_bytes)
        # The interface: the newer reading's, not counted twice nor
        # followed back down.
        self.assertEqual(100, totals.interfaces['tap0'].rx_bytes)
        self.assertEqual(T0 + 2 * minute, totals.read_at)
        # A later reading goes on from the older one's disk value.
        guest.true[vda] += 1024
        book.update_one(guest.reading(T0 + 3 * minute,
                                      frozenset(base.ALL_KINDS)))
        self.assertEqual(1536, book.totals(UUIDS[0]).disks['vda'].read_bytes)
