"""The KVM benchmark's own logic: what it counts in an strace of libvirtd,
the targets it reports met or not, and the picture it writes."""

import os
import struct

import fixtures
import testtools

from benchmarks import floor
from benchmarks import report

# libvirtd's fd 21 is a monitor of one of the benchmark's guests (QEMU pid
# 4242); fd 30 is another client's guest's.
STRACE = '\n'.join((
    r'4711  write(21, "{\"execute\":\"query-stats\",\"arguments\":'
    r'{\"target\":\"vcpu\"},\"id\":\"libvirt-7\"}\r\n", 77) = 77',
    r'4711  write(30, "{\"execute\":\"query-blockstats\",\"id\":'
    r'\"libvirt-9\"}\r\n", 50) = 50',
    r'4711  sendmsg(21, {msg_name=NULL, msg_iov=[{iov_base="{\"execute\":'
    r'\"query-blockstats\",\"arguments\":{\"query-nodes\":true},\"id\":'
    r'\"libvirt-8\"}\r\n", iov_len=80}], msg_controllen=0}, 0) = 80',
    '4712  openat(AT_FDCWD, "/proc/4242/task/4250/schedstat", '
    'O_RDONLY|O_CLOEXEC) = 33',
    '4712  openat(AT_FDCWD, "/proc/9999/task/9998/schedstat", '
    'O_RDONLY|O_CLOEXEC) = 33',
    '4712  openat(AT_FDCWD, "/sys/fs/cgroup/machine/qemu-5-nue-func-1-ab.'
    'libvirt-qemu/cpu.stat", O_RDONLY|O_CLOEXEC) = 34',
    '4712  openat(AT_FDCWD, "/sys/fs/cgroup/machine/qemu-6-someone-else.'
    'libvirt-qemu/cpu.stat", O_RDONLY|O_CLOEXEC) = 34',
    '4712  openat(AT_FDCWD, "/proc/net/dev", O_RDONLY) = 35',
    r'4712  write(2, "{\"execute\":\"not-a-monitor\"}", 27) = 27',
))


def _row(domain_type, guests, wall, libvirtd, cpu, calls, floor_s):
    def s(v):
        return {'median': v, 'min': v, 'max': v}

    def poller(k):
        return {'wall_s': s(wall * k), 'cpu_s': s(cpu * k),
                'libvirtd_cpu_sched_s': s(libvirtd * k),
                'qemu_cpu_sched_s': s(0.01), 'calls': s(calls * k)}

    groups = {g: {'wall_per_guest_s': 1e-3, 'libvirtd_cpu_per_guest_s':
                  floor_s if g == report.FLOOR_GROUP else 1e-4,
                  'qmp_per_guest': {'query-stats': 1.0},
                  'opens_per_guest': {}}
              for g in report.GROUP_ORDER + (report.FLOOR_GROUP,)}
    ceil = poller(12)
    ceil['libvirtd_cpu_sched_s'] = s(libvirtd * 8)
    ours = poller(1)
    return {'domain_type': domain_type, 'guests': guests,
            'ours': ours, 'ours_one_call': poller(1), 'ceilometer': ceil,
            'ratios': {'wall_s': 12.0, 'cpu_s': 12.0,
                       'libvirtd_cpu_sched_s': 8.0, 'calls': 12.0},
            'floor': {'groups': groups}}


class TestStraceCounts(testtools.TestCase):

    def test_only_these_guests_monitors_and_files_count(self):
        qmp, opens = floor.parse_strace(
            STRACE, fds={21}, qemu_pids=[4242],
            cgroup_names=['qemu-5-nue-func-1-ab.libvirt-qemu'])
        self.assertEqual({'query-stats': 1, 'query-blockstats': 1},
                         dict(qmp))
        self.assertEqual({'/proc/<pid>/task': 1, 'cgroup': 1,
                          '/proc/net/dev': 1}, dict(opens))


def _kvm(floor_s):
    # 2 ms of libvirtd CPU per cycle for 100 guests: 20 µs per guest.
    rows = [_row('kvm', n, 0.1, 0.002 * n / 100, 0.001, 2, floor_s)
            for n in (20, 50, 100)]
    return {'cycles': 3, 'tcg': _row('qemu', 20, 0.1, 0.01, 0.001, 1,
                                     floor_s), 'sizes': rows}


class TestKvmTargets(testtools.TestCase):

    def test_each_target_met_or_not_with_its_figure(self):
        _text, rows = report.kvm_targets(_kvm(floor_s=15e-6))
        status = {target: (measured, st) for target, measured, st in rows}
        wall = status['>= 10× less wall time per cycle than ceilometer at '
                      '100 KVM guests']
        self.assertEqual('met', wall[1])
        self.assertIn('12.0×', wall[0])
        self.assertEqual('**not met**', status[
            '>= 10× less libvirtd CPU per cycle than ceilometer at 100 KVM '
            'guests'][1])
        self.assertEqual('**not met**', status[
            '>= 30× less client CPU per cycle than ceilometer at 100 KVM '
            'guests'][1])
        self.assertEqual('met', status[
            '<= 2 libvirt calls per steady-state cycle at every size'][1])
        # 20 µs against a floor of 15 µs per guest: 1.3×.
        near = status['libvirtd CPU per guest within 2× of the floor']
        self.assertEqual('met', near[1])
        self.assertIn('1.3× at KVM 100', near[0])

    def test_far_from_the_floor_is_not_met(self):
        _text, rows = report.kvm_targets(_kvm(floor_s=5e-6))
        (near,) = [r for r in rows if 'floor' in r[0]]
        self.assertIn('not met', near[2])
        self.assertIn('4.0× at KVM 100', near[1])

    def test_a_size_never_reached_is_not_measured(self):
        kvm = _kvm(floor_s=15e-6)
        kvm['sizes'] = kvm['sizes'][:2]
        kvm['stopped'] = 'at 50 of 100 guests: memory'
        text, rows = report.kvm_markdown({
            'kvm': kvm, 'machine': {k: '-' for k in (
                'nproc', 'cpu_model', 'memory_mib', 'libvirtd', 'qemu',
                'ceilometer')}, 'started_at': 'now', 'duration_s': 1.0,
            'load_average_1min': {'kvm': [1.0, 2.0]}})
        self.assertIn('Stopped at 50 of 100 guests: memory.', text)
        self.assertEqual('not measured as specified', rows[0][2])


class TestSingleRead(testtools.TestCase):

    def test_the_hook_s_read_by_size_when_measured(self):
        kvm = _kvm(floor_s=15e-6)
        self.assertIsNone(report.single_read_table(kvm))
        kvm['sizes'][2]['single_read'] = {
            'wall_ms': {'p50': 4.25, 'p99': 9.5, 'max': 12.0, 'n': 200},
            'libvirtd_cpu_ms': {'median': 1.5}}
        table = report.single_read_table(kvm)
        self.assertIn('| KVM 100 | 4.25 / 9.50 / 12.00 | 1.50 | 200 |',
                      table)
        self.assertNotIn('KVM 20 ', table)


class TestPicture(testtools.TestCase):

    def test_a_png_of_both_panels_is_written(self):
        from benchmarks import plot
        path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                            'cycle.png')
        plot.cost_per_cycle(_kvm(15e-6), path)
        with open(path, 'rb') as f:
            head = f.read(24)
        self.assertEqual(b'\x89PNG\r\n\x1a\n', head[:8])
        width, height = struct.unpack('>II', head[16:24])
        self.assertEqual((1000, 420), (width, height))
