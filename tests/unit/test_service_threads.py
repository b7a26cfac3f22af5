"""A stopped usage service leaves no thread of its own behind (nova may
stop a driver and make another in the same process; tests do)."""

import threading
import time

import fixtures
import testtools

from nova_usage_ext import ledger
from nova_usage_ext import service as usage_service
from nova_usage_ext import state
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_calls
from tests import libvirt_node


def _package_threads():
    return {t for t in threading.enumerate()
            if t.name.startswith('nova-usage-ext')}


class TestStoppedServiceThreads(testtools.TestCase):

    def test_read_workers_and_delivery_end_on_stop(self):
        self.useFixture(fixtures.FakeLogger())
        node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(i) for i in range(2)]))
        before = _package_threads()
        service = usage_service.UsageService(
            libvirt_usage.LibvirtUsageReader(
                libvirt_calls.StaticConnection(node.conn)),
            ledger.Ledger(state.Store(None)), 'compute-1', {})
        service.start()
        uuids = [d.UUIDString() for d in node.conn.listAllDomains()]
        # Two reads at once: both workers start.
        reads = [threading.Thread(target=service.read_bounded,
                                  args=(uuid, 5)) for uuid in uuids]
        for read in reads:
            read.start()
        for read in reads:
            read.join()
        started = _package_threads() - before
        self.assertEqual({'nova-usage-ext-delivery', 'nova-usage-ext-read'},
                         {t.name for t in started})
        service.stop()
        deadline = time.monotonic() + 5
        while (any(t.is_alive() for t in started) and
               time.monotonic() < deadline):
            time.sleep(0.01)
        self.assertEqual([], [t.name for t in started if t.is_alive()])
