"""The counter cache, as billing sees it: usage never goes backwards."""

import dataclasses
import datetime
import json
import logging
import os
import stat
import threading
import time
from unittest import mock

import fixtures
import testtools

from nova_usage_ext import counters
from nova_usage_ext.virt import base

UUID = '11111111-1111-1111-1111-111111111111'
OTHER = '22222222-2222-2222-2222-222222222222'
T0 = datetime.datetime(2025, 3, 1, 12, 0, tzinfo=datetime.timezone.utc)


def _at(minutes):
    return T0 + datetime.timedelta(minutes=minutes)


def reading(minutes=0, uuid=UUID, cpu=None, disks=None, interfaces=None,
            state=base.RUNNING, generation=None):
    """One InstanceUsage as a reader returns it.

    :param disks: {device: {counter: raw}}, or {device: raw} to set every
        counter of the device to ``raw``.
    :param interfaces: the same, by tap name.
    """
    def expand(names, counters):
        if isinstance(counters, dict):
            return counters
        return dict.fromkeys(names, counters)

    return base.InstanceUsage(
        uuid=uuid, name='instance-1', display_name='web', project_id='p',
        user_id='u', flavor=None, state=state, read_at=_at(minutes),
        cpu_time_ns=cpu, generation=generation,
        disks=[base.DiskUsage(device=name,
                              **expand(counters.DISK_COUNTERS, values))
               for name, values in (disks or {}).items()],
        interfaces=[base.InterfaceUsage(
            name=name, **expand(counters.INTERFACE_COUNTERS, values))
            for name, values in (interfaces or {}).items()])


def every(record_type, value):
    """A per-device record with every counter at ``value``."""
    return record_type(**{field.name: value
                          for field in dataclasses.fields(record_type)})


class CacheTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger(
            level=logging.DEBUG, format='%(levelname)s %(message)s'))
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.path = os.path.join(self.dir, 'usage', 'counters.json')

    def make_cache(self, **kwargs):
        return counters.CounterCache(self.path, **kwargs)

    def assertNoNegativeUsage(self, record):
        values = [record.cpu_time_ns]
        for device in (list(record.disks.values()) +
                       list(record.interfaces.values())):
            values.extend(dataclasses.astuple(device))
        for value in values:
            if value is not None:
                self.assertGreaterEqual(value, 0, record)


class TestCounting(CacheTestCase):

    def test_first_sighting_counts_everything_since_the_process_started(self):
        cache = self.make_cache()
        cache.update_one(reading(0, cpu=5000, disks={'vda': 100},
                                 interfaces={'tap1': 7}))
        totals = cache.totals(UUID)
        self.assertEqual(5000, totals.cpu_time_ns)
        self.assertEqual({'vda': every(counters.DiskCounters, 100)},
                         totals.disks)
        self.assertEqual({'tap1': every(counters.InterfaceCounters, 7)},
                         totals.interfaces)
        self.assertEqual(_at(0), totals.first_seen)
        self.assertEqual(_at(0), totals.read_at)
        self.assertIsNone(totals.period_start)
        # No period started yet: the period holds everything.
        self.assertEqual(totals, cache.period_usage(UUID))

    def test_increases_are_added(self):
        cache = self.make_cache()
        cache.update_one(reading(0, cpu=1000, disks={'vda': 100}))
        cache.update_one(reading(5, cpu=1500, disks={'vda': 130}))
        cache.update_one(reading(10, cpu=1500, disks={'vda': 200}))
        totals = cache.totals(UUID)
        self.assertEqual(1500, totals.cpu_time_ns)
        self.assertEqual(every(counters.DiskCounters, 200),
                         totals.disks['vda'])
        self.assertEqual(_at(10), totals.read_at)
        self.assertEqual(_at(0), totals.first_seen)

    def test_guest_restart_never_makes_usage_go_backwards(self):
        cache = self.make_cache()
        # raw counters: up, restart (drop), up, restart to 0, up.
        raws = [1000, 4000, 300, 900, 0, 50]
        expected = [1000, 4000, 4300, 4900, 4900, 4950]
        previous = 0
        for minute, (raw, want) in enumerate(zip(raws, expected)):
            cache.update_one(reading(minute, cpu=raw, disks={'vda': raw},
                                     interfaces={'tap1': raw}))
            totals = cache.totals(UUID)
            self.assertEqual(want, totals.cpu_time_ns)
            self.assertEqual(every(counters.DiskCounters, want),
                             totals.disks['vda'])
            self.assertEqual(every(counters.InterfaceCounters, want),
                             totals.interfaces['tap1'])
            self.assertGreaterEqual(totals.cpu_time_ns, previous)
            previous = totals.cpu_time_ns
            self.assertNoNegativeUsage(cache.period_usage(UUID))

    def test_new_guest_process_is_a_reset_even_above_the_last_value(self):
        # Stopped and started between two reads, the guest ran longer in
        # its new process than the old one had: no drop to see, but the
        # domain id tells.
        cache = self.make_cache()
        cache.update_one(reading(0, cpu=100, disks={'vda': 10},
                                 interfaces={'tap1': 7}, generation=4))
        cache.update_one(reading(10, cpu=150, disks={'vda': 12},
                                 interfaces={'tap1': 9}, generation=4))
        cache.update_one(reading(20, cpu=400, disks={'vda': 30},
                                 generation=5))
        totals = cache.totals(UUID)
        self.assertEqual(150 + 400, totals.cpu_time_ns)
        self.assertEqual(12 + 30, totals.disks['vda'].read_bytes)
        # The interface missed that reading: its next one counts whole too.
        cache.update_one(reading(30, cpu=410, interfaces={'tap1': 8},
                                 generation=5))
        self.assertEqual(9 + 8, cache.totals(UUID).interfaces['tap1'].rx_bytes)
        self.assertEqual(150 + 410, cache.totals(UUID).cpu_time_ns)
        self.assertIn('new guest process', self.log.output)

    def test_generation_survives_a_restart_of_nova_compute(self):
        cache = self.make_cache()
        cache.update_one(reading(0, cpu=100, generation=4))
        cache.save()
        cache = self.make_cache()
        cache.update_one(reading(10, cpu=300, generation=6))
        self.assertEqual(400, cache.totals(UUID).cpu_time_ns)

    def test_unknown_generation_changes_nothing(self):
        cache = self.make_cache()
        cache.update_one(reading(0, cpu=100, generation=4))
        cache.update_one(reading(10, cpu=300))
        cache.update_one(reading(20, cpu=350, generation=4))
        self.assertEqual(350, cache.totals(UUID).cpu_time_ns)

    def test_one_device_reset_leaves_the_others_alone(self):
        cache = self.make_cache()
        cache.update_one(reading(0, disks={'vda': 500, 'vdb': 500}))
        # vdb was detached and another volume attached as vdb.
        cache.update_one(reading(1, disks={'vda': 600, 'vdb': 20}))
        totals = cache.totals(UUID)
        self.assertEqual(every(counters.DiskCounters, 600),
                         totals.disks['vda'])
        self.assertEqual(every(counters.DiskCounters, 520),
                         totals.disks['vdb'])

    def test_absent_counters_are_not_a_reset(self):
        cache = self.make_cache()
        cache.update_one(reading(0, cpu=1000, interfaces={'tap1': 100}))
        # The guest is shut off: no CPU time, no devices.
        cache.update_one(reading(1, state=base.SHUTDOWN))
        # The hypervisor kept no tx_errors this time.
        cache.update_one(reading(2, cpu=1200, interfaces={
            'tap1': dict(dict.fromkeys(counters.INTERFACE_COUNTERS, 150),
                         tx_errors=None)}))
        totals = cache.totals(UUID)
        self.assertEqual(1200, totals.cpu_time_ns)
        self.assertEqual(150, totals.interfaces['tap1'].rx_bytes)
        self.assertEqual(100, totals.interfaces['tap1'].tx_errors)
        cache.update_one(reading(3, cpu=1300, interfaces={'tap1': 170}))
        totals = cache.totals(UUID)
        self.assertEqual(1300, totals.cpu_time_ns)
        # tx_errors resumes from its last raw value (100), not from zero.
        self.assertEqual(every(counters.InterfaceCounters, 170),
                         totals.interfaces['tap1'])

    def test_counter_never_read_is_none(self):
        cache = self.make_cache()
        cache.update_one(reading(0, disks={'vda': {'read_bytes': 10}}))
        totals = cache.totals(UUID)
        self.assertIsNone(totals.cpu_time_ns)
        self.assertEqual(counters.DiskCounters(read_bytes=10),
                         totals.disks['vda'])

    def test_libvirt_minus_one_is_absent(self):
        cache = self.make_cache()
        cache.update_one(reading(0, interfaces={'tap1': 10}))
        cache.update_one(reading(1, interfaces={'tap1': -1}))
        cache.update_one(reading(2, interfaces={'tap1': 12}))
        self.assertEqual(every(counters.InterfaceCounters, 12),
                         cache.totals(UUID).interfaces['tap1'])

    def test_reading_older_than_the_last_counted_is_ignored(self):
        # The periodic task read the host at minute 1; the notification
        # hook read the instance at minute 2 and counted first.
        cache = self.make_cache()
        cache.update_one(reading(0, cpu=100))
        cache.update_one(reading(2, cpu=300))
        cache.update([reading(1, cpu=200)])
        totals = cache.totals(UUID)
        self.assertEqual(300, totals.cpu_time_ns)  # not 300 + 200
        self.assertEqual(_at(2), totals.read_at)

    def test_unknown_instance(self):
        cache = self.make_cache()
        self.assertIsNone(cache.totals(UUID))
        self.assertIsNone(cache.period_usage(UUID))
        self.assertFalse(cache.start_period(UUID, _at(0)))
        self.assertFalse(cache.forget(UUID))
        self.assertEqual(0, len(cache))

    def test_records_are_copies(self):
        cache = self.make_cache()
        cache.update_one(reading(0, cpu=10, disks={'vda': 10}))
        totals = cache.totals(UUID)
        totals.cpu_time_ns = 0
        totals.disks['vda'].read_bytes = 0
        totals.disks.clear()
        self.assertEqual(10, cache.totals(UUID).cpu_time_ns)
        self.assertEqual(every(counters.DiskCounters, 10),
                         cache.totals(UUID).disks['vda'])

    def test_naive_times_are_utc(self):
        cache = self.make_cache()
        usage = reading(0, cpu=1)
        usage.read_at = usage.read_at.replace(tzinfo=None)
        cache.update_one(usage)
        cache.start_period(UUID, _at(0).replace(tzinfo=None))
        cache.update_one(reading(1, cpu=2))
        record = cache.period_usage(UUID)
        self.assertEqual(_at(0), record.period_start)
        self.assertEqual(1, record.cpu_time_ns)

    def test_negative_grace_refused(self):
        self.assertRaises(ValueError, self.make_cache,
                          device_grace=datetime.timedelta(seconds=-1))


class TestFirstRead(CacheTestCase):
    """A cache that starts empty (first deployment, or a file set aside):
    what ran before was metered by something else."""

    def test_first_full_read_starts_the_period_of_every_instance(self):
        cache = self.make_cache()
        cache.update([reading(0, cpu=1000, disks={'vda': 50}),
                      reading(0, uuid=OTHER, cpu=70)])
        self.assertEqual(1000, cache.totals(UUID).cpu_time_ns)
        period = cache.period_usage(UUID)
        self.assertEqual(0, period.cpu_time_ns)
        self.assertEqual(0, period.disks['vda'].read_bytes)
        self.assertEqual(_at(0), period.period_start)
        cache.update([reading(10, cpu=1300, disks={'vda': 80}),
                      reading(10, uuid=OTHER, cpu=90)])
        self.assertEqual(300, cache.period_usage(UUID).cpu_time_ns)
        self.assertEqual(20, cache.period_usage(OTHER).cpu_time_ns)
        self.assertIn('started empty', self.log.output)

    def test_instances_first_seen_later_count_whole(self):
        cache = self.make_cache()
        cache.update([reading(0, cpu=1000)])
        cache.update([reading(10, cpu=1100), reading(10, uuid=OTHER, cpu=40)])
        self.assertEqual(40, cache.period_usage(OTHER).cpu_time_ns)
        self.assertIsNone(cache.period_usage(OTHER).period_start)

    def test_a_cache_read_back_is_no_first_read(self):
        cache = self.make_cache()
        cache.update([reading(0, cpu=1000)])
        cache.save()
        cache = self.make_cache()
        cache.update([reading(10, cpu=1100), reading(10, uuid=OTHER, cpu=40)])
        self.assertEqual(100, cache.period_usage(UUID).cpu_time_ns)
        self.assertEqual(40, cache.period_usage(OTHER).cpu_time_ns)

    def test_set_aside_file_starts_a_baseline_again(self):
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, 'w') as f:
            f.write('{broken')
        cache = self.make_cache()
        cache.update([reading(0, cpu=1000)])
        self.assertEqual(0, cache.period_usage(UUID).cpu_time_ns)

    def test_can_be_turned_off(self):
        cache = self.make_cache(baseline_first_read=False)
        cache.update([reading(0, cpu=1000)])
        self.assertEqual(1000, cache.period_usage(UUID).cpu_time_ns)


class TestPeriods(CacheTestCase):

    def test_period_usage_after_start_period(self):
        cache = self.make_cache()
        cache.update_one(reading(0, cpu=1000, disks={'vda': 100},
                                 interfaces={'tap1': 10}))
        self.assertTrue(cache.start_period(UUID, _at(0)))
        usage = cache.period_usage(UUID)
        self.assertEqual(0, usage.cpu_time_ns)
        self.assertEqual(every(counters.DiskCounters, 0), usage.disks['vda'])
        cache.update_one(reading(60, cpu=1600, disks={'vda': 150},
                                 interfaces={'tap1': 13}))
        usage = cache.period_usage(UUID)
        self.assertEqual(_at(0), usage.period_start)
        self.assertEqual(_at(60), usage.read_at)
        self.assertEqual(600, usage.cpu_time_ns)
        self.assertEqual(every(counters.DiskCounters, 50), usage.disks['vda'])
        self.assertEqual(every(counters.InterfaceCounters, 3),
                         usage.interfaces['tap1'])
        # The totals are untouched by the period.
        self.assertEqual(1600, cache.totals(UUID).cpu_time_ns)

    def test_consecutive_periods_add_up_to_the_totals(self):
        cache = self.make_cache()
        billed = 0
        raws = [100, 250, 30, 80, 400, 10]  # two restarts
        for hour, raw in enumerate(raws):
            cache.update_one(reading(hour * 60, cpu=raw))
            usage = cache.period_usage(UUID)
            self.assertNoNegativeUsage(usage)
            billed += usage.cpu_time_ns
            cache.start_period(UUID, _at(hour * 60), usage)
        self.assertEqual(cache.totals(UUID).cpu_time_ns, billed)
        self.assertEqual(100 + 150 + 30 + 50 + 320 + 10, billed)

    def test_restart_within_the_period(self):
        cache = self.make_cache()
        cache.update_one(reading(0, cpu=1000))
        cache.start_period(UUID, _at(0))
        cache.update_one(reading(10, cpu=1400))   # +400
        cache.update_one(reading(20, cpu=100))    # restart: +100
        cache.update_one(reading(30, cpu=250))    # +150
        self.assertEqual(650, cache.period_usage(UUID).cpu_time_ns)

    def test_device_first_seen_in_the_period_counts_whole(self):
        cache = self.make_cache()
        cache.update_one(reading(0, disks={'vda': 100}))
        cache.start_period(UUID, _at(0))
        cache.update_one(reading(10, disks={'vda': 100, 'vdb': 70}))
        usage = cache.period_usage(UUID)
        self.assertEqual(every(counters.DiskCounters, 0), usage.disks['vda'])
        self.assertEqual(every(counters.DiskCounters, 70),
                         usage.disks['vdb'])

    def test_usage_counted_after_the_report_stays_in_the_next_period(self):
        cache = self.make_cache()
        cache.update_one(reading(0, cpu=100, disks={'vda': 10}))
        reported = cache.period_usage(UUID)
        # The other thread counts a reading before the period is started.
        cache.update_one(reading(1, cpu=130, disks={'vda': 15, 'vdb': 4}))
        self.assertTrue(cache.start_period(UUID, _at(1), reported))
        usage = cache.period_usage(UUID)
        self.assertEqual(30, usage.cpu_time_ns)
        self.assertEqual(every(counters.DiskCounters, 5), usage.disks['vda'])
        self.assertEqual(every(counters.DiskCounters, 4), usage.disks['vdb'])

    def test_reported_usage_of_another_instance_refused(self):
        cache = self.make_cache()
        cache.update_one(reading(0, cpu=1))
        cache.update_one(reading(0, uuid=OTHER, cpu=1))
        self.assertRaises(ValueError, cache.start_period, UUID, _at(0),
                          cache.period_usage(OTHER))


class TestPruning(CacheTestCase):

    def test_missing_device_keeps_its_counters(self):
        cache = self.make_cache()
        cache.update_one(reading(0, disks={'vda': 100},
                                 interfaces={'tap1': 5}))
        # A busy domain came back without its block group.
        cache.update_one(reading(5, interfaces={'tap1': 6}))
        self.assertEqual(every(counters.DiskCounters, 100),
                         cache.totals(UUID).disks['vda'])
        cache.update_one(reading(10, disks={'vda': 180},
                                 interfaces={'tap1': 7}))
        self.assertEqual(every(counters.DiskCounters, 180),
                         cache.totals(UUID).disks['vda'])

    def test_missing_device_dropped_after_the_grace_once_reported(self):
        cache = self.make_cache()
        day = 24 * 60
        cache.update_one(reading(0, disks={'vda': 100, 'vdb': 50}))
        cache.update_one(reading(60, disks={'vda': 110}))  # vdb detached
        cache.update_one(reading(day + 1, disks={'vda': 120}))
        # Missing for more than a day, but its usage was never reported.
        self.assertIn('vdb', cache.totals(UUID).disks)
        self.assertEqual(every(counters.DiskCounters, 50),
                         cache.period_usage(UUID).disks['vdb'])
        cache.start_period(UUID, _at(day + 1))
        cache.update_one(reading(day + 2, disks={'vda': 120}))
        self.assertEqual(['vda'], list(cache.totals(UUID).disks))
        self.assertIn('Dropping counters of disk vdb of instance %s' % UUID,
                      self.log.output)

    def test_missing_device_kept_within_the_grace(self):
        cache = self.make_cache()
        cache.update_one(reading(0, interfaces={'tap1': 5, 'tap2': 5}))
        cache.start_period(UUID, _at(0))
        cache.update_one(reading(23 * 60, interfaces={'tap1': 6}))
        self.assertIn('tap2', cache.totals(UUID).interfaces)

    def test_grace_is_configurable(self):
        cache = self.make_cache(device_grace=datetime.timedelta(minutes=30))
        cache.update_one(reading(0, disks={'vda': 1, 'vdb': 1}))
        cache.start_period(UUID, _at(0))
        cache.update_one(reading(30, disks={'vda': 1}))
        self.assertIn('vdb', cache.totals(UUID).disks)
        cache.update_one(reading(31, disks={'vda': 1}))
        self.assertNotIn('vdb', cache.totals(UUID).disks)

    def test_devices_of_a_stopped_guest_are_kept(self):
        cache = self.make_cache()
        cache.update_one(reading(0, cpu=900, disks={'vda': 100}))
        cache.start_period(UUID, _at(0))
        for day in range(1, 4):
            cache.update_one(reading(day * 24 * 60, state=base.SHUTDOWN))
        self.assertIn('vda', cache.totals(UUID).disks)
        # Started again: a new process, counters from zero.
        cache.update_one(reading(4 * 24 * 60, cpu=30, disks={'vda': 20}))
        self.assertEqual(every(counters.DiskCounters, 120),
                         cache.totals(UUID).disks['vda'])
        self.assertEqual(930, cache.totals(UUID).cpu_time_ns)

    def test_gone_instance_dropped_on_a_complete_read(self):
        cache = self.make_cache()
        cache.update([reading(0, cpu=1), reading(0, uuid=OTHER, cpu=1)])
        self.assertEqual(2, len(cache))
        cache.update([reading(5, cpu=2)])
        self.assertEqual(1, len(cache))
        self.assertIsNone(cache.totals(OTHER))
        self.assertEqual(2, cache.totals(UUID).cpu_time_ns)
        self.assertIn('Dropping counters of instance %s' % OTHER,
                      self.log.output)

    def test_empty_complete_read_drops_everything(self):
        cache = self.make_cache()
        cache.update([reading(0, cpu=1), reading(0, uuid=OTHER, cpu=1)])
        cache.update([])
        self.assertEqual(0, len(cache))

    def test_incomplete_read_drops_nothing(self):
        cache = self.make_cache()
        cache.update([reading(0, cpu=1), reading(0, uuid=OTHER, cpu=1)])
        cache.update([reading(5, cpu=2)], complete=False)
        self.assertEqual(2, len(cache))
        self.assertEqual(1, cache.totals(OTHER).cpu_time_ns)

    def test_update_one_never_drops_others(self):
        cache = self.make_cache()
        cache.update([reading(0, cpu=1), reading(0, uuid=OTHER, cpu=1)])
        cache.update_one(reading(5, cpu=2))
        self.assertEqual(2, len(cache))

    def test_instance_counted_after_the_read_began_is_kept(self):
        # OTHER was created after the periodic task read the host at
        # minute 5, and counted by the hook at minute 6.
        cache = self.make_cache()
        cache.update_one(reading(6, uuid=OTHER, cpu=1))
        cache.update([reading(5, cpu=1)])
        self.assertEqual(1, cache.totals(OTHER).cpu_time_ns)

    def test_forget(self):
        cache = self.make_cache()
        cache.update([reading(0, cpu=1), reading(0, uuid=OTHER, cpu=1)])
        self.assertTrue(cache.forget(OTHER))
        self.assertIsNone(cache.totals(OTHER))
        self.assertEqual(1, len(cache))

    def test_memory_follows_the_host(self):
        cache = self.make_cache(device_grace=datetime.timedelta(0))
        for cycle in range(50):
            # Instances come and go; each cycle plugs a new interface.
            usages = [reading(cycle, uuid='%036d' % (cycle + i), cpu=cycle,
                              interfaces={'tap%d' % cycle: cycle})
                      for i in range(3)]
            cache.update(usages)
            for usage in usages:
                cache.start_period(usage.uuid, _at(cycle))
        self.assertEqual(3, len(cache))
        for usage in usages:
            self.assertLessEqual(len(cache.totals(usage.uuid).interfaces), 2)


class TestPersistence(CacheTestCase):

    def saved_cache(self):
        cache = self.make_cache()
        cache.update([reading(0, cpu=1000, disks={'vda': 100},
                              interfaces={'tap1': 10}),
                      reading(0, uuid=OTHER, cpu=7)])
        cache.start_period(UUID, _at(0))
        cache.update([reading(60, cpu=1500, disks={'vda': 160},
                              interfaces={'tap1': 12}),
                      reading(60, uuid=OTHER, cpu=9)])
        self.assertTrue(cache.save())
        return cache

    def test_round_trip(self):
        cache = self.saved_cache()
        again = self.make_cache()
        self.assertEqual(2, len(again))
        for uuid in (UUID, OTHER):
            self.assertEqual(cache.totals(uuid), again.totals(uuid))
            self.assertEqual(cache.period_usage(uuid),
                             again.period_usage(uuid))
        self.assertEqual(_at(0), again.period_usage(UUID).period_start)
        self.assertEqual(500, again.period_usage(UUID).cpu_time_ns)
        self.assertNotIn('WARNING', self.log.output)

    def test_file(self):
        self.saved_cache()
        self.assertEqual(0o600, stat.S_IMODE(os.stat(self.path).st_mode))
        with open(self.path) as f:
            data = json.load(f)
        self.assertEqual(counters.FORMAT_VERSION, data['version'])
        self.assertEqual({'last': 160, 'total': 160, 'start': 100},
                         data['instances'][UUID]['disk']['vda']['counters']
                         ['read_bytes'])
        self.assertEqual(['counters.json'],
                         os.listdir(os.path.dirname(self.path)))

    def test_guest_restarted_while_nova_compute_was_down(self):
        self.saved_cache()
        again = self.make_cache()
        # UUID restarted (raw below the persisted last); OTHER went on.
        again.update([reading(120, cpu=200, disks={'vda': 30},
                              interfaces={'tap1': 1}),
                      reading(120, uuid=OTHER, cpu=20)])
        self.assertEqual(1700, again.totals(UUID).cpu_time_ns)
        self.assertEqual(every(counters.DiskCounters, 190),
                         again.totals(UUID).disks['vda'])
        self.assertEqual(every(counters.InterfaceCounters, 13),
                         again.totals(UUID).interfaces['tap1'])
        self.assertEqual(20, again.totals(OTHER).cpu_time_ns)
        self.assertEqual(700, again.period_usage(UUID).cpu_time_ns)

    def test_save_writes_only_changes(self):
        cache = self.saved_cache()
        self.assertFalse(cache.save())
        cache.update_one(reading(61, cpu=1501))
        self.assertTrue(cache.save())
        self.assertEqual(1501, self.make_cache().totals(UUID).cpu_time_ns)

    def test_missing_file_is_a_fresh_start(self):
        cache = self.make_cache()
        self.assertEqual(0, len(cache))
        self.assertNotIn('WARNING', self.log.output)
        self.assertFalse(os.path.exists(os.path.dirname(self.path)))
        cache.update_one(reading(0, cpu=1))
        self.assertTrue(cache.save())  # creates the directory
        self.assertEqual(1, self.make_cache().totals(UUID).cpu_time_ns)

    def test_in_memory_only(self):
        cache = counters.CounterCache(None)
        cache.update_one(reading(0, cpu=1))
        self.assertFalse(cache.save())
        self.assertEqual(1, cache.totals(UUID).cpu_time_ns)

    def assertSetAside(self, content, reason):
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, 'wb') as f:
            f.write(content)
        cache = self.make_cache()
        self.assertEqual(0, len(cache))
        (aside,) = [name for name in os.listdir(os.path.dirname(self.path))
                    if name.startswith('counters.json.corrupt-')]
        with open(os.path.join(os.path.dirname(self.path), aside), 'rb') as f:
            self.assertEqual(content, f.read())
        self.assertFalse(os.path.exists(self.path))
        self.assertIn('WARNING', self.log.output)
        self.assertIn(self.path, self.log.output)
        self.assertIn(reason, self.log.output)
        # The cache works, and saves a good file in the old one's place.
        cache.update_one(reading(0, cpu=5))
        self.assertTrue(cache.save())
        self.assertEqual(5, self.make_cache().totals(UUID).cpu_time_ns)
        return cache

    def test_corrupt_file_set_aside(self):
        self.assertSetAside(b'{"version": 1, "instances": {"', 'unreadable')

    def test_not_utf8_set_aside(self):
        self.assertSetAside(b'\xff\xfe', 'unreadable')

    def test_empty_file_set_aside(self):
        self.assertSetAside(b'', 'unreadable')

    def test_unknown_version_set_aside(self):
        self.assertSetAside(b'{"version": 2, "instances": {}}',
                            'format version 2')

    def test_no_version_set_aside(self):
        self.assertSetAside(b'{"instances": {}}', 'format version None')

    def test_not_an_object_set_aside(self):
        self.assertSetAside(b'[1]', 'not a JSON object')

    def test_malformed_content_set_aside(self):
        data = {'version': 1, 'instances': {UUID: {
            'first_seen': _at(0).isoformat(), 'read_at': _at(0).isoformat(),
            'period_start': None,
            'counters': {'cpu_time_ns': {'last': 5, 'total': -5,
                                         'start': 0}},
            'disk': {}, 'interface': {}}}}
        self.assertSetAside(json.dumps(data).encode(), 'malformed')

    def test_unknown_counter_set_aside(self):
        data = {'version': 1, 'instances': {UUID: {
            'first_seen': _at(0).isoformat(), 'read_at': _at(0).isoformat(),
            'period_start': None, 'counters': {},
            'disk': {'vda': {'seen_at': _at(0).isoformat(), 'counters': {
                'rx_bytes': {'last': 1, 'total': 1, 'start': 0}}}},
            'interface': {}}}}
        self.assertSetAside(json.dumps(data).encode(), "unknown counter")

    def test_unreadable_file_set_aside(self):
        os.makedirs(self.path)  # a directory cannot be read as a file
        cache = self.make_cache()
        self.assertEqual(0, len(cache))
        self.assertIn('unreadable', self.log.output)
        self.assertIn(self.path, self.log.output)
        cache.update_one(reading(0, cpu=5))
        self.assertTrue(cache.save())

    def test_file_that_cannot_be_set_aside_is_still_not_fatal(self):
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, 'w') as f:
            f.write('garbage')
        with mock.patch.object(os, 'replace', side_effect=PermissionError):
            cache = self.make_cache()
        self.assertEqual(0, len(cache))
        self.assertIn('cannot be set aside', self.log.output)

    def assertSaveFailsCleanly(self, cache, exc_type):
        with open(self.path, 'rb') as f:
            before = f.read()
        cache.update_one(reading(120, cpu=99999))
        self.assertRaises(exc_type, cache.save)
        with open(self.path, 'rb') as f:
            self.assertEqual(before, f.read())
        self.assertEqual(['counters.json'],
                         os.listdir(os.path.dirname(self.path)))
        self.assertEqual(1500, self.make_cache().totals(UUID).cpu_time_ns)

    def test_failed_rename_leaves_the_old_file(self):
        cache = self.saved_cache()
        with mock.patch.object(os, 'replace', side_effect=OSError('EIO')):
            self.assertSaveFailsCleanly(cache, OSError)
        # The change is still unsaved: the next save writes it.
        self.assertTrue(cache.save())
        self.assertEqual(99999, self.make_cache().totals(UUID).cpu_time_ns)

    def test_failed_sync_leaves_the_old_file(self):
        cache = self.saved_cache()
        with mock.patch.object(os, 'fsync', side_effect=OSError('ENOSPC')):
            self.assertSaveFailsCleanly(cache, OSError)

    def test_failed_serialisation_leaves_the_old_file(self):
        cache = self.saved_cache()
        with mock.patch.object(counters.json, 'dumps',
                               side_effect=TypeError('not serialisable')):
            self.assertSaveFailsCleanly(cache, TypeError)

    def test_temp_file_of_an_interrupted_save_removed(self):
        self.saved_cache()
        temp = os.path.join(os.path.dirname(self.path),
                            '.counters.json.abc123.tmp')
        with open(temp, 'w') as f:
            f.write('{"ver')
        self.assertEqual(2, len(self.make_cache()))
        self.assertFalse(os.path.exists(temp))

    def test_readings_counted_while_the_file_is_written(self):
        cache = self.saved_cache()
        cache.update_one(reading(61, cpu=1501))
        real_fsync = os.fsync
        counted = []

        def fsync(fd):
            # Another thread counts a reading while the file is synced:
            # the save must not hold the cache's lock.
            if not counted:
                thread = threading.Thread(target=lambda: counted.append(
                    cache.update_one(reading(62, cpu=1502))))
                thread.start()
                thread.join(10)
            real_fsync(fd)

        with mock.patch.object(os, 'fsync', side_effect=fsync):
            self.assertTrue(cache.save())
        self.assertEqual([None], counted)
        self.assertEqual(1502, cache.totals(UUID).cpu_time_ns)
        # Saved before that reading; the next save writes it.
        self.assertEqual(1501, self.make_cache().totals(UUID).cpu_time_ns)
        self.assertTrue(cache.save())
        self.assertEqual(1502, self.make_cache().totals(UUID).cpu_time_ns)


class TestThreads(CacheTestCase):

    def test_concurrent_readings_lose_no_usage(self):
        # Threads take readings of one instance from a growing counter and
        # count them as they come, out of order: nothing is lost, nothing
        # is counted twice or taken for a reset.
        cache = self.make_cache()
        source_lock = threading.Lock()
        source = {'raw': 0, 'minute': 0}

        def take_reading():
            with source_lock:
                source['raw'] += 7
                source['minute'] += 1
                return reading(source['minute'], cpu=source['raw'],
                               disks={'vda': source['raw']},
                               interfaces={'tap1': source['raw']})

        def worker():
            for _ in range(200):
                usage = take_reading()
                time.sleep(0)  # let the other threads take theirs
                cache.update_one(usage)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        totals = cache.totals(UUID)
        self.assertEqual(8 * 200 * 7, totals.cpu_time_ns)
        self.assertEqual(every(counters.DiskCounters, 8 * 200 * 7),
                         totals.disks['vda'])
        self.assertEqual(every(counters.InterfaceCounters, 8 * 200 * 7),
                         totals.interfaces['tap1'])

    def test_concurrent_instances_and_saves(self):
        cache = self.make_cache()
        errors = []

        def worker(index):
            uuid = '%036d' % index
            try:
                for minute in range(1, 101):
                    cache.update_one(reading(minute, uuid=uuid, cpu=minute,
                                             disks={'vda': minute}))
                    if minute % 10 == 0:
                        cache.save()
            except Exception as exc:  # reported below, not lost in a thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,))
                   for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual([], errors)
        cache.save()
        again = self.make_cache()
        self.assertEqual(8, len(again))
        for i in range(8):
            totals = again.totals('%036d' % i)
            self.assertEqual(100, totals.cpu_time_ns)
            self.assertEqual(every(counters.DiskCounters, 100),
                             totals.disks['vda'])
