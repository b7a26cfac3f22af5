"""The Hyper-V reader: os-win's real utils over a fake WMI connection."""

import datetime
import logging
import subprocess
import sys
import types

import fixtures
import testtools

from nova_usage_ext.virt import base
from nova_usage_ext.virt import hyperv
from tests.unit.virt import fake_hyperv

UUID0 = '00000000-0000-0000-0000-000000000001'
UUID1 = '00000000-0000-0000-0000-000000000002'
VOLUME = '8e1f7a2b-3c4d-4e5f-9a6b-7c8d9e0f1a2b'
MiB = 1024 * 1024
INSTANCES = r'C:\OpenStack\Instances'


def instance(uuid, name='instance-00000000'):
    return types.SimpleNamespace(uuid=uuid, name=name)


class HyperVTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.DEBUG))
        self.host = self.useFixture(fake_hyperv.FakeHyperVFixture()).host

    def add_full_vm(self, **kwargs):
        """instance-00000000: 2 disks (one an SMB volume), a config drive
        DVD, 2 NICs."""
        args = dict(
            vcpus=2, cpu_mhz=1300, window_s=3600,
            disks=[(INSTANCES + r'\instance-00000000\root.vhdx', 10, 5),
                   (r'\\smb\volumes\volume-%s.vhdx' % VOLUME, 3, 2),
                   (INSTANCES + r'\instance-00000000\configdrive.iso', 0,
                    0)],
            nics=[('port-a', 'FA163E000001', 100, 20),
                  ('port-b', 'FA163E000002', 7, 1)])
        args.update(kwargs)
        return self.host.add_vm('instance-00000000', [UUID0], **args)

    def reader(self, **kwargs):
        return hyperv.HyperVUsageReader(**kwargs)

    def calls_for(self, element):
        return [metric for name, metric in self.host.control_calls
                if name == element]


class TestCounters(HyperVTestCase):

    def test_two_disks_two_nics(self):
        self.add_full_vm()
        (usage,) = self.reader().read_all()

        self.assertEqual(UUID0, usage.uuid)
        self.assertEqual('instance-00000000', usage.name)
        self.assertEqual(base.RUNNING, usage.state)
        self.assertEqual(2, usage.vcpus)
        # 1300 MHz average over one hour on a 2600 MHz processor.
        self.assertEqual(1800 * 10 ** 9, usage.cpu_time_ns)

        self.assertEqual(['root.vhdx', 'volume-%s.vhdx' % VOLUME],
                         [d.device for d in usage.disks])
        root = usage.disk('root.vhdx')
        self.assertEqual((10 * MiB, 5 * MiB),
                         (root.read_bytes, root.write_bytes))
        self.assertIsNone(root.volume_id)
        volume = usage.disk('volume-%s.vhdx' % VOLUME)
        self.assertEqual((3 * MiB, 2 * MiB),
                         (volume.read_bytes, volume.write_bytes))
        self.assertEqual(VOLUME, volume.volume_id)
        for disk in usage.disks:
            # Hyper-V counts no requests nor errors: absent, never 0.
            self.assertIsNone(disk.read_requests)
            self.assertIsNone(disk.write_requests)
            self.assertIsNone(disk.errors)

        self.assertEqual(['port-a', 'port-b'],
                         [i.name for i in usage.interfaces])
        port_a = usage.interface('fa:16:3e:00:00:01')
        # os-win sums the IPv4 and IPv6 meter ACLs of each direction.
        self.assertEqual((100 * MiB, 20 * MiB),
                         (port_a.rx_bytes, port_a.tx_bytes))
        self.assertEqual('fa:16:3e:00:00:02', usage.interface('port-b').mac)
        for iface in usage.interfaces:
            for attr in ('rx_packets', 'rx_errors', 'rx_drops',
                         'tx_packets', 'tx_errors', 'tx_drops'):
                self.assertIsNone(getattr(iface, attr), attr)

    def test_counters_follow_the_host(self):
        vm = self.add_full_vm()
        reader = self.reader()
        reader.read_all()
        self.host.advance(3600)
        vm.cpu_mhz = 650
        vm.disks[INSTANCES + r'\instance-00000000\root.vhdx'].counters[
            fake_hyperv.DISK_READ] = 12
        (usage,) = reader.read_all()
        # 650 MHz over two hours: the same 1800 s of CPU.
        self.assertEqual(1800 * 10 ** 9, usage.cpu_time_ns)
        self.assertEqual(12 * MiB, usage.disk('root.vhdx').read_bytes)

    def test_rounding_never_moves_cpu_time_backwards(self):
        vm = self.add_full_vm()
        reader = self.reader()
        first = reader.read_all()[0].cpu_time_ns
        # One second later Hyper-V's whole-MHz average rounds down.
        self.host.advance(1)
        vm.cpu_mhz = 1299
        self.assertEqual(first, reader.read_all()[0].cpu_time_ns)

    def test_metering_reset_starts_a_new_window(self):
        vm = self.add_full_vm()
        reader = self.reader()
        reader.read_all()
        self.host.advance(600)
        # Reset-VMResourceMetering a minute ago.
        vm.metering_since = self.host.now - datetime.timedelta(seconds=60)
        (usage,) = reader.read_all()
        self.assertEqual(1300 * 60 * 10 ** 9 // 2600, usage.cpu_time_ns)

    def test_no_processor_clock_means_no_cpu_time(self):
        for cpu in self.host.instances('Win32_Processor'):
            self.host.objects.remove(cpu)
        self.add_full_vm()
        reader = self.reader()
        (usage,) = reader.read_all()
        self.assertIsNone(usage.cpu_time_ns)
        self.assertEqual(2, len(usage.disks))
        reader.read_all()
        self.assertEqual(1, self.log.output.count('processor clock'))


class TestNovaInstances(HyperVTestCase):

    def test_only_vms_with_an_instance_uuid_note(self):
        self.add_full_vm()
        self.host.add_vm('instance-00000001', [UUID1.upper(), 'other note'])
        self.host.add_vm('build-server', ['build server, do not touch'])
        self.host.add_vm('scratch', [])
        self.host.add_vm('unnoted', None)
        reader = self.reader()
        for _ in range(2):
            usages = reader.read_all()
            self.assertEqual([UUID0, UUID1], [u.uuid for u in usages])
        self.assertEqual(['instance-00000000', 'instance-00000001'],
                         [u.name for u in usages])
        self.assertEqual(1, self.log.output.count(
            'VM build-server has no instance uuid'))
        # Neither metering nor ports are touched on VMs nova did not make.
        self.assertEqual([], self.calls_for('build-server'))

    def test_owner_and_flavor_are_not_on_hyperv(self):
        self.add_full_vm()
        (usage,) = self.reader().read_all()
        self.assertIsNone(usage.project_id)
        self.assertIsNone(usage.user_id)
        self.assertIsNone(usage.flavor)


class TestEnablingMetrics(HyperVTestCase):

    def test_vm_without_metrics_is_enabled_once(self):
        self.add_full_vm(metering=False)
        reader = self.reader()

        (usage,) = reader.read_all()
        # Nothing was collected yet: counters absent this cycle.
        self.assertIsNone(usage.cpu_time_ns)
        self.assertEqual([], usage.disks)
        self.assertEqual([], usage.interfaces)
        self.assertEqual([fake_hyperv.CPU, fake_hyperv.MEMORY],
                         self.calls_for('instance-00000000'))
        self.assertEqual([None, None], self.calls_for('Hard Disk Image'))
        self.assertIn('Hyper-V metrics collection is off for VM '
                      'instance-00000000 (instance %s)' % UUID0,
                      self.log.output)

        self.host.advance(60)
        self.host.vms['instance-00000000'].cpu_mhz = 2600
        for _ in range(3):
            (usage,) = reader.read_all()
        self.assertEqual(60 * 10 ** 9, usage.cpu_time_ns)
        self.assertEqual(10 * MiB, usage.disk('root.vhdx').read_bytes)
        self.assertEqual(100 * MiB, usage.interface('port-a').rx_bytes)
        # Once: the VM, its two disks, each port.
        self.assertEqual(2, len(self.calls_for('instance-00000000')))
        self.assertEqual(2, len(self.calls_for('Hard Disk Image')))
        self.assertEqual([fake_hyperv.NET_IN, fake_hyperv.NET_OUT],
                         self.calls_for('port-a'))
        self.assertEqual(1, self.log.output.count('metrics collection is '
                                                  'off'))

    def test_ports_once_per_power_on(self):
        # Hyper-V resets port metering when a VM starts, and os-win cannot
        # tell whether it is on: each port is enabled once per power-on.
        self.add_full_vm()
        reader = self.reader()
        for _ in range(3):
            reader.read_all()
        self.assertEqual(2, len(self.calls_for('port-a')))
        self.assertEqual([], self.calls_for('instance-00000000'))

        self.host.stop('instance-00000000')
        (usage,) = reader.read_all()
        self.assertEqual(base.SHUTDOWN, usage.state)
        self.host.start('instance-00000000')
        reader.read_all()  # CPU metering went off with the power: enabled
        reader.read_all()
        self.assertEqual(2, len(self.calls_for('instance-00000000')))
        self.assertEqual(4, len(self.calls_for('port-a')))

    def test_restart_between_two_reads_is_noticed_by_the_uptime(self):
        self.add_full_vm()
        reader = self.reader()
        reader.read_all()
        self.host.stop('instance-00000000')
        self.host.start('instance-00000000')
        reader.read_all()
        reader.read_all()
        self.assertEqual(4, len(self.calls_for('port-a')))
        self.assertEqual(2, len(self.calls_for('instance-00000000')))

    def test_hot_plugged_nic_is_enabled(self):
        vm = self.add_full_vm()
        reader = self.reader()
        reader.read_all()
        vm.add_nic('port-c', 'FA163E000003', 1, 1)
        reader.read_all()
        reader.read_all()
        self.assertEqual(2, len(self.calls_for('port-c')))

    def test_enable_failure_is_logged_and_not_retried(self):
        self.add_full_vm(metering=False)
        self.useFixture(fixtures.MockPatchObject(
            self.host, 'control_metrics', return_value=(32775,)))
        reader = self.reader()
        for _ in range(2):
            reading = reader.read_host()
            (usage,) = reading.usages
            self.assertIsNone(usage.cpu_time_ns)
            self.assertEqual(frozenset(), usage.kinds)
            self.assertTrue(reading.complete)
        self.assertEqual(1, self.log.output.count(
            'Cannot enable metrics collection for VM instance-00000000'))

    def test_can_be_turned_off(self):
        self.add_full_vm(metering=False)
        (usage,) = self.reader(enable_metrics=False).read_all()
        self.assertIsNone(usage.cpu_time_ns)
        self.assertEqual([], self.host.control_calls)

    def test_read_instance_never_enables(self):
        self.add_full_vm(metering=False)
        usage = self.reader().read_instance(UUID0)
        self.assertIsNone(usage.cpu_time_ns)
        self.assertEqual([], self.host.control_calls)


class TestStatesAndFailures(HyperVTestCase):

    def test_states(self):
        self.add_full_vm()
        for wmi_state, state, has_counters in (
                (fake_hyperv.DISABLED, base.SHUTDOWN, False),
                (fake_hyperv.SAVED, base.SUSPENDED, False),
                (fake_hyperv.PAUSED, base.PAUSED, True),
                (fake_hyperv.ENABLED, base.RUNNING, True)):
            self.host.vms['instance-00000000'].state = wmi_state
            (usage,) = self.reader().read_all()
            self.assertEqual(state, usage.state)
            self.assertEqual(has_counters, usage.cpu_time_ns is not None)
            self.assertEqual(has_counters, bool(usage.disks))

    def test_vm_vanishing_between_listing_and_reading(self):
        self.add_full_vm()
        self.host.add_vm('instance-00000001', [UUID1])
        reader = self.reader()
        vmutils = reader._utils()[0]
        real = vmutils.list_instance_notes

        def list_then_delete():
            listed = real()
            self.host.remove_vm('instance-00000001')
            return listed

        self.useFixture(fixtures.MockPatchObject(
            vmutils, 'list_instance_notes', side_effect=list_then_delete))
        reading = reader.read_host()
        self.assertEqual([UUID0], [u.uuid for u in reading.usages])
        self.assertTrue(reading.complete)
        self.assertIn('VM instance-00000001 vanished', self.log.output)

    def test_vm_vanishing_mid_read(self):
        self.add_full_vm()
        reader = self.reader()
        metricsutils = reader._utils()[1]

        def gone(name):
            self.host.remove_vm(name)
            raise hyperv.os_win_exc.x_wmi('SWbemObjectEx: Not found')

        self.useFixture(fixtures.MockPatchObject(
            metricsutils, 'get_disk_metrics', side_effect=gone))
        reading = reader.read_host()
        self.assertEqual([], reading.usages)
        self.assertTrue(reading.complete)

    def test_wmi_error_skips_the_vm_this_cycle(self):
        self.add_full_vm()
        self.host.add_vm('instance-00000001', [UUID1])
        reader = self.reader()
        metricsutils = reader._utils()[1]
        real = metricsutils.get_disk_metrics

        def failing(name):
            if name == 'instance-00000001':
                raise hyperv.os_win_exc.x_wmi('Generic failure')
            return real(name)

        self.useFixture(fixtures.MockPatchObject(
            metricsutils, 'get_disk_metrics', side_effect=failing))
        reading = reader.read_host()
        self.assertEqual([UUID0], [u.uuid for u in reading.usages])
        self.assertFalse(reading.complete)
        self.assertEqual(1, reading.skipped)
        self.assertIn('Skipping VM instance-00000001', self.log.output)

    def test_listing_failure_is_hypervisor_unavailable(self):
        reader = self.reader()
        self.useFixture(fixtures.MockPatchObject(
            reader._utils()[0], 'list_instance_notes',
            side_effect=hyperv.os_win_exc.x_wmi('RPC server unavailable')))
        exc = self.assertRaises(base.HypervisorUnavailable, reader.read_all)
        self.assertIn('RPC server unavailable', str(exc))

    def test_port_of_a_legacy_adapter(self):
        # os-win's get_vnic_metrics fails with IndexError on a switch port
        # whose parent is not a synthetic NIC.
        vm = self.add_full_vm()
        vm.nics['port-b'].Parent = 'Msvm_EmulatedEthernetPortSettingData'
        reader = self.reader()
        for _ in range(2):
            (usage,) = reader.read_all()
        self.assertEqual([], usage.interfaces)
        self.assertEqual(2, len(usage.disks))
        self.assertEqual(1, self.log.output.count('cannot match'))

    def test_host_without_disk_metrics(self):
        # Hyper-V 2012 (before R2) defines no disk metrics.
        for name in (fake_hyperv.DISK_READ, fake_hyperv.DISK_WRITTEN):
            self.host.objects.remove(self.host.definition(name))
        self.add_full_vm()
        reader = self.reader()
        for _ in range(2):
            (usage,) = reader.read_all()
        self.assertEqual([], usage.disks)
        self.assertEqual(2, len(usage.interfaces))
        self.assertIsNotNone(usage.cpu_time_ns)
        self.assertEqual(1, self.log.output.count('disks are not read'))


class TestReadInstance(HyperVTestCase):

    def test_read_one(self):
        self.add_full_vm()
        self.host.add_vm('instance-00000001', [UUID1], cpu_mhz=2600)
        usage = self.reader().read_instance(UUID1)
        self.assertEqual('instance-00000001', usage.name)
        self.assertEqual(3600 * 10 ** 9, usage.cpu_time_ns)

    def test_without_devices(self):
        self.add_full_vm()
        usage = self.reader().read_instance(UUID0, devices=False)
        self.assertEqual(1800 * 10 ** 9, usage.cpu_time_ns)
        self.assertEqual([], usage.disks)
        self.assertEqual([], usage.interfaces)

    def test_unknown_and_foreign(self):
        self.host.add_vm('build-server', ['not a uuid'])
        reader = self.reader()
        self.assertRaises(base.InstanceNotFound, reader.read_instance, UUID1)

    def test_vanished(self):
        self.add_full_vm()
        reader = self.reader()
        vmutils = reader._utils()[0]
        real = vmutils.list_instance_notes

        def list_then_delete():
            listed = real()
            self.host.remove_vm('instance-00000000')
            return listed

        self.useFixture(fixtures.MockPatchObject(
            vmutils, 'list_instance_notes', side_effect=list_then_delete))
        self.assertRaises(base.InstanceNotFound, reader.read_instance, UUID0)


class TestDriverMethods(HyperVTestCase):

    def setUp(self):
        super().setUp()
        self.add_full_vm()
        self.driver = hyperv.HyperVUsageHost()

    def test_block_stats(self):
        self.assertEqual([None, 10 * MiB, None, 5 * MiB, -1],
                         self.driver.block_stats(instance(UUID0),
                                                 'root.vhdx'))
        self.assertIsNone(self.driver.block_stats(instance(UUID0), 'vda'))

    def test_interface_stats_by_port_or_mac(self):
        for interface_id in ('port-a', 'FA:16:3E:00:00:01'):
            self.assertEqual(
                [100 * MiB, None, None, None, 20 * MiB, None, None, None],
                self.driver.interface_stats(instance(UUID0), interface_id))

    def test_bandwidth_counters(self):
        self.assertEqual(
            [dict(uuid=UUID0, mac_address='fa:16:3e:00:00:01',
                  bw_in=100 * MiB, bw_out=20 * MiB),
             dict(uuid=UUID0, mac_address='fa:16:3e:00:00:02',
                  bw_in=7 * MiB, bw_out=1 * MiB)],
            self.driver.get_all_bw_counters([instance(UUID0),
                                             instance(UUID1)]))

    def test_volume_usage_needs_request_counts(self):
        bdms = [{'instance': instance(UUID0), 'instance_bdms': [
            {'device_name': 'volume-%s.vhdx' % VOLUME,
             'volume_id': VOLUME}]}]
        self.assertEqual([], self.driver.get_all_volume_usage(None, bdms))

    def test_get_info(self):
        info = self.driver.get_info(instance(UUID0))
        self.assertEqual(base.RUNNING, info.state)
        self.assertEqual(1800 * 10 ** 9, info.cpu_time_ns)

    def test_nova_driver_mixin_builds_its_reader(self):
        class Driver(hyperv.HyperVUsageMixin):
            pass

        driver = Driver()
        self.assertIs(driver.usage_reader, driver.usage_reader)
        self.assertEqual(1800 * 10 ** 9,
                         driver.get_info(instance(UUID0)).cpu_time_ns)


class TestWithoutHyperV(testtools.TestCase):

    def test_no_wmi_is_hypervisor_unavailable(self):
        self.useFixture(fixtures.FakeLogger())
        reader = hyperv.HyperVUsageReader()
        exc = self.assertRaises(base.HypervisorUnavailable, reader.read_all)
        self.assertIn('cannot reach Hyper-V through os-win', str(exc))


class TestHelpers(testtools.TestCase):

    def test_cpu_time(self):
        self.assertEqual(1800 * 10 ** 9,
                         hyperv.cpu_time_ns(1300, 3600 * 10 ** 9, 2600))
        # Two vCPUs busy on a 3 GHz host: 6000 MHz, two seconds a second.
        self.assertEqual(20 * 10 ** 9,
                         hyperv.cpu_time_ns(6000, 10 * 10 ** 9, 3000))
        self.assertIsNone(hyperv.cpu_time_ns(1300, None, 2600))
        self.assertIsNone(hyperv.cpu_time_ns(1300, 10, None))

    def test_cim_values(self):
        self.assertEqual((1 * 86400 + 2 * 3600 + 3 * 60 + 4) * 10 ** 9 +
                         5000, hyperv.cim_interval_ns(
                             '00000001020304.000005:000'))
        self.assertIsNone(hyperv.cim_interval_ns('20261122100000.000000+000'))
        self.assertIsNone(hyperv.cim_interval_ns(None))
        stamp = hyperv.cim_timestamp('20261122113000.000000+060')
        self.assertEqual('2026-11-22T10:30:00+00:00',
                         stamp.astimezone(datetime.timezone.utc).isoformat())
        self.assertIsNone(hyperv.cim_timestamp('2026112211****.******+060'))


class TestImport(testtools.TestCase):

    def _run(self, code):
        result = subprocess.run([sys.executable, '-c', code],
                                capture_output=True, text=True, timeout=120)
        self.assertEqual(0, result.returncode, result.stderr)
        return result.stdout.strip()

    def test_os_win_loads_without_eventlet(self):
        self.assertEqual('False True', self._run(
            'import sys\n'
            'import nova_usage_ext.cmd\n'
            'from nova_usage_ext.virt import hyperv\n'
            'from os_win.utils.compute import vmutils\n'
            'print("eventlet" in sys.modules,\n'
            '      vmutils.tpool.execute(lambda: True))\n'))

    def test_os_win_keeps_eventlet_a_host_process_chose(self):
        self.assertEqual('True', self._run(
            'import eventlet\n'
            'from nova_usage_ext.virt import hyperv\n'
            'from os_win.utils.compute import vmutils\n'
            'print(vmutils.tpool is eventlet.tpool)\n'))
