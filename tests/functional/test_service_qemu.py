"""The usage service over real QEMU guests: restarts and the usage ledger.
"""

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
        # The state started empty (the package was just deployed): the
        # guest's usage before this first read is not this package's to
        # bill, its totals start at 0.
        self.assertEqual(0, total1.cpu_time_ns)
        self.assertEqual(0, total1.disks['vda'].read_bytes)
        time.sleep(0.3)
        raw2, total2 = self.poll(svc)
        self.assertGreater(total2.cpu_time_ns, total1.cpu_time_ns)

        dom = self.node.domain(self.guest)
        dom.destroy()
        dom.create()  # a new QEMU process: every counter restarts
        raw3, total3 = self.poll(svc)
        self.assertNotEqual(raw2.generation, raw3.generation)
        # The totals went on growing by what the new process counted, all
        # of it (not its difference to the old process's last value:
        # under load the new firmware can even count more than the old
        # process had).
        self.assertGreater(raw2.cpu_time_ns, 0)
        self.assertEqual(total2.cpu_time_ns + raw3.cpu_time_ns,
                         total3.cpu_time_ns)
        for name in ('read_bytes', 'read_requests'):
            self.assertGreaterEqual(
                getattr(total3.disks['vda'], name),
                getattr(total2.disks['vda'], name), name)
        # The period counts from the first poll, across the restart.
        period = svc.period_usage(self.guest.uuid)
        self.assertEqual(total3.cpu_time_ns - total1.cpu_time_ns,
                         period.cpu_time_ns)
        self.assertEqual(raw1.read_at, period.period_start)

    def test_totals_survive_a_nova_compute_restart_and_a_guest_restart(self):
        svc = self.make_service()
        self.poll(svc)
        time.sleep(0.3)
        _raw1, total1 = self.poll(svc)
        self.assertGreater(total1.cpu_time_ns, 0)
        # nova-compute stops; meanwhile the guest is restarted.
        svc.stop()
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
        # No exists yet: the period holds all of it, nothing twice.
        self.assertEqual(total2.cpu_time_ns, restarted.period_usage(
            self.guest.uuid).cpu_time_ns)

    def test_a_crash_right_after_an_exists_never_bills_its_period_again(
            self):
        svc = self.make_service()
        self.poll(svc)
        time.sleep(0.3)
        self.poll(svc)
        # nova's audit periods end on whole seconds.
        ending = svc.latest(self.guest.uuid).read_at.replace(microsecond=0)

        def build(usage_wire):
            return {}, {'event_type': 'compute.instance.exists',
                        'payload': {'usage': usage_wire}}, 'INFO'

        first, _seq = svc.close_audit_period(self.guest.uuid, ending, build)
        billed = first['nova_object.data']['period']['nova_object.data']
        self.assertGreater(billed['cpu_time_ns'], 0)
        # nova-compute dies at once: no poll, no stop, no save after the
        # exists was queued.
        restarted = self.make_service()
        time.sleep(0.3)
        _raw, total = self.poll(restarted)
        period = restarted.period_usage(self.guest.uuid)
        self.assertEqual(ending, period.period_start)
        # Only what the guest used after the exists: its totals less what
        # that exists billed (the first poll's baseline was 0).
        self.assertEqual(total.cpu_time_ns - billed['cpu_time_ns'],
                         period.cpu_time_ns)
        # The exists itself waits in the outbox for delivery, once.
        (entry,) = restarted.ledger.store.pending()
        self.assertEqual(first, entry.message['payload']['usage'])
