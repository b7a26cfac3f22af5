"""A Hyper-V host as os-win sees it through WMI, for the unit tests.

os-win's real ``VMUtils``, ``MetricsUtils`` and ``HostUtils`` run against
this: only the WMI connection under them is fake (``FakeHyperVFixture``
patches os-win's one place that opens WMI connections). The objects are
shaped like Hyper-V's ``root/virtualization/v2`` classes: properties by name
(case-insensitive, as WMI's), ``path_()``, ``uint64`` values as strings,
CIM date-times as strings, and metric values reached through the
``Msvm_MetricForME`` association only while their metric is enabled.

Metric names and units are Hyper-V's (CPU as average MHz over the metering
window, memory, disk data and network traffic in MB); the definition ids
are invented (Hyper-V uses GUIDs).
"""

import datetime
import re
import types
import uuid as uuidlib

import fixtures

# Imported first: it loads os-win in this native-threads process.
from nova_usage_ext.virt import hyperv  # noqa: F401,I100
from os_win import utilsfactory  # noqa: I100

REALIZED = 'Microsoft:Hyper-V:System:Realized'
VHD = 'Microsoft:Hyper-V:Virtual Hard Disk'
DVD = 'Microsoft:Hyper-V:Virtual CD/DVD Disk'

# Msvm_ComputerSystem.EnabledState
ENABLED = 2
DISABLED = 3
SAVED = 6  # "Enabled but offline"
PAUSED = 9  # "Quiesce"

CPU = 'Aggregated Average CPU Utilization'
MEMORY = 'Aggregated Average Memory Utilization'
NET_IN = 'Filtered Incoming Network Traffic'
NET_OUT = 'Filtered Outgoing Network Traffic'
DISK_READ = 'Disk Data Read'
DISK_WRITTEN = 'Disk Data Written'
DISK_LATENCY = 'Average Disk Latency'

DEFINITIONS = (
    ('Msvm_AggregationMetricDefinition', CPU, 'MHz'),
    ('Msvm_AggregationMetricDefinition', MEMORY, 'MB'),
    ('Msvm_BaseMetricDefinition', NET_IN, 'MB'),
    ('Msvm_BaseMetricDefinition', NET_OUT, 'MB'),
    ('Msvm_BaseMetricDefinition', DISK_READ, 'MB'),
    ('Msvm_BaseMetricDefinition', DISK_WRITTEN, 'MB'),
    ('Msvm_AggregationMetricDefinition', DISK_LATENCY, 'ms'),
)
SUBCLASSES = {
    'CIM_BaseMetricDefinition': ('Msvm_AggregationMetricDefinition',
                                 'Msvm_BaseMetricDefinition'),
}
ACL_IN, ACL_OUT = 1, 2
ACL_IPV4, ACL_IPV6 = 2, 3
ACL_METER = 3


def cim_interval(seconds):
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    return '%08d%02d%02d%02d.000000:000' % (days, hours, rest // 60,
                                            rest % 60)


def cim_timestamp(when):
    return when.strftime('%Y%m%d%H%M%S.%f') + '+000'


class WmiObject:
    """A WMI instance: case-insensitive properties (a callable is read on
    each access), ``path_()`` and ``path().Class``."""

    def __init__(self, wmi_class, key, **props):
        self.__dict__['_class'] = wmi_class
        self.__dict__['_key'] = key
        self.__dict__['_props'] = {}
        for name, value in props.items():
            setattr(self, name, value)

    def __getattr__(self, name):
        try:
            value = self.__dict__['_props'][name.lower()]
        except KeyError:
            raise AttributeError(name)
        return value() if callable(value) else value

    def __setattr__(self, name, value):
        self.__dict__['_props'][name.lower()] = value

    def path_(self):
        return r'\\HV01\root\virtualization\v2:%s.InstanceID="%s"' % (
            self._class, self._key)

    def path(self):
        return types.SimpleNamespace(Class=self._class)


class FakeVM:
    """One VM's settings and counters; change them between reads."""

    def __init__(self, host, name, notes, vcpus, memory_mb):
        self.host = host
        self.name = name
        self.guid = str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, name)).upper()
        self.state = ENABLED
        self.uptime_ms = 86400 * 1000
        self.cpu_mhz = 0
        self.memory_mb = memory_mb
        self.metering_since = host.now
        self.disks = {}
        self.nics = {}
        prefix = 'Microsoft:' + self.guid
        self.system = WmiObject(
            'Msvm_ComputerSystem', self.guid, Name=self.guid,
            ElementName=name, EnabledState=lambda: self.state,
            OnTimeInMilliseconds=lambda: str(self.uptime_ms))
        self.settings = WmiObject(
            'Msvm_VirtualSystemSettingData', prefix, InstanceID=prefix,
            ElementName=name, VirtualSystemType=REALIZED, Notes=notes)
        processor = WmiObject(
            'Msvm_ProcessorSettingData', prefix + r'\B637F346\0',
            InstanceID=prefix + r'\B637F346\0', VirtualQuantity=str(vcpus))
        self.vcpus = vcpus
        self.objects = [self.system, self.settings, processor]

    def add_disk(self, path, read_mb=0, written_mb=0):
        index = len(self.disks)
        instance_id = 'Microsoft:%s\\83F8638B\\0\\%d\\L' % (self.guid, index)
        subtype = DVD if path.lower().endswith('.iso') else VHD
        disk = WmiObject(
            'Msvm_StorageAllocationSettingData', instance_id,
            InstanceID=instance_id, ResourceSubType=subtype,
            HostResource=[path], ElementName='Hard Disk Image')
        disk.counters = {DISK_READ: read_mb, DISK_WRITTEN: written_mb,
                         DISK_LATENCY: 1}
        self.disks[path] = disk
        self.objects.append(disk)
        return disk

    def add_nic(self, port_name, address, rx_mb=0, tx_mb=0):
        nic_guid = str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, port_name))
        nic_id = 'Microsoft:%s\\%s' % (self.guid, nic_guid.upper())
        vnic = WmiObject('Msvm_SyntheticEthernetPortSettingData', nic_id,
                         InstanceID=nic_id, ElementName=port_name,
                         Address=address)
        port_id = nic_id + '\\C'
        port = WmiObject('Msvm_EthernetPortAllocationSettingData', port_id,
                         InstanceID=port_id, ElementName=port_name,
                         Parent=vnic.path_(), HostResource=['vswitch'])
        port.counters = {NET_IN: rx_mb, NET_OUT: tx_mb}
        self.nics[port_name] = port
        self.objects += [vnic, port]
        # The four meter ACLs networking-hyperv sets (IPv4/IPv6, in/out);
        # IPv6 carries a quarter of the traffic.
        for acl_type in (ACL_IPV4, ACL_IPV6):
            for direction in (ACL_IN, ACL_OUT):
                acl_id = '%s\\%d%d' % (port_id, acl_type, direction)
                self.objects.append(WmiObject(
                    'Msvm_EthernetSwitchPortAclSettingData', acl_id,
                    InstanceID=acl_id, Action=ACL_METER, AclType=acl_type,
                    Direction=direction, port=port))
        return port


class FakeHyperV:
    """A host: VMs, metric definitions, and what was enabled."""

    def __init__(self, clock_mhz=2600, sockets=2):
        self.now = datetime.datetime(2026, 11, 22, 10, 0, 0)
        self.vms = {}
        self.enabled = set()  # (element path, definition id or None)
        self.control_calls = []  # (element's ElementName, metric or None)
        self.objects = []
        for wmi_class, name, units in DEFINITIONS:
            def_id = 'Microsoft:' + name.replace(' ', '')
            self.objects.append(WmiObject(wmi_class, def_id, Id=def_id,
                                          ElementName=name, Units=units))
        self.objects.append(WmiObject('Win32_OperatingSystem', 'os',
                                      Version='10.0.17763'))
        for socket in range(sockets):
            self.objects.append(WmiObject(
                'Win32_Processor', 'CPU%d' % socket, ProcessorType=3,
                MaxClockSpeed=clock_mhz, NumberOfCores=8,
                NumberOfLogicalProcessors=16, Name='Xeon',
                Architecture=9, Manufacturer='GenuineIntel'))

    def definition(self, name):
        (found,) = [o for o in self.instances('CIM_BaseMetricDefinition')
                    if o.ElementName == name]
        return found

    def add_vm(self, name, notes, vcpus=1, memory_mb=512, disks=(),
               nics=(), metering=True, window_s=3600, cpu_mhz=0):
        """A running VM.

        :param disks: (host path, read MB, written MB) tuples.
        :param nics: (port name, Hyper-V MAC, rx MB, tx MB) tuples.
        :param metering: on everywhere, as compute-hyperv leaves it when
            ``enable_instance_metrics_collection`` is set, or off.
        """
        vm = self.vms[name] = FakeVM(self, name, notes, vcpus, memory_mb)
        vm.cpu_mhz = cpu_mhz
        vm.metering_since = self.now - datetime.timedelta(seconds=window_s)
        for disk in disks:
            vm.add_disk(*disk)
        for nic in nics:
            vm.add_nic(*nic)
        if metering:
            self.enable_all(vm)
        return vm

    def enable_all(self, vm):
        self._enable(vm.system, CPU)
        self._enable(vm.system, MEMORY)
        for disk in vm.disks.values():
            self._enable(disk, None)
        for port in vm.nics.values():
            self._enable(port, NET_IN)
            self._enable(port, NET_OUT)

    def _enable(self, element, metric):
        definition = self.definition(metric).Id if metric else None
        self.enabled.add((element.path_(), definition))

    def remove_vm(self, name):
        self.vms.pop(name)

    def stop(self, name):
        """Power off; Hyper-V turns CPU, memory and port metering off."""
        vm = self.vms[name]
        vm.state = DISABLED
        vm.uptime_ms = 0
        off = {vm.system.path_()} | {p.path_() for p in vm.nics.values()}
        self.enabled = {(path, definition)
                        for path, definition in self.enabled
                        if path not in off}

    def start(self, name):
        vm = self.vms[name]
        vm.state = ENABLED
        vm.uptime_ms = 1000

    def advance(self, seconds):
        self.now += datetime.timedelta(seconds=seconds)
        for vm in self.vms.values():
            if vm.state == ENABLED:
                vm.uptime_ms += seconds * 1000

    # -- what the WMI connection serves ------------------------------------

    def instances(self, wmi_class):
        classes = (wmi_class,) + SUBCLASSES.get(wmi_class, ())
        everything = self.objects + [o for vm in self.vms.values()
                                     for o in vm.objects]
        return [o for o in everything if o._class in classes]

    def by_path(self, path):
        for wmi_class in ('Msvm_ComputerSystem',
                          'Msvm_StorageAllocationSettingData',
                          'Msvm_EthernetPortAllocationSettingData',
                          'Msvm_AggregationMetricDefinition',
                          'Msvm_BaseMetricDefinition',
                          'Msvm_EthernetSwitchPortAclSettingData'):
            for obj in self.instances(wmi_class):
                if obj.path_() == path:
                    return obj
        return None

    def metric_values(self, element):
        """Msvm_MetricForME: the values kept for an element."""
        if element._class == 'Msvm_ComputerSystem':
            vm = self.vms[element.ElementName]
            values = [self._value(element, element, CPU, vm.cpu_mhz, vm),
                      self._value(element, element, MEMORY, vm.memory_mb,
                                  vm)]
        elif element._class == 'Msvm_StorageAllocationSettingData':
            values = [self._value(element, element, name, value)
                      for name, value in element.counters.items()]
        elif element._class == 'Msvm_EthernetSwitchPortAclSettingData':
            # Enabled on the port, kept on each of its meter ACLs.
            port = element.port
            name = NET_IN if element.Direction == ACL_IN else NET_OUT
            total = port.counters[name]
            share = (total // 4 if element.AclType == ACL_IPV6
                     else total - total // 4)
            values = [self._value(port, element, name, share)]
        else:
            values = []
        return [v for v in values if v is not None]

    def _value(self, subject, element, metric, value, vm=None):
        definition = self.definition(metric)
        if not ({(subject.path_(), definition.Id),
                 (subject.path_(), None)} & self.enabled):
            return None
        key = '%s:%s' % (element._key, metric)
        props = dict(InstanceID=key, MetricDefinitionId=definition.Id,
                     MeasuredElementName=subject.ElementName,
                     MetricValue=str(value), TimeStamp=cim_timestamp(self.now))
        if definition._class != 'Msvm_AggregationMetricDefinition':
            return WmiObject('Msvm_BaseMetricValue', key, **props)
        since = vm.metering_since if vm else self.now
        props.update(AggregationTimeStamp=cim_timestamp(self.now),
                     AggregationDuration=cim_interval(
                         (self.now - since).total_seconds()))
        return WmiObject('Msvm_AggregationMetricValue', key, **props)

    def control_metrics(self, subject, definition, enabled_state):
        element = self.by_path(subject)
        metric = self.by_path(definition) if definition else None
        self.control_calls.append(
            (element.ElementName, metric.ElementName if metric else None))
        self.enabled.add((subject, metric.Id if metric else None))
        if metric is not None and metric.ElementName == CPU:
            # A new metering window starts.
            self.vms[element.ElementName].metering_since = self.now
        return (0,)

    def summary(self, settings_path):
        (vm,) = [v for v in self.vms.values()
                 if v.settings.path_() == settings_path]
        running = vm.state in (ENABLED, PAUSED)
        return WmiObject('Msvm_SummaryInformation', vm.guid,
                         NumberOfProcessors=vm.vcpus, EnabledState=vm.state,
                         MemoryUsage=str(vm.memory_mb if running else 0),
                         UpTime=str(vm.uptime_ms))


_WHERE = re.compile(r"^SELECT .+ FROM (\w+)(?: WHERE (\w+) (LIKE|=) "
                    r"'?(.*?)'?)?$", re.IGNORECASE | re.DOTALL)


class FakeConnection:
    """``conn.Msvm_Class(fields, Prop=value)`` and ``conn.query(wql)``."""

    def __init__(self, host):
        self._host = host
        metric_service = types.SimpleNamespace(
            ControlMetrics=lambda Subject, Definition, MetricCollectionEnabled:
            host.control_metrics(Subject, Definition,
                                 MetricCollectionEnabled))
        management = types.SimpleNamespace(
            GetSummaryInformation=lambda requested, paths: (
                0, [host.summary(path) for path in paths]))
        self._services = {'Msvm_MetricService': metric_service,
                          'Msvm_VirtualSystemManagementService': management}

    def __getattr__(self, wmi_class):
        if wmi_class in self._services:
            return lambda: [self._services[wmi_class]]
        if wmi_class == 'Msvm_MetricForME':
            return self._metric_for_me
        if not wmi_class.startswith(('Msvm_', 'CIM_', 'Win32_')):
            raise AttributeError(wmi_class)

        def select(fields=None, **where):
            return [o for o in self._host.instances(wmi_class)
                    if all(getattr(o, k, None) == v
                           for k, v in where.items())]
        return select

    def _metric_for_me(self, Antecedent):
        element = self._host.by_path(Antecedent)
        if element is None:
            return []
        return [types.SimpleNamespace(Antecedent=Antecedent, Dependent=value)
                for value in self._host.metric_values(element)]

    def query(self, wql):
        wmi_class, prop, operator, value = _WHERE.match(wql.strip()).groups()
        objects = self._host.instances(wmi_class)
        if prop is None:
            return objects
        if operator.upper() == 'LIKE':
            prefix = value.rstrip('%')
            return [o for o in objects
                    if str(getattr(o, prop, '')).startswith(prefix)]
        return [o for o in objects if str(getattr(o, prop, '')) == value]


class FakeHyperVFixture(fixtures.Fixture):
    """os-win's utils, built by ``utilsfactory``, on a ``FakeHyperV``."""

    def __init__(self, host=None):
        super().__init__()
        self.host = host or FakeHyperV()

    def _setUp(self):
        self.conn = FakeConnection(self.host)
        conn = self.conn
        self.useFixture(fixtures.MonkeyPatch(
            'os_win.utils.baseutils.BaseUtils._get_wmi_conn',
            lambda utils, moniker, **kwargs: conn))
        # Windows Server 2019: os-win picks its "10" classes.
        self.useFixture(fixtures.MonkeyPatch(
            'os_win.utils.baseutils.BaseUtilsVirt._os_version',
            [10, 0, 17763]))
        self.useFixture(fixtures.MonkeyPatch(
            'os_win.utils.hostutils.HostUtils._windows_version', None))
        # utilsfactory asks its module-level HostUtils for the version.
        self.useFixture(fixtures.MockPatchObject(
            utilsfactory.utils, '_conn_cimv2', conn))
