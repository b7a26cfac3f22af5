"""The metric plugin interface and the records a plugin receives.

A plugin subclasses :class:`MetricPlugin` and defines any of ``on_host``,
``on_cpu``, ``on_ram``, ``on_volume``, ``on_bandwidth`` and
``on_health`` (the package's own figures): each hook is
called only if the plugin defines it, once per poll cycle that read its
kind, on the plugin's own thread (never the poll thread). Records are
frozen and shared between plugins: never change them.

Every instance record carries the raw cumulative counters of the reading
(as the hypervisor reports them: they restart from 0 with the guest's
process) and the rates over the interval since the previous reading of
that kind, from the usage ledger's totals, which only grow (a guest
restart is no negative rate). Rates are per second and absent (None) on
the first reading of an instance or device and where a counter is absent.
"""

import dataclasses
import datetime

from nova_usage_ext.virt import base as virt_base


@dataclasses.dataclass(frozen=True, slots=True)
class Instance:
    """Who a record belongs to, as nova recorded it on the guest."""
    uuid: str
    name: str
    display_name: str | None
    project_id: str | None
    user_id: str | None
    flavor_name: str | None
    vcpus: int | None
    memory_mb: int | None
    state: str


@dataclasses.dataclass(frozen=True, slots=True)
class CpuRecord:
    """One instance's CPU.

    ``counters``: raw ``cpu_time_ns`` and ``vcpu_time_ns`` (absent ones
    None). ``rates``: the same names, in ns of CPU per second. ``percent``
    is the vCPU time rate as % of the instance's vCPUs (100 = every vCPU
    busy all the interval), None without a rate or a vCPU count.
    """
    instance: Instance
    read_at: datetime.datetime
    interval_s: float | None
    counters: dict
    rates: dict
    percent: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One disk (``on_volume``) or interface (``on_bandwidth``).

    ``device`` is the disk's target (``vda``) or the interface's tap
    name; ``volume_id`` the Cinder volume behind a disk, None for local
    disks and interfaces; ``mac`` an interface's MAC. ``counters`` holds
    the raw counters named in :mod:`nova_usage_ext.virt.base`
    (``DISK_IO_COUNTERS`` or ``INTERFACE_COUNTERS``), ``rates`` the same
    names per second (bytes/s, requests/s, packets/s).
    """
    instance: Instance
    read_at: datetime.datetime
    interval_s: float | None
    device: str
    counters: dict
    rates: dict
    volume_id: str | None = None
    mac: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RamRecord:
    """One instance's memory, in cycles that read it (the host usage
    cycle, ``[usage_ext] host_usage_interval``): ``memory_mb`` its
    flavor's; ``used_mb`` and ``available_mb`` ceilometer's
    ``memory.usage`` and ``memory.available`` from the guest's balloon
    driver (None without one); ``percent`` used as % of available."""
    instance: Instance
    read_at: datetime.datetime
    memory_mb: int | None
    used_mb: float | None
    available_mb: float | None
    percent: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class HostRecord:
    """The hypervisor host's own figures (:class:`virt_base.HostFigures`)
    and rates: ``cpu_percent`` is the busy share of all host CPUs over
    the interval, ``memory_percent`` the used share of host memory."""
    host: str
    read_at: datetime.datetime
    interval_s: float | None
    figures: virt_base.HostFigures
    cpu_percent: float | None
    memory_percent: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class HealthRecord:
    """The package's own figures for one cycle: when it ended (Unix
    time), how long it took from the start of its read (seconds), the
    nova instances read, whether it read every one (``complete``) and
    how many it could not (``skipped``), and the messages waiting in the
    outbox (None when not known)."""
    host: str
    ended_at: float
    duration_s: float | None
    instances: int
    complete: bool
    outbox_messages: int | None
    skipped: int = 0


class MetricPlugin:
    """Base of the metric plugins.

    :cvar CONFIG_OPTS: the plugin's oslo.config options, registered in
        the group ``usage_ext_<name>`` (``<name>`` the entry point name)
        when the plugin is loaded. Options an operator tunes at run time
        are ``mutable=True`` and read at use.

    :param conf: the process's ``ConfigOpts``.
    :param group: the plugin's option group name.
    :param host: the compute host's name, for what the plugin sends.

    A hook may raise: the error is logged (once per kind of error, then
    counted) and the plugin is disabled after repeated failures, until
    the next reconfiguration. Hooks run one at a time per plugin, so a
    plugin needs no lock of its own except against :meth:`reconfigure`.
    """

    CONFIG_OPTS = ()

    def __init__(self, conf, group, host):
        self.conf = conf
        self.group = group
        self.host = host

    @property
    def options(self):
        """The plugin's option group, read at use (mutable options)."""
        return self.conf[self.group]

    def reconfigure(self):
        """The configuration was reloaded (SIGHUP): re-read what the
        plugin copied at start. Runs on the thread that reloaded it; keep
        it short. Returns nothing; may raise (logged)."""

    def close(self):
        """The plugin is unloaded or nova-compute stops: release sockets
        and threads. May raise (logged)."""

    # The hooks. The base class does not call them: only those a plugin
    # overrides are called, and their arguments are built only then.

    def on_host(self, record):
        """The host's figures of one cycle.

        :param record: a :class:`HostRecord`.
        :returns: nothing.
        """

    def on_cpu(self, records):
        """CPU of every instance read this cycle.

        :param records: a list of :class:`CpuRecord`, one per instance.
        :returns: nothing.
        """

    def on_ram(self, records):
        """Memory of every instance read this cycle.

        :param records: a list of :class:`RamRecord`, one per instance.
        :returns: nothing.
        """

    def on_volume(self, records):
        """Disk I/O of every disk of the instances read this cycle (local
        disks and Cinder volumes alike).

        :param records: a list of :class:`DeviceRecord`, one per disk.
        :returns: nothing.
        """

    def on_bandwidth(self, records):
        """Network traffic of every interface read this cycle.

        :param records: a list of :class:`DeviceRecord`, one per
            interface.
        :returns: nothing.
        """

    def on_health(self, record):
        """The package's own health after a cycle.

        :param record: a :class:`HealthRecord`.
        :returns: nothing.
        """


HOOKS = ('on_host', 'on_cpu', 'on_ram', 'on_volume', 'on_bandwidth',
         'on_health')


def defined_hooks(plugin):
    """The hooks ``plugin`` overrides, in :data:`HOOKS` order."""
    return tuple(hook for hook in HOOKS
                 if getattr(type(plugin), hook) is not getattr(
                     MetricPlugin, hook))
