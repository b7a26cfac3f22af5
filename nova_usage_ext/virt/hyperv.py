"""Hyper-V backend of the usage reader, over os-win's metrics API.

Hyper-V keeps its own usage counters ("resource metering"): WMI metric
values attached to each VM, disk and switch port, read here through os-win's
``MetricsUtils`` and ``VMUtils``. What differs from libvirt:

* **Granularity.** Disk and network counters are whole megabytes (Hyper-V's
  ``Disk Data Read``/``Disk Data Written`` and ``Filtered Incoming``/
  ``Outgoing Network Traffic``); bytes are reported as MB * 1024 * 1024, so
  they move in steps of 1 MiB and the last partial MiB is not seen.
* **Absent counters.** Hyper-V counts no packets, drops, errors or I/O
  requests: those are None (absent), never 0. As nova's libvirt driver
  does, ``block_stats`` then says -1 for errors; ``get_all_volume_usage``
  reports no Hyper-V disk, since nova's volume usage needs request counts.
* **CPU time** is derived from an average; see :func:`cpu_time_ns` for the
  derivation and its precision.
* **Counter lifetime.** Hyper-V counters run from when metering was enabled
  (or last reset), not from when the guest started: they survive guest
  reboots and live migration, and drop to 0 on a metering reset
  (``Reset-VMResourceMetering``), which the counter cache treats as any
  other reset.

Only nova's VMs are read: the VMs whose first note (``Notes[0]`` of their
``Msvm_VirtualSystemSettingData``) is a uuid, as nova's former Hyper-V
driver and compute-hyperv write it when they create a VM named after the
instance (``instance.name``) and select it in ``list_instance_uuids``.

Metering is off on a VM until someone enables it (compute-hyperv does when
``[hyperv] enable_instance_metrics_collection`` is set), and Hyper-V turns
CPU and network metering off when a VM powers off. ``read_all`` therefore
enables it where it is off, once per VM power-on, and logs it: the VM
(CPU, memory and its disks) when its CPU metric has no value, and each
switch port the first time the VM is seen running, since port metering is
reset at every start and os-win cannot tell whether it is on.

This is the only module of the package that imports os_win.
"""

import contextlib
import dataclasses
import datetime
import importlib
import importlib.util
import ntpath
import re
import sys
import threading
import types

from oslo_log import log as logging
from oslo_utils import units
from oslo_utils import uuidutils

from nova_usage_ext.virt import base
from nova_usage_ext.virt import driver


# -- importing os-win in a native-threads process ---------------------------

def _native_eventlet_modules():
    """Stand-ins for the eventlet names os-win binds when it is imported.

    os-win imports eventlet at module level (``patcher.original``, ``tpool``
    and ``import_patched`` for its own event listeners, none of which this
    module uses). nova 34 runs nova-compute on native threads and makes
    ``import eventlet`` fail, as this package's own processes do, so os-win
    gets these native equivalents instead: the original modules, and tpool
    calls run in the calling thread.
    """
    eventlet = types.ModuleType('eventlet')
    patcher = types.ModuleType('eventlet.patcher')
    tpool = types.ModuleType('eventlet.tpool')
    patcher.original = importlib.import_module
    patcher.is_monkey_patched = lambda module: False
    tpool.execute = lambda func, *args, **kwargs: func(*args, **kwargs)
    eventlet.patcher = patcher
    eventlet.tpool = tpool
    eventlet.import_patched = importlib.import_module
    eventlet.getcurrent = lambda: types.SimpleNamespace(parent=None)
    return {'eventlet': eventlet, 'eventlet.patcher': patcher,
            'eventlet.tpool': tpool}


def _pkg_resources_module():
    """os-win uses ``pkg_resources.parse_version``, gone from setuptools 81.
    """
    from packaging import version
    module = types.ModuleType('pkg_resources')
    module.parse_version = version.parse
    return module


@contextlib.contextmanager
def _os_win_importable():
    shims = {}
    if 'eventlet' not in sys.modules:
        # Nothing chose eventlet: keep the process on native threads.
        shims.update(_native_eventlet_modules())
    if importlib.util.find_spec('pkg_resources') is None:
        shims['pkg_resources'] = _pkg_resources_module()
    sys.modules.update(shims)
    try:
        yield
    finally:
        for name, module in shims.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


with _os_win_importable():
    from os_win import constants as os_win_const
    from os_win import exceptions as os_win_exc
    from os_win import utilsfactory
    # utilsfactory imports the classes it picks when first asked: load them
    # now, while os-win's own imports can be satisfied.
    for _module in ('os_win.utils.compute.vmutils10',
                    'os_win.utils.hostutils10',
                    'os_win.utils.metrics.metricsutils'):
        importlib.import_module(_module)


LOG = logging.getLogger(__name__)

# os-win's VM states (from Msvm_ComputerSystem.EnabledState) to nova's
# power_state, as compute-hyperv maps them (plus os-win's REBOOT, a
# running VM that is resetting).
POWER_STATE = {
    os_win_const.HYPERV_VM_STATE_ENABLED: base.RUNNING,
    os_win_const.HYPERV_VM_STATE_REBOOT: base.RUNNING,
    os_win_const.HYPERV_VM_STATE_PAUSED: base.PAUSED,
    os_win_const.HYPERV_VM_STATE_SUSPENDED: base.SUSPENDED,
    os_win_const.HYPERV_VM_STATE_DISABLED: base.SHUTDOWN,
    os_win_const.HYPERV_VM_STATE_SHUTTING_DOWN: base.SHUTDOWN,
}

# nova states whose VM has a running partition, hence counters.
ACTIVE_STATES = frozenset((base.RUNNING, base.PAUSED))

# Hyper-V's disk and network metrics are in MB (Windows' MB, 2**20 bytes).
MB = units.Mi

# Errors of os-win and of WMI below it. Nothing else is caught.
OS_WIN_ERRORS = (os_win_exc.OSWinException, os_win_exc.x_wmi)

_CLOCK_ERRORS = (IndexError, KeyError, TypeError, ValueError) + OS_WIN_ERRORS

# Cinder's remotefs/SMB drivers store a volume as
# <share>/<volume_name_template % id>.<vhd|vhdx>; the default template is
# 'volume-%s'.
_VOLUME_FILE = re.compile(
    r'^volume-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-'
    r'[0-9a-f]{12})\.vhdx?$', re.IGNORECASE)

# CIM datetime values as WMI returns them: an interval is
# ddddddddHHMMSS.mmmmmm:000, a time stamp yyyymmddHHMMSS.mmmmmm+UUU
# (UUU: offset from UTC in minutes).
_CIM_INTERVAL = re.compile(r'^(\d{8})(\d{2})(\d{2})(\d{2})\.(\d{6}):000$')
_CIM_TIMESTAMP = re.compile(
    r'^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})\.(\d{6})([+-])(\d{3})$')

# Two readings of one metering window differ in their computed start by
# less than this; a later start means metering was reset.
_SAME_WINDOW = datetime.timedelta(seconds=1)


def cim_interval_ns(value):
    """A CIM interval (``00000000010000.000000:000``) in ns, or None."""
    match = _CIM_INTERVAL.match(value or '')
    if not match:
        return None
    days, hours, minutes, seconds, micros = map(int, match.groups())
    total_s = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return total_s * 1000000000 + micros * 1000


def cim_timestamp(value):
    """A CIM date-time (``20261122100000.000000+000``), or None."""
    match = _CIM_TIMESTAMP.match(value or '')
    if not match:
        return None
    year, month, day, hour, minute, second, micros = map(
        int, match.groups()[:7])
    offset = int(match.group(9)) * (1 if match.group(8) == '+' else -1)
    try:
        return datetime.datetime(
            year, month, day, hour, minute, second, micros,
            datetime.timezone(datetime.timedelta(minutes=offset)))
    except ValueError:
        return None


def cpu_time_ns(average_mhz, window_ns, clock_mhz):
    """CPU time of a VM from Hyper-V's average CPU metric.

    Hyper-V's ``Aggregated Average CPU Utilization`` (an
    ``Msvm_AggregationMetricValue``) is the VM's average CPU use in MHz
    over the metering window, ``AggregationDuration`` long, ending at
    ``AggregationTimeStamp``. Microsoft defines it as utilization times
    processor speed ("50% on a host with a CPU running at 3GHz, we would
    report 1500MHz"), in MHz rather than percent so that it stays
    meaningful when the VM moves to a host with another clock. Their
    example has one processor; for several vCPUs this reads it as the sum
    over them (cycles per second used), the only reading that keeps the
    figure independent of the host's size.

    Cycles used over the window are ``average_mhz * 1e6 * window_s``; one
    logical processor runs ``clock_mhz * 1e6`` cycles a second; so::

        cpu_time_ns = average_mhz * window_ns / clock_mhz

    the same quantity as libvirt's cpu time (ns of processor time summed
    over vCPUs). ``clock_mhz`` is one logical processor's rated clock
    (``Win32_Processor.MaxClockSpeed``), not multiplied by the sockets
    (ceilometer's former Hyper-V inspector did, and used the VM's uptime,
    which is not the window the average covers: wrong as soon as metering
    started after boot, e.g. when this reader enabled it).

    Precision:

    * ``MetricValue`` is a whole number of MHz, so the result is uncertain
      by up to ``window_ns / clock_mhz``: 1 s of CPU per 2,600 s of window
      on a 2.6 GHz host, i.e. 33 s a day, 17 minutes after 30 days of
      metering. Relative to a busy VM this is small (0.04% of one vCPU
      busy all day); for a nearly idle one it is not.
    * The difference of two readings carries both errors and grows with
      the window, not with the interval between readings: after weeks of
      metering, deltas over a few minutes are dominated by rounding. Use
      totals over long periods, or reset metering periodically.
    * It assumes Hyper-V scales utilization by the rated clock that WMI
      reports; any other reference scales the result by the ratio. Hosts
      with processors of different speeds use the first one's.
    * The value is as of ``AggregationTimeStamp``, not the read time.
    """
    if average_mhz is None or window_ns is None or not clock_mhz:
        return None
    return average_mhz * window_ns // clock_mhz


def _mac(address):
    """Hyper-V's ``FA163E000001`` as ``fa:16:3e:00:00:01``."""
    if not address:
        return None
    digits = re.sub('[^0-9a-fA-F]', '', address).lower()
    if len(digits) != 12:
        return address.lower()
    return ':'.join(digits[i:i + 2] for i in range(0, 12, 2))


def _bytes(megabytes):
    return None if megabytes is None else int(megabytes) * MB


def _volume_id(path):
    match = _VOLUME_FILE.match(ntpath.basename(path or ''))
    return match.group(1).lower() if match else None


@dataclasses.dataclass
class _Metering:
    """What the reader did for one VM during its current power-on."""
    uptime_ms: int | None = None
    vm_enabled: bool = False
    ports_listed: bool = False
    ports: set = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class _CpuWindow:
    start: datetime.datetime | None
    cpu_time_ns: int


class _Vanished(Exception):
    """The VM went away while it was being read."""


class HyperVUsageReader(base.UsageReader):
    """Usage of nova's VMs on the local Hyper-V host, through os-win.

    :param vmutils: os-win ``VMUtils``; by default from ``utilsfactory``.
    :param metricsutils: os-win ``MetricsUtils``; likewise.
    :param hostutils: os-win ``HostUtils`` (for the processor clock);
        likewise.
    :param enable_metrics: False never turns metering on (then VMs without
        metering are reported without counters).

    The utils are created on first use, so that building a reader never
    touches WMI.
    """

    def __init__(self, vmutils=None, metricsutils=None, hostutils=None,
                 enable_metrics=True):
        self._vmutils = vmutils
        self._metricsutils = metricsutils
        self._hostutils = hostutils
        self._enable_metrics = enable_metrics
        self._clock_mhz = None
        self._lock = threading.Lock()
        self._metering = {}
        self._cpu_windows = {}
        self._logged = set()

    # -- the contract ------------------------------------------------------

    def read_host(self, kinds=base.ALL_KINDS):
        # Hyper-V's metrics come per VM in one query each: every kind is
        # read whatever ``kinds`` asks for.
        vms = self._nova_vms()
        read_at = base.utcnow()
        usages = []
        skipped = 0
        for name, uuid in vms:
            try:
                usage = self._read_vm(name, uuid, read_at, devices=True,
                                      enable=self._enable_metrics)
            except _Vanished:
                LOG.debug('VM %s vanished while being read', name)
                self._forget(name)
                continue
            except OS_WIN_ERRORS as exc:
                LOG.warning('Skipping VM %s (instance %s) this cycle: %s',
                            name, uuid, exc)
                skipped += 1
                continue
            usages.append(usage)
        listed = {name for name, _uuid in vms}
        with self._lock:
            for name in [n for n in self._metering if n not in listed]:
                del self._metering[name]
            for name in [n for n in self._cpu_windows if n not in listed]:
                del self._cpu_windows[name]
        return base.HostReading(usages, not skipped, skipped)

    def read_instance(self, uuid, devices=True):
        uuid = uuid.lower()
        names = [name for name, vm_uuid in self._nova_vms()
                 if vm_uuid == uuid]
        if not names:
            raise base.InstanceNotFound('no nova VM with uuid %s on this '
                                        'Hyper-V host' % uuid)
        try:
            return self._read_vm(names[0], uuid, base.utcnow(), devices,
                                 enable=False)
        except _Vanished:
            raise base.InstanceNotFound('VM %s (instance %s) vanished'
                                        % (names[0], uuid)) from None
        except OS_WIN_ERRORS as exc:
            raise base.HypervisorUnavailable(
                'Hyper-V failed to read VM %s: %s' % (names[0], exc))

    # -- os-win ------------------------------------------------------------

    def _utils(self):
        try:
            if self._vmutils is None:
                self._vmutils = utilsfactory.get_vmutils()
            if self._metricsutils is None:
                self._metricsutils = utilsfactory.get_metricsutils()
            if self._hostutils is None:
                self._hostutils = utilsfactory.get_hostutils()
        except Exception as exc:  # no WMI here, or WMI refused us
            raise base.HypervisorUnavailable(
                'cannot reach Hyper-V through os-win: %s' % exc)
        return self._vmutils, self._metricsutils

    def _host_clock_mhz(self):
        if self._clock_mhz is None:
            try:
                cpus = self._hostutils.get_cpus_info()
                self._clock_mhz = int(cpus[0]['MaxClockSpeed']) or None
            except _CLOCK_ERRORS as exc:
                self._log_once('clock', logging.WARNING,
                               'Cannot read the host processor clock (%s): '
                               'CPU time is absent', exc)
        return self._clock_mhz

    def _nova_vms(self):
        """(name, uuid) of the VMs nova created, as compute-hyperv lists
        them."""
        vmutils, _metricsutils = self._utils()
        try:
            notes = vmutils.list_instance_notes()
        except OS_WIN_ERRORS as exc:
            raise base.HypervisorUnavailable(
                'Hyper-V failed to list VMs: %s' % exc)
        vms = []
        for name, vm_notes in notes:
            if vm_notes and uuidutils.is_uuid_like(vm_notes[0]):
                vms.append((name, str(vm_notes[0]).lower()))
            else:
                self._log_once(('foreign', name), logging.INFO,
                               'VM %s has no instance uuid in its notes; it '
                               'is not a nova instance and is not reported',
                               name)
        return vms

    def _read_vm(self, name, uuid, read_at, devices, enable):
        vmutils, metricsutils_ = self._utils()
        try:
            summary = vmutils.get_vm_summary_info(name)
            state = POWER_STATE.get(summary['EnabledState'], base.NOSTATE)
            usage = base.InstanceUsage(
                uuid=uuid, name=name, display_name=None, project_id=None,
                user_id=None, flavor=None, state=state, read_at=read_at,
                vcpus=summary['NumberOfProcessors'])
            if state not in ACTIVE_STATES:
                # No process: nothing counts, whatever the kind.
                self._forget_power_on(name)
                return usage
            metering = self._power_on(name, summary['UpTime'])
            aggregate = self._cpu_aggregate(metricsutils_, name)
            if aggregate is None:
                if enable and not metering.vm_enabled:
                    self._enable_vm(metricsutils_, name, uuid, metering)
                # Nothing was collected yet: no counters this cycle.
                usage.kinds = frozenset()
                return usage
            usage.cpu_time_ns = self._cpu_time(name, aggregate)
            if not devices:
                usage.kinds = frozenset((base.CPU,))
                return usage
            if enable and not metering.ports_listed:
                # First sight of this power-on: before reading them.
                self._enable_ports(metricsutils_, name, uuid, metering,
                                   vmutils.get_vm_nic_names(name))
                metering.ports_listed = True
            usage.disks = self._disks(metricsutils_, name)
            usage.interfaces = self._interfaces(metricsutils_, name)
            if enable:
                # NICs plugged since.
                self._enable_ports(metricsutils_, name, uuid, metering,
                                   [i.name for i in usage.interfaces])
            return usage
        except os_win_exc.NotFound:
            raise _Vanished() from None
        except OS_WIN_ERRORS:
            if not self._exists(vmutils, name):
                raise _Vanished() from None
            raise

    @staticmethod
    def _exists(vmutils, name):
        try:
            return vmutils.vm_exists(name)
        except OS_WIN_ERRORS:
            return True

    def _cpu_aggregate(self, metricsutils_, name):
        """The VM's Msvm_AggregationMetricValue for CPU, None if not
        collected.

        ``MetricsUtils.get_cpu_metrics`` returns the same value, but as 0
        when there is none and without its window, which the CPU time
        needs; this reads it through MetricsUtils' own lookups.
        """
        definition = metricsutils_._metrics_defs.get(
            metricsutils_._CPU_METRICS)
        if definition is None:
            self._log_once('cpu-definition', logging.WARNING,
                           'Hyper-V has no "%s" metric: CPU time is absent',
                           metricsutils_._CPU_METRICS)
            return None
        values = metricsutils_._get_metrics(metricsutils_._get_vm(name),
                                            definition)
        return values[0] if values else None

    def _cpu_time(self, name, aggregate):
        window_ns = cim_interval_ns(aggregate.AggregationDuration)
        try:
            average_mhz = int(aggregate.MetricValue)
        except (TypeError, ValueError):
            average_mhz = None
        value = cpu_time_ns(average_mhz, window_ns, self._host_clock_mhz())
        if value is None:
            return None
        stamp = cim_timestamp(aggregate.AggregationTimeStamp)
        start = stamp - datetime.timedelta(
            microseconds=window_ns // 1000) if stamp else None
        with self._lock:
            previous = self._cpu_windows.get(name)
            if previous is not None and value < previous.cpu_time_ns:
                if start is None or previous.start is None:
                    # Unknown window: a drop within the rounding error is
                    # rounding, a larger one a reset.
                    same = (previous.cpu_time_ns - value <=
                            2 * window_ns // self._clock_mhz + 1)
                else:
                    same = start - previous.start <= _SAME_WINDOW
                if same:
                    # Two roundings of one average: never go backwards,
                    # which the counter cache would take for a reset.
                    value = previous.cpu_time_ns
            self._cpu_windows[name] = _CpuWindow(start, value)
        return value

    def _disks(self, metricsutils_, name):
        try:
            all_metrics = list(metricsutils_.get_disk_metrics(name))
        except KeyError as exc:
            # Hyper-V before 2012 R2 has no disk metrics.
            self._log_once('disk-definition', logging.WARNING,
                           'Hyper-V has no %s metric: disks are not read',
                           exc)
            return []
        disks = []
        seen = set()
        for metrics in all_metrics:
            path = metrics['host_resource']
            if ntpath.splitext(path or '')[1].lower() == '.iso':
                continue  # DVD media: never metered
            device = ntpath.basename(path or '') or metrics['instance_id']
            if device in seen:
                device = path or metrics['instance_id']
            seen.add(device)
            disks.append(base.DiskUsage(
                device=device,
                read_bytes=_bytes(metrics['read_mb']),
                write_bytes=_bytes(metrics['write_mb']),
                volume_id=_volume_id(path)))
        return disks

    def _interfaces(self, metricsutils_, name):
        try:
            vnics = list(metricsutils_.get_vnic_metrics(name))
        except KeyError as exc:
            self._log_once('vnic-definition', logging.WARNING,
                           'Hyper-V has no %s metric: interfaces are not '
                           'read', exc)
            return []
        except IndexError:
            # os-win matches each switch port to a synthetic NIC and fails
            # on ports of other adapters (legacy network adapters).
            self._log_once(('vnic', name), logging.WARNING,
                           'VM %s has a switch port os-win cannot match to '
                           'a synthetic NIC; its interfaces are not read',
                           name)
            return []
        return [base.InterfaceUsage(name=vnic['element_name'],
                                    mac=_mac(vnic['address']),
                                    rx_bytes=_bytes(vnic['rx_mb']),
                                    tx_bytes=_bytes(vnic['tx_mb']))
                for vnic in vnics]

    # -- turning metering on ----------------------------------------------

    def _power_on(self, name, uptime_ms):
        """The metering state of the VM's current power-on."""
        with self._lock:
            metering = self._metering.get(name)
            if (metering is None or (uptime_ms is not None and
                                     metering.uptime_ms is not None and
                                     uptime_ms < metering.uptime_ms)):
                metering = self._metering[name] = _Metering()
            metering.uptime_ms = uptime_ms
            return metering

    def _forget_power_on(self, name):
        with self._lock:
            self._metering.pop(name, None)

    def _forget(self, name):
        with self._lock:
            self._metering.pop(name, None)
            self._cpu_windows.pop(name, None)

    def _enable_vm(self, metricsutils_, name, uuid, metering):
        metering.vm_enabled = True  # once per power-on, even if it fails
        LOG.info('Hyper-V metrics collection is off for VM %s (instance '
                 '%s): enabling it for its CPU, memory and disks', name,
                 uuid)
        try:
            metricsutils_.enable_vm_metrics_collection(name)
        except OS_WIN_ERRORS as exc:
            LOG.warning('Cannot enable metrics collection for VM %s: %s',
                        name, exc)

    def _enable_ports(self, metricsutils_, name, uuid, metering, ports):
        for port in ports:
            if port in metering.ports:
                continue
            metering.ports.add(port)
            LOG.info('Enabling Hyper-V metrics collection for port %s of VM '
                     '%s (instance %s), as Hyper-V resets it when the VM '
                     'starts', port, name, uuid)
            try:
                metricsutils_.enable_port_metrics_collection(port)
            except OS_WIN_ERRORS as exc:
                LOG.warning('Cannot enable metrics collection for port %s '
                            'of VM %s: %s', port, name, exc)

    def _log_once(self, key, level, msg, *args):
        with self._lock:
            if key in self._logged:
                return
            self._logged.add(key)
        LOG.log(level, msg, *args)


class HyperVUsageMixin(driver.UsageDriverMixin):
    """Usage methods for a Hyper-V compute driver (compute-hyperv's)."""

    @property
    def usage_reader(self):
        reader = getattr(self, '_usage_reader', None)
        if reader is None:
            reader = HyperVUsageReader()
            self._usage_reader = reader
        return reader


class HyperVUsageHost(HyperVUsageMixin):
    """The same methods without a nova driver (the CLI, tests).

    Takes :class:`HyperVUsageReader`'s arguments.
    """

    def __init__(self, **reader_args):
        self._usage_reader = HyperVUsageReader(**reader_args)
