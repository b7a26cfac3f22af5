"""The floor: what libvirtd does per guest for each stats group.

For each group alone (with the state group, as every call has it), on the
benchmark's guests:

- its cost: wall time of a ``domainListGetStats`` call and libvirtd's CPU
  time (schedstat), per guest, medians over repetitions;
- its work inside libvirtd: ``strace -f`` attached to libvirtd for a few
  calls counts the QMP commands sent to QEMU (``{"execute": ...}`` written
  on a monitor socket) and the files opened, sorted into cgroup files,
  ``/proc/<pid>/task`` files, ``/proc/net/dev`` and others.

strace slows the traced daemon: its counts are taken apart from the
timings, which are measured without it. The daemon may be shared: only
the QMP commands written on these guests' monitor sockets and the files
of these guests count, and of a few traced windows the least count of
each (other clients polling the same guests add to some windows only).
"""

import collections
import os
import re
import signal
import statistics
import subprocess
import tempfile
import time

import libvirt

from benchmarks import common

_G = libvirt
GROUPS = {
    'state': _G.VIR_DOMAIN_STATS_STATE,
    'cpu-total': _G.VIR_DOMAIN_STATS_CPU_TOTAL,
    'vcpu': _G.VIR_DOMAIN_STATS_VCPU,
    'balloon': _G.VIR_DOMAIN_STATS_BALLOON,
    'interface': _G.VIR_DOMAIN_STATS_INTERFACE,
    'block': _G.VIR_DOMAIN_STATS_BLOCK,
    'cpu-total+vcpu': _G.VIR_DOMAIN_STATS_CPU_TOTAL | _G.VIR_DOMAIN_STATS_VCPU,
    'vcpu+interface+block': (_G.VIR_DOMAIN_STATS_VCPU |
                             _G.VIR_DOMAIN_STATS_INTERFACE |
                             _G.VIR_DOMAIN_STATS_BLOCK),
    'cpu-total+vcpu+interface+block': (
        _G.VIR_DOMAIN_STATS_CPU_TOTAL | _G.VIR_DOMAIN_STATS_VCPU |
        _G.VIR_DOMAIN_STATS_INTERFACE | _G.VIR_DOMAIN_STATS_BLOCK),
}
NOWAIT = _G.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT

_EXECUTE = re.compile(r'\\?"execute\\?"\s*:\s*\\?"([a-z0-9-]+)')
_OPENAT = re.compile(r'openat\([^"]*"([^"]+)"')


def _kind_of_path(path):
    if path.startswith('/sys/fs/cgroup'):
        return 'cgroup'
    if re.match(r'/proc/\d+/task/', path):
        return '/proc/<pid>/task'
    if path == '/proc/net/dev':
        return '/proc/net/dev'
    if path.startswith('/proc/'):
        return '/proc other'
    return 'other'


def monitor_fds(libvirtd_pid, qemu_pids):
    """libvirtd's file descriptors of the monitor sockets of these QEMUs
    (the daemon is shared: other guests' QMP traffic is not counted)."""
    text = subprocess.run(['ss', '-xpn'], capture_output=True, text=True,
                          check=True).stdout
    peers = set()
    fd_of_inode = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[0] != 'u_str':
            continue
        local, peer = fields[5], fields[7]
        for pid, fd in re.findall(r'pid=(\d+),fd=(\d+)', line):
            if int(pid) in qemu_pids and 'monitor.sock' in fields[4]:
                peers.add(peer)
            elif int(pid) == libvirtd_pid:
                fd_of_inode[local] = int(fd)
    return {fd_of_inode[p] for p in peers if p in fd_of_inode}


def parse_strace(text, fds, qemu_pids, cgroup_names):
    """QMP commands sent on the given fds, and the files opened for the
    given guests (their cgroups, their QEMUs' /proc entries) or for all
    (/proc/net/dev), by kind, in an strace log."""
    qmp = collections.Counter()
    opens = collections.Counter()
    pids = tuple('/proc/%d/' % p for p in qemu_pids)
    for line in text.splitlines():
        call = re.search(r'\b(write|writev|sendmsg)\((\d+),', line)
        if call and int(call.group(2)) in fds:
            qmp.update(_EXECUTE.findall(line))
            continue
        path = _OPENAT.search(line)
        if not path:
            continue
        path = path.group(1)
        if (path == '/proc/net/dev' or path.startswith(pids) or
                any(name in path for name in cgroup_names)):
            opens[_kind_of_path(path)] += 1
    return qmp, opens


def _traced(pid, func):
    """Run func with strace attached to every thread of pid."""
    fd, log = tempfile.mkstemp(prefix='nue-floor-', suffix='.strace')
    os.close(fd)
    tracer = subprocess.Popen(
        ['strace', '-f', '-qq', '-s', '256', '-e',
         'trace=write,writev,sendmsg,openat', '-o', log, '-p', str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # attached to every thread
        func()
        time.sleep(0.3)
    finally:
        tracer.send_signal(signal.SIGINT)
        try:
            tracer.wait(10)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait()
    try:
        with open(log, errors='replace') as f:
            return f.read()
    finally:
        os.remove(log)


def _cgroup_names(qemu_pids):
    names = []
    for pid in qemu_pids:
        try:
            with open('/proc/%d/cgroup' % pid) as f:
                names.extend(part for part in f.read().split('/')
                             if part.startswith('qemu-'))
        except OSError:
            pass
    return [n for n in names if n]


def run(uri, uuids, qemu_pids, log, reps=5, traced_calls=2, windows=3):
    """Per group: per-guest wall and libvirtd CPU, QMP commands and file
    opens per guest per call."""
    conn = libvirt.openReadOnly(uri)
    pid = common.libvirtd_pid()
    clock = common.ProcessClock([pid])
    n = len(uuids)
    out = {'guests': n, 'groups': {}}
    try:
        doms = [conn.lookupByUUIDString(u) for u in uuids]
        for name, group in GROUPS.items():
            flags = _G.VIR_DOMAIN_STATS_STATE | group
            walls, cpus = [], []
            conn.domainListGetStats(doms, flags, NOWAIT)  # warm
            for _ in range(reps):
                c0 = clock.read()
                t0 = time.perf_counter()
                conn.domainListGetStats(doms, flags, NOWAIT)
                walls.append(time.perf_counter() - t0)
                cpus.append(clock.delta(c0, clock.read())[1])
            # Other clients of the shared daemon poll these guests too:
            # the least count over a few windows is this call's own.
            fds = monitor_fds(pid, set(qemu_pids))
            names = _cgroup_names(qemu_pids)
            qmp = opens = collections.Counter()
            for window in range(windows):
                text = _traced(pid, lambda: [
                    conn.domainListGetStats(doms, flags, NOWAIT)
                    for _ in range(traced_calls)])
                q, o = parse_strace(text, fds, qemu_pids, names)
                qmp = q if window == 0 else qmp & q
                opens = o if window == 0 else opens & o
            per = n * traced_calls
            out['groups'][name] = {
                'wall_per_guest_s': statistics.median(walls) / n,
                'libvirtd_cpu_per_guest_s': statistics.median(cpus) / n,
                'qmp_per_guest': {k: v / per for k, v in qmp.items()},
                'opens_per_guest': {k: v / per for k, v in opens.items()},
            }
            log('floor: %-9s %.3f ms wall, %.3f ms libvirtd CPU per guest; '
                'QMP %s; opens %s' % (
                    name, out['groups'][name]['wall_per_guest_s'] * 1e3,
                    out['groups'][name]['libvirtd_cpu_per_guest_s'] * 1e3,
                    dict(out['groups'][name]['qmp_per_guest']) or '-',
                    dict(out['groups'][name]['opens_per_guest']) or '-'))
        return out
    finally:
        conn.close()
