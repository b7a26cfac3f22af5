"""The statsd plugin: what it puts in its UDP packets, read by a plain UDP
socket (a real statsd server reads them in tests/functional)."""

import logging
import os
import socket

import fixtures
import testtools
from oslo_config import cfg

from nova_usage_ext import ledger
from nova_usage_ext import service as usage_service
from nova_usage_ext import state
from nova_usage_ext.plugins import manager
from nova_usage_ext.plugins import statsd as statsd_plugin
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_node

UUID0 = '00000000-0000-0000-0000-000000000001'


class UdpSink(fixtures.Fixture):
    """A UDP socket on a free port; ``lines()`` the statsd lines it got."""

    def _setUp(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(self.sock.close)
        self.sock.bind(('127.0.0.1', 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]

    def lines(self):
        got = []
        while True:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return got
            got.extend(data.decode().splitlines())


def parse(lines):
    """name -> [(value, type)]"""
    out = {}
    for line in lines:
        name, rest = line.split(':', 1)
        value, kind = rest.split('|')[:2]
        out.setdefault(name, []).append((float(value), kind))
    return out


class TestStatsd(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.INFO))
        self.useFixture(fixtures.MonkeyPatch(
            'nova_usage_ext.conf._reported', set()))
        self.sink = self.useFixture(UdpSink())
        self.node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(0)]))
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.conf_path = os.path.join(self.tmp, 'nova.conf')
        self.write_conf('')
        self.conf = cfg.ConfigOpts()
        self.conf(['--config-file', self.conf_path])
        self.plugins = manager.PluginManager(self.conf, 'compute-1')
        self.svc = usage_service.UsageService(
            libvirt_usage.LibvirtUsageReader(self.node.connection),
            ledger.Ledger(state.Store(self.tmp)), 'compute-1', {},
            plugins=self.plugins)
        self.plugins.start()
        self.addCleanup(self.plugins.close)

    def write_conf(self, extra):
        with open(self.conf_path, 'w') as f:
            f.write('[usage_ext]\nmetric_plugins = statsd\n'
                    '[usage_ext_statsd]\nport = %d\n%s'
                    % (self.sink.port, extra))

    def cycle(self):
        self.svc.poll()
        self.assertTrue(self.plugins.wait_idle(10))

    def test_gauges_and_counters_of_a_cycle(self):
        self.cycle()
        first = parse(self.sink.lines())
        # The first cycle has no rates: host gauges only.
        self.assertEqual({'nova.compute-1.host.memory_percent',
                          'nova.compute-1.host.instances',
                          'nova.compute-1.host.cpus'}, set(first))
        self.assertEqual([(1.0, 'g')],
                         first['nova.compute-1.host.instances'])
        before = self.svc.ledger.totals(UUID0)
        self.cycle()
        after = self.svc.ledger.totals(UUID0)
        got = parse(self.sink.lines())
        base_name = 'nova.compute-1.%s.' % UUID0
        used = after.vcpu_time_ns - before.vcpu_time_ns
        self.assertEqual([(float(used), 'c')],
                         got[base_name + 'cpu.vcpu_time_ns'])
        (percent, kind), = got[base_name + 'cpu.percent']
        self.assertEqual('g', kind)
        self.assertGreater(percent, 0)
        read = (after.disks['vda'].read_bytes -
                before.disks['vda'].read_bytes)
        self.assertEqual([(float(read), 'c')],
                         got[base_name + 'disk.vda.read_bytes'])
        self.assertIn(base_name + 'interface.tap00000000-00.rx_bytes_per_s',
                      got)

    def test_template_and_a_bad_one(self):
        self.write_conf('name_template = {prefix}.{project}.{flavor}.'
                        '{metric}\nprefix = usage\n')
        self.conf.mutate_config_files()
        self.cycle()
        self.cycle()
        names = set(parse(self.sink.lines()))
        self.assertIn('usage.%s.m1_tiny.cpu.percent'
                      % self.svc.latest(UUID0).project_id, names)
        self.write_conf('name_template = {prefix}.{when}.{metric}\n')
        self.conf.mutate_config_files()
        self.cycle()
        self.cycle()
        names = set(parse(self.sink.lines()))
        self.assertIn('nova.compute-1.%s.cpu.percent' % UUID0, names)
        self.assertEqual(1, self.log.output.count(
            'name_template = {prefix}.{when}.{metric}: fields'))

    def test_names_never_carry_statsd_separators(self):
        self.assertEqual('a_b_c_d_e', statsd_plugin.safe('a.b:c|d@e'))
