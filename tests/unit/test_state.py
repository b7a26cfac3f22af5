"""The state database: crash safety, unusable state, migration."""

import datetime
import json
import os

import fixtures
import testtools

from nova_usage_ext import ledger
from nova_usage_ext import state
from nova_usage_ext.virt import base

UUID = '00000000-0000-0000-0000-000000000001'
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def _usage(cpu, at, generation=7, kinds=base.ALL_KINDS):
    return base.InstanceUsage(
        uuid=UUID, name='instance-1', display_name=None, project_id=None,
        user_id=None, flavor=None, state=base.RUNNING, read_at=at,
        generation=generation, kinds=frozenset(kinds), cpu_time_ns=cpu,
        vcpu_time_ns=cpu, disks=[base.DiskUsage('vda', read_bytes=cpu)])


def _build(period):
    return {}, {'message_id': 'm-1', 'period_cpu': period.cpu_time_ns}, \
        'INFO'


class StateTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger())
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.state_dir = os.path.join(self.dir, 'usage_ext')

    def ledger(self, state_dir=None):
        store = state.Store(state_dir or self.state_dir)
        self.addCleanup(store.close)
        return ledger.Ledger(store)


class TestDurability(StateTestCase):

    def test_the_database_is_private_and_in_wal_mode(self):
        book = self.ledger()
        path = os.path.join(self.state_dir, 'usage.db')
        self.assertEqual(path, book.store.path)
        self.assertEqual(0o600, os.stat(path).st_mode & 0o777)
        self.assertEqual(0o700, os.stat(self.state_dir).st_mode & 0o777)
        mode = book.store._db.execute('PRAGMA journal_mode').fetchone()[0]
        self.assertEqual('wal', mode)

    def test_period_moves_stay_fsynced_after_a_removal(self):
        # Removing a sent message is not fsynced; what follows must be.
        book = self.ledger()
        book.update(base.HostReading([]))
        book.update_one(_usage(10, T0))
        queued = book.close_period(UUID, T0, _build)
        book.store.remove(queued.seq)
        self.assertEqual(0, book.store.outbox_size())
        full = 2
        self.assertEqual(full, book.store._db.execute(
            'PRAGMA synchronous').fetchone()[0])

    def test_a_save_writes_only_the_instances_that_changed(self):
        book = self.ledger()
        book.update(base.HostReading([]))
        usages = [_usage(10, T0)]
        for i in range(2, 50):
            usages.append(base.InstanceUsage(
                uuid='00000000-0000-0000-0000-%012d' % i, name='i',
                display_name=None, project_id=None, user_id=None,
                flavor=None, state=base.RUNNING, read_at=T0, cpu_time_ns=1))
        book.update(base.HostReading(usages))
        self.assertEqual(49, book.save())
        self.assertEqual(0, book.save())
        book.update_one(_usage(20, T0 + datetime.timedelta(seconds=1)))
        self.assertEqual(1, book.save())

    def test_the_queued_message_and_the_period_move_together(self):
        book = self.ledger()
        book.update(base.HostReading([]))
        book.update_one(_usage(10, T0))
        book.update_one(_usage(30, T0 + datetime.timedelta(seconds=1)))
        queued = book.close_period(UUID, T0, _build)
        self.assertEqual(30, queued.message['period_cpu'])
        # No save: a crash now keeps both the message and the move.
        again = self.ledger()
        (entry,) = again.store.pending()
        self.assertEqual(30, entry.message['period_cpu'])
        self.assertEqual(0, again.period_usage(UUID).cpu_time_ns)

    def test_a_failed_commit_leaves_the_period_open(self):
        book = self.ledger()
        book.update(base.HostReading([]))
        book.update_one(_usage(10, T0))
        real = book.store.transaction

        def broken():
            raise OSError('disk full')
        book.store.transaction = broken
        self.assertRaises(OSError, book.close_period, UUID, T0, _build)
        book.store.transaction = real
        self.assertEqual(10, book.period_usage(UUID).cpu_time_ns)
        self.assertEqual([], book.store.pending())


class TestUnusableState(StateTestCase):

    def test_corrupt_database_is_set_aside_and_nothing_is_billed_again(self):
        os.makedirs(self.state_dir)
        path = os.path.join(self.state_dir, 'usage.db')
        with open(path, 'wb') as f:
            f.write(b'this is not a database' * 100)
        book = self.ledger()
        self.assertTrue(book.store.durable)
        self.assertTrue([n for n in os.listdir(self.state_dir)
                         if n.startswith('usage.db.corrupt-')])
        self.assertIn('unusable', self.log.output)
        # The guest ran for a long time: none of it is this period's.
        book.update(base.HostReading([_usage(626105000, T0)]))
        self.assertEqual(0, book.period_usage(UUID).cpu_time_ns)
        book.update_one(_usage(626105100, T0 + datetime.timedelta(
            seconds=60)))
        self.assertEqual(100, book.period_usage(UUID).cpu_time_ns)

    def test_read_only_state_dir_falls_back_to_memory_without_rebilling(
            self):
        if os.geteuid() == 0:
            # root writes anywhere: make the path a file instead, which no
            # one can create a database under.
            self.state_dir = os.path.join(self.dir, 'not-a-dir')
            with open(self.state_dir, 'w') as f:
                f.write('x')
        else:
            os.chmod(self.dir, 0o500)
            self.addCleanup(os.chmod, self.dir, 0o700)
        book = self.ledger()
        self.assertFalse(book.store.durable)
        self.assertIn('cannot be used', self.log.output)
        book.update(base.HostReading([_usage(626105000, T0)]))
        self.assertEqual(0, book.period_usage(UUID).cpu_time_ns)

    def test_unreadable_row_is_logged_and_that_instance_baselined(self):
        book = self.ledger()
        book.update(base.HostReading([]))
        book.update_one(_usage(10, T0))
        book.save()
        with book.store.transaction() as tx:
            tx.put_instances({UUID: {'counters': 'garbage'}})
        again = self.ledger()
        self.assertNotIn(UUID, again)
        self.assertIn('malformed', self.log.output)


class TestMigration(StateTestCase):

    def write_legacy(self, data):
        os.makedirs(self.state_dir, exist_ok=True)
        path = os.path.join(self.state_dir, 'counters.json')
        with open(path, 'w') as f:
            f.write(data if isinstance(data, str) else json.dumps(data))
        return path

    def test_the_json_cache_of_earlier_releases_is_migrated(self):
        counter = {'last': 500, 'total': 900, 'start': 400}
        path = self.write_legacy({'version': 1, 'saved_at': T0.isoformat(),
                                  'instances': {UUID: {
                                      'first_seen': T0.isoformat(),
                                      'read_at': T0.isoformat(),
                                      'period_start': T0.isoformat(),
                                      'generation': 7,
                                      'counters': {'cpu_time_ns': counter},
                                      'disk': {}, 'interface': {}}}})
        book = self.ledger()
        self.assertEqual(500, book.period_usage(UUID).cpu_time_ns)
        self.assertFalse(os.path.exists(path))
        self.assertTrue(os.path.exists(path + '.migrated'))
        # It counts on from where the JSON file left it.
        book.update_one(_usage(550, T0 + datetime.timedelta(seconds=1)))
        self.assertEqual(550, book.period_usage(UUID).cpu_time_ns)
        book.save()
        self.assertEqual(550, self.ledger().period_usage(UUID).cpu_time_ns)

    def test_deeply_nested_json_does_not_stop_usage_reporting(self):
        self.write_legacy('[' * 100000 + ']' * 100000)
        book = self.ledger()
        self.assertIn('cannot migrate', self.log.output)
        book.update(base.HostReading([_usage(626105000, T0)]))
        self.assertEqual(0, book.period_usage(UUID).cpu_time_ns)

    def test_absurd_totals_are_refused_not_reported(self):
        counter = {'last': 10 ** 30, 'total': 10 ** 30, 'start': 0}
        self.write_legacy({'version': 1, 'instances': {UUID: {
            'first_seen': T0.isoformat(), 'read_at': T0.isoformat(),
            'period_start': None, 'generation': 7,
            'counters': {'cpu_time_ns': counter},
            'disk': {}, 'interface': {}}}})
        book = self.ledger()
        self.assertNotIn(UUID, book)
        self.assertIn('malformed', self.log.output)

    def test_absurd_readings_are_not_counted(self):
        book = self.ledger()
        book.update(base.HostReading([]))
        book.update_one(_usage(10, T0))
        book.update_one(_usage(10 ** 30, T0 + datetime.timedelta(seconds=1)))
        self.assertEqual(10, book.totals(UUID).cpu_time_ns)


class TestHeld(StateTestCase):

    def test_a_held_message_is_the_delivery_s_again_after_a_restart(self):
        # nova's exists is sent on nova's path first; a crash while it is
        # under way must not leave it held for ever.
        book = self.ledger()
        book.update(base.HostReading([]))
        book.update_one(_usage(10, T0))
        queued = book.close_period(UUID, T0, _build, held=True)
        self.assertEqual([], book.store.pending())
        self.assertEqual(1, book.store.outbox_size())
        again = self.ledger()
        self.assertEqual([queued.seq], [e.seq for e in again.store.pending()])

    def test_a_released_message_is_pending(self):
        book = self.ledger()
        book.update(base.HostReading([]))
        book.update_one(_usage(10, T0))
        queued = book.close_period(UUID, T0, _build, held=True)
        book.store.release(queued.seq)
        self.assertEqual([queued.seq], [e.seq for e in book.store.pending()])


class TestBaseline(StateTestCase):

    def test_a_single_read_before_the_first_full_one_is_a_baseline(self):
        # nova's exists can come before the first poll of a new ledger.
        book = self.ledger()
        book.update_one(_usage(626105000, T0))
        self.assertEqual(0, book.period_usage(UUID).cpu_time_ns)
        book.update_one(_usage(626105100, T0 + datetime.timedelta(
            seconds=1)))
        self.assertEqual(100, book.period_usage(UUID).cpu_time_ns)

    def test_after_the_first_full_read_new_instances_count_whole(self):
        book = self.ledger()
        book.update(base.HostReading([]))
        self.assertFalse(book.wants_baseline)
        book.update_one(_usage(500, T0))
        self.assertEqual(500, book.period_usage(UUID).cpu_time_ns)

    def test_an_incomplete_first_read_keeps_the_baseline_for_the_rest(self):
        other = '00000000-0000-0000-0000-000000000002'
        book = self.ledger()
        skipped = _usage(7000000000000, T0)
        skipped.uuid = other
        # The first read could not read `other`.
        book.update(base.HostReading([_usage(10, T0)], complete=False))
        self.assertTrue(book.wants_baseline)
        book.update(base.HostReading([_usage(20, T0), skipped]))
        self.assertEqual(0, book.period_usage(other).cpu_time_ns)
        self.assertFalse(book.wants_baseline)


class TestGroupCommit(StateTestCase):

    def test_several_closings_share_one_transaction(self):
        book = self.ledger()
        book.update(base.HostReading([]))
        other = '00000000-0000-0000-0000-000000000002'
        first = _usage(10, T0)
        second = _usage(30, T0)
        second.uuid = other
        book.update(base.HostReading([first, second]))
        transactions = []
        real = book.store.transaction

        def counting():
            transactions.append(1)
            return real()
        book.store.transaction = counting

        def broken(period):
            raise ValueError('cannot build')
        results = book.close_periods([
            ledger.Closing(UUID, T0, _build, final=True),
            ledger.Closing(other, T0, _build, final=True),
            ledger.Closing('00000000-0000-0000-0000-00000000dead', T0,
                           _build),
            ledger.Closing(other, T0, broken)])
        self.assertEqual(1, len(transactions))
        self.assertEqual([10, 30], [r.message['period_cpu']
                                    for r in results[:2]])
        self.assertIsNone(results[2])
        self.assertIsInstance(results[3], ValueError)
        self.assertEqual(2, book.store.outbox_size())
        self.assertTrue(book.is_closed(UUID) and book.is_closed(other))
