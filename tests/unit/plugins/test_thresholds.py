"""The thresholds plugin: rules, hysteresis, scope, alerts, live reload.
Fed by a real service over libvirt's test driver; the alerts go through
oslo.messaging's own test notification driver."""

import datetime
import logging
import os
import time

import fixtures
import testtools
from oslo_config import cfg
from oslo_messaging.notify import _impl_test

from nova_usage_ext import ledger
from nova_usage_ext import service as usage_service
from nova_usage_ext import state
from nova_usage_ext.plugins import base as plugin_base
from nova_usage_ext.plugins import manager
from nova_usage_ext.plugins import thresholds
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_node

UUID0 = '00000000-0000-0000-0000-000000000001'
UUID1 = '00000000-0000-0000-0000-000000000002'
PROJECT0 = 'a' * 32
UTC = datetime.timezone.utc


class ThresholdsTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.INFO))
        self.useFixture(fixtures.MonkeyPatch(
            'nova_usage_ext.conf._reported', set()))
        self.node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(0, project_id=PROJECT0),
            libvirt_node.nova_test_domain(1)]))
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.rules_path = os.path.join(self.tmp, 'rules.yaml')
        self.conf_path = os.path.join(self.tmp, 'nova.conf')
        with open(self.conf_path, 'w') as f:
            f.write('[DEFAULT]\ntransport_url = fake:/\n'
                    '[usage_ext]\nmetric_plugins = thresholds\n'
                    'notification_drivers = test\n'
                    '[usage_ext_thresholds]\nrules_file = %s\n'
                    % self.rules_path)
        _impl_test.reset()
        self.addCleanup(_impl_test.reset)
        self.conf = cfg.ConfigOpts()

    def start(self, rules):
        self.write_rules(rules)
        self.conf(['--config-file', self.conf_path])
        self.plugins = manager.PluginManager(self.conf, 'compute-1')
        self.svc = usage_service.UsageService(
            libvirt_usage.LibvirtUsageReader(self.node.connection),
            ledger.Ledger(state.Store(self.tmp)), 'compute-1', {'cpu': 60},
            plugins=self.plugins)
        self.plugins.start()
        self.addCleanup(self.plugins.close)
        return self.plugins.runners['thresholds'].plugin

    def write_rules(self, text):
        # A new mtime even within the file system's clock tick.
        with open(self.rules_path, 'w') as f:
            f.write(text)
        self._writes = getattr(self, '_writes', 0) + 1
        stamp = time.time() + self._writes
        os.utime(self.rules_path, (stamp, stamp))

    def cycle(self, kinds=('cpu',)):
        self.svc.poll(kinds)
        self.assertTrue(self.plugins.wait_idle(10))

    def alerts(self):
        return [(priority, message['event_type'], message['payload'])
                for _ctxt, message, priority, _retry
                in _impl_test.NOTIFICATIONS]


CPU_RULE = """
rules:
  - name: busy
    metric: cpu_percent
    comparison: '>='
    value: 0
    fire_after: 2
    clear_after: 2
    scope: {project: %s}
""" % PROJECT0


class TestAlerts(ThresholdsTestCase):

    def test_fires_once_after_n_cycles_and_clears_once(self):
        self.start(CPU_RULE)
        self.cycle()  # no rate yet
        self.cycle()  # breached once
        self.assertEqual([], self.alerts())
        self.cycle()  # breached twice: fires
        self.cycle()
        self.cycle()
        (alert,) = self.alerts()
        priority, event_type, payload = alert
        self.assertEqual(('WARN', 'instance.usage_alert'),
                         (priority, event_type))
        data = payload['nova_object.data']
        self.assertEqual('UsageAlertPayload', payload['nova_object.name'])
        self.assertEqual('nova_usage_ext', payload['nova_object.namespace'])
        self.assertEqual(UUID0, data['instance_uuid'])
        self.assertEqual(PROJECT0, data['project_id'])
        self.assertEqual(('busy', 'breached', 2, '>=', 0.0, 'compute-1'),
                         (data['rule'], data['state'], data['cycles'],
                          data['comparison'], data['threshold'],
                          data['host']))
        self.assertGreater(data['value'], 0)
        self.assertEqual('m1.tiny', data['flavor_name'])
        self.assertIsNone(data['device'])
        # The threshold moves above anything the guest can use: calm
        # for two cycles, then one clear.
        self.write_rules(CPU_RULE.replace("value: 0", "value: 1000"))
        self.cycle()
        self.assertEqual(1, len(self.alerts()))
        self.cycle()
        self.cycle()
        self.assertEqual(2, len(self.alerts()))
        priority, event_type, payload = self.alerts()[1]
        self.assertEqual(('INFO', 'instance.usage_alert'),
                         (priority, event_type))
        self.assertEqual(('cleared', 2, 1000.0), (
            payload['nova_object.data']['state'],
            payload['nova_object.data']['cycles'],
            payload['nova_object.data']['threshold']))

    def test_per_interface_network_rule(self):
        self.start("""
rules:
  - name: nic
    metric: network_incoming_bits_per_s
    comparison: '>='
    value: 0
    per: device
""")
        self.cycle(('interfaces',))
        self.cycle(('interfaces',))
        devices = sorted((a[2]['nova_object.data']['instance_uuid'],
                          a[2]['nova_object.data']['device'])
                         for a in self.alerts())
        self.assertEqual([(UUID0, 'tap00000000-00'),
                          (UUID1, 'tap00000001-00')], devices)

    def test_host_rule(self):
        self.start("""
rules:
  - name: host-memory
    metric: host_memory_percent
    value: 1
""")
        self.cycle()
        ((priority, event_type, payload),) = self.alerts()
        self.assertEqual('compute.usage_alert', event_type)
        data = payload['nova_object.data']
        self.assertIsNone(data['instance_uuid'])
        self.assertEqual('%', data['unit'])
        host = self.node.conn
        used = 100.0 * (1 - host.getFreeMemory() / 1024 /
                        (host.getInfo()[1] * 1024))
        self.assertAlmostEqual(used, data['value'], places=3)


class TestRecords(ThresholdsTestCase):
    """Rules over records as the plugins get them (memory figures need a
    guest balloon driver, which the test driver's guests lack)."""

    def ram(self, uuid, flavor, used, available):
        instance = plugin_base.Instance(
            uuid=uuid, name='instance-1', display_name='vm', project_id='p',
            user_id='u', flavor_name=flavor, vcpus=1, memory_mb=64,
            state='running')
        return plugin_base.RamRecord(
            instance, datetime.datetime(2026, 12, 1, tzinfo=UTC), 64, used,
            available, 100.0 * used / available)

    def test_memory_rule_scoped_to_a_flavor(self):
        plugin = self.start("""
rules:
  - name: ram
    metric: memory_percent
    value: 80
    scope: {flavor: m1.big}
""")
        plugin.on_ram([self.ram(UUID0, 'm1.big', 60, 64),
                       self.ram(UUID1, 'm1.tiny', 63, 64)])
        ((priority, event_type, payload),) = self.alerts()
        data = payload['nova_object.data']
        self.assertEqual(('WARN', UUID0, 'm1.big', '%'), (
            priority, data['instance_uuid'], data['flavor_name'],
            data['unit']))
        self.assertAlmostEqual(93.75, data['value'])
        plugin.on_ram([self.ram(UUID0, 'm1.big', 10, 64)])
        self.assertEqual('cleared',
                         self.alerts()[1][2]['nova_object.data']['state'])


class TestRulesFile(ThresholdsTestCase):

    def test_bad_files_keep_the_rules_in_force_with_one_line(self):
        plugin = self.start(CPU_RULE)
        self.assertEqual(['busy'], [r.name for r in plugin.rules])
        for text, problem in [
                ('rules: [', 'not valid YAML'),
                ('rules:\n  - {name: x, metric: cpu_load, value: 1}',
                 "rule 'x': unknown metric 'cpu_load'"),
                ('rules:\n  - {name: x, metric: cpu_percent, value: -1}',
                 "rule 'x': value -1 is negative"),
                ('rules:\n  - {name: x, metric: cpu_percent, value: 1,'
                 ' fire_after: 0}', "rule 'x': fire_after must be"),
                ('rules:\n  - {name: x, metric: cpu_percent, value: 1,'
                 ' per: device}', 'cpu_percent is not measured per device'),
                ('rules:\n  - {name: x, metric: cpu_percent, value: 1,'
                 ' scope: {zone: a}}', "unknown scope 'zone'"),
                ('rules:\n  - {name: x, metric: host_cpu_percent, value: 1,'
                 ' scope: {project: a}}', 'a host metric takes no scope'),
                ('rules:\n  - {name: x, metric: cpu_percent, value: 1}\n'
                 '  - {name: x, metric: cpu_percent, value: 2}',
                 "rule 'x' is defined twice")]:
            self.write_rules(text)
            self.cycle()
            self.assertEqual(['busy'], [r.name for r in plugin.rules], text)
            lines = [line for line in self.log.output.splitlines()
                     if problem in line]
            self.assertEqual(1, len(lines), (problem, self.log.output))
            self.assertIn(self.rules_path, lines[0])
            self.assertIn('the 1 rules in force stay', lines[0])
        self.write_rules(CPU_RULE.replace('busy', 'busier'))
        self.cycle()
        self.assertEqual(['busier'], [r.name for r in plugin.rules])

    def test_sighup_rereads_the_file_and_the_path(self):
        plugin = self.start(CPU_RULE)
        other = os.path.join(self.tmp, 'other.yaml')
        with open(other, 'w') as f:
            f.write('rules: []\n')
        with open(self.conf_path, 'a') as f:
            f.write('rules_file = %s\n' % other)
        self.conf.mutate_config_files()
        self.assertEqual((), plugin.rules)

    def test_numbers_as_operators_write_them(self):
        rules = thresholds.parse_rules(
            'rules:\n  - {name: a, metric: network_outgoing_bits_per_s, '
            'value: 5e9}\n  - {name: b, metric: cpu_percent, value: 90}\n')
        self.assertEqual([5e9, 90.0], [rule.value for rule in rules])
        self.assertRaises(thresholds.RulesError, thresholds.parse_rules,
                          'rules:\n  - {name: a, metric: cpu_percent, '
                          'value: high}\n')

    def test_a_missing_file_is_an_error_and_no_file_no_rules(self):
        plugin = self.start(CPU_RULE)
        os.unlink(self.rules_path)
        self.cycle()
        self.assertEqual(1, len(plugin.rules))
        self.assertIn('No such file or directory; the 1 rules in force '
                      'stay', self.log.output)
        self.conf.set_override('rules_file', None, 'usage_ext_thresholds')
        plugin.reconfigure()
        self.assertEqual((), plugin.rules)


class TestEntryPoint(testtools.TestCase):

    def test_loaded_by_name_through_stevedore(self):
        self.assertIs(thresholds.ThresholdsPlugin,
                      manager.load_class('thresholds'))
