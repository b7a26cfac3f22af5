"""The usage service over real QEMU guests: restarts and the counter cache.
"""

import os
import time

import fixtures
import testtools

from nova_usage_ext import ledger
from nova_usage_ext import state
from nova_usage_ext import service as usage_service
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests.functional import fixtures as qemu_fixtures


class TestGuestRestart(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(120, gentle=True))
        self.log = self.useFixture(fixtures.FakeLogger())
        self.node = self.useFixture(qemu_fixtures.QemuGuests(1))
        (self.guest,) = self.node.guests
        self.state = self.useFixture(fixtures.TempDir()).path
        self.reader = libvirt_usage.LibvirtUsageReader(
            libvirt_usage.LibvirtConnection(qemu_fixtures.URI))
        self.addCleanup(self.reader.close)

    def make_service(self):
        return usage_service.UsageService(
            self.reader, ledger.Ledger(state.Store(self.state)),
            'compute-1', {'cpu': 60, 'disks': 60, 'interfaces': 60})

    def poll(self, svc):
        svc.poll()
        return svc.latest(self.guest.uuid), svc.ledger.totals(self.guest.uuid)

    def test_restarted_guest_never_gives_negative_usage(self):
        svc = self.make_service()
        raw1, total1 = self.poll(svc)
        time.sleep(0.3)
        raw2, total2 = self.poll(svc)
        self.assertGreater(total2.cpu_time_ns, total1.cpu_time_ns)

        dom = self.node.domain(self.guest)
        dom.destroy()
        dom.create()  # a new QEMU process: every counter restarts
        raw3, total3 = self.poll(svc)
        self.assertNotEqual(raw2.generation, raw3.generation)
        self.assertLess(raw3.cpu_time_ns, raw2.cpu_time_ns)
        # The totals went on growing by what the new process counted.
        self.assertEqual(total2.cpu_time_ns + raw3.cpu_time_ns,
                         total3.cpu_time_ns)
        for name in ('read_bytes', 'read_requests'):
            self.assertGreaterEqual(
                getattr(total3.disks['vda'], name),
                getattr(total2.disks['vda'], name), name)
        # The cache started empty: the period counts from the first poll.
        period = svc.period_usage(self.guest.uuid)
        self.assertEqual(total3.cpu_time_ns - total1.cpu_time_ns,
                         period.cpu_time_ns)
        self.assertEqual(raw1.read_at, period.period_start)

    def test_totals_survive_a_nova_compute_restart_and_a_guest_restart(self):
        svc = self.make_service()
        _raw1, total1 = self.poll(svc)
        # nova-compute stops; meanwhile the guest is restarted.
        dom = self.node.domain(self.guest)
        dom.destroy()
        dom.create()
        time.sleep(0.2)
        restarted = self.make_service()
        self.assertEqual(total1.cpu_time_ns,
                         restarted.ledger.totals(self.guest.uuid).cpu_time_ns)
        raw2, total2 = self.poll(restarted)
        self.assertEqual(total1.cpu_time_ns + raw2.cpu_time_ns,
                         total2.cpu_time_ns)
