"""A real libvirt daemon and tiny QEMU guests for the functional tests.

``LibvirtDaemon`` makes sure a libvirtd answers on ``qemu:///system``,
starting virtlogd and libvirtd itself when none does. ``QemuGuests`` defines
and starts a few TCG guests (64 MiB, one vCPU, a 64 MiB qcow2 disk, a
managed tap, no OS) and removes them again, even when the test fails.

Neither fixture ever skips: where the daemon cannot be had, the test fails
and says why. Everything here needs root, as the daemon does.
"""

import concurrent.futures
import dataclasses
import errno
import fcntl
import grp
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib

import fixtures
import libvirt

from tests import libvirt_node

LOG = logging.getLogger(__name__)

URI = 'qemu:///system'
RUN_DIR = '/run/nova-usage-ext'
LOCK_FILE = '/run/nova-usage-ext-libvirtd.lock'
VIRTLOGD_SOCKET = '/run/libvirt/virtlogd-sock'
LIBVIRTD_LOG = '/var/log/libvirt/libvirtd.log'
START_TIMEOUT = 60

GUEST_PREFIX = 'nue-func-'
DISK_SIZE = 64 * 1024 ** 2
DISK_DEVICE = 'vda'
OS_XML = "<type arch='x86_64'>hvm</type><boot dev='hd'/>"

# Run (detached) when this fixture starts the daemons. It makes itself a
# child subreaper, starts the daemons under it and reaps until they are gone.
# libvirtd double-forks each QEMU, so a destroyed QEMU becomes a zombie of
# its nearest subreaper, or of pid 1; libvirt's destroy returns only once
# the pid is gone, and an init that reaps lazily (some VMs' pid 1 reaps
# every 2 s) makes every destroy take that long.
_REAPER = r'''
import ctypes, os, subprocess, sys
if os.fork():
    os._exit(0)  # the test process waits for this parent only
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # CHILD_SUBREAPER
run_dir, start_virtlogd = sys.argv[1], sys.argv[2] == '1'
rc = 0
if start_virtlogd:
    rc = subprocess.call(['virtlogd', '-d', '-p',
                          os.path.join(run_dir, 'virtlogd.pid')])
    print('reaper: virtlogd -d exited with %d' % rc, flush=True)
if rc == 0:
    rc = subprocess.call(['libvirtd', '-d', '-p',
                          os.path.join(run_dir, 'libvirtd.pid')])
    print('reaper: libvirtd -d exited with %d' % rc, flush=True)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
print('reaper: no daemon left, exiting', flush=True)
'''


def _silence_libvirt():
    # libvirt-python prints every error to stderr by default.
    libvirt.registerErrorHandler(lambda ctx, err: None, None)


def _tail(path, lines=30):
    try:
        with open(path, errors='replace') as f:
            return ''.join(f.readlines()[-lines:])
    except OSError as exc:
        return '(cannot read %s: %s)\n' % (path, exc)


def _read_from(path, offset):
    try:
        with open(path, errors='replace') as f:
            f.seek(offset)
            return f.read()
    except OSError as exc:
        return '(cannot read %s: %s)\n' % (path, exc)


def _unix_socket_answers(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(2)
        sock.connect(path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _libvirtd_answers():
    try:
        conn = libvirt.open(URI)
    except libvirt.libvirtError:
        return False
    conn.close()
    return True


def make_kvm_usable_by_qemu():
    """Give /dev/kvm Debian's udev permissions (root:kvm 0660) if needed.

    The guests are TCG and never use KVM, but libvirt's QEMU capabilities
    cache does: where QEMU's probe finds KVM yet /dev/kvm is not usable by
    the qemu user (libvirt-qemu, in group kvm), libvirt 9 judges its cache
    stale on every look-up ("KVM was enabled when probing ..., but it is not
    available now") and probes QEMU again, about 4 s each time, which makes
    starting one guest take about 45 s. Machines with udev have these
    permissions already; containers and micro-VMs without it may not.

    :returns: what was changed, or None.
    """
    try:
        st = os.stat('/dev/kvm')
        kvm_gid = grp.getgrnam('kvm').gr_gid
    except (FileNotFoundError, KeyError):
        return None
    mode = stat.S_IMODE(st.st_mode)
    if (st.st_gid == kvm_gid and mode & 0o060 == 0o060) or \
            mode & 0o006 == 0o006:
        return None
    os.chown('/dev/kvm', -1, kvm_gid)
    os.chmod('/dev/kvm', mode | 0o660)
    return ('/dev/kvm was %o gid %d; set it to group kvm, mode %o'
            % (mode, st.st_gid, mode | 0o660))


class LibvirtDaemon(fixtures.Fixture):
    """A libvirtd answering on qemu:///system, started here if need be.

    The check-and-start runs under an exclusive lock on ``LOCK_FILE`` so
    that parallel test processes start one daemon between them. A daemon
    started here is left running for the other processes and later runs.
    ``started`` says whether this instance started it.
    """

    def __init__(self, timeout=START_TIMEOUT):
        super().__init__()
        self.timeout = timeout
        self.started = False

    def _setUp(self):
        _silence_libvirt()
        if os.geteuid() != 0:
            raise RuntimeError(
                'the functional tests need root: they run libvirtd and QEMU '
                'guests on %s' % URI)
        with open(LOCK_FILE, 'a') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                changed = make_kvm_usable_by_qemu()
                if changed:
                    LOG.warning('%s (libvirt re-probes QEMU on every start '
                                'otherwise)', changed)
                if not _libvirtd_answers():
                    self._start()
                    self.started = True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _start(self):
        for tool in ('libvirtd', 'virtlogd', 'qemu-system-x86_64',
                     'qemu-img'):
            if shutil.which(tool) is None:
                raise RuntimeError(
                    'no libvirtd answers on %s and %s is not installed; '
                    'run tools/setup-env.sh test' % (URI, tool))
        os.makedirs(RUN_DIR, exist_ok=True)
        reaper_log = os.path.join(RUN_DIR, 'daemons.log')
        start_virtlogd = not _unix_socket_answers(VIRTLOGD_SOCKET)
        LOG.info('Starting %slibvirtd for %s',
                 'virtlogd and ' if start_virtlogd else '', URI)
        reaper_script = os.path.join(RUN_DIR, 'reaper.py')
        with open(reaper_script, 'w') as f:
            f.write(_REAPER)
        with open(reaper_log, 'a') as log:
            log.write('--- %s: starting for test process %d\n'
                      % (time.strftime('%Y-%m-%d %H:%M:%S'), os.getpid()))
            log.flush()
            offset = log.tell()
            reaper = subprocess.Popen(
                [sys.executable, reaper_script, RUN_DIR,
                 '1' if start_virtlogd else '0'],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                close_fds=True, start_new_session=True, cwd='/')
            reaper.wait()
        deadline = time.monotonic() + self.timeout
        while not _libvirtd_answers():
            output = _read_from(reaper_log, offset)
            failed = re.search(r'-d exited with [1-9]', output)
            if failed or time.monotonic() > deadline:
                raise RuntimeError(
                    'libvirtd %s.\n'
                    '--- %s (this start) ---\n%s--- %s (tail) ---\n%s'
                    % ('failed to start' if failed else
                       'did not answer on %s within %d s'
                       % (URI, self.timeout),
                       reaper_log, output, LIBVIRTD_LOG, _tail(LIBVIRTD_LOG)))
            time.sleep(0.1)


@dataclasses.dataclass
class Guest:
    """One guest as the test defined it."""
    uuid: str
    name: str
    tap: str
    mac: str
    disk_path: str
    nova: bool
    display_name: str | None = None
    flavor: str | None = None
    project_id: str | None = None
    user_id: str | None = None
    disk_device: str = DISK_DEVICE
    disk_capacity: int = DISK_SIZE
    memory_mb: int = 64
    vcpus: int = 1


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _ignore_gone(call, *args):
    """Call a libvirt method, ignoring "no such domain" and "not running"."""
    try:
        return call(*args)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN,
                                        libvirt.VIR_ERR_OPERATION_INVALID):
            raise


def remove_domain(dom):
    """Destroy (if running) and undefine a domain; a gone one is fine."""
    if _ignore_gone(dom.isActive):
        _ignore_gone(dom.destroy)
    _ignore_gone(dom.undefine)


def remove_stale_guests(conn):
    """Remove guests left by test processes that died without cleaning up."""
    pattern = re.compile(r'^%s(\d+)-' % re.escape(GUEST_PREFIX))
    for dom in conn.listAllDomains():
        match = pattern.match(dom.name())
        if not match or pid_alive(int(match.group(1))):
            continue
        LOG.warning('Removing guest %s left by dead test process %s',
                    dom.name(), match.group(1))
        try:
            paths = re.findall(r"<source file='([^']+)'", dom.XMLDesc(0))
            remove_domain(dom)
        except libvirt.libvirtError as exc:
            LOG.warning('Cannot remove %s: %s', dom.name(), exc)
            continue
        for path in paths:
            directory = os.path.dirname(path)
            if os.path.basename(directory).startswith(GUEST_PREFIX):
                shutil.rmtree(directory, ignore_errors=True)


class QemuGuests(fixtures.Fixture):
    """``count`` tiny TCG guests, defined and started on qemu:///system.

    Each has 64 MiB of RAM, one vCPU, no OS, a 64 MiB qcow2 disk (vda) and
    an ``<interface type='ethernet'>`` on a managed tap, and, when ``nova``
    is true, nova's metadata. Names (which carry this process's pid) and
    taps are unique per fixture, so parallel test processes do not collide.

    With no OS the guests do nothing after SeaBIOS has read the disk's
    first sector at boot; ``make_disk_io`` resets a guest so that the
    firmware reads it again (one request of 512 bytes).

    ``guests`` lists :class:`Guest`; ``conn`` is a read-write connection;
    ``domain(guest)`` looks a guest up on it.
    """

    def __init__(self, count=2, nova=True, flavor='m1.nano'):
        super().__init__()
        self.count = count
        self.nova = nova
        self.flavor = flavor
        self.guests = []

    def _setUp(self):
        self.useFixture(LibvirtDaemon())
        self.conn = libvirt.open(URI)
        self.addCleanup(self.conn.close)
        remove_stale_guests(self.conn)
        # libvirt runs QEMU as libvirt-qemu and chowns the disk to it (DAC
        # relabelling), but every directory above must be searchable by it:
        # libvirt's own image directory is; a mkdtemp directory (0700) is
        # not until chmodded.
        root = '/var/lib/libvirt/images'
        if not os.path.isdir(root):
            root = None
        self.disk_dir = tempfile.mkdtemp(prefix=GUEST_PREFIX, dir=root)
        self.addCleanup(shutil.rmtree, self.disk_dir, ignore_errors=True)
        os.chmod(self.disk_dir, 0o755)
        self.addCleanup(self._remove_all)

        token = secrets.token_hex(3)
        for index in range(self.count):
            guest = self._make_guest(token, index)
            subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2',
                            guest.disk_path, str(DISK_SIZE)],
                           check=True, capture_output=True)
            metadata = ''
            if self.nova:
                metadata = libvirt_node.nova_metadata(
                    display_name=guest.display_name, flavor=guest.flavor,
                    vcpus=guest.vcpus, memory_mb=guest.memory_mb, root_gb=0,
                    user_id=guest.user_id, project_id=guest.project_id)
            xml = libvirt_node.domain_xml(
                guest.name, guest.uuid, metadata,
                disks=[(guest.disk_device, guest.disk_path, None)],
                interfaces=[(guest.tap, guest.mac)],
                domain_type='qemu', memory_mb=guest.memory_mb,
                vcpus=guest.vcpus, os_xml=OS_XML)
            dom = self.conn.defineXML(xml)
            self.guests.append(guest)  # from here on _remove_all removes it
            dom.create()

    def _make_guest(self, token, index):
        guest = Guest(
            uuid=str(uuidlib.uuid4()),
            name='%s%d-%s-%d' % (GUEST_PREFIX, os.getpid(), token, index),
            # at most 15 characters (IFNAMSIZ - 1)
            tap='tapnue%s%d' % (token, index),
            mac='fa:16:3e:%s:%s:%02x' % (token[0:2], token[2:4], index),
            disk_path=os.path.join(self.disk_dir, 'disk%d.qcow2' % index),
            nova=self.nova)
        if self.nova:
            guest.display_name = 'func-vm-%d' % index
            guest.flavor = self.flavor
            guest.project_id = uuidlib.uuid4().hex
            guest.user_id = uuidlib.uuid4().hex
        return guest

    def _remove_all(self):
        # In parallel: each destroy waits until QEMU's pid is gone.
        def remove(guest):
            try:
                dom = self.conn.lookupByUUIDString(guest.uuid)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return
                raise
            remove_domain(dom)
            try:
                os.remove(guest.disk_path)
            except FileNotFoundError:
                pass

        if not self.guests:
            return
        with concurrent.futures.ThreadPoolExecutor(len(self.guests)) as pool:
            futures = [pool.submit(remove, guest) for guest in self.guests]
        errors = [f.exception() for f in futures if f.exception()]
        if errors:
            raise errors[0]

    def domain(self, guest):
        return self.conn.lookupByUUIDString(guest.uuid)

    def make_disk_io(self, guest, timeout=10):
        """Reset the guest so that its firmware reads the disk again.

        Returns once the disk's read requests have grown (bounded wait).
        A guest that has not read its disk since it started is first left
        to finish booting: a reset during the firmware's start-up could
        leave it never reading the disk again (seen with TCG).
        """
        dom = self.domain(guest)
        deadline = time.monotonic() + timeout
        while dom.blockStats(guest.disk_device)[0] == 0:
            if time.monotonic() > deadline:
                raise AssertionError(
                    'guest %s did not read %s within %d s of its start'
                    % (guest.name, guest.disk_device, timeout))
            time.sleep(0.02)
        before = dom.blockStats(guest.disk_device)[0]
        dom.reset()
        deadline = time.monotonic() + timeout
        while dom.blockStats(guest.disk_device)[0] <= before:
            if time.monotonic() > deadline:
                raise AssertionError(
                    'guest %s read nothing from %s within %d s of a reset'
                    % (guest.name, guest.disk_device, timeout))
            time.sleep(0.02)


def send_frames(guest, count):
    """Send ``count`` Ethernet frames to the guest out of the host side of
    its tap: its interface counters grow (a guest with no OS takes none
    from the tap's queue of 1000 frames; the rest are its rx drops)."""
    frame = (bytes.fromhex(guest.mac.replace(':', '')) +
             bytes.fromhex('02000000aa01') +
             bytes.fromhex('88b5') +  # local experimental EtherType
             bytes(46))
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((guest.tap, 0))
        for _ in range(count):
            try:
                sock.send(frame)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:  # the queue is full
                    raise
