"""The contract every hypervisor backend fulfils, and its plain records.

A backend reads usage for the nova instances on one host and returns the
records below. Callers never see a hypervisor library's own exceptions:
backends map them to the exceptions defined here.

Counters that a backend cannot provide are ``None`` (absent), never 0.
"""

import abc
import dataclasses
import datetime

# nova's power_state codes (nova/compute/power_state.py); duplicated here so
# that the readers do not import nova.
NOSTATE = 0
RUNNING = 1
PAUSED = 3
SHUTDOWN = 4
CRASHED = 6
SUSPENDED = 7

POWER_STATE_NAMES = {
    NOSTATE: 'pending',
    RUNNING: 'running',
    PAUSED: 'paused',
    SHUTDOWN: 'shutdown',
    CRASHED: 'crashed',
    SUSPENDED: 'suspended',
}


# The kinds of counters a cycle may ask for.
CPU = 'cpu'
INTERFACES = 'interfaces'
DISKS = 'disks'
# The cumulative kinds, which the ledger counts; what a cycle reads unless
# told otherwise.
ALL_KINDS = (CPU, INTERFACES, DISKS)
# The guest's memory (a gauge, never counted): read only when asked for,
# because it makes the hypervisor ask each guest's balloon driver.
MEMORY = 'memory'
EVERY_KIND = ALL_KINDS + (MEMORY,)


# The cumulative counters of each record, by name: the one list the
# counter cache and the payloads follow.
CPU_COUNTERS = ('cpu_time_ns', 'vcpu_time_ns')
DISK_IO_COUNTERS = ('read_bytes', 'read_requests', 'write_bytes',
                    'write_requests')
INTERFACE_COUNTERS = ('rx_bytes', 'rx_packets', 'rx_errors', 'rx_drops',
                      'tx_bytes', 'tx_packets', 'tx_errors', 'tx_drops')
# The memory figures of a reading (MemoryUsage), in KiB as hypervisors
# report them: gauges, not counters.
MEMORY_GAUGES = ('actual_kib', 'available_kib', 'usable_kib', 'unused_kib',
                 'rss_kib')


class UsageReaderError(Exception):
    """Base of every error a usage reader raises."""


class HypervisorUnavailable(UsageReaderError):
    """The hypervisor could not be reached; the next read tries again."""


class InstanceNotFound(UsageReaderError):
    """No nova instance with that uuid runs on this host."""


class DeviceNotFound(UsageReaderError):
    """The instance has no disk or interface with that name."""


@dataclasses.dataclass(slots=True)
class Flavor:
    """The flavor as the hypervisor recorded it when the guest was built."""
    name: str
    vcpus: int | None = None
    memory_mb: int | None = None
    root_gb: int | None = None
    ephemeral_gb: int | None = None
    swap_mb: int | None = None
    # nova's flavor id, where nova recorded it (nova 25 and later).
    id: str | None = None


@dataclasses.dataclass(slots=True)
class DiskUsage:
    """Cumulative counters of one guest disk since its process started."""
    device: str
    read_bytes: int | None = None
    read_requests: int | None = None
    write_bytes: int | None = None
    write_requests: int | None = None
    errors: int | None = None
    capacity_bytes: int | None = None
    # The Cinder volume behind the disk, None for local disks.
    volume_id: str | None = None


@dataclasses.dataclass(slots=True)
class InterfaceUsage:
    """Cumulative counters of one guest interface, seen from the guest.

    ``rx`` is what the guest received (ceilometer's ``incoming``).
    """
    name: str
    mac: str | None = None
    rx_bytes: int | None = None
    rx_packets: int | None = None
    rx_errors: int | None = None
    rx_drops: int | None = None
    tx_bytes: int | None = None
    tx_packets: int | None = None
    tx_errors: int | None = None
    tx_drops: int | None = None


@dataclasses.dataclass(slots=True)
class MemoryUsage:
    """The guest's memory as its balloon driver last reported it, in KiB.

    A figure the guest did not report is None: without a balloon driver
    (or with nova's ``[libvirt] mem_stats_period_seconds = 0``) a guest
    reports ``actual_kib`` alone.
    """
    # The memory the balloon leaves the guest.
    actual_kib: int | None = None
    # What the guest's kernel can use in all (its MemTotal).
    available_kib: int | None = None
    # What it could use without swapping (its MemAvailable).
    usable_kib: int | None = None
    # What it leaves entirely unused (its MemFree).
    unused_kib: int | None = None
    # The guest process's resident memory on the host.
    rss_kib: int | None = None

    @property
    def available_mb(self):
        """Ceilometer's ``memory.available`` (MiB), or None."""
        if self.available_kib is None:
            return None
        return self.available_kib / 1024

    @property
    def used_mb(self):
        """Ceilometer's ``memory.usage`` (MiB): available less usable
        (less unused where usable is missing), or None."""
        free = self.usable_kib
        if free is None:
            free = self.unused_kib
        if self.available_kib is None or free is None:
            return None
        return (self.available_kib - free) / 1024


@dataclasses.dataclass(slots=True)
class InstanceUsage:
    """One nova instance's usage as read at ``read_at`` (UTC)."""
    uuid: str
    name: str
    display_name: str | None
    project_id: str | None
    user_id: str | None
    flavor: Flavor | None
    state: int
    read_at: datetime.datetime
    # CPU time of the whole guest process (emulator threads included).
    cpu_time_ns: int | None = None
    # CPU time of the guest's vCPUs: each vCPU's run time plus the time
    # it waited for a host CPU, what ceilometer's ``cpu`` meter counts;
    # like ceilometer, cpu_time_ns where per-vCPU times are incomplete.
    vcpu_time_ns: int | None = None
    vcpus: int | None = None
    memory_mb: int | None = None
    disks: list[DiskUsage] = dataclasses.field(default_factory=list)
    interfaces: list[InterfaceUsage] = dataclasses.field(default_factory=list)
    # Changes whenever the guest gets a new process (libvirt: the domain
    # id), i.e. whenever every counter restarts from 0; None if unknown.
    generation: int | str | None = None
    # The kinds of counters this reading holds in full. A kind left out
    # was not asked for or not served this time (a busy disk under
    # NOWAIT): the reading says nothing about those devices, which is not
    # the same as the instance having none.
    kinds: frozenset[str] = frozenset(ALL_KINDS)
    # The guest's memory when the reading holds MEMORY, else None.
    memory: MemoryUsage | None = None
    # The hypervisor's own state code, which ceilometer's ``power.state``
    # meter reports (libvirt: virDomainState, 1 running ... 5 shut off);
    # ``state`` is nova's power state. None where the backend has none.
    hypervisor_state: int | None = None
    # The Glance image the instance booted from; None when booted from a
    # volume or not recorded.
    image_ref: str | None = None
    # True when vcpu_time_ns is the process's cpu_time_ns because the
    # vCPU entries had holes (as ceilometer falls back): the two do not
    # count the same thing, so a switch between them is no usage.
    vcpu_time_fallback: bool = False

    @property
    def state_name(self):
        return POWER_STATE_NAMES.get(self.state, 'unknown')

    def disk(self, device):
        for disk in self.disks:
            if disk.device == device:
                return disk
        raise DeviceNotFound('instance %s has no disk %s'
                             % (self.uuid, device))

    def interface(self, name_or_mac):
        wanted = name_or_mac.lower()
        for iface in self.interfaces:
            if (iface.name == name_or_mac or
                    (iface.mac or '').lower() == wanted):
                return iface
        raise DeviceNotFound('instance %s has no interface %s'
                             % (self.uuid, name_or_mac))


class UsageInstanceInfo:
    """nova's InstanceInfo fields plus the guest's CPU time.

    Used where the driver is not nova's (the CLI); on nova's drivers the
    mixin adds ``cpu_time_ns`` to nova's own InstanceInfo instead.
    """

    def __init__(self, state, internal_id=None, cpu_time_ns=None):
        self.state = state
        self.internal_id = internal_id
        self.cpu_time_ns = cpu_time_ns

    def __eq__(self, other):
        return (self.__class__ == other.__class__ and
                self.__dict__ == other.__dict__)

    def __repr__(self):
        return ('UsageInstanceInfo(state=%r, internal_id=%r, cpu_time_ns=%r)'
                % (self.state, self.internal_id, self.cpu_time_ns))


@dataclasses.dataclass(slots=True)
class HostReading:
    """One read of the whole host.

    ``complete`` is False when the reader skipped a nova instance it could
    not read: an instance missing from ``usages`` is then not known to be
    gone. It belongs to this read alone, so concurrent reads (nova's own
    volume poll and the usage loop) never see each other's.
    """
    usages: list[InstanceUsage]
    complete: bool = True
    #: How many nova instances the reader could not read this time.
    skipped: int = 0


@dataclasses.dataclass(slots=True)
class HostFigures:
    """The hypervisor host's own figures, read at ``read_at`` (UTC).

    ``cpu_busy_ns`` and ``cpu_idle_ns`` are cumulative over all host CPUs
    since boot (busy: user and kernel time; idle: idle and I/O wait).
    ``memory_free_kb`` is the kernel's free memory (MemFree, not
    MemAvailable). ``instances`` is the nova instances the cycle read,
    filled in by the caller. Figures a host does not give are None.
    """
    read_at: datetime.datetime
    cpus: int | None = None
    cpu_busy_ns: int | None = None
    cpu_idle_ns: int | None = None
    memory_total_kb: int | None = None
    memory_free_kb: int | None = None
    instances: int | None = None


class UsageReader(metaclass=abc.ABCMeta):
    """Reads usage of the nova instances on one host."""

    def read_all(self, kinds=ALL_KINDS):
        """The ``usages`` of :meth:`read_host`."""
        return self.read_host(kinds).usages

    @abc.abstractmethod
    def read_host(self, kinds=ALL_KINDS):
        """Read every nova instance on the host in one cycle.

        :param kinds: the kinds of counters needed (``CPU``,
            ``INTERFACES``, ``DISKS``, and ``MEMORY`` only where asked
            for); a backend may return more, and leaves out what it can
            skip cheaply.

        :returns: :class:`HostReading` with one :class:`InstanceUsage` per
            nova instance read (instances that are not running have no
            device counters and ``cpu_time_ns`` None); each says in
            ``kinds`` which kinds it holds in full. Guests that nova did
            not create are never included.
        :raises HypervisorUnavailable: the hypervisor could not be read.
        """

    @abc.abstractmethod
    def read_instance(self, uuid, devices=True):
        """Read one nova instance now, bypassing any bulk path.

        :param uuid: the instance uuid.
        :param devices: False reads only state and CPU time.
        :returns: :class:`InstanceUsage` (``kinds`` says what it holds).
        :raises InstanceNotFound: no nova instance with that uuid here.
        :raises HypervisorUnavailable: the hypervisor could not be read.
        """

    def read_host_figures(self):
        """The host's own CPU and memory figures, for the metric plugins'
        ``on_host``: at most one hypervisor call per kind of figure.

        :returns: :class:`HostFigures` (``instances`` None), or None where
            the backend does not read them.
        :raises HypervisorUnavailable: the hypervisor could not be read.
        """
        return None

    def close(self):
        """Release what the reader holds (connections); optional."""


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)
