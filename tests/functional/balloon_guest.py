"""A nova guest that boots Linux with a virtio balloon driver, so that
libvirt reports the guest's own memory figures (``balloon.available``,
``usable``, ``unused``): what ceilometer's ``memory.usage`` and
``memory.available`` come from. No-OS guests report none.

The kernel is Debian's cloud kernel, the initramfs busybox-static loading
the virtio balloon modules, both made by ``tools/setup-balloon-guest.sh``
(run here when missing). The guest has 128 MiB, one vCPU, a qcow2 disk
and a managed tap like ``fixtures.QemuGuests``' guests, nova's metadata,
and balloon statistics every second; it is up once libvirt reports them.
"""

import os
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid as uuidlib

import fixtures
import libvirt

from tests import libvirt_node
from tests.functional import ceilometer_fixtures as cf
from tests.functional import fixtures as qemu_fixtures

SETUP = os.path.join(cf.REPO, 'tools', 'setup-balloon-guest.sh')
FILES = os.environ.get('BALLOON_GUEST_DIR',
                       os.path.join(cf.REPO, 'tmp', 'balloon-guest'))
MEMORY_MB = 128
BOOT_TIMEOUT = 240


class BalloonGuest(fixtures.Fixture):
    """``guest`` is a :class:`fixtures.Guest`; ``conn`` a read-write
    connection. ``flavor_id``: written beside the flavor's name, as nova
    34 does (ceilometer's discovery then needs no nova API)."""

    def __init__(self, flavor_id=None):
        super().__init__()
        self.flavor_id = flavor_id

    def _setUp(self):
        subprocess.run([SETUP], check=True,
                       env=dict(os.environ, BALLOON_GUEST_DIR=FILES))
        self.useFixture(qemu_fixtures.LibvirtDaemon())
        self.conn = libvirt.open(qemu_fixtures.URI)
        self.addCleanup(self.conn.close)
        qemu_fixtures.remove_stale_guests(self.conn)
        # Readable by QEMU's user, as QemuGuests' disks.
        root = '/var/lib/libvirt/images'
        directory = tempfile.mkdtemp(prefix=qemu_fixtures.GUEST_PREFIX,
                                     dir=root if os.path.isdir(root)
                                     else None)
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        os.chmod(directory, 0o755)
        for name in ('vmlinuz', 'initrd.img'):
            shutil.copy(os.path.join(FILES, name), directory)
            os.chmod(os.path.join(directory, name), 0o644)
        token = secrets.token_hex(3)
        guest = qemu_fixtures.Guest(
            uuid=str(uuidlib.uuid4()),
            name='%s%d-%s-b' % (qemu_fixtures.GUEST_PREFIX, os.getpid(),
                                token),
            tap='tapnue%sb' % token,
            mac='fa:16:3e:%s:%s:bb' % (token[0:2], token[2:4]),
            disk_path=os.path.join(directory, 'disk.qcow2'), nova=True,
            display_name='func-balloon-vm', flavor='m1.micro',
            project_id=uuidlib.uuid4().hex, user_id=uuidlib.uuid4().hex,
            memory_mb=MEMORY_MB)
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2',
                        guest.disk_path, str(qemu_fixtures.DISK_SIZE)],
                       check=True, capture_output=True)
        os_xml = ("<type arch='x86_64'>hvm</type>"
                  "<kernel>%s</kernel><initrd>%s</initrd>"
                  "<cmdline>console=ttyS0 quiet panic=-1</cmdline>"
                  % (os.path.join(directory, 'vmlinuz'),
                     os.path.join(directory, 'initrd.img')))
        metadata = libvirt_node.nova_metadata(
            display_name=guest.display_name, flavor=guest.flavor,
            vcpus=1, memory_mb=MEMORY_MB, root_gb=0,
            user_id=guest.user_id, project_id=guest.project_id)
        if self.flavor_id is not None:
            metadata = metadata.replace(
                '<nova:flavor name="%s">' % guest.flavor,
                '<nova:flavor name="%s" id="%s">' % (guest.flavor,
                                                     self.flavor_id))
        xml = libvirt_node.domain_xml(
            guest.name, guest.uuid, metadata,
            disks=[(guest.disk_device, guest.disk_path, None)],
            interfaces=[(guest.tap, guest.mac)], domain_type='qemu',
            memory_mb=MEMORY_MB, vcpus=1, os_xml=os_xml,
            extra_devices="<memballoon model='virtio'>"
                          "<stats period='1'/></memballoon>")
        dom = self.conn.defineXML(xml)
        self.addCleanup(qemu_fixtures.remove_domain, dom)
        dom.create()
        self.guest = guest
        # About 4 s on an idle machine; TCG is slow on a loaded one.
        deadline = time.monotonic() + BOOT_TIMEOUT
        while 'available' not in dom.memoryStats():
            if time.monotonic() > deadline:
                raise AssertionError('the balloon guest reported no memory '
                                     'statistics within %d s'
                                     % BOOT_TIMEOUT)
            time.sleep(0.5)

    def domain(self):
        return self.conn.lookupByUUIDString(self.guest.uuid)
