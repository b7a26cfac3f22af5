"""The prometheus plugin's /metrics, scraped over HTTP (a real Prometheus
server scrapes it in tests/functional)."""

import hashlib
import logging
import os
import urllib.error
import urllib.request

import fixtures
import testtools
from oslo_config import cfg
from prometheus_client import parser

from nova_usage_ext import ledger
from nova_usage_ext import service as usage_service
from nova_usage_ext import state
from nova_usage_ext.plugins import manager
from nova_usage_ext.virt import base
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_node

UUID0 = '00000000-0000-0000-0000-000000000001'
PROJECT = 'b' * 32


def scrape(port):
    with urllib.request.urlopen('http://127.0.0.1:%d/metrics' % port,
                                timeout=10) as response:
        text = response.read().decode()
    return {family.name: family for family
            in parser.text_string_to_metric_families(text)}


def series(families, name):
    return {sample.labels.get('resource'): sample
            for sample in families[name].samples}


class TestPrometheus(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.INFO))
        self.useFixture(fixtures.MonkeyPatch(
            'nova_usage_ext.conf._reported', set()))
        self.node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(0, project_id=PROJECT,
                                          display_name='web-1')]))
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.conf_path = os.path.join(self.tmp, 'nova.conf')
        self.write_conf(0)
        self.conf = cfg.ConfigOpts()
        self.conf(['--config-file', self.conf_path])
        self.plugins = manager.PluginManager(self.conf, 'compute-1')
        self.svc = usage_service.UsageService(
            libvirt_usage.LibvirtUsageReader(self.node.connection),
            ledger.Ledger(state.Store(self.tmp)), 'compute-1', {},
            plugins=self.plugins)
        self.plugins.start()
        self.addCleanup(self.plugins.close)
        self.plugin = self.plugins.runners['prometheus'].plugin

    def write_conf(self, port):
        with open(self.conf_path, 'w') as f:
            f.write('[usage_ext]\nmetric_plugins = prometheus\n'
                    '[usage_ext_prometheus]\nport = %d\n' % port)

    def cycle(self):
        self.svc.poll()
        self.assertTrue(self.plugins.wait_idle(10))

    def test_ceilometer_names_labels_and_the_cycles_values(self):
        self.cycle()
        families = scrape(self.plugin.port)
        usage = self.svc.latest(UUID0)
        cpu = series(families, 'ceilometer_cpu')[UUID0]
        self.assertEqual(float(usage.vcpu_time_ns), cpu.value)
        self.assertEqual({
            'cpu': UUID0, 'publisher': 'ceilometer', 'type': 'cpu',
            'counter': 'cpu', 'project': PROJECT, 'user': usage.user_id,
            'unit': 'ns', 'resource': UUID0,
            'vm_instance': hashlib.sha224(
                (PROJECT + 'compute-1').encode()).hexdigest(),
            'resource_name': 'web-1:instance-00000000',
            'server_group': 'none', 'flavor_name': 'm1.tiny'}, cpu.labels)
        disk = series(families, 'ceilometer_disk_device_read_bytes')[
            UUID0 + '-vda']
        self.assertEqual(float(usage.disk('vda').read_bytes), disk.value)
        self.assertEqual(('read', 'device', 'B'), (
            disk.labels['disk'], disk.labels['type'], disk.labels['unit']))
        nic = series(families, 'ceilometer_network_incoming_bytes')[
            'instance-00000000-%s-tap00000000-00' % UUID0]
        self.assertEqual(float(usage.interfaces[0].rx_bytes), nic.value)
        self.assertEqual(('bytes', 'incoming'), (nic.labels['network'],
                                                 nic.labels['type']))
        health = families['nova_usage_ext_instances_read'].samples[0]
        self.assertEqual(1, health.value)
        self.assertEqual(1, families[
            'nova_usage_ext_last_read_complete'].samples[0].value)
        self.assertEqual(0, families[
            'nova_usage_ext_instances_skipped'].samples[0].value)
        self.assertEqual(0, families[
            'nova_usage_ext_outbox_messages'].samples[0].value)
        self.assertGreaterEqual(families[
            'nova_usage_ext_cycle_duration_seconds'].samples[0].value, 0)

    def test_instances_the_read_skipped_are_counted(self):
        real = self.svc.reader.read_host

        def skipping(*args):
            reading = real(*args)
            return base.HostReading(reading.usages[1:], False, 1)
        self.useFixture(fixtures.MockPatchObject(
            self.svc.reader, 'read_host', side_effect=skipping))
        self.cycle()
        families = scrape(self.plugin.port)
        self.assertEqual(1, families[
            'nova_usage_ext_instances_skipped'].samples[0].value)
        self.assertEqual(0, families[
            'nova_usage_ext_last_read_complete'].samples[0].value)

    def test_an_instance_stopped_or_gone_has_no_series(self):
        self.cycle()
        self.assertIn(UUID0, series(scrape(self.plugin.port),
                                    'ceilometer_cpu'))
        dom = self.node.conn.lookupByUUIDString(UUID0)
        dom.destroy()
        self.cycle()
        # Shut off: no CPU time, no series (ceilometer skips it too).
        self.assertEqual({}, series(scrape(self.plugin.port),
                                    'ceilometer_cpu'))
        dom.undefine()
        self.cycle()
        families = scrape(self.plugin.port)
        self.assertEqual({}, series(families,
                                    'ceilometer_disk_device_read_bytes'))
        self.assertEqual(0, families[
            'nova_usage_ext_instances_read'].samples[0].value)

    def test_a_new_port_on_sighup(self):
        old = self.plugin.port
        self.write_conf(0)
        with open(self.conf_path, 'a') as f:
            f.write('listen_address = 127.0.0.2\n')
        self.conf.mutate_config_files()
        self.assertNotEqual(old, self.plugin.port)
        self.assertRaises(urllib.error.URLError, scrape, old)
        with urllib.request.urlopen('http://127.0.0.2:%d/metrics'
                                    % self.plugin.port, timeout=10) as r:
            self.assertEqual(200, r.status)
