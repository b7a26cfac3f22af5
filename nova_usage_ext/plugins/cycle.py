"""One poll cycle as the plugins see it: records with raw counters and
rates, built once per cycle and shared by every plugin."""

import dataclasses

from nova_usage_ext.plugins import base
from nova_usage_ext.virt import base as virt_base


@dataclasses.dataclass(frozen=True, slots=True)
class Cycle:
    """What one cycle read; a list is None when its kind was not read."""
    host: str
    host_record: base.HostRecord | None = None
    cpu: list | None = None
    ram: list | None = None
    volume: list | None = None
    bandwidth: list | None = None
    health: base.HealthRecord | None = None

    def argument(self, hook):
        return {'on_host': self.host_record, 'on_cpu': self.cpu,
                'on_ram': self.ram, 'on_volume': self.volume,
                'on_bandwidth': self.bandwidth,
                'on_health': self.health}[hook]


def instance_of(usage):
    flavor = usage.flavor
    return base.Instance(
        uuid=usage.uuid, name=usage.name, display_name=usage.display_name,
        project_id=usage.project_id, user_id=usage.user_id,
        flavor_name=flavor.name if flavor else None,
        vcpus=usage.vcpus or (flavor.vcpus if flavor else None),
        memory_mb=usage.memory_mb or (flavor.memory_mb if flavor else None),
        state=usage.state_name)


def _rates(previous, read_at, values):
    """(interval, rates) from the previous (read_at, values)."""
    if previous is None:
        return None, {}
    interval = (read_at - previous[0]).total_seconds()
    if interval <= 0:
        return None, {}
    before = previous[1]
    rates = {}
    for name, value in values.items():
        old = before.get(name)
        # Totals only grow; a smaller one is a ledger that was reset.
        if value is not None and old is not None and value >= old:
            rates[name] = (value - old) / interval
    return interval, rates


def _values(record, names):
    return {name: getattr(record, name, None) for name in names}


class CycleBuilder:
    """Builds :class:`Cycle` records, keeping the totals of the previous
    reading of each instance, device and the host for the rates."""

    def __init__(self, host):
        self.host = host
        self._previous = {}
        self._host_previous = None

    def build(self, usages, kinds, totals, host_figures, hooks):
        """The cycle for ``hooks`` (the hooks some plugin defines).

        :param usages: the cycle's ``InstanceUsage`` records.
        :param kinds: the kinds of counters this cycle read.
        :param totals: ``uuid -> ledger.UsageCounters or None``.
        :param host_figures: a ``virt_base.HostFigures`` or None.
        """
        kinds = frozenset(kinds)
        want_cpu = 'on_cpu' in hooks and virt_base.CPU in kinds
        want_volume = 'on_volume' in hooks and virt_base.DISKS in kinds
        want_bandwidth = ('on_bandwidth' in hooks and
                          virt_base.INTERFACES in kinds)
        want_ram = 'on_ram' in hooks and virt_base.MEMORY in kinds
        cpu = [] if want_cpu else None
        ram = [self._ram(usage) for usage in usages
               if usage.memory is not None] if want_ram else None
        volume = [] if want_volume else None
        bandwidth = [] if want_bandwidth else None
        previous, self._previous = self._previous, {}
        if want_cpu or want_volume or want_bandwidth:
            for usage in usages:
                total = totals(usage.uuid)
                if total is None:
                    continue
                instance = instance_of(usage)
                if want_cpu and virt_base.CPU in usage.kinds:
                    cpu.append(self._cpu(usage, instance, total, previous))
                if want_volume and virt_base.DISKS in usage.kinds:
                    volume.extend(self._devices(
                        usage, instance, usage.disks, total.disks, 'device',
                        virt_base.DISK_IO_COUNTERS, previous))
                if want_bandwidth and virt_base.INTERFACES in usage.kinds:
                    bandwidth.extend(self._devices(
                        usage, instance, usage.interfaces, total.interfaces,
                        'name', virt_base.INTERFACE_COUNTERS, previous))
        # Kinds not read this cycle keep their previous totals.
        for key, value in previous.items():
            self._previous.setdefault(key, value)
        host_record = None
        if 'on_host' in hooks and host_figures is not None:
            host_record = self._host(host_figures)
        return Cycle(self.host, host_record, cpu, ram, volume, bandwidth)

    @staticmethod
    def _ram(usage):
        # Gauges: no rate, no ledger.
        instance = instance_of(usage)
        memory = usage.memory
        used, available = memory.used_mb, memory.available_mb
        percent = None
        if used is not None and available:
            percent = 100.0 * used / available
        return base.RamRecord(instance, usage.read_at, instance.memory_mb,
                              used, available, percent)

    def _remember(self, key, read_at, values, previous):
        interval, rates = _rates(previous.get(key), read_at, values)
        self._previous[key] = (read_at, values)
        return interval, rates

    def _cpu(self, usage, instance, total, previous):
        values = _values(total, virt_base.CPU_COUNTERS)
        interval, rates = self._remember((usage.uuid, 'cpu'), usage.read_at,
                                         values, previous)
        rate = rates.get('vcpu_time_ns', rates.get('cpu_time_ns'))
        percent = None
        if rate is not None and instance.vcpus:
            percent = rate / 1e9 / instance.vcpus * 100.0
        return base.CpuRecord(
            instance, usage.read_at, interval,
            _values(usage, virt_base.CPU_COUNTERS), rates, percent)

    def _devices(self, usage, instance, devices, totals, name_attr, names,
                 previous):
        records = []
        for device in devices:
            name = getattr(device, name_attr)
            total = totals.get(name)
            if total is None:
                continue
            interval, rates = self._remember(
                (usage.uuid, name_attr, name), usage.read_at,
                _values(total, names), previous)
            records.append(base.DeviceRecord(
                instance, usage.read_at, interval, name,
                _values(device, names), rates,
                volume_id=getattr(device, 'volume_id', None),
                mac=getattr(device, 'mac', None)))
        return records

    def _host(self, figures):
        previous, self._host_previous = self._host_previous, figures
        interval = cpu_percent = None
        if previous is not None:
            interval = (figures.read_at - previous.read_at).total_seconds()
            try:
                busy = figures.cpu_busy_ns - previous.cpu_busy_ns
                idle = figures.cpu_idle_ns - previous.cpu_idle_ns
                if busy >= 0 and idle >= 0 and busy + idle > 0:
                    cpu_percent = busy * 100.0 / (busy + idle)
            except TypeError:  # a figure the host does not give
                pass
        memory_percent = None
        if figures.memory_total_kb and figures.memory_free_kb is not None:
            memory_percent = (100.0 * (figures.memory_total_kb -
                                       figures.memory_free_kb) /
                              figures.memory_total_kb)
        return base.HostRecord(self.host, figures.read_at, interval, figures,
                               cpu_percent, memory_percent)
