"""Record libvirt's bulk stats replies from real QEMU guests.

The unit tests replay these recordings through the libvirt reader's bulk
parsing (tests/unit/virt/test_libvirt_recorded.py): libvirt's test driver,
which the unit tests otherwise run on, returns only the state group.

Run as root from the repository root (it starts guests on qemu:///system
through the functional tier's fixtures, and libvirtd itself if none
answers):

    .venv/bin/python tools/record-domain-stats.py [--out DIR]

Guests (no OS, TCG): a running nova guest with 2 vCPUs, 2 disks (vdb
carrying a Cinder volume id in <serial>, as nova writes it) and 2 taps; a
paused one; a shut-off one; one with 3 vCPUs of which 0 and 2 are online
(vCPU 2 hot-plugged: the vcpu.N entries have a hole); a guest without
nova's metadata. The first and the fourth boot a sector that keeps each
vCPU busy for a moment, so that every vCPU has a run time of its own; the
host sends frames to the first one's taps (different counts per tap).
vcpu.N.wait stays 0 where the kernel keeps no scheduler statistics.
Replies, each one JSON file in DIR:

    all-kinds          getAllDomainStats, the groups of a full cycle
    cpu, interfaces,   domainListGetStats on the listed domains, the groups
    disks              of a steady cycle asking for one kind
    balloon            getAllDomainStats, full cycle groups + balloon
    busy-disk          getAllDomainStats while another client holds a job
                       on the running guest (its QEMU stopped under a
                       blockStats call): NOWAIT returns its disks without
                       counters
    vcpu-missing-derived
                       DERIVED, not recorded: all-kinds with one vCPU's
                       entries removed from the running guest, so that
                       the vCPU count does not match vcpu.current

Each file holds, for each of the tool's domains (replies are filtered to
them: other guests on the shared daemon are left out), its name, UUID, ID,
XMLDesc(0), the stats dict exactly as returned, and what the tool defined.
"""

import argparse
import contextlib
import datetime
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import fcntl  # noqa: E402

import libvirt  # noqa: E402

from nova_usage_ext.virt import base  # noqa: E402
from nova_usage_ext.virt import libvirt as libvirt_usage  # noqa: E402
from tests.functional import fixtures as qemu_fixtures  # noqa: E402
from tests import libvirt_node  # noqa: E402

DEFAULT_OUT = os.path.join(REPO, 'tests', 'unit', 'virt', 'recordings')
VOLUME_ID = '5d8a1b8e-6f0e-4c1b-9a57-3c2f0e7d9b21'
# Frames sent from the host to each tap of the running guest. With no OS,
# QEMU takes none from the tap's queue (1000 frames): the ones beyond it
# are dropped, the guest's rx.drop, a number that differs per tap so that
# a swap of interfaces shows.
TAP_QUEUE = 1000
EXTRA_FRAMES = (3, 9)
# A boot sector that reads the second disk through the BIOS, keeps every
# vCPU busy for a moment (vCPU 0 about twice as long as the others) and
# then halts them, so that each vCPU of a no-OS guest has a run time of
# its own: SeaBIOS leaves all but vCPU 0 halted. It wakes them the way an
# OS does, through the local APIC (INIT,
# then STARTUP with vector 0x08, i.e. at 0x8000), in unreal mode to reach
# the APIC's registers. Built with binutils (as, ld).
BOOT_SECTOR_ASM = r"""
        .code16
        .intel_syntax noprefix
        .globl _start
_start:
        cli
        cld
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, 0x7c00
        mov si, offset others       # the other vCPUs' code, to 0x8000
        mov di, 0x8000
        mov cx, offset others_end - others
        rep movsb
        sti
        mov ax, 0x0203              # read 3 sectors of the second disk
        mov cx, 0x0001              # (if any): its own read counters
        mov dx, 0x0081
        mov bx, 0x9000
        int 0x13
        cli
        lgdt [gdt_desc]             # unreal mode: fs reaches 4 GiB
        mov eax, cr0
        or al, 1
        mov cr0, eax
        mov bx, 8
        mov fs, bx
        and al, 0xfe
        mov cr0, eax
        xor bx, bx
        mov fs, bx
        mov ebx, 0xfee00300         # APIC ICR, to all vCPUs but self:
        mov dword ptr fs:[ebx], 0x000c4500      # INIT
        call delay
        mov dword ptr fs:[ebx], 0x000c4608      # STARTUP at 0x8000
        call delay
        mov dword ptr fs:[ebx], 0x000c4608
        mov ecx, 0x08000000
1:      dec ecx
        jnz 1b
2:      cli
        hlt
        jmp 2b
delay:
        mov ecx, 0x100000
3:      dec ecx
        jnz 3b
        ret
others:
        mov ecx, 0x04000000
4:      dec ecx
        jnz 4b
5:      cli
        hlt
        jmp 5b
others_end:
        .p2align 3
gdt:
        .quad 0
        .quad 0x00cf92000000ffff    # flat data segment
gdt_desc:
        .word gdt_desc - gdt - 1
        .long gdt
        .org 510
        .word 0xaa55
"""
# Enough for the boot sector's loops to end (about 1 s of TCG).
BOOT_SECONDS = 4
NOWAIT = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
GROUP_NAMES = {
    libvirt.VIR_DOMAIN_STATS_STATE: 'state',
    libvirt.VIR_DOMAIN_STATS_CPU_TOTAL: 'cpu-total',
    libvirt.VIR_DOMAIN_STATS_BALLOON: 'balloon',
    libvirt.VIR_DOMAIN_STATS_VCPU: 'vcpu',
    libvirt.VIR_DOMAIN_STATS_INTERFACE: 'interface',
    libvirt.VIR_DOMAIN_STATS_BLOCK: 'block',
}


def group_names(groups):
    return [name for bit, name in sorted(GROUP_NAMES.items())
            if groups & bit]


def qemu_pid(name):
    with open('/run/libvirt/qemu/%s.pid' % name) as f:
        return int(f.read())


def send_frames(tap, dest_mac, count):
    """Send ``count`` Ethernet frames out of the host side of ``tap``."""
    frame = (bytes.fromhex(dest_mac.replace(':', '')) +
             bytes.fromhex('02000000aa01') +
             bytes.fromhex('88b5') +  # local experimental EtherType
             bytes(46))
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((tap, 0))
        for _ in range(count):
            try:
                sock.send(frame)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:  # the queue is full
                    raise


def write_boot_disk(path, workdir):
    """Make ``path`` a qcow2 disk whose first sector is the boot sector."""
    source = os.path.join(workdir, 'boot.S')
    with open(source, 'w') as f:
        f.write(BOOT_SECTOR_ASM)
    obj, binary = source[:-2] + '.o', source[:-2] + '.bin'
    raw = os.path.join(workdir, 'boot.raw')
    for command in (['as', '-o', obj, source],
                    ['ld', '-m', 'elf_x86_64', '-Ttext=0x7c00',
                     '--oformat', 'binary', '-o', binary, obj]):
        subprocess.run(command, check=True)
    with open(binary, 'rb') as f:
        sector = f.read()
    if len(sector) != 512:
        raise RuntimeError('the boot sector has %d bytes' % len(sector))
    with open(raw, 'wb') as f:
        f.write(sector)
        f.truncate(qemu_fixtures.DISK_SIZE)
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                    raw, path], check=True)
    os.remove(raw)


def defined(guest, role, disks, interfaces, vcpus):
    """What the tool defined, for the tests to compare the reader with."""
    return {
        'role': role, 'nova': guest.nova,
        'display_name': guest.display_name, 'flavor': guest.flavor,
        'project_id': guest.project_id, 'user_id': guest.user_id,
        'vcpus': vcpus,
        'disks': [[dev, volume_id] for dev, _path, volume_id in disks],
        'interfaces': [[tap, mac] for tap, mac in interfaces],
    }


class Recorder:

    def __init__(self, out):
        self.out = out
        self.roles = {}  # uuid -> what was defined

    # -- guests ---------------------------------------------------------

    def redefine(self, guests, guest, disks, interfaces, vcpus,
                 edit=None, before_boot=None):
        """Stop a fixture guest and start it again with other devices,
        booting the busy boot sector."""
        dom = guests.domain(guest)
        dom.destroy()
        write_boot_disk(guest.disk_path, guests.disk_dir)
        metadata = libvirt_node.nova_metadata(
            display_name=guest.display_name, flavor=guest.flavor,
            vcpus=vcpus, memory_mb=guest.memory_mb, root_gb=0,
            user_id=guest.user_id, project_id=guest.project_id)
        xml = libvirt_node.domain_xml(
            guest.name, guest.uuid, metadata, disks=disks,
            interfaces=interfaces, domain_type='qemu',
            memory_mb=guest.memory_mb, vcpus=vcpus,
            os_xml=qemu_fixtures.OS_XML)
        if edit is not None:
            root = ET.fromstring(xml)
            edit(root)
            xml = ET.tostring(root, encoding='unicode')
        dom = guests.conn.defineXML(xml)
        if before_boot is None:
            dom.create()
        else:
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
            before_boot(dom)
            dom.resume()
        return dom

    def start_guests(self, stack):
        novas = stack.enter_context(qemu_fixtures.QemuGuests(count=4))
        others = stack.enter_context(
            qemu_fixtures.QemuGuests(count=1, nova=False))
        running, paused, shutoff, hotplug = novas.guests

        # The running guest: 2 vCPUs, a second disk that is a Cinder
        # volume (nova puts the volume id in <serial>), a second tap.
        extra_disk = os.path.join(novas.disk_dir, 'volume.qcow2')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2',
                        extra_disk, str(qemu_fixtures.DISK_SIZE)],
                       check=True, capture_output=True)
        disks = [(running.disk_device, running.disk_path, None),
                 ('vdb', extra_disk, VOLUME_ID)]
        interfaces = [(running.tap, running.mac),
                      (running.tap + 'b', running.mac[:-2] + 'b0')]

        def boot_order(root):
            # Per-disk boot order, so that the firmware maps vdb too.
            root.find('os').remove(root.find('os/boot'))
            for order, disk in enumerate(root.findall('devices/disk'), 1):
                ET.SubElement(disk, 'boot', order=str(order))

        self.redefine(novas, running, disks, interfaces, vcpus=2,
                      edit=boot_order)
        self.roles[running.uuid] = defined(running, 'running', disks,
                                           interfaces, 2)
        interfaces_of_running = interfaces

        # vCPUs 0 and 2 online of 3: vCPU 2 is hot-plugged (libvirt
        # cannot unplug one from a guest without ACPI and an OS), before
        # the firmware runs, so that the boot sector wakes it too.
        def current_one(root):
            root.find('vcpu').set('current', '1')

        def plug_vcpu_2(dom):
            dom.setVcpu('2', 1, libvirt.VIR_DOMAIN_AFFECT_LIVE)

        disks = [(hotplug.disk_device, hotplug.disk_path, None)]
        interfaces = [(hotplug.tap, hotplug.mac)]
        self.redefine(novas, hotplug, disks, interfaces, vcpus=3,
                      edit=current_one, before_boot=plug_vcpu_2)
        self.roles[hotplug.uuid] = defined(hotplug, 'vcpu-hotplugged',
                                           disks, interfaces, 3)

        for guest, role in ((paused, 'paused'), (shutoff, 'shutoff'),
                            (others.guests[0], 'not-nova')):
            self.roles[guest.uuid] = defined(
                guest, role,
                [(guest.disk_device, guest.disk_path, None)],
                [(guest.tap, guest.mac)], guest.vcpus)

        # Some I/O that differs per device; the vCPUs' busy boot.
        for (tap, mac), extra in zip(interfaces_of_running, EXTRA_FRAMES):
            send_frames(tap, mac, TAP_QUEUE + extra)
        novas.make_disk_io(running)
        time.sleep(BOOT_SECONDS)
        novas.domain(paused).suspend()
        novas.domain(shutoff).destroy()
        return novas, running

    # -- replies --------------------------------------------------------

    def entries(self, reply):
        domains = []
        for dom, stats in reply:
            uuid = dom.UUIDString()
            if uuid not in self.roles:
                continue  # another process's guest on the shared daemon
            domains.append({
                'role': self.roles[uuid]['role'],
                'name': dom.name(), 'uuid': uuid, 'id': dom.ID(),
                'xml': dom.XMLDesc(0), 'stats': stats,
                'defined': self.roles[uuid]})
        missing = set(self.roles) - {d['uuid'] for d in domains}
        if missing:
            raise RuntimeError('the reply lacks domains %s' % missing)
        return domains

    def write(self, name, description, call, groups, flags, domains,
              derived=None):
        record = {
            'description': description,
            'derived': derived,
            'recorded_with': self.versions,
            'call': call,
            'groups': groups, 'group_names': group_names(groups),
            'flags': flags,
            'flag_names': ['NOWAIT'] if flags & NOWAIT else [],
            'domains': domains,
        }
        path = os.path.join(self.out, name + '.json')
        with open(path, 'w') as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.write('\n')
        print('wrote %s (%d domains)' % (path, len(domains)))
        return record

    def record_all(self, conn, name, description, groups):
        reply = conn.getAllDomainStats(groups, NOWAIT)
        return self.write(name, description, 'getAllDomainStats', groups,
                          NOWAIT, self.entries(reply))

    def record_listed(self, conn, name, description, groups):
        doms = [conn.lookupByUUIDString(uuid) for uuid in self.roles]
        reply = conn.domainListGetStats(doms, groups, NOWAIT)
        return self.write(name, description, 'domainListGetStats', groups,
                          NOWAIT, self.entries(reply))

    def record_busy(self, conn, guests, guest):
        """A NOWAIT reply while another client holds a job on ``guest``.

        Its QEMU is stopped, so a blockStats call (a query job that waits
        for QEMU's monitor) holds the domain's job until QEMU continues.
        """
        dom = guests.domain(guest)
        pid = qemu_pid(guest.name)
        holder = threading.Thread(target=dom.blockStats,
                                  args=(guest.disk_device,))
        reading = libvirt.openReadOnly(qemu_fixtures.URI)
        os.kill(pid, signal.SIGSTOP)
        try:
            holder.start()
            time.sleep(1)  # let it take the job and wait on the monitor
            reply = reading.getAllDomainStats(libvirt_usage.STAT_GROUPS,
                                              NOWAIT)
        finally:
            os.kill(pid, signal.SIGCONT)
            holder.join(60)
        try:
            domains = self.entries(reply)  # XMLDesc once QEMU runs again
        finally:
            reading.close()
        (busy,) = [d for d in domains if d['uuid'] == guest.uuid]
        if 'block.0.rd.reqs' in busy['stats']:
            raise RuntimeError('the busy guest still had block counters')
        return self.write(
            'busy-disk',
            'A full cycle while another client held a job on the running '
            'guest (its QEMU stopped under a blockStats call): under '
            'NOWAIT its disks come back named, without counters.',
            'getAllDomainStats', libvirt_usage.STAT_GROUPS, NOWAIT, domains)

    def derive_vcpu_missing(self, source, guest):
        record = json.loads(json.dumps(source))
        (entry,) = [d for d in record['domains'] if d['uuid'] == guest.uuid]
        removed = sorted(k for k in entry['stats']
                         if k.startswith('vcpu.1.'))
        for key in removed:
            del entry['stats'][key]
        return self.write(
            'vcpu-missing-derived',
            'DERIVED, not recorded: all-kinds.json with the entries of '
            'vCPU 1 removed from the running guest (vcpu.current still 2), '
            'the case where a reader must fall back to cpu.time.',
            record['call'], record['groups'], record['flags'],
            record['domains'],
            derived={'from': 'all-kinds.json', 'domain': guest.uuid,
                     'removed': removed})

    def run(self):
        os.makedirs(self.out, exist_ok=True)
        daemon = qemu_fixtures.LibvirtDaemon()
        # The fixtures remove their guests and disks on the way out.
        with daemon, contextlib.ExitStack() as stack:
            guests, running = self.start_guests(stack)
            conn = guests.conn
            self.versions = {
                'libvirt': _version(conn.getLibVersion()),
                'qemu': _version(conn.getVersion()),
                'tool': 'tools/record-domain-stats.py',
                'date': datetime.date.today().isoformat(),
            }
            full = self.record_all(
                conn, 'all-kinds',
                'A full cycle: the groups the reader asks for all kinds.',
                libvirt_usage.STAT_GROUPS)
            for kind in base.ALL_KINDS:
                self.record_listed(
                    conn, kind,
                    'A steady cycle asking for %s only, split over the '
                    'listed domains.' % kind,
                    libvirt_usage.stat_groups((kind,)))
            self.record_all(
                conn, 'balloon',
                'A full cycle plus the balloon group (for memory meters).',
                libvirt_usage.STAT_GROUPS | libvirt.VIR_DOMAIN_STATS_BALLOON)
            self.record_busy(conn, guests, running)
            self.derive_vcpu_missing(full, running)
        return daemon.started


def _version(number):
    return '%d.%d.%d' % (number // 1000000, number // 1000 % 1000,
                         number % 1000)


def stop_started_daemons(since):
    """Stop the libvirtd (and virtlogd) this run started, by pid, unless
    another process's guests are on it by now."""
    with open(qemu_fixtures.LOCK_FILE, 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = libvirt.open(qemu_fixtures.URI)
        try:
            others = [dom.name() for dom in conn.listAllDomains()]
        finally:
            conn.close()
        if others:
            print('leaving libvirtd running: other guests use it (%s)'
                  % ', '.join(others))
            return
        for daemon in ('libvirtd', 'virtlogd'):
            path = os.path.join(qemu_fixtures.RUN_DIR, daemon + '.pid')
            try:
                if os.stat(path).st_mtime < since:
                    continue  # started before this run: not ours
                with open(path) as f:
                    pid = int(f.read())
            except (OSError, ValueError):
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while qemu_fixtures.pid_alive(pid):
                if time.monotonic() > deadline:
                    raise RuntimeError('%s (pid %d) did not stop'
                                       % (daemon, pid))
                time.sleep(0.1)
            print('stopped %s (pid %d), which this run started'
                  % (daemon, pid))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=DEFAULT_OUT,
                        help='directory of the recordings (default: %s)'
                        % os.path.relpath(DEFAULT_OUT))
    parser.add_argument('--keep-daemon', action='store_true',
                        help='leave a libvirtd this run started running')
    args = parser.parse_args()
    since = time.time() - 1
    started = Recorder(args.out).run()
    if started and not args.keep_daemon:
        stop_started_daemons(since)


if __name__ == '__main__':
    main()
