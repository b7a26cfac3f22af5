"""Tiny KVM guests for the benchmarks: the functional tier's QEMU guests
(64 MiB, one vCPU, no OS, a qcow2 disk, a tap) with ``type='kvm'``, many
at once.

The guests are started by a few threads (libvirtd starts QEMUs in
parallel), and the fixture stops adding guests when the host's available
memory would fall under ``reserve_mib`` (the machine is shared):
``stopped_because`` then says so and ``guests`` holds those started.
"""

import concurrent.futures
import os
import shutil
import subprocess
import tempfile
import uuid as uuidlib

import libvirt

from tests.functional import fixtures as qemu_fixtures
from tests import libvirt_node

# A started no-OS KVM guest takes about 64 MiB of guest RAM it touches
# little of, plus QEMU's own; what to keep free beside the guests.
DEFAULT_RESERVE_MIB = 4096
START_THREADS = 4


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
        token = uuidlib.uuid4().hex[:6]
        batch = START_THREADS * 2
        with concurrent.futures.ThreadPoolExecutor(START_THREADS) as pool:
            for first in range(0, self.count, batch):
                free = available_mib()
                if free is not None and free < self.reserve_mib:
                    self.stopped_because = (
                        'after %d guests the host had %d MiB available, '
                        'under the %d MiB kept free' % (
                            len(self.guests), free, self.reserve_mib))
                    break
                indexes = range(first, min(first + batch, self.count))
                made = [self._make_guest(token, i) for i in indexes]
                # Listed before starting: _remove_all removes them all.
                self.guests.extend(made)
                list(pool.map(self._define_and_start, made))

    def _define_and_start(self, guest):
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2',
                        guest.disk_path, str(qemu_fixtures.DISK_SIZE)],
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
        self.conn.defineXML(xml).create()
