"""What every part of the benchmarks shares: statistics, CPU clocks of this
process and of other processes, the libvirt connection filter, clean-up.
"""

import contextlib
import logging
import os
import platform
import re
import signal
import statistics
import subprocess
import time

# Who the poll-cycle benchmarks measure: this package's reader as shipped
# (its steady cycles split over concurrent calls), the same reader held to
# one call per cycle, and ceilometer's compute agent. Here, not in
# poll_cycle, so that what only names them needs no ceilometer.
OURS = 'ours'
ONE_CALL = 'ours_one_call'
CEILOMETER = 'ceilometer'

CLK_TCK = os.sysconf('SC_CLK_TCK')
PREFIX = 'nue-bench-'


# -- statistics ---------------------------------------------------------------

def percentile(values, q):
    """The q-th percentile (0..100), linear interpolation; None if empty."""
    values = sorted(values)
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    pos = (len(values) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def summary(values):
    """median, min, max, p25, p75 (and n) of a list of numbers."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {'n': len(values), 'median': statistics.median(values),
            'min': min(values), 'max': max(values),
            'p25': percentile(values, 25), 'p75': percentile(values, 75),
            'mean': statistics.fmean(values)}


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


# -- CPU clocks ---------------------------------------------------------------

def proc_stat_cpu(pid):
    """utime + stime of a process (all its threads), in seconds, from
    /proc/<pid>/stat (clock ticks: 10 ms resolution on most kernels)."""
    with open('/proc/%d/stat' % pid) as f:
        text = f.read()
    # The command name may contain spaces and parentheses: split after it.
    fields = text[text.rindex(')') + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_schedstat_threads(pid):
    """Run time of each live thread of a process, tid -> seconds, from
    /proc/<pid>/task/*/schedstat (nanoseconds)."""
    times = {}
    base = '/proc/%d/task' % pid
    for tid in os.listdir(base):
        try:
            with open('%s/%s/schedstat' % (base, tid)) as f:
                times[(pid, tid)] = int(f.read().split()[0]) / 1e9
        except (FileNotFoundError, ProcessLookupError):
            continue
    return times


def proc_schedstat_cpu(pid):
    """Run time of all live threads of a process, in seconds."""
    return sum(proc_schedstat_threads(pid).values())


class ProcessClock:
    """CPU time of a set of other processes, both ways.

    ``read()`` gives (seconds from /proc stat ticks, per-thread schedstat
    seconds); ``delta(before, after)`` the time spent between two readings,
    schedstat over the threads alive at both: a shared libvirtd starts and
    ends threads (one per running guest) for others' guests meanwhile, and
    a thread that ends takes its time with it.
    """

    def __init__(self, pids):
        self.pids = list(pids)

    def read(self):
        stat = 0.0
        threads = {}
        for pid in self.pids:
            try:
                stat += proc_stat_cpu(pid)
                threads.update(proc_schedstat_threads(pid))
            except (FileNotFoundError, ProcessLookupError):
                pass
        return stat, threads

    @staticmethod
    def delta(before, after):
        sched = sum(t - before[1][k] for k, t in after[1].items()
                    if k in before[1])
        return after[0] - before[0], sched


def _comm(pid):
    try:
        with open('/proc/%s/comm' % pid) as f:
            return f.read().strip()
    except OSError:
        return None


def libvirtd_pid():
    """The pid of the running libvirtd."""
    for pidfile in ('/run/nova-usage-ext/libvirtd.pid', '/run/libvirtd.pid',
                    '/var/run/libvirtd.pid'):
        try:
            with open(pidfile) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if _comm(pid) == 'libvirtd':
            return pid
    pids = [int(p) for p in os.listdir('/proc')
            if p.isdigit() and _comm(p) == 'libvirtd']
    if len(pids) != 1:
        raise RuntimeError('expected one libvirtd process, found %s' % pids)
    return pids[0]


def qemu_pid(domain_name):
    """The pid of a running QEMU guest, from libvirt's pid file."""
    try:
        with open('/run/libvirt/qemu/%s.pid' % domain_name) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


class Measure:
    """Wall time and this process's CPU time of a block, and the CPU time
    that other processes (``clocks``: name -> ProcessClock) spent meanwhile.

    After the block: ``wall``, ``cpu`` (seconds) and ``other[name]`` =
    (seconds from /proc stat ticks, seconds from schedstat).
    """

    def __init__(self, clocks=None):
        self.clocks = clocks or {}

    def __enter__(self):
        self._other0 = {n: c.read() for n, c in self.clocks.items()}
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall0
        self.cpu = time.process_time() - self._cpu0
        self.other = {}
        for name, clock in self.clocks.items():
            self.other[name] = clock.delta(self._other0[name], clock.read())
        return False


# -- libvirt ------------------------------------------------------------------

class OnlyTheseDomains:
    """A virConnect proxy that lists only the given domains.

    The daemon is shared with the test suite and other runs: the readers
    must see the benchmark's own domains only. The listing calls are made
    exactly as the readers make them (same API, same arguments) and their
    results filtered afterwards, so the number of calls is unchanged.
    ``foreign`` counts the other domains seen in the last listing.
    """

    def __init__(self, conn, uuids):
        self._conn = conn
        self.uuids = set(uuids)
        self.foreign = 0

    def listAllDomains(self, *args):
        domains = self._conn.listAllDomains(*args)
        mine = [d for d in domains if d.UUIDString() in self.uuids]
        self.foreign = len(domains) - len(mine)
        return mine

    def getAllDomainStats(self, *args):
        entries = self._conn.getAllDomainStats(*args)
        mine = [(d, s) for d, s in entries if d.UUIDString() in self.uuids]
        self.foreign = len(entries) - len(mine)
        return mine

    def __getattr__(self, name):
        return getattr(self._conn, name)


def quiet_logging():
    """Keep the libraries' warnings (ceilometer's per-disk warning on the
    test driver, ours once) off the terminal and out of the timings."""
    logging.basicConfig(level=logging.ERROR,
                        format='%(levelname)s %(name)s: %(message)s')
    for name in ('ceilometer', 'nova_usage_ext', 'oslo_messaging',
                 'oslo.messaging', 'kombu', 'amqp', 'stevedore', 'tests'):
        logging.getLogger(name).setLevel(logging.CRITICAL)


# -- clean-up on failure and signals ------------------------------------------

class Interrupted(BaseException):
    pass


@contextlib.contextmanager
def interruptible():
    """SIGTERM and SIGHUP raise like Ctrl-C does, so that every ``finally``
    and fixture clean-up runs."""
    def handler(signum, frame):
        raise Interrupted('signal %d' % signum)

    previous = {sig: signal.signal(sig, handler)
                for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def shielded():
    """Run clean-up code without being interrupted halfway by a second
    Ctrl-C or signal."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def cleanup_fixture(fixture):
    with shielded():
        fixture.cleanUp()


# -- the machine --------------------------------------------------------------

def _first_line(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def machine():
    info = {'nproc': os.cpu_count(), 'kernel': platform.release(),
            'python': platform.python_version()}
    try:
        with open('/proc/cpuinfo') as f:
            match = re.search(r'^model name\s*:\s*(.*)$', f.read(), re.M)
        info['cpu_model'] = match.group(1) if match else None
    except OSError:
        info['cpu_model'] = None
    try:
        with open('/proc/meminfo') as f:
            match = re.search(r'^MemTotal:\s*(\d+) kB', f.read(), re.M)
        info['memory_mib'] = int(match.group(1)) // 1024 if match else None
    except OSError:
        info['memory_mib'] = None
    info['libvirtd'] = _first_line(['libvirtd', '--version'])
    info['qemu'] = _first_line(['qemu-system-x86_64', '--version'])
    info['rabbitmq'] = _rabbitmq_version()
    try:
        import libvirt
        v = libvirt.getVersion()
        info['libvirt_python'] = '%d.%d.%d' % (v // 1000000,
                                               v // 1000 % 1000, v % 1000)
    except Exception:
        info['libvirt_python'] = None
    for dist in ('nova', 'ceilometer', 'oslo.messaging',
                 'oslo.versionedobjects'):
        try:
            from importlib import metadata
            info[dist] = metadata.version(dist)
        except Exception:
            info[dist] = None
    return info


def _rabbitmq_version():
    try:
        out = subprocess.run(['dpkg-query', '-W', '-f', '${Version}',
                              'rabbitmq-server'], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        return out or None
    except (OSError, subprocess.SubprocessError):
        return None
