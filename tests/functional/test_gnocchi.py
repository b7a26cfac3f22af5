"""Gnocchi end to end: what operators bill from.

A real QEMU guest runs on libvirtd; the package's service reads it as
nova-compute would and sends host.usage for a few cycles, then the
guest is deleted and its final exists goes out through the package's
notifier driver; ceilometer 27's notification agent (the package's sample
endpoint loaded from its entry point) publishes through ceilometer's
gnocchi publisher (gnocchiclient's ``gnocchi-basic`` auth, no keystone) to
a real gnocchi on the local PostgreSQL. Gnocchi then holds the instance
with its attributes, its disk and interface resources, and ``cpu``
measures whose last value is the final exists'.
"""

import datetime
import os
import time
import urllib.parse
import uuid as uuidlib

import fixtures
import oslo_messaging
import testtools
from keystoneauth1 import loading as ka_loading

from nova_usage_ext import exists
from nova_usage_ext import host_usage
from nova_usage_ext import ledger
from nova_usage_ext import service as usage_service
from nova_usage_ext import state
from nova_usage_ext.virt import base
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests.functional import bus
from tests.functional import ceilometer_fixtures as cf
from tests.functional import fixtures as qemu_fixtures
from tests.functional import gnocchi_fixtures

HOST = 'compute-func'
# Every point kept: 'last' at one-second granularity, so the last cpu
# value can be compared with the final exists'.
POLICY = {'name': 'nue-last', 'back_window': 0,
          'aggregation_methods': ['last', 'mean'],
          'definition': [{'granularity': '1s', 'timespan': '1 day'}]}


class TestGnocchi(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.gnocchi = self.useFixture(gnocchi_fixtures.GnocchiServer())
        self.gnocchi.post('/v1/archive_policy', POLICY)
        self.conf = self.useFixture(cf.CeilometerConf()).conf
        self.conf.set_override('host', HOST)
        # gnocchiclient's basic auth plugin, as an operator sets it in
        # ceilometer.conf [service_credentials].
        self.conf.set_override('auth_type', 'gnocchi-basic',
                               group='service_credentials')
        self.conf.register_opts(
            ka_loading.get_auth_plugin_conf_options('gnocchi-basic'),
            group='service_credentials')
        self.conf.set_override('user', gnocchi_fixtures.USER,
                               group='service_credentials')
        self.conf.set_override('endpoint', self.gnocchi.url,
                               group='service_credentials')
        # ceilometer-upgrade's gnocchi part: the resource types.
        from ceilometer import gnocchi_client
        gnocchi_client.upgrade_resource_types(self.conf)

    def test_a_guest_billed_from_gnocchi(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        topic = 'usage-ext-gnocchi-%s' % uuidlib.uuid4().hex
        self.useFixture(cf.NotificationAgent(
            self.conf, topic, [cf.PACKAGED_METERS_DIR],
            os.path.join(tmp, 'samples.json'),
            publishers=['gnocchi://?enable_filter_project=false&'
                        'archive_policy=nue-last']))
        guests = self.useFixture(qemu_fixtures.QemuGuests(1))
        (guest,) = guests.guests

        # nova-compute's side, on exchange "nova" and the agent's topic.
        sender = bus.nova_sender_conf()
        sender.set_override('notification_drivers', ['messagingv2'],
                            group='usage_ext')
        listener = self.useFixture(bus.Listener(sender))
        sender.set_override('topics', [topic, listener.topic],
                            group='oslo_messaging_notifications')
        reader = libvirt_usage.LibvirtUsageReader(
            libvirt_usage.LibvirtConnection(qemu_fixtures.URI))
        self.addCleanup(reader.close)
        # Interval 0: no loop of its own; the test runs the cycles.
        hosts = host_usage.HostUsageSender(
            HOST, 0, 100, host_usage.DriversOnNovaTopics(
                sender, ['messagingv2']))
        service = usage_service.UsageService(
            reader, ledger.Ledger(state.Store(tmp)), HOST, {},
            host_usage=hosts)
        usage_service.register(service)
        self.addCleanup(usage_service.unregister, service)
        service.start()
        self.addCleanup(service.stop)
        transport = oslo_messaging.get_notification_transport(
            sender, url=bus.RABBIT_URL)
        self.addCleanup(transport.cleanup)
        notifier = oslo_messaging.Notifier(
            transport, driver='nova_usage_ext',
            topics=[topic, listener.topic], publisher_id='compute.%s' % HOST)

        # Four host usage cycles, a second apart (gnocchi's points are).
        for _ in range(4):
            self.assertTrue(hosts.wait_idle(60))
            service.poll(base.EVERY_KIND)
            time.sleep(1.2)
        self.assertTrue(hosts.wait_idle(60))
        # Four readings, each in one part or more (the daemon is shared:
        # other test processes' nova guests come in the message too).
        self.assertEqual((0, 0), (hosts.failed, hosts.skipped))
        self.assertGreaterEqual(hosts.sent, 4)
        # The delete: nova's delete.start through the package's driver.
        notifier.info({}, 'compute.instance.delete.start', {
            'instance_id': guest.uuid, 'tenant_id': guest.project_id,
            'user_id': guest.user_id, 'display_name': guest.display_name,
            'host': HOST, 'state': 'active', 'vcpus': 1, 'memory_mb': 64})
        # (The service reads every nova guest on the shared daemon: other
        # test processes' guests that leave get finals of their own.)

        def ours():
            return [m for m in listener.messages
                    if m['event_type'] == exists.EVENT_TYPE and
                    m['payload']['instance_id'] == guest.uuid]
        (final,) = self.wait_for(ours, timeout=30)
        final_cpu = final['payload']['usage']['nova_object.data'][
            'vcpu_time_ns']
        final_at = final['payload']['usage']['nova_object.data']['read_at']

        # The resource, once its cpu metric is there (the publisher
        # creates the resource, then sends the measures).
        instance = self.wait_for(lambda: self.with_cpu(
            self.gnocchi.get('/v1/resource/instance/%s' % guest.uuid)))
        self.assertEqual(guest.display_name, instance['display_name'])
        self.assertEqual(HOST, instance['host'])
        self.assertEqual(guest.flavor, instance['flavor_name'])
        self.assertEqual(guest.project_id, instance['project_id'])
        self.assertEqual(guest.user_id, instance['user_id'])
        self.assertIn('cpu', instance['metrics'])
        disks = self.search('instance_disk', guest.uuid)
        self.assertEqual([guest.disk_device], [d['name'] for d in disks])
        nics = self.search('instance_network_interface', guest.uuid)
        self.assertEqual([guest.tap], [n['name'] for n in nics])
        # The cpu measures: the four cycles and the final exists, the
        # last one the final's.
        measures = self.wait_for(lambda: self.cpu_measures(instance,
                                                           final_at))
        self.assertEqual(5, len(measures), measures)
        self.assertEqual(final_cpu, measures[-1][2])
        values = [m[2] for m in measures]
        self.assertEqual(sorted(values), values)

    @staticmethod
    def with_cpu(resource):
        return resource if 'cpu' in resource.get('metrics', {}) else None

    def search(self, resource_type, instance_id):
        return self.wait_for(lambda: self.gnocchi.post(
            '/v1/search/resource/%s' % resource_type,
            {'=': {'instance_id': instance_id}}) or None)

    def cpu_measures(self, instance, until):
        """The cpu points once gnocchi has the one of ``until`` (the
        final exists' read_at)."""
        metric = instance['metrics']['cpu']
        measures = self.gnocchi.get(
            '/v1/metric/%s/measures?%s' % (metric, urllib.parse.urlencode(
                {'aggregation': 'last', 'granularity': 1,
                 'refresh': 'true'})))
        until = datetime.datetime.fromisoformat(until.replace('Z',
                                                              '+00:00'))
        if measures and datetime.datetime.fromisoformat(
                measures[-1][0]) >= until:
            return measures
        return None

    @staticmethod
    def wait_for(func, timeout=180):
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = func()
            except Exception:
                result = None
                if time.monotonic() > deadline:
                    raise
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError('gave nothing within %ds' % timeout)
            time.sleep(0.5)
