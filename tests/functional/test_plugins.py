"""Metric plugins over the real RabbitMQ: the thresholds plugin's alerts
as they arrive, against doc/notification_samples."""

import logging
import os

import fixtures
import oslo_messaging
import testtools

from nova_usage_ext import conf as usage_conf
from nova_usage_ext import ledger
from nova_usage_ext import service as usage_service
from nova_usage_ext import state
from nova_usage_ext.plugins import manager
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_node
from tests.functional import bus
from tests.functional import test_notifier

UUID0 = '00000000-0000-0000-0000-000000000001'


class AlertEndpoint(bus.Endpoint):
    def warn(self, ctxt, publisher_id, event_type, payload, metadata):
        self._record('WARN', publisher_id, event_type, payload, metadata)


class AlertListener(bus.Listener):
    """The bus listener, also taking WARN (a breached alert)."""

    def _setUp(self):
        self.transport = oslo_messaging.get_notification_transport(
            self.conf, url=bus.RABBIT_URL)
        self.addCleanup(self.transport.cleanup)
        self.endpoint = AlertEndpoint()
        self.listener = oslo_messaging.get_notification_listener(
            self.transport, [oslo_messaging.Target(topic=self.topic)],
            [self.endpoint], executor='threading')
        self.listener.start()
        self.addCleanup(bus.delete_queues, self.topic)
        self.addCleanup(self.listener.wait)
        self.addCleanup(self.listener.stop)
        self._probe()


class TestAlertOnTheBus(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.INFO))
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.rules = os.path.join(self.tmp, 'rules.yaml')
        self.conf = bus.make_conf()
        self.listener = self.useFixture(AlertListener(self.conf))
        conf_path = os.path.join(self.tmp, 'nova.conf')
        with open(conf_path, 'w') as f:
            f.write('[DEFAULT]\ntransport_url = %s\n'
                    '[usage_ext]\nmetric_plugins = thresholds\n'
                    '[usage_ext_thresholds]\nrules_file = %s\n'
                    'notification_topics = %s\n'
                    % (bus.RABBIT_URL, self.rules, self.listener.topic))
        self.conf(['--config-file', conf_path])
        usage_conf.register_opts(self.conf)
        self.node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(0)]))
        self.plugins = manager.PluginManager(self.conf, 'compute-1')
        self.service = usage_service.UsageService(
            libvirt_usage.LibvirtUsageReader(self.node.connection),
            ledger.Ledger(state.Store(self.tmp)), 'compute-1', {},
            plugins=self.plugins)

    def start(self, rules):
        with open(self.rules, 'w') as f:
            f.write(rules)
        self.plugins.start()
        self.addCleanup(self.plugins.close)

    def cycle(self):
        self.service.poll(('cpu',))
        self.assertTrue(self.plugins.runners['thresholds'].wait_idle(30))

    def test_breach_and_clear_match_the_sample(self):
        self.start('rules:\n  - {name: busy, metric: cpu_percent, '
                   "comparison: '>=', value: 0}\n")
        self.cycle()
        self.cycle()
        (breach,) = self.listener.wait_for(1, timeout=30)
        sample = test_notifier.load_sample('instance.usage_alert')
        for key in ('event_type', 'priority', 'publisher_id'):
            self.assertEqual(sample[key], breach[key], key)
        self.assertEqual([], test_notifier.shape_mismatches(
            sample['payload'], breach['payload']))
        data = breach['payload']['nova_object.data']
        self.assertEqual((UUID0, 'busy', 'breached'),
                         (data['instance_uuid'], data['rule'],
                          data['state']))
        # Never one per cycle while it stays breached.
        self.cycle()
        with open(self.rules, 'w') as f:
            f.write('rules:\n  - {name: busy, metric: cpu_percent, '
                    "comparison: '>=', value: 100000}\n")
        self.plugins.reconfigure()
        self.cycle()
        breach, clear = self.listener.wait_for(2, timeout=30)
        self.assertEqual(('INFO', 'cleared'), (
            clear['priority'], clear['payload']['nova_object.data'][
                'state']))
        self.assertEqual([], test_notifier.shape_mismatches(
            sample['payload'], clear['payload']))
        self.assertEqual(2, len(self.listener.messages))
