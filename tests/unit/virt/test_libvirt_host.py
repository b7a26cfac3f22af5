"""The host's own figures (the plugins' on_host) from libvirt's test
driver."""

import fixtures
import testtools

from nova_usage_ext.virt import base
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_calls
from tests import libvirt_node


class TestHostFigures(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.FakeLogger())
        self.node = self.useFixture(libvirt_node.TestNode(
            [libvirt_node.nova_test_domain(0)]))
        self.counting = libvirt_calls.CountingConnection(self.node.conn)
        self.reader = libvirt_usage.LibvirtUsageReader(
            libvirt_calls.StaticConnection(self.counting))

    def test_figures_are_the_nodes_own(self):
        figures = self.reader.read_host_figures()
        info = self.node.conn.getInfo()
        self.assertEqual(info[2], figures.cpus)
        self.assertEqual(info[1] * 1024, figures.memory_total_kb)
        self.assertEqual(self.node.conn.getFreeMemory() // 1024,
                         figures.memory_free_kb)
        stats = self.node.conn.getCPUStats(-1)
        self.assertLessEqual(figures.cpu_busy_ns,
                             stats['user'] + stats['kernel'])
        self.assertGreater(figures.cpu_busy_ns, 0)
        self.assertGreater(figures.cpu_idle_ns, 0)
        self.assertIsNone(figures.instances)

    def test_one_call_per_kind_and_no_domain_call(self):
        self.reader.read_host_figures()
        self.assertEqual({'getInfo': 1, 'getCPUStats': 1,
                          'getFreeMemory': 1}, dict(self.counting.calls))

    def test_lost_connection_raises_ours(self):
        self.node.conn.close()
        exc = self.assertRaises(base.HypervisorUnavailable,
                                self.reader.read_host_figures)
        self.assertIn('read the host figures', str(exc))
