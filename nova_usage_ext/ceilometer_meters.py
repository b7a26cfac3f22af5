"""Ceilometer's compute meters from the package's notifications.

What ceilometer 27's compute pollsters (``ceilometer/compute/pollsters``)
would report for the same guests: the same meter names, types, units and
resource ids, and per sample the resource metadata keys those pollsters set
(and gnocchi's ``gnocchi_resources.yaml`` reads): ``display_name``,
``name``, ``instance_id``, ``instance_type``, ``host`` (nova's hostId),
``instance_host``, ``flavor``, ``image``/``image_ref``, ``status``,
``state``, flavor sizes; plus ``cpu_number`` on ``cpu``, ``disk_name`` on
disks and ``vnic_name``/``mac`` on interfaces.

Plain dicts, no ceilometer import: :mod:`nova_usage_ext.ceilometer_endpoint`
turns them into ceilometer samples inside its notification agent.

Messages:

- ``host.usage`` (every instance of a host): ``cpu``, ``memory.usage``,
  ``memory.available``, ``power.state``, ``disk.device.*``,
  ``network.*``. Like ceilometer's default (``[compute]
  report_stopped_instance_metrics = False``), a shut-off instance gives no
  sample; ``memory.*`` only where the guest reports them.
- ``compute.instance.exists`` with usage (the period's and the final one)
  and ``instance.usage``: the counters it carries, with ``final`` in the
  metadata of the final exists.
"""

import hashlib

from nova_usage_ext import exists
from nova_usage_ext.objects import host as host_objects

HOST_USAGE = host_objects.EVENT_TYPE
EXISTS = exists.EVENT_TYPE
INSTANCE_USAGE = 'instance.usage'
EVENT_TYPES = (HOST_USAGE, EXISTS, INSTANCE_USAGE)

GAUGE = 'gauge'
CUMULATIVE = 'cumulative'

# libvirt's virDomainState, what ceilometer's power.state reports.
SHUTOFF = 5
# ceilometer's guesses of nova's status and vm_state from it
# (ceilometer/compute/virt/libvirt/utils.py).
STATUS = {0: 'building', 1: 'active', 2: 'active', 3: 'paused',
          4: 'stopped', 5: 'stopped', 6: 'error', 7: 'suspended'}
VM_STATE = {0: 'pending', 1: 'running', 2: 'running', 3: 'paused',
            4: 'shutdown', 5: 'shutdown', 6: 'crashed', 7: 'suspended'}

# (meter, payload field, unit), all cumulative.
CPU_METER = ('cpu', 'vcpu_time_ns', 'ns')
DISK_METERS = (
    ('disk.device.read.bytes', 'read_bytes', 'B'),
    ('disk.device.read.requests', 'read_requests', 'request'),
    ('disk.device.write.bytes', 'write_bytes', 'B'),
    ('disk.device.write.requests', 'write_requests', 'request'),
)
INTERFACE_METERS = (
    ('network.incoming.bytes', 'rx_bytes', 'B'),
    ('network.incoming.packets', 'rx_packets', 'packet'),
    ('network.incoming.packets.drop', 'rx_drops', 'packet'),
    ('network.incoming.packets.error', 'rx_errors', 'packet'),
    ('network.outgoing.bytes', 'tx_bytes', 'B'),
    ('network.outgoing.packets', 'tx_packets', 'packet'),
    ('network.outgoing.packets.drop', 'tx_drops', 'packet'),
    ('network.outgoing.packets.error', 'tx_errors', 'packet'),
)
# (meter, MemoryUsage figure in MiB), gauges.
MEMORY_METERS = (('memory.usage', 'MiB'), ('memory.available', 'MiB'))


def host_id(project_id, host):
    """nova's hostId of an instance, as ceilometer's discovery computes it
    (sha224 of project id and host name)."""
    return hashlib.sha224(((project_id or '') + (host or ''))
                          .encode('utf-8')).hexdigest()


def _data(wire):
    return (wire or {}).get('nova_object.data') or {}


def instance_metadata(data, host, hypervisor_state=None, flavor_id=None,
                      image_ref=None, extra=None):
    """The metadata ceilometer's pollsters give every sample of an
    instance, from a usage payload's data."""
    vcpus = data.get('vcpus')
    memory_mb = data.get('memory_mb')
    disk_gb = data.get('root_gb')
    ephemeral_gb = data.get('ephemeral_gb')
    flavor_name = data.get('flavor_name')
    flavor = {'id': flavor_id or data.get('flavor_id') or flavor_name,
              'name': flavor_name, 'vcpus': vcpus, 'ram': memory_mb,
              'disk': disk_gb, 'ephemeral': ephemeral_gb,
              'swap': data.get('swap_mb')}
    image_ref = image_ref or data.get('image_ref')
    metadata = {
        'display_name': data.get('display_name'),
        'name': data.get('instance_name'),
        'instance_id': data.get('instance_uuid'),
        'instance_type': flavor_name,
        'host': host_id(data.get('project_id'), host),
        'instance_host': host,
        'flavor': flavor,
        'status': STATUS.get(hypervisor_state),
        'state': VM_STATE.get(hypervisor_state, data.get('power_state')),
        'task_state': '',
        'image': {'id': image_ref} if image_ref else None,
        'image_ref': image_ref,
        'image_ref_url': None,
        'vcpus': vcpus,
        'memory_mb': memory_mb,
        'disk_gb': disk_gb,
        'ephemeral_gb': ephemeral_gb,
        # ceilometer's own reckoning: the flavor's disk less ephemeral.
        'root_gb': (disk_gb - ephemeral_gb
                    if disk_gb is not None and ephemeral_gb is not None
                    else None),
    }
    if extra:
        metadata.update(extra)
    return metadata


def _sample(name, kind, unit, volume, resource_id, data, timestamp,
            metadata):
    return {'name': name, 'type': kind, 'unit': unit, 'volume': volume,
            'resource_id': resource_id, 'user_id': data.get('user_id'),
            'project_id': data.get('project_id'), 'timestamp': timestamp,
            'resource_metadata': metadata}


def counter_samples(data, metadata, timestamp):
    """``cpu``, ``disk.device.*`` and ``network.*`` of one instance: one
    sample per counter present (an absent counter gives none)."""
    uuid = data.get('instance_uuid')
    samples = []
    name, field, unit = CPU_METER
    if data.get(field) is not None:
        samples.append(_sample(name, CUMULATIVE, unit, data[field], uuid,
                               data, timestamp,
                               dict(metadata, cpu_number=data.get('vcpus'))))
    for disk in data.get('disks') or ():
        disk = _data(disk)
        device = disk.get('device')
        disk_metadata = dict(metadata, disk_name=device)
        for name, field, unit in DISK_METERS:
            if disk.get(field) is not None:
                samples.append(_sample(
                    name, CUMULATIVE, unit, disk[field],
                    '%s-%s' % (uuid, device), data, timestamp,
                    disk_metadata))
    for iface in data.get('interfaces') or ():
        iface = _data(iface)
        tap = iface.get('name')
        vnic_metadata = dict(metadata, name=tap, vnic_name=tap,
                             mac=iface.get('mac'), fref=None,
                             parameters=None)
        resource_id = '%s-%s-%s' % (data.get('instance_name'), uuid, tap)
        for name, field, unit in INTERFACE_METERS:
            if iface.get(field) is not None:
                samples.append(_sample(
                    name, CUMULATIVE, unit, iface[field], resource_id,
                    data, timestamp, vnic_metadata))
    return samples


def memory_meters(data):
    """``{meter: MiB}`` as ceilometer's libvirt inspector computes them
    from the balloon figures (KiB): absent where the guest gives none."""
    available = data.get('memory_available_kib')
    free = data.get('memory_usable_kib')
    if free is None:
        free = data.get('memory_unused_kib')
    meters = {}
    if available is not None:
        meters['memory.available'] = available / 1024
        if free is not None:
            meters['memory.usage'] = (available - free) / 1024
    return meters


def host_usage_samples(payload):
    """Every sample of one ``host.usage`` message's payload."""
    body = _data(payload)
    host = body.get('host')
    timestamp = body.get('read_at')
    samples = []
    for instance in body.get('instances') or ():
        data = _data(instance)
        state = data.get('hypervisor_state')
        if state == SHUTOFF:
            continue  # ceilometer reports nothing of a shut-off guest
        metadata = instance_metadata(data, host, state)
        uuid = data.get('instance_uuid')
        if state is not None:
            samples.append(_sample('power.state', GAUGE, '', state, uuid,
                                   data, timestamp, metadata))
        samples.extend(counter_samples(data, metadata, timestamp))
        for name, unit in MEMORY_METERS:
            value = memory_meters(data).get(name)
            if value is not None:
                samples.append(_sample(name, GAUGE, unit, value, uuid, data,
                                       timestamp, metadata))
    return samples


def exists_samples(payload, event_type):
    """The counter samples of a ``compute.instance.exists`` that carries
    usage (``payload['usage']``), or of an ``instance.usage``."""
    if event_type == INSTANCE_USAGE:
        usage, legacy = payload, {}
    else:
        usage, legacy = payload.get('usage'), payload
    data = _data(usage)
    if not data.get('instance_uuid'):
        return []
    # nova's legacy fields have the flavor's sizes the usage lacks.
    sizes = ('root_gb', 'ephemeral_gb')
    data = dict(data, **{key: legacy[key] for key in sizes
                         if legacy.get(key) is not None})
    host = data.get('host') or legacy.get('host')
    image_meta = legacy.get('image_meta') or {}
    extra = {'final': bool(data.get('final'))}
    if legacy.get('final_reason'):
        extra['final_reason'] = legacy['final_reason']
    metadata = instance_metadata(
        data, host, flavor_id=legacy.get('instance_flavor_id'),
        image_ref=image_meta.get('base_image_ref'), extra=extra)
    metadata['state'] = legacy.get('state') or data.get('power_state')
    return counter_samples(data, metadata, data.get('read_at'))


def samples(message):
    """The samples of one notification (``event_type``, ``payload``), []
    for any other."""
    event_type = message.get('event_type')
    payload = message.get('payload')
    if not isinstance(payload, dict):
        return []
    if event_type == HOST_USAGE:
        return host_usage_samples(payload)
    if event_type in (EXISTS, INSTANCE_USAGE):
        return exists_samples(payload, event_type)
    return []
