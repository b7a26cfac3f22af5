"""libvirt backend of the usage reader.

A cycle reads every domain's stats asking only for the state group and the
CPU, interface and block groups that are due, with NOWAIT so that a domain
whose job lock is held (a migration) is returned without stats instead of
stalling the call. The first cycle, and any after libvirt reported a domain
defined, undefined, started or stopped, is one ``getAllDomainStats`` call;
the others split the domains it listed over ``stats_workers`` concurrent
``domainListGetStats`` calls (see ``libvirt_domains`` for why).
Each domain's XML is parsed once and cached by uuid; it is parsed again when
the domain is restarted or redefined (new domain id) or shows a device the
cached XML did not have (hot plug).

Where the bulk API is unsupported, or returns no counters for a running
domain (libvirt's test driver returns only the state group), the reader
falls back to per-domain calls and says so once in the log.

This module and ``libvirt_domains`` are the only ones importing libvirt.
"""

import threading

import libvirt
from oslo_config import cfg
from oslo_log import log as logging

from nova_usage_ext import conf as usage_conf
from nova_usage_ext.virt import base
from nova_usage_ext.virt import domain_xml
from nova_usage_ext.virt import driver
from nova_usage_ext.virt import libvirt_domains

LOG = logging.getLogger(__name__)

# libvirt's virDomainState to nova's power_state (as nova's libvirt driver
# maps them).
POWER_STATE = {
    libvirt.VIR_DOMAIN_NOSTATE: base.NOSTATE,
    libvirt.VIR_DOMAIN_RUNNING: base.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: base.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: base.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: base.SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: base.SHUTDOWN,
    libvirt.VIR_DOMAIN_CRASHED: base.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: base.SUSPENDED,
}

# States without a guest process, hence without counters.
INACTIVE_STATES = frozenset((libvirt.VIR_DOMAIN_NOSTATE,
                             libvirt.VIR_DOMAIN_SHUTOFF,
                             libvirt.VIR_DOMAIN_CRASHED))

# Errors after which the connection is unusable and must be reopened.
CONNECTION_ERRORS = frozenset((libvirt.VIR_ERR_NO_CONNECT,
                               libvirt.VIR_ERR_INVALID_CONN,
                               libvirt.VIR_ERR_SYSTEM_ERROR,
                               libvirt.VIR_ERR_RPC))

# The stats groups each kind of counter needs; the state group always.
KIND_GROUPS = {
    base.CPU: (libvirt.VIR_DOMAIN_STATS_CPU_TOTAL |
               libvirt.VIR_DOMAIN_STATS_VCPU),
    base.INTERFACES: libvirt.VIR_DOMAIN_STATS_INTERFACE,
    base.DISKS: libvirt.VIR_DOMAIN_STATS_BLOCK,
    base.MEMORY: libvirt.VIR_DOMAIN_STATS_BALLOON,
}
# The key each group always fills when libvirt serves it.
KIND_MARKERS = {base.CPU: 'cpu.time', base.INTERFACES: 'net.count',
                base.DISKS: 'block.count', base.MEMORY: 'balloon.current'}

# The balloon group's keys (``memoryStats()`` names them without the
# prefix and with ``actual`` for ``current``) for each MemoryUsage field.
BALLOON_KEYS = {'actual_kib': 'current', 'available_kib': 'available',
                'usable_kib': 'usable', 'unused_kib': 'unused',
                'rss_kib': 'rss'}


def stat_groups(kinds):
    groups = libvirt.VIR_DOMAIN_STATS_STATE
    for kind in kinds:
        groups |= KIND_GROUPS[kind]
    return groups


STAT_GROUPS = stat_groups(base.ALL_KINDS)
NOWAIT = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT

# Concurrent stats calls per cycle by default, and the fewest domains worth
# a call of their own (below that, a thread costs more than it saves).
DEFAULT_STATS_WORKERS = 2
MIN_DOMAINS_PER_CALL = 4


def _silence_libvirt_stderr():
    # libvirt-python's default handler prints every error to stderr; the
    # reader logs the errors it cares about itself.
    libvirt.registerErrorHandler(lambda ctx, err: None, None)


def _positive_or_none(value):
    # libvirt reports -1 for counters the hypervisor does not keep.
    if value is None or value < 0:
        return None
    return value


# What vcpu_time answers when libvirt gave 0 for a vCPU that has run.
VCPU_UNREAD = object()


def vcpu_time(stats, ran=None):
    """Sum of each vCPU's time and wait, or None unless every current vCPU
    reports both (the vcpu.<n> entries may have holes).

    The reader then falls back to the process's CPU time, as ceilometer's
    inspector does for its ``cpu`` meter.

    :param ran: the indexes of the vCPUs seen with a time above 0 in this
        guest process, updated here. A time of 0 for one of them makes the
        answer ``VCPU_UNREAD``: libvirt 9.0 now and then answers 0 for a
        vCPU that has run, when it could not read the vCPU thread's figures
        (2 in 45,752 reads of running guests with other clients reading
        them; more often around a guest's destruction). Taken as a value,
        the ledger would follow it down and count the vCPU's whole time
        again on the next reading; as a hole, the process's CPU time would
        stand in for one reading, a jump in a cumulative meter. The reader
        takes the CPU kind as not read in that reply. (A new process's vCPU
        reads 0 until its first 10 ms: a value.)
    """
    total = 0
    found = 0
    unread = False
    for index in range(stats.get('vcpu.maximum', 0)):
        run = stats.get('vcpu.%d.time' % index)
        wait = stats.get('vcpu.%d.wait' % index)
        if run is None or wait is None:
            continue
        if ran is not None:
            if run:
                ran.add(index)
            elif index in ran:
                unread = True
        total += run + wait
        found += 1
    if unread:
        return VCPU_UNREAD
    if not found or found != stats.get('vcpu.current'):
        return None
    return total


def memory_from_balloon(stats, prefix='balloon.'):
    """The MemoryUsage of a domain's balloon figures (KiB), from the bulk
    stats (``balloon.<key>``) or ``memoryStats()`` (prefix ''; ``actual``
    for ``current``)."""
    memory = base.MemoryUsage()
    for field, key in BALLOON_KEYS.items():
        if not prefix and key == 'current':
            key = 'actual'
        setattr(memory, field, _positive_or_none(stats.get(prefix + key)))
    return memory


def is_connection_error(exc):
    return exc.get_error_code() in CONNECTION_ERRORS


class LibvirtConnection:
    """Opens a libvirt URI on first use and reopens it after it drops."""

    def __init__(self, uri, read_only=True, events=True):
        _silence_libvirt_stderr()
        if events:
            # Before any open: the reader's domain list relies on events.
            libvirt_domains.ensure_event_loop()
        self.uri = uri
        self.read_only = read_only
        self._conn = None
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                LOG.warning('libvirt connection to %s was lost; reconnecting',
                            self.uri)
                self._close_locked()
            try:
                if self.read_only:
                    self._conn = libvirt.openReadOnly(self.uri)
                else:
                    self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise base.HypervisorUnavailable(
                    'cannot connect to libvirt at %s: %s'
                    % (self.uri, exc.get_error_message()))
            return self._conn

    def reset(self):
        with self._lock:
            self._close_locked()

    def _close_locked(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except libvirt.libvirtError:
                pass
            self._conn = None

    close = reset


class _CachedDomain:
    """One guest process's parsed XML, and the vCPUs seen running in it
    (see ``vcpu_time``)."""
    __slots__ = ('domain_id', 'nova', 'device_names', 'vcpus_ran')

    def __init__(self, domain_id, nova, vcpus_ran=None):
        self.domain_id = domain_id
        self.nova = nova
        # Kept when the same process's XML is parsed again (a volume
        # attached): the set is the process's, not the parse's.
        self.vcpus_ran = set() if vcpus_ran is None else vcpus_ran
        names = set()
        if nova is not None:
            names.update(nova.disk_targets)
            names.update(tap for tap, _mac in nova.interfaces if tap)
        self.device_names = names


class _StatsCall(threading.Thread):
    """One ``domainListGetStats`` call on a daemon thread of its own."""

    def __init__(self, conn, domains, groups, flags):
        super().__init__(name='usage-ext-stats', daemon=True)
        self._call = (conn, domains, groups, flags)
        self._entries = None
        self._error = None

    def run(self):
        conn, domains, groups, flags = self._call
        try:
            self._entries = conn.domainListGetStats(domains, groups, flags)
        except Exception as exc:  # re-raised in the cycle's thread
            self._error = exc

    def result(self):
        if self._error is not None:
            raise self._error
        return self._entries


class LibvirtUsageReader(base.UsageReader):
    """Usage of nova's guests through one libvirt connection.

    :param connection: an object with ``get()`` returning a live
        ``virConnect`` and ``reset()`` dropping it (``LibvirtConnection``,
        or an adapter over nova's ``Host``).
    :param stats_workers: how many stats calls a cycle may run at once;
        1 makes every cycle one ``getAllDomainStats`` call.
    :param own_events: watch the connection's lifecycle events for the
        split cycles' domain list; False where the owner of the connection
        already gets them and passes them on with ``domains_changed``
        (nova's driver).
    """

    def __init__(self, connection, stats_workers=DEFAULT_STATS_WORKERS,
                 own_events=True):
        if stats_workers < 1:
            raise ValueError('stats_workers must be 1 or more, not %r'
                             % (stats_workers,))
        self._connection = connection
        self._cache = {}
        self._cache_lock = threading.Lock()
        self._bulk = True
        self._bulk_flags = NOWAIT
        self._fallback_logged = False
        self.stats_workers = stats_workers
        self._domains = (libvirt_domains.DomainList(own_events=own_events)
                         if stats_workers > 1 else None)

    # -- the contract ------------------------------------------------------

    def read_host(self, kinds=base.ALL_KINDS):
        conn = self._connection.get()
        read_at = base.utcnow()
        try:
            entries = self._list_with_stats(conn, stat_groups(kinds))
        except libvirt.libvirtError as exc:
            self._host_error(exc, 'list domains')
        usages = []
        seen = set()
        skipped = 0
        for dom, stats in entries:
            try:
                uuid = dom.UUIDString()
                seen.add(uuid)
                usage = self._read_listed(dom, uuid, stats, read_at, kinds)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    LOG.debug('Domain %s vanished while being read',
                              dom.name())
                    continue
                if is_connection_error(exc):
                    self._host_error(exc, 'read domain')
                LOG.warning('Skipping domain %s this cycle: %s',
                            dom.name(), exc.get_error_message())
                skipped += 1
                continue
            if usage is not None:
                usages.append(usage)
        self._prune(seen)
        return base.HostReading(usages, not skipped, skipped)

    def read_instance(self, uuid, devices=True):
        conn = self._connection.get()
        try:
            dom = conn.lookupByUUIDString(uuid)
            nova = self._nova_domain(dom, uuid, ())
            if nova is None:
                raise base.InstanceNotFound(
                    'domain %s is not a nova instance' % uuid)
            read_at = base.utcnow()
            kinds = base.ALL_KINDS if devices else (base.CPU,)
            stats = self._one_domain_stats(conn, dom, kinds)
            if stats is None:
                return self._read_domain(dom, nova, read_at, kinds)
            return self._from_stats(dom, nova, stats, read_at, kinds)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise base.InstanceNotFound('no domain %s on this host' % uuid)
            self._host_error(exc, 'read domain %s' % uuid)

    def read_host_figures(self):
        # One call per kind: CPU times, free memory, and the node's info
        # (CPU count, memory size).
        conn = self._connection.get()
        read_at = base.utcnow()
        try:
            info = conn.getInfo()
            cpu = conn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS)
            free_bytes = conn.getFreeMemory()
        except libvirt.libvirtError as exc:
            self._host_error(exc, 'read the host figures')
        busy = idle = None
        if 'user' in cpu and 'kernel' in cpu:
            busy = cpu['user'] + cpu['kernel']
        if 'idle' in cpu:
            idle = cpu['idle'] + cpu.get('iowait', 0)
        return base.HostFigures(
            read_at=read_at, cpus=info[2], cpu_busy_ns=busy, cpu_idle_ns=idle,
            memory_total_kb=info[1] * 1024, memory_free_kb=free_bytes // 1024)

    def domains_changed(self):
        """A domain was defined, undefined, started or stopped: the next
        cycle lists the domains again (for readers with ``own_events``
        False)."""
        if self._domains is not None:
            self._domains.changed()

    def close(self):
        if self._domains is not None:
            self._domains.close()
        self._connection.reset()

    # -- helpers -----------------------------------------------------------

    def _host_error(self, exc, what):
        if is_connection_error(exc):
            self._connection.reset()
        raise base.HypervisorUnavailable(
            'libvirt failed to %s: %s' % (what, exc.get_error_message()))

    def _list_with_stats(self, conn, groups):
        if self._bulk:
            parts = self._split_listed(conn)
            if parts is not None:
                return self._stats_in_parallel(conn, parts, groups)
            token = (self._domains.begin_listing(conn)
                     if self._domains is not None else None)
            entries = self._all_stats(conn, groups)
            if entries is not None:
                if token is not None:
                    self._domains.store(token, [dom for dom, _ in entries])
                return entries
        return [(dom, None) for dom in conn.listAllDomains()]

    def _all_stats(self, conn, groups):
        """One ``getAllDomainStats`` call; None where the API is missing."""
        try:
            return conn.getAllDomainStats(groups, self._bulk_flags)
        except libvirt.libvirtError as exc:
            code = exc.get_error_code()
            if code == libvirt.VIR_ERR_INVALID_ARG and self._bulk_flags:
                # libvirt older than 4.5 does not know NOWAIT.
                LOG.warning('libvirt rejects the NOWAIT flag; bulk stats '
                            'may wait for busy domains')
                self._bulk_flags = 0
                return conn.getAllDomainStats(groups, 0)
            if code != libvirt.VIR_ERR_NO_SUPPORT:
                raise
            LOG.warning('libvirt at %s has no bulk stats API; reading '
                        'each domain separately', conn.getURI())
            self._bulk = False
            self._fallback_logged = True
            return None

    def _split_listed(self, conn):
        """The listed domains in disjoint parts, one per call, or None when
        a full call is due or too few domains are worth splitting."""
        if self._domains is None:
            return None
        domains = self._domains.current(conn)
        if domains is None:
            return None
        calls = min(self.stats_workers,
                    len(domains) // MIN_DOMAINS_PER_CALL)
        if calls < 2:
            return None
        return [domains[i::calls] for i in range(calls)]

    def _stats_in_parallel(self, conn, parts, groups):
        # The calling thread reads the first part, a thread of its own each
        # other part; libvirt-python lets the GIL go during each call. The
        # threads are daemons, started per cycle: none outlives the cycle
        # or keeps the process from exiting.
        calls = [_StatsCall(conn, part, groups, self._bulk_flags)
                 for part in parts[1:]]
        for call in calls:
            call.start()
        try:
            entries = list(conn.domainListGetStats(parts[0], groups,
                                                   self._bulk_flags))
        finally:
            # Never leave a call running past the cycle, even on error.
            for call in calls:
                call.join()
        for call in calls:
            entries.extend(call.result())
        LOG.debug('Read %d listed domains in %d concurrent stats calls',
                  sum(len(part) for part in parts), len(parts))
        return entries

    def _one_domain_stats(self, conn, dom, kinds):
        """Bulk stats of one domain: the same source as ``read_all``, so
        that a single read is never below the cycle's just before (QEMU's
        info() counts CPU time in 10 ms steps, bulk stats in ns)."""
        if not self._bulk:
            return None
        try:
            ((_dom, stats),) = conn.domainListGetStats(
                [dom], stat_groups(kinds), self._bulk_flags)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT,
                                        libvirt.VIR_ERR_INVALID_ARG):
                return None
            raise
        except ValueError:  # no entry for the domain
            return None
        return stats

    def _read_listed(self, dom, uuid, stats, read_at, kinds):
        device_names = ()
        if stats:
            device_names = [stats.get('block.%d.name' % i)
                            for i in range(stats.get('block.count', 0))]
            device_names += [stats.get('net.%d.name' % i)
                             for i in range(stats.get('net.count', 0))]
        nova = self._nova_domain(dom, uuid, device_names)
        if nova is None:
            return None
        if stats is None:
            return self._read_domain(dom, nova, read_at, kinds)
        return self._from_stats(dom, nova, stats, read_at, kinds)

    def _from_stats(self, dom, nova, stats, read_at, kinds):
        state = stats.get('state.state', libvirt.VIR_DOMAIN_NOSTATE)
        if state in INACTIVE_STATES:
            return self._usage(nova, state, read_at, None, kinds=kinds)
        if any(KIND_MARKERS[kind] not in stats for kind in kinds):
            # The driver fills only the state group (libvirt's test driver
            # does): read such domains one by one.
            if not self._fallback_logged:
                self._fallback_logged = True
                LOG.warning('libvirt returned no bulk counters; reading '
                            'such domains one by one')
            return self._read_domain(dom, nova, read_at, kinds)
        # A domain whose job another client holds (a migration, nova,
        # another poller) comes back under NOWAIT with its disks named but
        # without counters: they are missing this cycle only.
        return self._usage_from_stats(nova, state, stats, read_at, dom.ID(),
                                      kinds)

    def _nova_domain(self, dom, uuid, device_names):
        """The parsed XML of a domain, from cache or parsed now."""
        domain_id = dom.ID()
        cached = self._cache.get(uuid)
        same = self._same_process(uuid, domain_id)
        if same is not None and all(
                name in same.device_names or same.nova is None
                for name in device_names if name):
            return same.nova
        try:
            nova = domain_xml.parse(dom.XMLDesc(0))
        except domain_xml.MalformedMetadata as exc:
            nova = None
            if cached is None:
                LOG.warning('Domain %s (%s) has malformed nova metadata and '
                            'is not reported: %s', dom.name(), uuid, exc)
        else:
            if nova is None and cached is None:
                LOG.info('Domain %s (%s) has no nova metadata; it is not a '
                         'nova instance and is not reported', dom.name(), uuid)
        with self._cache_lock:
            self._cache[uuid] = _CachedDomain(
                domain_id, nova, same.vcpus_ran if same else None)
        return nova

    def _same_process(self, uuid, domain_id):
        """The cache entry of ``uuid`` if it is of this guest process."""
        cached = self._cache.get(uuid)
        if cached is not None and cached.domain_id == domain_id:
            return cached
        return None

    def _prune(self, seen):
        with self._cache_lock:
            for uuid in [u for u in self._cache if u not in seen]:
                del self._cache[uuid]

    def _usage(self, nova, libvirt_state, read_at, cpu_time_ns,
               domain_id=None, kinds=base.ALL_KINDS):
        flavor = nova.flavor
        return base.InstanceUsage(
            generation=domain_id,
            kinds=frozenset(kinds) - {base.MEMORY},
            hypervisor_state=libvirt_state,
            image_ref=nova.image_ref,
            uuid=nova.uuid,
            name=nova.name,
            display_name=nova.display_name,
            project_id=nova.project_id,
            user_id=nova.user_id,
            flavor=flavor,
            state=POWER_STATE.get(libvirt_state, base.NOSTATE),
            read_at=read_at,
            cpu_time_ns=cpu_time_ns,
            vcpus=nova.vcpus if nova.vcpus is not None else flavor.vcpus,
            memory_mb=(flavor.memory_mb if flavor.memory_mb is not None
                       else nova.memory_mb),
        )

    def _usage_from_stats(self, nova, state, stats, read_at, domain_id,
                          kinds=base.ALL_KINDS):
        read = set(kinds)
        usage = self._usage(nova, state, read_at, stats.get('cpu.time'),
                            domain_id)
        if 'cpu.time' in stats:
            same = self._same_process(nova.uuid, domain_id)
            vcpus = vcpu_time(stats, same.vcpus_ran if same else None)
            if vcpus is VCPU_UNREAD:
                # CPU not read this time: absent from this reading only
                # (the process's time alone would make consumers that
                # fall back to it jump).
                usage.cpu_time_ns = None
                read.discard(base.CPU)
            elif vcpus is not None:
                usage.vcpu_time_ns = vcpus
            else:
                usage.vcpu_time_ns = usage.cpu_time_ns
                usage.vcpu_time_fallback = True
        else:
            # The CPU groups were not asked for: no CPU time to stand in.
            read.discard(base.CPU)
        if base.MEMORY in read:
            usage.memory = memory_from_balloon(stats)
        volumes = dict(nova.disks)
        for i in range(stats.get('block.count', 0)):
            key = 'block.%d.' % i
            name = stats.get(key + 'name')
            if name not in volumes:
                continue  # cdrom, floppy
            if key + 'rd.reqs' not in stats:
                # Busy under NOWAIT: no counters this cycle, which says
                # nothing about the disks' usage.
                read.discard(base.DISKS)
                continue
            usage.disks.append(base.DiskUsage(
                device=name,
                read_bytes=stats.get(key + 'rd.bytes'),
                read_requests=stats.get(key + 'rd.reqs'),
                write_bytes=stats.get(key + 'wr.bytes'),
                write_requests=stats.get(key + 'wr.reqs'),
                capacity_bytes=stats.get(key + 'capacity'),
                volume_id=volumes[name]))
        macs = {tap: mac for tap, mac in nova.interfaces if tap}
        for i in range(stats.get('net.count', 0)):
            key = 'net.%d.' % i
            name = stats.get(key + 'name')
            if not name:
                # No host-side device (SR-IOV, vDPA): libvirt gives
                # neither a name nor counters.
                continue
            # A named interface without counters (libvirt could not read
            # them this time) is kept with none: absent, never 0.
            usage.interfaces.append(base.InterfaceUsage(
                name=name,
                mac=macs.get(name),
                rx_bytes=stats.get(key + 'rx.bytes'),
                rx_packets=stats.get(key + 'rx.pkts'),
                rx_errors=stats.get(key + 'rx.errs'),
                rx_drops=stats.get(key + 'rx.drop'),
                tx_bytes=stats.get(key + 'tx.bytes'),
                tx_packets=stats.get(key + 'tx.pkts'),
                tx_errors=stats.get(key + 'tx.errs'),
                tx_drops=stats.get(key + 'tx.drop')))
        usage.kinds = frozenset(read)
        return usage

    def _read_domain(self, dom, nova, read_at, kinds):
        """Per-domain calls: info, then blockStats/interfaceStats."""
        state, _max_kib, _mem_kib, _nr_vcpus, cpu_time = dom.info()
        if state in INACTIVE_STATES:
            return self._usage(nova, state, read_at, None, kinds=kinds)
        read = set(kinds) | {base.CPU}
        usage = self._usage(nova, state, read_at, cpu_time, dom.ID())
        if base.MEMORY in kinds:
            try:
                usage.memory = memory_from_balloon(dom.memoryStats(), '')
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                LOG.debug('No memory stats for %s: %s', nova.name,
                          exc.get_error_message())
                read.discard(base.MEMORY)
        # Per-domain calls give no per-vCPU wait time: the process's CPU
        # time stands in, as in ceilometer's inspector.
        usage.vcpu_time_ns = cpu_time
        usage.vcpu_time_fallback = True
        for dev, volume_id in (nova.disks if base.DISKS in kinds else ()):
            try:
                rd_req, rd_bytes, wr_req, wr_bytes, errs = dom.blockStats(dev)
                capacity = dom.blockInfo(dev)[0]
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                LOG.debug('No stats for disk %s of %s: %s', dev, nova.name,
                          exc.get_error_message())
                read.discard(base.DISKS)
                continue
            usage.disks.append(base.DiskUsage(
                device=dev, read_bytes=rd_bytes, read_requests=rd_req,
                write_bytes=wr_bytes, write_requests=wr_req,
                errors=_positive_or_none(errs), capacity_bytes=capacity,
                volume_id=volume_id))
        for tap, mac in (nova.interfaces if base.INTERFACES in kinds
                         else ()):
            if not tap:
                continue  # no host-side device (e.g. type='user'): no stats
            try:
                (rx_bytes, rx_packets, rx_errs, rx_drop,
                 tx_bytes, tx_packets, tx_errs, tx_drop) = \
                    dom.interfaceStats(tap)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                LOG.debug('No stats for interface %s of %s: %s', tap,
                          nova.name, exc.get_error_message())
                read.discard(base.INTERFACES)
                continue
            usage.interfaces.append(base.InterfaceUsage(
                name=tap, mac=mac,
                rx_bytes=_positive_or_none(rx_bytes),
                rx_packets=_positive_or_none(rx_packets),
                rx_errors=_positive_or_none(rx_errs),
                rx_drops=_positive_or_none(rx_drop),
                tx_bytes=_positive_or_none(tx_bytes),
                tx_packets=_positive_or_none(tx_packets),
                tx_errors=_positive_or_none(tx_errs),
                tx_drops=_positive_or_none(tx_drop)))
        usage.kinds = frozenset(read)
        return usage


class NovaHostConnection:
    """Adapts nova's libvirt ``Host``, which reconnects by itself."""

    def __init__(self, host):
        self._host = host

    def get(self):
        try:
            return self._host.get_connection()
        except Exception as exc:  # nova's HypervisorUnavailable and kin
            raise base.HypervisorUnavailable(
                'nova has no libvirt connection: %s' % exc)

    def reset(self):
        pass


def configured_stats_workers(conf):
    # Validated and clamped: a bad value is logged, never raised into nova.
    return usage_conf.libvirt_stats_workers(conf)


class LibvirtUsageMixin(driver.UsageDriverMixin):
    """Usage methods for nova's LibvirtDriver (which owns ``_host``)."""

    @property
    def usage_reader(self):
        reader = getattr(self, '_usage_reader', None)
        if reader is None:
            # nova-compute runs libvirt's event loop and owns the connection;
            # its Host gets the lifecycle events (see domains_changed).
            reader = LibvirtUsageReader(
                NovaHostConnection(self._host),
                stats_workers=configured_stats_workers(cfg.CONF),
                own_events=False)
            self._usage_reader = reader
        return reader


class LibvirtUsageHost(LibvirtUsageMixin):
    """The same methods over a plain libvirt connection (the CLI, tests)."""

    def __init__(self, connection):
        self._usage_reader = LibvirtUsageReader(connection)
