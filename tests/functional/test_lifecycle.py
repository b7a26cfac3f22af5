"""A real QEMU guest through nova 34's lifecycle events: the usage invariant
end to end, on what this host sends.

For every instance and counter on one host, the period usage summed over
every ``compute.instance.exists`` the host sends for the instance equals
the counter's growth over the readings of its life on this host, never
negative; one final exists per departure, with its ``final_reason``.

The set-up is test_nova's: nova's ComputeManager on the real libvirtd, the
guest a nova instance in nova's database, every notification through the
``nova_usage_ext`` driver to the real RabbitMQ, read back by a listener.
nova's own code paths run where they work with a guest that has no OS and
no image: ``terminate_instance`` (delete, and a delete whose
``driver.destroy`` fails after delete.start, then retried),
``stop_instance`` (power off), ``_instance_usage_audit``. The other events
need glance, neutron or a second host in nova's driver: for them the test
sends nova's own notifications with nova's own functions, in the order of
nova 34's compute manager, and does to the guest through libvirt what
nova's libvirt driver does at that point (a new QEMU process for a hard
reboot, rebuild, rescue, power on; the domain gone for a migration or a
shelve offload).

The expected growth comes from the raw readings the service took (its
reader is wrapped to record them), computed here from the counters'
own rules, not the ledger's code: within one QEMU process (libvirt's domain
id) a counter grows by its increases; a new process adds all it counted;
the state is fresh (the package was just deployed), so the first reading's
process counts from that reading on.
"""

import time

import fixtures

from nova.compute import instance_actions
from nova.compute import task_states
from nova.compute import utils as compute_utils
from nova import context as nova_context
from nova import exception as nova_exception
from nova import objects
from nova.objects import fields
from nova.virt import event as virtevent

from nova_usage_ext import service as usage_service
from nova_usage_ext.virt import base
from tests.functional import fixtures as qemu_fixtures
from tests.functional import test_nova as nova_tests

EXISTS = 'compute.instance.exists'
# Frames sent to the guest's tap between events (its rx counters grow).
FRAMES = 1100
ACTION = fields.NotificationAction
START = fields.NotificationPhase.START
END = fields.NotificationPhase.END


def reading_counters(usage):
    """{counter key: raw value} of one reading; absent values left out."""
    values = {('cpu_time_ns',): usage.cpu_time_ns}
    if not usage.vcpu_time_fallback:
        # A reply without the vCPU entries gives the process's CPU time
        # there, another quantity.
        values[('vcpu_time_ns',)] = usage.vcpu_time_ns
    for disk in usage.disks:
        for name in base.DISK_IO_COUNTERS:
            values[('disk', disk.device, name)] = getattr(disk, name)
    for iface in usage.interfaces:
        for name in base.INTERFACE_COUNTERS:
            values[('interface', iface.name, name)] = getattr(iface, name)
    return {key: value for key, value in values.items()
            if isinstance(value, int) and value >= 0}


def wire_counters(data):
    """{counter key: value} of a usage or period payload's data."""
    values = {(name,): data[name] for name in base.CPU_COUNTERS
              if name in data}
    for disk in data['disks']:
        disk = disk['nova_object.data']
        for name in base.DISK_IO_COUNTERS:
            if name in disk:
                values[('disk', disk['device'], name)] = disk[name]
    for iface in data['interfaces']:
        iface = iface['nova_object.data']
        for name in base.INTERFACE_COUNTERS:
            if name in iface:
                values[('interface', iface['name'], name)] = iface[name]
    return values


def ledger_counters(record):
    """{counter key: value} of the ledger's UsageCounters."""
    values = {(name,): getattr(record, name) for name in base.CPU_COUNTERS
              if getattr(record, name) is not None}
    for kind, devices, names in (
            ('disk', record.disks, base.DISK_IO_COUNTERS),
            ('interface', record.interfaces, base.INTERFACE_COUNTERS)):
        for device, counters in devices.items():
            for name in names:
                if getattr(counters, name) is not None:
                    values[(kind, device, name)] = getattr(counters, name)
    return values


def growth(readings):
    """Per counter, its growth over the readings of one instance."""
    baseline = readings[0].generation
    grown, last = {}, {}
    process = None
    for usage in readings:
        if usage.generation is not None:
            if process is not None and usage.generation != process:
                # A new QEMU process: its counters started from 0.
                last = dict.fromkeys(last, 0)
            process = usage.generation
        for key, value in reading_counters(usage).items():
            if key not in last:
                grown[key] = 0 if process == baseline else value
            elif value >= last[key]:
                grown[key] += value - last[key]
            last[key] = value
    return grown


def usage_of(message):
    """The usage payload's data of an exists or an instance.usage."""
    payload = message['payload']
    return payload.get('usage', payload)['nova_object.data']


def period_of(message):
    return usage_of(message)['period']['nova_object.data']


def is_final(message):
    return usage_of(message)['final']


class LifecycleTestCase(nova_tests.NovaComputeTestCase):

    notification_format = 'both'

    def setUp(self):
        super().setUp()
        self.started = time.monotonic()
        # The service's first poll (in setUp) is the first reading.
        self.readings = [self.cached]
        self.record_readings(self.service.reader)

    def record_readings(self, reader):
        uuid = self.guest.uuid
        for name in ('read_host', 'read_instance'):
            real = getattr(reader, name)

            def read(*args, _real=real, **kwargs):
                result = _real(*args, **kwargs)
                usages = getattr(result, 'usages', [result])
                self.readings.extend(u for u in usages if u.uuid == uuid)
                return result

            self.useFixture(fixtures.MockPatchObject(reader, name,
                                                     side_effect=read))

    # -- the guest -------------------------------------------------------

    def use_guest(self):
        """Disk reads (a reset: the firmware reads again), frames to its
        tap, and CPU time."""
        # (A host busy with other tests can slow the firmware down.)
        self.guests.make_disk_io(self.guest, timeout=30)
        qemu_fixtures.send_frames(self.guest, FRAMES)
        time.sleep(0.2)

    def raw_now(self):
        return nova_tests.per_domain(self.dom, self.guest)

    def new_process(self):
        """What nova's libvirt driver does on hard reboot, rebuild, rescue,
        unrescue and power on: the guest's QEMU ends, a new one starts."""
        if self.dom.isActive():
            self.dom.destroy()
        self.dom.create()

    def domain_leaves(self):
        """The domain is gone from this host (migrated away, offloaded)."""
        if self.dom.isActive():
            self.dom.destroy()
        self.dom.undefine()

    # -- nova ------------------------------------------------------------

    def nova_notifies(self, legacy_event, action, phase):
        """nova's two notifications of one step, in its order: legacy,
        then versioned."""
        self.compute._notify_about_instance_usage(
            self.context, self.instance, legacy_event)
        compute_utils.notify_about_instance_action(
            self.context, self.instance, self.host, action=action,
            phase=phase)

    def nova_exists_current_period(self):
        compute_utils.notify_usage_exists(
            self.compute.notifier, self.context, self.instance, self.host,
            current_period=True)

    def nova_deletes(self):
        """nova-api's part, then the compute manager's terminate."""
        objects.InstanceAction.action_start(
            self.context, self.guest.uuid, instance_actions.DELETE,
            want_result=False)
        self.instance.task_state = task_states.DELETING
        self.instance.save()
        self.compute.terminate_instance(
            self.context, self.instance,
            objects.BlockDeviceMappingList(objects=[]))

    # -- what the host sent ----------------------------------------------

    def sent(self, settle=0.5):
        """The guest's notifications, in arrival order (after a pause for
        late ones)."""
        time.sleep(settle)
        return [m for m in self.listener.messages
                if nova_tests.message_uuid(m) == self.guest.uuid]

    def exists_sent(self, settle=0.5):
        return [m for m in self.sent(settle) if m['event_type'] == EXISTS]

    def assert_billed_equals_growth(self, exists, one_process=False):
        """The invariant over the exists, against the readings (and, for a
        life of one QEMU process, the guest's raw counters)."""
        self.assertTrue(exists)
        billed = {}
        for message in exists:
            self.assertEqual(self.host, usage_of(message)['host'])
            for key, value in wire_counters(period_of(message)).items():
                self.assertGreaterEqual(value, 0, key)
                billed[key] = billed.get(key, 0) + value
        grown = growth(self.readings)
        self.assertEqual(grown, billed)
        # The ledger counted the same (its state stays after a final until
        # a complete read no longer lists the instance).
        self.assertEqual(
            ledger_counters(self.service.ledger.totals(self.guest.uuid)),
            billed)
        # Every kind of counter was used and billed.
        self.assertGreater(billed[('cpu_time_ns',)], 0)
        self.assertGreater(
            billed[('disk', self.guest.disk_device, 'read_requests')], 0)
        self.assertGreater(
            billed[('interface', self.guest.tap, 'rx_drops')], 0)
        if one_process:
            self.assertEqual(
                {self.readings[0].generation},
                {u.generation for u in self.readings} - {None})
            # Each counter from its first reading (a kind may be missing
            # from one: a disk busy in that cycle) to its last (a shut-off
            # domain's reading has no counters).
            first, last = {}, {}
            for usage in self.readings:
                values = reading_counters(usage)
                last.update(values)
                for key, value in values.items():
                    first.setdefault(key, value)
            self.assertEqual({key: last[key] - first[key] for key in first},
                             billed)
        return billed

    def assert_one_final(self, exists, reason):
        finals = [m for m in exists if is_final(m)]
        self.assertEqual([reason], [m['payload'].get('final_reason')
                                    for m in finals])
        # Nothing after it.
        self.assertIs(finals[0], exists[-1])
        return finals[0]

    def assert_read_before_process_end(self, at_end, generation):
        """The last reading of a process lies below what the process
        counted when it ended (read by libvirt right before)."""
        last = [u for u in self.readings if u.generation == generation][-1]
        self.assertLessEqual(last.cpu_time_ns, at_end['cpu'])
        return last

    def generations(self):
        gens = []
        for usage in self.readings:
            if usage.generation is not None and (
                    not gens or gens[-1] != usage.generation):
                gens.append(usage.generation)
        return gens


class TestDelete(LifecycleTestCase):

    def test_delete(self):
        self.use_guest()
        self.service.poll()
        self.use_guest()

        self.nova_deletes()

        mine = self.sent()
        self.assertEqual(EXISTS, mine[0]['event_type'])
        self.assertEqual('compute.instance.delete.start',
                         mine[1]['event_type'])
        exists = [m for m in mine if m['event_type'] == EXISTS]
        final = self.assert_one_final(exists, usage_service.LEFT_DELETED)
        self.assertEqual('hypervisor',
                         final['payload']['usage']['nova_object.data'][
                             'source'])
        self.assert_billed_equals_growth(exists, one_process=True)
        # A complete read no longer lists it: dropped, nothing more sent.
        self.service.poll()
        self.assertNotIn(self.guest.uuid, self.service.ledger)
        self.assertEqual(exists, self.exists_sent())

    def test_delete_failing_after_delete_start_then_retried(self):
        self.use_guest()
        real_destroy = self.driver.destroy
        calls = []

        def destroy(*args, **kwargs):
            calls.append(args)
            if len(calls) == 1:
                # What nova's libvirt driver raises when the guest does
                # not stop.
                raise nova_exception.InstancePowerOffFailure(
                    reason='test: the guest did not stop')
            return real_destroy(*args, **kwargs)

        self.useFixture(fixtures.MockPatchObject(
            self.driver, 'destroy', side_effect=destroy))

        self.assertRaises(nova_exception.InstancePowerOffFailure,
                          self.nova_deletes)
        # nova put the instance in ERROR; the guest runs on and is used,
        # and the user deletes it again (a new request) before any poll.
        self.assertTrue(self.dom.isActive())
        self.use_guest()
        self.context = nova_context.get_admin_context()
        self.instance.refresh(self.context)
        self.nova_deletes()

        mine = self.sent()
        events = [m['event_type'] for m in mine]
        # One final before each delete.start.
        starts = [i for i, e in enumerate(events)
                  if e == 'compute.instance.delete.start']
        self.assertEqual(2, len(starts))
        for index in starts:
            self.assertEqual(EXISTS, events[index - 1])
            self.assertTrue(is_final(mine[index - 1]))
        exists = [m for m in mine if m['event_type'] == EXISTS]
        self.assertEqual([usage_service.LEFT_DELETED] * 2,
                         [m['payload']['final_reason'] for m in exists])
        # The second final has only what the guest used after the first:
        # billed once, from where the first ended.
        billed = self.assert_billed_equals_growth(exists, one_process=True)
        first, second = (period_of(m) for m in exists)
        self.assertGreater(second['cpu_time_ns'], 0)
        self.assertEqual(billed[('cpu_time_ns',)],
                         first['cpu_time_ns'] + second['cpu_time_ns'])
        self.assertEqual(exists[0]['payload']['audit_period_ending'][:19],
                         second['period_beginning'][:19].replace('T', ' '))


class TestNewProcessOnTheHost(LifecycleTestCase):
    """Events after which the instance runs on in a new QEMU process."""

    def test_hard_reboot(self):
        self.use_guest()
        self.service.poll()
        self.use_guest()
        # nova 34 reboot_instance: reboot.start, driver.reboot (hard: the
        # guest's QEMU is destroyed and started again), reboot.end.
        self.nova_notifies('reboot.start', ACTION.REBOOT, START)
        at_end = self.raw_now()
        first_process = self.generations()[-1]
        self.new_process()
        self.nova_notifies('reboot.end', ACTION.REBOOT, END)
        self.use_guest()
        self.service.poll()
        self.nova_deletes()

        exists = self.exists_sent()
        self.assert_one_final(exists, usage_service.LEFT_DELETED)
        self.assertEqual(2, len(self.generations()))
        # reboot.start read the first process right before it ended.
        last = self.assert_read_before_process_end(at_end, first_process)
        self.assertGreater(last.read_at, self.readings[1].read_at)
        self.assert_billed_equals_growth(exists)

    def test_rebuild(self):
        self.use_guest()
        self.service.poll()
        self.use_guest()
        # nova 34 _do_rebuild_instance: exists of the current period,
        # rebuild.start, then the driver destroys and spawns the guest.
        self.nova_exists_current_period()
        compute_utils.notify_about_instance_rebuild(
            self.context, self.instance, self.host, phase=START)
        self.compute._notify_about_instance_usage(
            self.context, self.instance, 'rebuild.start')
        at_end = self.raw_now()
        first_process = self.generations()[-1]
        self.new_process()
        self.compute._notify_about_instance_usage(
            self.context, self.instance, 'rebuild.end')
        compute_utils.notify_about_instance_rebuild(
            self.context, self.instance, self.host, phase=END)
        self.use_guest()
        self.nova_deletes()

        exists = self.exists_sent()
        self.assertEqual(2, len(exists))
        current = exists[0]['payload']['usage']['nova_object.data']
        # Read for the exists, not the last poll's reading.
        self.assertEqual('hypervisor', current['source'])
        self.assertFalse(current['final'])
        self.assertGreater(period_of(exists[0])['cpu_time_ns'], 0)
        self.assert_one_final(exists, usage_service.LEFT_DELETED)
        self.assert_read_before_process_end(at_end, first_process)
        self.assertEqual(2, len(self.generations()))
        self.assert_billed_equals_growth(exists)

    def test_rescue_and_unrescue(self):
        self.use_guest()
        self.service.poll()
        self.use_guest()
        # nova 34 rescue_instance: rescue.start, power off, driver.rescue
        # (a rescue guest, same uuid), then the exists of the current
        # period (after the rescue guest started), rescue.end.
        self.compute._notify_about_instance_usage(
            self.context, self.instance, 'rescue.start')
        compute_utils.notify_about_instance_rescue_action(
            self.context, self.instance, self.host, nova_tests.IMAGE_REF,
            phase=START)
        self.new_process()
        self.nova_exists_current_period()
        self.compute._notify_about_instance_usage(
            self.context, self.instance, 'rescue.end')
        compute_utils.notify_about_instance_rescue_action(
            self.context, self.instance, self.host, nova_tests.IMAGE_REF,
            phase=END)
        self.use_guest()
        # unrescue_instance: unrescue.start, driver.unrescue (the guest
        # again), unrescue.end.
        self.nova_notifies('unrescue.start', ACTION.UNRESCUE, START)
        self.new_process()
        self.nova_notifies('unrescue.end', ACTION.UNRESCUE, END)
        self.use_guest()
        self.nova_deletes()

        exists = self.exists_sent()
        self.assertEqual(2, len(exists))
        self.assertEqual('hypervisor', exists[0]['payload']['usage'][
            'nova_object.data']['source'])
        self.assert_one_final(exists, usage_service.LEFT_DELETED)
        self.assertEqual(3, len(self.generations()))
        self.assert_billed_equals_growth(exists)

    def test_power_off_then_on(self):
        self.use_guest()
        self.service.poll()
        self.use_guest()
        # nova's own stop_instance: power_off.start, driver.power_off (the
        # real one: the guest is destroyed, stays defined), power_off.end.
        objects.InstanceAction.action_start(
            self.context, self.guest.uuid, instance_actions.STOP,
            want_result=False)
        self.instance.task_state = task_states.POWERING_OFF
        self.instance.save()
        first_process = self.generations()[-1]
        self.compute.stop_instance(self.context, self.instance,
                                   clean_shutdown=False)
        self.assertFalse(self.dom.isActive())
        # Off: a complete poll lists it, nothing is used.
        self.service.poll()
        # start_instance: power_on.start, driver.power_on (nova's libvirt
        # driver starts the guest again from its definition), power_on.end.
        self.instance.task_state = task_states.POWERING_ON
        self.instance.save()
        self.nova_notifies('power_on.start', ACTION.POWER_ON, START)
        self.new_process()
        self.nova_notifies('power_on.end', ACTION.POWER_ON, END)
        self.use_guest()
        self.service.poll()
        self.nova_deletes()

        mine = self.sent()
        self.assertIn('compute.instance.power_off.end',
                      [m['event_type'] for m in mine])
        exists = [m for m in mine if m['event_type'] == EXISTS]
        self.assert_one_final(exists, usage_service.LEFT_DELETED)
        # power_off.start read the guest before nova's driver stopped it.
        last = [u for u in self.readings
                if u.generation == first_process][-1]
        self.assertGreater(last.read_at, self.readings[1].read_at)
        self.assertEqual(2, len(self.generations()))
        self.assert_billed_equals_growth(exists)

    def test_resize_to_the_same_host(self):
        # [DEFAULT] allow_resize_to_same_host: source and destination are
        # this host. nova 34: prep_resize (the exists of the current
        # period, resize.prep.start/end), resize_instance (resize.start,
        # migrate_disk_and_power_off, instance.host = the destination,
        # here the same, resize.end), finish_resize (finish_resize.start,
        # the guest started again, finish_resize.end).
        self.use_guest()
        self.service.poll()
        self.use_guest()
        flavor = self.instance.flavor
        self.nova_exists_current_period()
        self.compute._notify_about_instance_usage(
            self.context, self.instance, 'resize.prep.start')
        compute_utils.notify_about_resize_prep_instance(
            self.context, self.instance, self.host, START, flavor)
        self.compute._notify_about_instance_usage(
            self.context, self.instance, 'resize.prep.end')
        compute_utils.notify_about_resize_prep_instance(
            self.context, self.instance, self.host, END, flavor)
        self.nova_notifies('resize.start', ACTION.RESIZE, START)
        self.dom.destroy()
        self.nova_notifies('resize.end', ACTION.RESIZE, END)
        self.nova_notifies('finish_resize.start', ACTION.RESIZE_FINISH,
                           START)
        self.new_process()
        self.nova_notifies('finish_resize.end', ACTION.RESIZE_FINISH, END)
        self.use_guest()
        self.nova_deletes()

        exists = self.exists_sent()
        # The instance never left: the only final is the delete's.
        self.assert_one_final(exists, usage_service.LEFT_DELETED)
        self.assertEqual(2, len(self.generations()))
        self.assert_billed_equals_growth(exists)


class TestLeavingTheHost(LifecycleTestCase):
    """Events after which the instance no longer runs on this host."""

    def test_shelve_then_offload(self):
        self.use_guest()
        self.service.poll()
        self.use_guest()
        # nova 34 _shelve_instance: the exists of the current period
        # before shelve.start; power off, snapshot, shelve.end; with
        # nova's default shelved_offload_time = 0,
        # _shelve_offload_instance at once:
        # shelve_offload.start, driver.destroy, shelve_offload.end.
        self.nova_exists_current_period()
        self.nova_notifies('shelve.start', ACTION.SHELVE, START)
        self.use_guest()  # between the read and the power off: unread
        at_end = self.raw_now()
        process = self.generations()[-1]
        self.dom.destroy()
        self.nova_notifies('shelve.end', ACTION.SHELVE, END)
        self.nova_notifies('shelve_offload.start', ACTION.SHELVE_OFFLOAD,
                           START)
        self.domain_leaves()
        self.nova_notifies('shelve_offload.end', ACTION.SHELVE_OFFLOAD, END)

        exists = self.exists_sent()
        self.assertEqual(2, len(exists))
        self.assertEqual('hypervisor', exists[0]['payload']['usage'][
            'nova_object.data']['source'])
        self.assertFalse(is_final(exists[0]))
        self.assert_one_final(exists, 'shelved_offloaded')
        # shelve.start read the guest after the exists: the final has it.
        self.assertGreater(period_of(exists[1])['cpu_time_ns'], 0)
        last = self.assert_read_before_process_end(at_end, process)
        self.assertLess(last.cpu_time_ns, at_end['cpu'])
        self.assert_billed_equals_growth(exists, one_process=True)
        # Gone from the host: a complete read drops it, no other final.
        self.service.poll()
        self.assertNotIn(self.guest.uuid, self.service.ledger)
        self.assertEqual(exists, self.exists_sent())

    def test_resize_or_cold_migration_on_the_source(self):
        self.use_guest()
        self.service.poll()
        self.use_guest()
        # nova 34 on the source (_resize_instance): resize.start,
        # driver.migrate_disk_and_power_off (the guest is destroyed and
        # undefined here), instance.host set to the destination,
        # resize.end. (prep_resize, with its exists of the current period,
        # ran on the destination.)
        self.nova_notifies('resize.start', ACTION.RESIZE, START)
        at_end = self.raw_now()
        process = self.generations()[-1]
        self.domain_leaves()
        self.instance.host = 'nue-destination'
        self.instance.save()
        self.nova_notifies('resize.end', ACTION.RESIZE, END)

        exists = self.exists_sent()
        final = self.assert_one_final(exists, 'migrated')
        self.assertEqual('compute.%s' % self.host, final['publisher_id'])
        self.assert_read_before_process_end(at_end, process)
        self.assert_billed_equals_growth(exists, one_process=True)
        self.service.poll()
        self.assertNotIn(self.guest.uuid, self.service.ledger)
        self.assertEqual(exists, self.exists_sent())

    def settle_reads(self, quiet=0.3, timeout=5):
        """Until no reading came for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        count = len(self.readings)
        last_change = time.monotonic()
        while time.monotonic() - last_change < quiet:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.02)
            if len(self.readings) != count:
                count = len(self.readings)
                last_change = time.monotonic()

    def migrate_away(self):
        self.domain_leaves()
        self.nova_notifies('live_migration._post.start',
                           ACTION.LIVE_MIGRATION_POST, START)
        self.nova_notifies('live_migration._post.end',
                           ACTION.LIVE_MIGRATION_POST, END)

    def test_live_migration_on_the_source(self):
        self.use_guest()
        self.service.poll()
        # nova 34 sends nothing on the source before driver.live_migration.
        # The guest runs here until the switch-over, where libvirt pauses
        # it (nova's Host hands the driver a PAUSED lifecycle event), then
        # ends its QEMU on this host; nova then sends
        # live_migration._post.start, by when nothing can be read here.
        self.use_guest()
        before_pause = len(self.readings)
        # (nova's own Host may pass the real event too, when another test
        # in this process started libvirt's event loop.)
        at_pause = self.raw_now()
        self.dom.suspend()
        self.driver.emit_event(virtevent.LifecycleEvent(
            self.guest.uuid, virtevent.EVENT_LIFECYCLE_PAUSED))
        deadline = time.monotonic() + 10
        while len(self.readings) == before_pause:
            self.assertLess(time.monotonic(), deadline,
                            'no read after the pause')
            time.sleep(0.01)
        # nova's Host may have passed the real event as well (when another
        # test in this process started libvirt's event loop): a second
        # read then ends too before libvirt ends the source's QEMU.
        self.settle_reads()
        self.migrate_away()

        exists = self.exists_sent()
        final = self.assert_one_final(exists, 'migrated')
        usage = final['payload']['usage']['nova_object.data']
        self.assertEqual('cache', usage['source'])
        self.assert_billed_equals_growth(exists, one_process=True)
        # Everything up to the switch-over is reported: the counters the
        # guest had just before the pause (above the last poll's: the
        # tail), or more, read after it. Of each kind that reading held:
        # libvirt may leave a kind's counters out of one reply, and the
        # last reading of that kind then stands.
        last_poll = self.readings[before_pause - 1]
        (polled_iface,) = last_poll.interfaces
        self.assertGreater(at_pause['net'][3], polled_iface.rx_drops)
        self.assertGreater(at_pause['cpu'], last_poll.cpu_time_ns)
        at_event = self.readings[before_pause]
        self.assertTrue(at_event.kinds)
        if base.CPU in at_event.kinds:
            self.assertGreaterEqual(usage['cpu_time_ns'], at_pause['cpu'])
        if base.INTERFACES in at_event.kinds:
            (iface,) = usage['interfaces']
            data = iface['nova_object.data']
            # (libvirt may name the tap and leave its counters out.)
            for name, value in zip(base.INTERFACE_COUNTERS,
                                   at_pause['net']):
                if name in data:
                    self.assertGreaterEqual(data[name], value, name)
        if base.DISKS in at_event.kinds:
            (disk,) = usage['disks']
            self.assertGreaterEqual(disk['nova_object.data']['read_bytes'],
                                    at_pause['disk'][1])

    def test_live_migration_without_a_pause_event(self):
        # The domain gone before the event's read (or no event at all):
        # the final carries the last poll; what the guest used after it
        # was never read here.
        self.use_guest()
        self.service.poll()
        last_poll = self.readings[-1]
        self.use_guest()
        at_end = self.raw_now()
        self.migrate_away()

        exists = self.exists_sent()
        final = self.assert_one_final(exists, 'migrated')
        usage = final['payload']['usage']['nova_object.data']
        self.assertEqual('cache', usage['source'])
        self.assertIs(last_poll, self.readings[-1])
        self.assert_billed_equals_growth(exists, one_process=True)
        self.assertLess(usage['cpu_time_ns'], at_end['cpu'])


class TestVersionedNotificationsOnly(LifecycleTestCase):
    """``[notifications] notification_format = versioned``: nova sends no
    legacy exists; the package's instance.usage after nova's
    instance.exists carries the period, the final is the package's."""

    notification_format = 'versioned'

    def test_shelve_then_offload(self):
        self.use_guest()
        self.service.poll()
        self.use_guest()
        self.nova_exists_current_period()
        self.nova_notifies('shelve.start', ACTION.SHELVE, START)
        self.use_guest()
        self.dom.destroy()
        self.nova_notifies('shelve.end', ACTION.SHELVE, END)
        self.nova_notifies('shelve_offload.start', ACTION.SHELVE_OFFLOAD,
                           START)
        self.domain_leaves()
        self.nova_notifies('shelve_offload.end', ACTION.SHELVE_OFFLOAD, END)

        mine = self.sent()
        self.assertEqual(['instance.exists', 'instance.usage'],
                         [m['event_type'] for m in mine][:2])
        reports = [m for m in mine
                   if m['event_type'] in ('instance.usage', EXISTS)]
        self.assertEqual(['instance.usage', EXISTS],
                         [m['event_type'] for m in reports])
        self.assertEqual('hypervisor', usage_of(reports[0])['source'])
        self.assert_one_final(reports, 'shelved_offloaded')
        self.assert_billed_equals_growth(reports, one_process=True)


class TestNovaComputeRestart(LifecycleTestCase):

    def crash(self):
        """nova-compute dies: nothing saved after the last transaction."""
        service = self.service
        usage_service.unregister(service)
        service._loop.stop()
        service.delivery.stop()

    def test_restart_between_an_exists_and_the_next_save(self):
        self.flags.config(instance_usage_audit=True,
                          instance_usage_audit_period='hour')
        self.use_guest()
        self.service.poll()
        # nova's own audit: the exists of the last completed hour.
        self.compute._instance_usage_audit(self.context)
        self.use_guest()
        # A reading counted after the exists but never saved (what the
        # hook's reads before power off, reboot... do).
        self.service.read_now(self.guest.uuid)
        self.crash()
        self.use_guest()
        # nova-compute starts again on the same state.
        self.driver.init_host(host=self.compute.host)
        self.service = usage_service.current()
        deadline = time.monotonic() + 10
        while self.service.latest(self.guest.uuid) is None:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.02)
        self.use_guest()
        self.nova_deletes()

        exists = self.exists_sent()
        self.assertEqual(2, len(exists))
        self.assertFalse(is_final(exists[0]))
        self.assert_one_final(exists, usage_service.LEFT_DELETED)
        # Only the first start baselined: the restart had the state.
        self.assertEqual(1, self.log.output.count(
            'no usage state from before'))
        self.assert_billed_equals_growth(exists, one_process=True)
        ids = [m['message_id'] for m in exists]
        self.assertEqual(len(ids), len(set(ids)))
