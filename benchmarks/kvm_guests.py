"""Tiny KVM guests for the benchmarks: the functional tier's QEMU guests
(64 MiB, one vCPU, no OS, a qcow2 disk, a tap) with ``type='kvm'``, many
at once.

The guests are started by a few threads (libvirtd starts QEMUs in
parallel), and the fixture stops adding guests when the host's available
memory would fall under ``reserve_mib`` (the machine is shared):
``stopped_because`` then says so and ``guests`` holds those started.

Each disk's first sector is a boot sector that stops the vCPU (``cli;
hlt``) once the firmware has read it: a guest left in SeaBIOS after a
failed boot wakes on every timer tick, which here, under nested KVM, cost
about 2 % of a core per guest (50 guests took a whole core, and the
host's load went to 49), an idle load that hosts of 200 real guests
spread over many more cores. A halted guest's QEMU still answers every
query.
"""

import concurrent.futures
import os
import shutil
import subprocess
import tempfile
import time
import uuid as uuidlib

import libvirt

from tests.functional import fixtures as qemu_fixtures
from tests import libvirt_node

# A started no-OS KVM guest takes about 64 MiB of guest RAM it touches
# little of, plus QEMU's own; what to keep free beside the guests.
DEFAULT_RESERVE_MIB = 4096
START_THREADS = 4
# cli; hlt; jmp back to hlt, then the boot signature.
HALT_BOOT_SECTOR = b'\xfa\xf4\xeb\xfd' + bytes(506) + b'\x55\xaa'


def available_mib():
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) // 1024
    return None


class KvmGuests(qemu_fixtures.QemuGuests):
    """``count`` no-OS guests of ``domain_type`` (``kvm`` by default)."""

    def __init__(self, count, domain_type='kvm',
                 reserve_mib=DEFAULT_RESERVE_MIB):
        super().__init__(count=count, nova=True)
        self.domain_type = domain_type
        self.reserve_mib = reserve_mib
        self.stopped_because = None

    def _setUp(self):
        self.useFixture(qemu_fixtures.LibvirtDaemon())
        if self.domain_type == 'kvm':
            qemu_fixtures.make_kvm_usable_by_qemu()
        self.conn = libvirt.open(qemu_fixtures.URI)
        self.addCleanup(self.conn.close)
        qemu_fixtures.remove_stale_guests(self.conn)
        root = '/var/lib/libvirt/images'
        self.disk_dir = tempfile.mkdtemp(
            prefix=qemu_fixtures.GUEST_PREFIX,
            dir=root if os.path.isdir(root) else None)
        self.addCleanup(shutil.rmtree, self.disk_dir, ignore_errors=True)
        os.chmod(self.disk_dir, 0o755)
        self.addCleanup(self._remove_all)
        self.boot_sector = os.path.join(self.disk_dir, 'boot-sector')
        with open(self.boot_sector, 'wb') as f:
            f.write(HALT_BOOT_SECTOR)
        self._token = uuidlib.uuid4().hex[:6]
        self._pool = concurrent.futures.ThreadPoolExecutor(START_THREADS)
        self.addCleanup(self._pool.shutdown)
        self.grow_to(self.count)

    def grow_to(self, count):
        """Start guests until there are ``count`` (or memory runs short:
        then ``stopped_because`` says so); returns how many there are."""
        batch = START_THREADS * 2
        while len(self.guests) < count and not self.stopped_because:
            free = available_mib()
            if free is not None and free < self.reserve_mib:
                self.stopped_because = (
                    'after %d guests the host had %d MiB available, '
                    'under the %d MiB kept free' % (
                        len(self.guests), free, self.reserve_mib))
                break
            first = len(self.guests)
            made = [self._make_guest(self._token, i)
                    for i in range(first, min(first + batch, count))]
            # Listed before starting: _remove_all removes them all.
            self.guests.extend(made)
            list(self._pool.map(self._define_and_start, made))
        return len(self.guests)

    def wait_idle(self, pids, per_guest=0.005, interval=3.0, timeout=900):
        """Wait until the guests' QEMUs together use less than
        ``per_guest`` of a core each (their firmware has finished);
        returns the seconds waited."""
        from benchmarks import common
        t0 = time.monotonic()
        before = sum(_cpu(common, p) for p in pids)
        while time.monotonic() - t0 < timeout:
            time.sleep(interval)
            after = sum(_cpu(common, p) for p in pids)
            if (after - before) / interval < per_guest * len(pids):
                break
            before = after
        return time.monotonic() - t0

    def _define_and_start(self, guest):
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2',
                        guest.disk_path, str(qemu_fixtures.DISK_SIZE)],
                       check=True, capture_output=True)
        subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -s %s 0 512'
                        % self.boot_sector, guest.disk_path],
                       check=True, capture_output=True)
        metadata = libvirt_node.nova_metadata(
            display_name=guest.display_name, flavor=guest.flavor,
            vcpus=guest.vcpus, memory_mb=guest.memory_mb, root_gb=0,
            user_id=guest.user_id, project_id=guest.project_id)
        xml = libvirt_node.domain_xml(
            guest.name, guest.uuid, metadata,
            disks=[(guest.disk_device, guest.disk_path, None)],
            interfaces=[(guest.tap, guest.mac)],
            domain_type=self.domain_type, memory_mb=guest.memory_mb,
            vcpus=guest.vcpus, os_xml=qemu_fixtures.OS_XML)
        # No network boot ROM: the firmware boots the disk only.
        xml = xml.replace('</interface>', "<rom enabled='no'/></interface>")
        self.conn.defineXML(xml).create()


def _cpu(common, pid):
    try:
        return common.proc_stat_cpu(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
