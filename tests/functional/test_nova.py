"""Released nova 34 running this package: its driver loader, its compute
manager deleting a real QEMU guest, its usage audit and volume usage task.

No nova code is copied: nova's own ``load_compute_driver`` loads the driver
through the ``nova.virt.usage_ext`` shim; nova's own ``ComputeManager`` (its
driver's ``init_host`` run against the real libvirtd) runs
``terminate_instance``, ``_instance_usage_audit`` and ``_poll_volume_usage``
against nova's database (nova's ``Database`` fixture, SQLite); nova's rpc
module builds nova's notifiers from ``[oslo_messaging_notifications]``, and
everything they send goes through the ``nova_usage_ext`` notifier driver to
the real RabbitMQ, where ``bus.Listener`` reads it back in arrival order.

What is replaced, and why:

* placement (``SchedulerReportClient``) and neutron (``network_api``) are
  mocks: they are other services, reached over HTTP with keystone auth.
  cinder is never reached (no test detaches or deletes a volume). glance is
  only used to format the image URL of legacy payloads, from ``[glance]
  api_servers``; nothing is sent to it.
* nova's libvirt event thread is disabled with nova's own test helper
  (``nova.tests.fixtures.libvirt.disable_event_thread``, as nova's tests
  do; it replaces ``Host._init_events``): that method starts a native
  thread that loops forever on libvirt's event loop and a connection-event
  worker that blocks forever on a queue in nova's thread pool, whose exit
  handler then waits for it, so the test process would never exit; nova's
  ``Host.cleanup`` stops neither. Everything else of ``init_host`` runs
  against the real libvirtd; the usage extension registers no libvirt
  event callback of its own (it follows what nova's Host passes to the
  driver's ``emit_event``).
* ``driver.destroy`` is wrapped (the real one runs) only to read the guest's
  counters through libvirt right before nova destroys it.

The last two test classes check periods as nova reckons them: the legacy
and versioned exists of one period, and an audit period with an offset.
"""

import datetime
import logging
import os
import subprocess
import sys
import time

# nova's test fixtures import nova.tests.functional, which applies nova's
# concurrency mode when imported. nova-compute 34 runs on native threads,
# and this test process forbids eventlet (tests/__init__.py): select nova's
# native-threading mode before importing them.
os.environ['OS_NOVA_DISABLE_EVENTLET_PATCHING'] = '1'

import fixtures  # noqa: E402
import libvirt  # noqa: E402
from oslo_messaging import opts as messaging_opts  # noqa: E402
from oslo_utils import timeutils  # noqa: E402
import testtools  # noqa: E402
from unittest import mock  # noqa: E402

from nova.compute import instance_actions  # noqa: E402
from nova.compute import manager as compute_manager  # noqa: E402
from nova.compute import power_state  # noqa: E402
from nova.compute import utils as compute_utils  # noqa: E402
from nova.compute import vm_states  # noqa: E402
import nova.conf  # noqa: E402
from nova import context as nova_context  # noqa: E402
from nova.network import model as network_model  # noqa: E402
from nova.network import neutron  # noqa: E402
from nova import notifications  # noqa: E402
from nova import objects  # noqa: E402
from nova import rpc  # noqa: E402
from nova.tests import fixtures as nova_fixtures  # noqa: E402
from nova.tests.fixtures import libvirt as nova_libvirt_fixtures  # noqa: E402
from nova import utils as nova_utils  # noqa: E402
import nova.virt  # noqa: E402
from nova.virt import driver as virt_driver  # noqa: E402
from nova.virt import event as virtevent  # noqa: E402
from nova.virt.libvirt import driver as libvirt_driver  # noqa: E402
from nova.virt.libvirt import host as nova_host  # noqa: E402
from nova.virt import virtapi  # noqa: E402

from nova_usage_ext import compute as usage_compute  # noqa: E402
from nova_usage_ext import conf as usage_conf  # noqa: E402
from nova_usage_ext import service as usage_service  # noqa: E402
from nova_usage_ext.virt import driver as usage_driver  # noqa: E402
from nova_usage_ext.virt import libvirt as libvirt_usage  # noqa: E402
from tests.functional import bus  # noqa: E402
from tests.functional import fixtures as qemu_fixtures  # noqa: E402

CONF = nova.conf.CONF
objects.register_all()

DRIVER = 'usage_ext.LibvirtUsageDriver'
USAGE_METHODS = ('interface_stats', 'block_stats', 'get_all_volume_usage',
                 'get_all_bw_counters', 'get_info')
BLOCK_FIELDS = ('read_requests', 'read_bytes', 'write_requests',
                'write_bytes')  # dom.blockStats() order
NET_FIELDS = ('rx_bytes', 'rx_packets', 'rx_errors', 'rx_drops',
              'tx_bytes', 'tx_packets', 'tx_errors', 'tx_drops')
IMAGE_REF = '155d900f-4e14-4e4c-a73d-069cbf4541e6'
DELETE_SEQUENCE = [
    'compute.instance.exists',  # the final one, from the hook
    'compute.instance.delete.start', 'instance.delete.start',
    'compute.instance.shutdown.start', 'instance.shutdown.start',
    'compute.instance.shutdown.end', 'instance.shutdown.end',
    'compute.instance.delete.end', 'instance.delete.end',
]


def message_uuid(message):
    """The instance a legacy or versioned notification is about."""
    payload = message['payload']
    data = payload.get('nova_object.data')
    if data is None:
        return payload.get('instance_id')
    return data.get('uuid') or data.get('instance_uuid')


def per_domain(dom, guest):
    """The guest's counters by per-domain libvirt calls.

    CPU time from getCPUStats (the cgroup's, in ns: the source of the bulk
    stats the reader uses), not info() (QEMU's /proc time, in 10 ms steps).
    """
    return {'cpu': dom.getCPUStats(True)[0]['cpu_time'],
            'disk': dom.blockStats(guest.disk_device),
            'net': dom.interfaceStats(guest.tap)}


class NovaTestCase(testtools.TestCase):
    """nova's configuration (nova.conf.CONF) for one test."""

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(120, gentle=True))
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.INFO))
        self.state_path = self.useFixture(fixtures.TempDir()).path
        self.host = 'nue-nova-%d' % os.getpid()
        self.flags = self.useFixture(nova_fixtures.ConfFixture(CONF))
        self.flags.config(compute_driver=DRIVER, host=self.host,
                          state_path=self.state_path,
                          instances_path=os.path.join(self.state_path,
                                                      'instances'))
        self.flags.config(connection_uri=qemu_fixtures.URI, virt_type='qemu',
                          group='libvirt')
        # Once a test has started libvirt's event loop in this process,
        # nova's Host gets the lifecycle events of every guest on the
        # shared libvirtd; nova's fixtures disable the executor that
        # delays STOPPED events, and its error would reach the test
        # stream: drop those delayed events, as no test here wants them.
        delayed = nova_host.Host._event_emit_delayed

        def emit_delayed(host, event):
            if (host._delayed_executor is None and
                    getattr(event, 'transition', None) ==
                    virtevent.EVENT_LIFECYCLE_STOPPED):
                return
            delayed(host, event)
        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.libvirt.host.Host._event_emit_delayed', emit_delayed))

    def assert_between(self, low, value, high, what):
        self.assertIsNotNone(value, what)
        self.assertTrue(low <= value <= high, '%s: %r not within [%r, %r]'
                        % (what, value, low, high))

    def assert_counters_between(self, before, usage, after, guest):
        """A usage payload's counters lie between two per_domain reads."""
        self.assert_between(before['cpu'], usage['cpu_time_ns'],
                            after['cpu'], 'cpu_time_ns')
        disks = [d['nova_object.data'] for d in usage['disks']]
        self.assertEqual([guest.disk_device], [d['device'] for d in disks])
        for index, field in enumerate(BLOCK_FIELDS):
            self.assert_between(before['disk'][index], disks[0][field],
                                after['disk'][index], 'disk ' + field)
        ifaces = [i['nova_object.data'] for i in usage['interfaces']]
        self.assertEqual([(guest.tap, guest.mac)],
                         [(i['name'], i['mac']) for i in ifaces])
        for index, field in enumerate(NET_FIELDS):
            self.assert_between(before['net'][index], ifaces[0][field],
                                after['net'][index], 'interface ' + field)


class TestNovaLoadsTheDriver(NovaTestCase):

    def load(self):
        try:
            return virt_driver.load_compute_driver(virtapi.VirtAPI(), DRIVER)
        except SystemExit:
            # load_compute_driver logs why and exits the process.
            self.fail('nova could not load %s:\n%s' % (DRIVER,
                                                       self.log.output))

    def test_load_compute_driver_returns_the_usage_driver(self):
        self.useFixture(qemu_fixtures.LibvirtDaemon())
        driver = self.load()
        self.assertIsInstance(driver, usage_compute.LibvirtUsageDriver)
        self.assertIsInstance(driver, libvirt_driver.LibvirtDriver)
        self.assertIsInstance(driver, virt_driver.ComputeDriver)
        # nova imported the shim from inside its own package directory (a
        # regular install of the project put it there).
        shim = sys.modules['nova.virt.usage_ext']
        self.assertEqual(os.path.dirname(nova.virt.__file__),
                         os.path.dirname(shim.__file__))
        self.assertIs(usage_compute.LibvirtUsageDriver,
                      shim.LibvirtUsageDriver)
        for name in USAGE_METHODS:
            # The usage methods, not nova's (LibvirtDriver has its own
            # get_info and block_stats; ComputeDriver's raise
            # NotImplementedError; the others nova removed).
            self.assertIs(getattr(usage_driver.UsageDriverMixin, name),
                          getattr(type(driver), name), name)
            self.assertTrue(callable(getattr(driver, name)), name)
        # nova's driver, configured by nova.conf.
        self.assertEqual(qemu_fixtures.URI, driver._uri())
        self.assertIn('Loading compute driver %r' % DRIVER, self.log.output)

    def test_usage_methods_read_through_novas_libvirt_connection(self):
        nova_libvirt_fixtures.disable_event_thread(self)
        guests = self.useFixture(qemu_fixtures.QemuGuests(1))
        (guest,) = guests.guests
        dom = guests.domain(guest)
        driver = self.load()
        self.addCleanup(close_nova_connection, driver)
        instance = objects.Instance(uuid=guest.uuid)
        bdm = {'device_name': '/dev/' + guest.disk_device,
               'volume_id': 'b6d1a2c4-0000-4000-8000-000000000001'}

        before = per_domain(dom, guest)
        info = driver.get_info(instance)
        block = driver.block_stats(instance, guest.disk_device)
        by_tap = driver.interface_stats(instance, guest.tap)
        by_mac = driver.interface_stats(instance, guest.mac.upper())
        (bw,) = driver.get_all_bw_counters([instance])
        (volume,) = driver.get_all_volume_usage(
            nova_context.get_admin_context(),
            [{'instance': instance, 'instance_bdms': [bdm]}])
        after = per_domain(dom, guest)

        # nova's own get_info ran (its InstanceInfo, its power state); no
        # usage service runs (no init_host), so no reading: no cpu time,
        # and no libvirt call of the package's own to get one.
        self.assertEqual(power_state.RUNNING, info.state)
        self.assertIsNone(info.cpu_time_ns)
        for index, field in enumerate(BLOCK_FIELDS):
            self.assert_between(before['disk'][index], block[index],
                                after['disk'][index], 'block_stats ' + field)
        self.assertEqual(-1, block[4])  # QEMU keeps no error count
        for stats in (by_tap, by_mac):
            for index, field in enumerate(NET_FIELDS):
                self.assert_between(before['net'][index], stats[index],
                                    after['net'][index],
                                    'interface_stats ' + field)
        self.assertEqual(guest.uuid, bw['uuid'])
        self.assertEqual(guest.mac, bw['mac_address'])
        self.assert_between(before['net'][0], bw['bw_in'], after['net'][0],
                            'bw_in')
        self.assert_between(before['net'][4], bw['bw_out'], after['net'][4],
                            'bw_out')
        self.assertEqual(bdm['volume_id'], volume['volume'])
        self.assertIs(instance, volume['instance'])
        for key, index in (('rd_req', 0), ('rd_bytes', 1), ('wr_req', 2),
                           ('wr_bytes', 3)):
            self.assert_between(before['disk'][index], volume[key],
                                after['disk'][index], 'volume ' + key)

    def test_split_cycles_follow_the_events_nova_gets(self):
        # nova's Host registers its lifecycle callback on its connection
        # and hands each event to its driver's emit_event: the reader's
        # domain list follows those, with no callback of its own on nova's
        # connection. The fixture stops nova's _init_events, which would
        # have started libvirt's event loop and the executor that delays
        # nova's STOPPED events by 15 s: start the loop as nova would,
        # before nova connects, and let nova's Host emit without the delay.
        nova_libvirt_fixtures.disable_event_thread(self)
        libvirt_usage.libvirt_domains.ensure_event_loop()
        nova_events = []
        emit = nova_host.Host._event_emit

        def emit_now(host, event):
            nova_events.append((event.uuid, event.transition))
            emit(host, event)

        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.libvirt.host.Host._event_emit_delayed', emit_now))
        own_callbacks = self.useFixture(fixtures.MockPatchObject(
            libvirt.virConnect, 'domainEventRegister')).mock
        guests = self.useFixture(qemu_fixtures.QemuGuests(8))
        ours = {g.uuid for g in guests.guests}
        driver = self.load()
        self.addCleanup(close_nova_connection, driver)
        reader = driver.usage_reader
        self.addCleanup(reader.close)
        debug = self.useFixture(fixtures.FakeLogger(
            name='nova_usage_ext.virt.libvirt', level=logging.DEBUG))
        # Until a cycle is split: another test process's guest starting or
        # stopping on the shared daemon makes the next cycle a full one.
        deadline = time.monotonic() + 30
        while 'concurrent stats calls' not in debug.output:
            self.assertLess(time.monotonic(), deadline,
                            'no split cycle within 30 s')
            self.assertTrue(ours <= {u.uuid for u in reader.read_all()})
            time.sleep(0.05)

        (late,) = self.useFixture(qemu_fixtures.QemuGuests(1)).guests
        deadline = time.monotonic() + 10
        while late.uuid not in {u.uuid for u in reader.read_all()}:
            self.assertLess(time.monotonic(), deadline,
                            'a started guest was not read within 10 s')
            time.sleep(0.1)
        self.assertIn((late.uuid, virtevent.EVENT_LIFECYCLE_STARTED),
                      nova_events)
        self.assertFalse(own_callbacks.called)


def close_nova_connection(driver):
    """Close the libvirt connection nova's Host opened (nova never does)."""
    conn = driver._host._wrapped_conn
    if conn is not None:
        driver._host._wrapped_conn = None
        try:
            conn.close()
        except libvirt.libvirtError:
            pass


class NovaComputeTestCase(NovaTestCase):
    """nova's ComputeManager on the real libvirtd, one real QEMU guest that
    is a nova instance in nova's database, notifications on the real bus.
    """

    notification_format = 'both'

    def setUp(self):
        super().setUp()
        nova_libvirt_fixtures.disable_event_thread(self)
        listener_conf = bus.make_conf()
        # One dispatch thread: messages are recorded in arrival order.
        for group, opts in messaging_opts.list_opts():
            listener_conf.register_opts(
                opts, group=None if group == 'DEFAULT' else group)
        listener_conf.set_override('executor_thread_pool_size', 1)
        self.listener = self.useFixture(bus.Listener(listener_conf))

        # oslo.messaging registers its options on first use; nova's rpc
        # module would, too late for these overrides.
        for group, opts in messaging_opts.list_opts():
            CONF.register_opts(opts,
                               group=None if group == 'DEFAULT' else group)
        usage_conf.register_opts(CONF)
        self.flags.config(transport_url=bus.RABBIT_URL)
        self.flags.config(driver=['nova_usage_ext'],
                          topics=[self.listener.topic],
                          group='oslo_messaging_notifications')
        self.flags.config(notification_format=self.notification_format,
                          versioned_notifications_topics=[
                              self.listener.topic],
                          group='notifications')
        self.flags.config(notification_drivers=['messagingv2'],
                          group='usage_ext')
        # No scheduler RPC casts about instance changes.
        self.flags.config(track_instance_changes=False,
                          group='filter_scheduler')
        # Legacy payloads carry the image URL; nova builds it from here.
        self.flags.config(api_servers=['http://glance.invalid:9292'],
                          group='glance')

        self.useFixture(nova_fixtures.Database())
        self.assertTrue(nova_utils.concurrency_mode_threading())
        rpc.init(CONF)
        self.addCleanup(rpc.cleanup)

        self.guests = self.useFixture(qemu_fixtures.QemuGuests(1))
        (self.guest,) = self.guests.guests
        self.dom = self.guests.domain(self.guest)

        # placement is another service.
        with mock.patch('nova.scheduler.client.report.SchedulerReportClient',
                        autospec=True):
            self.compute = compute_manager.ComputeManager()
        # neutron is another service; the instance has no ports.
        self.compute.network_api = mock.create_autospec(neutron.API,
                                                        instance=True)
        self.compute.network_api.get_instance_nw_info.return_value = (
            network_model.NetworkInfo())
        self.driver = self.compute.driver
        self.assertIsInstance(self.driver, usage_compute.LibvirtUsageDriver)

        self.service = None
        self.addCleanup(self.cleanup_host)
        self.driver.init_host(host=self.compute.host)
        self.service = usage_service.current()
        self.assertIsNotNone(self.service, self.log.output)
        self.assertNotIn('usage reporting is off', self.log.output)

        self.context = nova_context.get_admin_context()
        self.instance = self.create_instance()
        self.cached = self.wait_for_first_poll()

    def cleanup_host(self):
        # What nova-compute's ComputeManager.cleanup_host does to the driver
        # at shutdown (not all of it: it would also shut down nova's
        # process-wide thread pools for good).
        started = usage_service.current()
        try:
            self.driver.cleanup_host(host=self.compute.host)
            left_registered = usage_service.current()
            left_polling = started is not None and started._loop is not None
        finally:
            close_nova_connection(self.driver)
            # Whatever happened, no polling loop may outlive the test: its
            # worker would keep the test process from exiting.
            for service in {started, self.service} - {None}:
                service.stop()
                usage_service.unregister(service)
        self.assertIsNone(left_registered)
        self.assertFalse(left_polling)

    def create_instance(self):
        """The guest as nova's database knows it once it was built."""
        guest = self.guest
        flavor = objects.Flavor(
            name=guest.flavor, flavorid='nue-1', memory_mb=guest.memory_mb,
            vcpus=guest.vcpus, root_gb=0, ephemeral_gb=0, swap=0,
            rxtx_factor=1.0, is_public=True, disabled=False,
            description=None, extra_specs={})
        instance = objects.Instance(
            context=self.context, uuid=guest.uuid,
            project_id=guest.project_id, user_id=guest.user_id,
            display_name=guest.display_name, hostname='func-vm',
            host=self.compute.host, launched_on=self.compute.host,
            vm_state=vm_states.ACTIVE, power_state=power_state.RUNNING,
            task_state=None, flavor=flavor, memory_mb=guest.memory_mb,
            vcpus=guest.vcpus, root_gb=0, ephemeral_gb=0,
            image_ref=IMAGE_REF,
            launched_at=timeutils.utcnow() - datetime.timedelta(days=1),
            system_metadata={},
            info_cache=objects.InstanceInfoCache(
                network_info=network_model.NetworkInfo()))
        instance.create()
        return instance

    def wait_for_first_poll(self, timeout=60):
        """init_host started the usage service, whose loop reads the host
        once right away; return its reading of the guest."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            usage = self.service.latest(self.guest.uuid)
            if usage is not None:
                return usage
            time.sleep(0.02)
        self.fail('the usage service did not read %s within %ds'
                  % (self.guest.uuid, timeout))

    def wait_for_event(self, event_type, timeout=15):
        """Messages about the guest until ``event_type`` arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mine = [m for m in self.listener.messages
                    if message_uuid(m) == self.guest.uuid]
            if event_type in [m['event_type'] for m in mine]:
                return mine
            time.sleep(0.02)
        self.fail('no %s within %ds; got %s' % (
            event_type, timeout,
            [m['event_type'] for m in self.listener.messages]))


class TestTerminateInstance(NovaComputeTestCase):

    def test_final_exists_arrives_before_delete_start(self):
        guest = self.guest
        # Make the firmware read the disk again, so that disk counters are
        # not all zero.
        self.guests.make_disk_io(guest)
        before = per_domain(self.dom, guest)
        at_destroy = {}
        real_destroy = self.driver.destroy

        def destroy(*args, **kwargs):
            # nova destroys the guest after it sent delete.start (so after
            # the hook read the guest for the final exists): its counters
            # now bound from above what the final exists may say.
            at_destroy.update(per_domain(self.dom, guest))
            return real_destroy(*args, **kwargs)

        self.useFixture(fixtures.MockPatchObject(
            self.driver, 'destroy', side_effect=destroy))
        # What nova-api does before it casts terminate_instance.
        objects.InstanceAction.action_start(
            self.context, guest.uuid, instance_actions.DELETE,
            want_result=False)
        self.instance.task_state = 'deleting'
        self.instance.save()

        started = timeutils.utcnow()
        self.compute.terminate_instance(
            self.context, self.instance,
            objects.BlockDeviceMappingList(objects=[]))
        ended = timeutils.utcnow()

        mine = self.wait_for_event('instance.delete.end')
        time.sleep(0.3)  # anything sent late would show up now
        mine = [m for m in self.listener.messages
                if message_uuid(m) == guest.uuid]
        # nova really deleted it: the domain is gone, placement was told.
        self.assertRaises(libvirt.libvirtError, self.guests.domain, guest)
        self.compute.reportclient.delete_allocation_for_instance.\
            assert_called_once_with(self.context, guest.uuid, force=True)
        self.assertTrue(at_destroy)

        # Arrival order: the final exists, strictly before both
        # delete.start notifications, and only one, though nova sent
        # delete.start in both formats.
        self.assertEqual(DELETE_SEQUENCE, [m['event_type'] for m in mine])
        final, delete_start = mine[0], mine[1]
        self.assertEqual('compute.%s' % self.host, final['publisher_id'])
        self.assertEqual('INFO', final['priority'])
        payload = final['payload']
        # The final exists is nova's own legacy exists of the instance...
        for key, value in delete_start['payload'].items():
            self.assertEqual(value, payload[key], key)
        self.assertEqual(guest.uuid, payload['instance_id'])
        self.assertEqual(guest.project_id, payload['tenant_id'])
        self.assertEqual(guest.flavor, payload['instance_type'])
        # Its period starts where nova's last periodic exists ended (no
        # audit ran yet) and ends at the deletion.
        _, audited_until = nova_utils.last_completed_audit_period()
        self.assertEqual(str(audited_until),
                         payload['audit_period_beginning'])
        self.assert_between(started, datetime.datetime.fromisoformat(
            payload['audit_period_ending']), ended, 'audit_period_ending')
        # ...with the usage the hypervisor held when nova deleted it.
        self.assertEqual('InstanceUsagePayload',
                         payload['usage']['nova_object.name'])
        usage = payload['usage']['nova_object.data']
        self.assertIs(True, usage['final'])
        self.assertEqual('hypervisor', usage['source'])
        self.assertEqual(guest.uuid, usage['instance_uuid'])
        self.assertEqual(self.host, usage['host'])
        self.assertEqual(guest.flavor, usage['flavor_name'])
        self.assert_counters_between(before, usage, at_destroy, guest)
        self.assertGreater(usage['disks'][0]['nova_object.data'][
            'read_requests'], 0)
        # Billed: what the guest used since the package's first read (its
        # state started empty: usage before that is not its to bill).
        period = usage['period']['nova_object.data']
        self.assertEqual(usage['cpu_time_ns'] - self.cached.cpu_time_ns,
                         period['cpu_time_ns'])
        self.assertEqual(self.cached.read_at.strftime('%Y-%m-%dT%H:%M:%SZ'),
                         period['period_beginning'])
        # Its state stays until a read of the host no longer lists it (a
        # delete that fails leaves the guest running), then goes without
        # a second final.
        self.assertTrue(self.service.ledger.is_closed(guest.uuid))
        self.service.poll()
        self.assertIsNone(self.service.latest(guest.uuid))
        self.assertIsNone(self.service.ledger.totals(guest.uuid))
        self.assertEqual(0, self.service.ledger.store.outbox_size())
        time.sleep(0.3)
        self.assertEqual(DELETE_SEQUENCE, [
            m['event_type'] for m in self.listener.messages
            if message_uuid(m) == guest.uuid])


class TestTerminateInstanceVersionedOnly(NovaComputeTestCase):
    """``notification_format = versioned``: nova sends no legacy
    notification at all; billing still gets a legacy final exists."""

    notification_format = 'versioned'

    def test_final_exists_from_novas_versioned_delete_start(self):
        guest = self.guest
        # What nova's own legacy payload says about the instance.
        legacy = notifications.info_from_instance(self.context,
                                                  self.instance, None)
        objects.InstanceAction.action_start(
            self.context, guest.uuid, instance_actions.DELETE,
            want_result=False)
        before = per_domain(self.dom, guest)

        self.compute.terminate_instance(
            self.context, self.instance,
            objects.BlockDeviceMappingList(objects=[]))

        self.wait_for_event('instance.delete.end')
        time.sleep(0.3)  # anything sent late would show up now
        mine = [m for m in self.listener.messages
                if message_uuid(m) == guest.uuid]
        self.assertEqual([e for e in DELETE_SEQUENCE
                          if not e.startswith('compute.instance.') or
                          e == 'compute.instance.exists'],
                         [m['event_type'] for m in mine])
        final = mine[0]
        self.assertEqual('compute.%s' % self.host, final['publisher_id'])
        payload = final['payload']
        # Built from nova's versioned payload: the identity and flavor
        # fields nova's legacy notifications carry, with nova's values.
        for key in ('tenant_id', 'user_id', 'instance_id', 'display_name',
                    'hostname', 'host', 'instance_type',
                    'instance_flavor_id', 'memory_mb', 'vcpus', 'root_gb',
                    'ephemeral_gb', 'disk_gb', 'state'):
            self.assertEqual(legacy[key], payload[key], key)
        usage = payload['usage']['nova_object.data']
        self.assertIs(True, usage['final'])
        self.assertEqual('hypervisor', usage['source'])
        self.assertEqual(guest.uuid, usage['instance_uuid'])
        # Read before nova destroyed the guest: at least what it had used
        # before the delete began.
        self.assertGreaterEqual(usage['cpu_time_ns'], before['cpu'])


class TestGetInfo(NovaComputeTestCase):
    """nova's power-state path: get_info answers from the usage loop's
    last reading and makes no libvirt call of the package's own."""

    def test_cpu_time_from_the_last_reading(self):
        reads = []
        for name in ('read_host', 'read_instance'):
            self.useFixture(fixtures.MockPatchObject(
                self.service.reader, name,
                side_effect=lambda *a, **k: reads.append(a)))
        state = self.compute._get_power_state(self.instance)
        info = self.driver.get_info(self.instance, use_cache=False)
        self.assertEqual(power_state.RUNNING, state)
        self.assertEqual(self.service.latest(self.guest.uuid).cpu_time_ns,
                         info.cpu_time_ns)
        self.assertGreater(info.cpu_time_ns, 0)
        self.assertEqual([], reads)


class TestNovaComputeExits(NovaTestCase):
    """A nova-compute that fails after init_host, and so never calls
    cleanup_host, exits: the usage loop is a daemon thread."""

    def test_exit_without_cleanup_host(self):
        self.useFixture(qemu_fixtures.LibvirtDaemon())
        code = PROCESS_EXITS % {
            'driver': DRIVER, 'uri': qemu_fixtures.URI,
            'state': self.state_path, 'host': self.host}
        result = subprocess.run([sys.executable, '-c', code],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(3, result.returncode, result.stderr[-3000:])
        self.assertIn("'usage-ext-poll'", result.stdout)


# nova's own loader and init_host against the real libvirtd, then the
# process ends without cleanup_host. nova's Host._init_events is replaced
# as nova's tests do: its own connection-event worker would keep the
# process alive (see the module docstring), which is nova's, not the
# package's.
PROCESS_EXITS = """
import os, sys, threading
os.environ['OS_NOVA_DISABLE_EVENTLET_PATCHING'] = '1'
from unittest import mock
import nova.conf
from nova import objects
from nova.virt import driver, virtapi
from nova_usage_ext import service
CONF = nova.conf.CONF
CONF([], project='nova', default_config_files=[])
objects.register_all()
CONF.set_override('compute_driver', %(driver)r)
CONF.set_override('host', %(host)r)
CONF.set_override('state_path', %(state)r)
CONF.set_override('instances_path', os.path.join(%(state)r, 'instances'))
CONF.set_override('connection_uri', %(uri)r, group='libvirt')
CONF.set_override('virt_type', 'qemu', group='libvirt')
with mock.patch('nova.virt.libvirt.host.Host._init_events'):
    drv = driver.load_compute_driver(virtapi.VirtAPI(), %(driver)r)
    drv.init_host(%(host)r)
svc = service.current()
assert svc is not None and svc._loop.running, 'no usage loop'
print(sorted(t.name for t in threading.enumerate()))
sys.exit(3)
"""


class TestPollVolumeUsage(NovaComputeTestCase):
    """nova's own periodic volume usage task calls the driver's
    get_all_volume_usage with its BDM objects."""

    notification_format = 'unversioned'

    def test_volume_usage_of_an_attached_volume(self):
        guest = self.guest
        self.flags.config(volume_usage_poll_interval=600)
        volume_id = 'b6d1a2c4-0000-4000-8000-%012x' % os.getpid()
        objects.BlockDeviceMapping(
            context=self.context, instance_uuid=guest.uuid,
            source_type='volume', destination_type='volume',
            volume_id=volume_id, device_name='/dev/' + guest.disk_device,
            boot_index=0, delete_on_termination=False,
            connection_info='{}').create()
        self.guests.make_disk_io(guest)
        before = per_domain(self.dom, guest)

        self.compute._poll_volume_usage(self.context)

        after = per_domain(self.dom, guest)
        (message,) = self.wait_for_event('volume.usage')
        payload = message['payload']
        self.assertEqual('compute.%s' % self.host, message['publisher_id'])
        self.assertEqual((volume_id, guest.project_id),
                         (payload['volume_id'], payload['tenant_id']))
        for key, index in (('reads', 0), ('read_bytes', 1), ('writes', 2),
                           ('write_bytes', 3)):
            self.assert_between(before['disk'][index], payload[key],
                                after['disk'][index], key)
        self.assertGreater(payload['reads'], 0)


class TestInstanceUsageAudit(NovaComputeTestCase):

    def test_audit_exists_carries_usage_read_for_it(self):
        guest = self.guest
        self.flags.config(instance_usage_audit=True,
                          instance_usage_audit_period='hour')
        before = per_domain(self.dom, guest)

        self.compute._instance_usage_audit(self.context)

        after = per_domain(self.dom, guest)

        self.wait_for_event('instance.exists')
        # The hook sends instance.usage right after passing instance.exists
        # on.
        mine = self.wait_for_event('instance.usage', timeout=3)
        self.assertEqual(['compute.instance.exists', 'instance.exists',
                          'instance.usage'],
                         [m['event_type'] for m in mine])
        legacy, versioned, companion = mine
        payload = legacy['payload']
        self.assertEqual(guest.uuid, payload['instance_id'])
        self.assertEqual('compute.%s' % self.host, legacy['publisher_id'])
        # nova's audit period, untouched: the last full hour.
        beginning = datetime.datetime.fromisoformat(
            payload['audit_period_beginning'])
        ending = datetime.datetime.fromisoformat(
            payload['audit_period_ending'])
        self.assertEqual(datetime.timedelta(hours=1), ending - beginning)
        usage = payload['usage']['nova_object.data']
        self.assertEqual(guest.uuid, usage['instance_uuid'])
        # Read for the exists, not the last poll (minutes old).
        self.assertEqual('hypervisor', usage['source'])
        self.assertIs(False, usage['final'])
        self.assert_counters_between(before, usage, after, guest)
        # The period: since the package's first read (a fresh state).
        period = usage['period']['nova_object.data']
        self.assertEqual(usage['cpu_time_ns'] - self.cached.cpu_time_ns,
                         period['cpu_time_ns'])
        self.assertEqual(self.cached.read_at.strftime('%Y-%m-%dT%H:%M:%SZ'),
                         period['period_beginning'])

        self.assertEqual('nova-compute:%s' % self.host,
                         versioned['publisher_id'])
        self.assertEqual('InstanceExistsPayload',
                         versioned['payload']['nova_object.name'])
        self.assertEqual('nova-compute:%s' % self.host,
                         companion['publisher_id'])
        companion_usage = companion['payload']['nova_object.data']
        self.assertEqual(guest.uuid, companion_usage['instance_uuid'])
        self.assertEqual(usage['cpu_time_ns'],
                         companion_usage['cpu_time_ns'])

        # nova's own record of the audit: one instance, no error (nothing
        # the hook did reached nova).
        begin, end = nova_utils.last_completed_audit_period()
        task_log = objects.TaskLog.get(self.context, 'instance_usage_audit',
                                       begin, end, self.host)
        self.assertEqual((1, 0), (task_log.task_items, task_log.errors))


# -- Audit periods as nova reckons them --------------------------------------


class TestExistsOfTheCurrentPeriod(NovaComputeTestCase):
    """nova's notify_usage_exists(current_period=True), as nova's rebuild,
    rescue, resize, revert resize and shelve send it, with both formats."""

    def test_legacy_and_versioned_report_the_same_period_usage(self):
        # The service's first poll set the baseline; this one gives the
        # period some usage.
        self.service.poll()
        compute_utils.notify_usage_exists(
            self.compute.notifier, self.context, self.instance, self.host,
            current_period=True)

        self.wait_for_event('instance.exists')
        mine = self.wait_for_event('instance.usage', timeout=3)
        self.assertEqual(['compute.instance.exists', 'instance.exists',
                          'instance.usage'],
                         [m['event_type'] for m in mine])
        legacy, _versioned, companion = mine
        legacy_period = legacy['payload']['usage']['nova_object.data'][
            'period']['nova_object.data']
        companion_period = companion['payload']['nova_object.data'][
            'period']['nova_object.data']
        self.assertGreater(legacy_period['cpu_time_ns'], 0)
        # nova writes the legacy audit_period_ending with microseconds and
        # the versioned one in whole seconds: both are the same period.
        self.assertEqual(legacy_period['cpu_time_ns'],
                         companion_period['cpu_time_ns'])


class TestFinalExistsWithAnAuditOffset(NovaComputeTestCase):
    """``instance_usage_audit_period = hour@30``: nova's periods start at
    half past."""

    notification_format = 'unversioned'

    def test_final_exists_begins_where_novas_period_begins(self):
        self.flags.config(instance_usage_audit_period='hour@30')
        objects.InstanceAction.action_start(
            self.context, self.guest.uuid, instance_actions.DELETE,
            want_result=False)

        self.compute.terminate_instance(
            self.context, self.instance,
            objects.BlockDeviceMappingList(objects=[]))

        mine = self.wait_for_event('compute.instance.delete.end')
        final = mine[0]
        self.assertEqual('compute.instance.exists', final['event_type'])
        self.assertIs(True,
                      final['payload']['usage']['nova_object.data']['final'])
        _, audited_until = nova_utils.last_completed_audit_period()
        # Where nova's current period started, offset included.
        self.assertEqual(str(audited_until),
                         final['payload']['audit_period_beginning'])
