"""The instance usage payload and its nested device payloads.

A counter the hypervisor cannot provide is left unset, so it is absent from
``nova_object.data`` (never reported as 0).

Version history is kept in each class's comment; any field change must bump
the version (tests/unit/objects/test_objects.py pins the fingerprints).
"""

from oslo_versionedobjects import fields

from nova_usage_ext.objects import base

register = base.UsageObjectRegistry.register


def _set_present(obj, record, names):
    for name in names:
        value = getattr(record, name)
        if value is not None:
            setattr(obj, name, value)


@register
class DiskUsagePayload(base.UsageObject):
    # Version 1.0: initial version
    VERSION = '1.0'

    COUNTERS = ('read_bytes', 'read_requests', 'write_bytes',
                'write_requests', 'errors', 'capacity_bytes')

    fields = {
        'device': fields.StringField(),
        'read_bytes': fields.NonNegativeIntegerField(),
        'read_requests': fields.NonNegativeIntegerField(),
        'write_bytes': fields.NonNegativeIntegerField(),
        'write_requests': fields.NonNegativeIntegerField(),
        'errors': fields.NonNegativeIntegerField(),
        'capacity_bytes': fields.NonNegativeIntegerField(),
    }

    @classmethod
    def from_record(cls, disk):
        obj = cls(device=disk.device)
        _set_present(obj, disk, cls.COUNTERS)
        return obj


@register
class AttachedVolumeUsagePayload(base.UsageObject):
    """I/O of one Cinder volume as seen from the guest it is attached to."""
    # Version 1.0: initial version
    VERSION = '1.0'

    COUNTERS = ('read_bytes', 'read_requests', 'write_bytes',
                'write_requests')

    fields = {
        'volume_id': fields.StringField(),
        'device': fields.StringField(),
        'read_bytes': fields.NonNegativeIntegerField(),
        'read_requests': fields.NonNegativeIntegerField(),
        'write_bytes': fields.NonNegativeIntegerField(),
        'write_requests': fields.NonNegativeIntegerField(),
    }

    @classmethod
    def from_record(cls, disk):
        obj = cls(volume_id=disk.volume_id, device=disk.device)
        _set_present(obj, disk, cls.COUNTERS)
        return obj


@register
class InterfaceUsagePayload(base.UsageObject):
    """Counters of one virtual NIC; rx is what the guest received."""
    # Version 1.0: initial version
    VERSION = '1.0'

    COUNTERS = ('rx_bytes', 'rx_packets', 'rx_errors', 'rx_drops',
                'tx_bytes', 'tx_packets', 'tx_errors', 'tx_drops')

    fields = {
        'name': fields.StringField(),
        'mac': fields.StringField(nullable=True),
        'rx_bytes': fields.NonNegativeIntegerField(),
        'rx_packets': fields.NonNegativeIntegerField(),
        'rx_errors': fields.NonNegativeIntegerField(),
        'rx_drops': fields.NonNegativeIntegerField(),
        'tx_bytes': fields.NonNegativeIntegerField(),
        'tx_packets': fields.NonNegativeIntegerField(),
        'tx_errors': fields.NonNegativeIntegerField(),
        'tx_drops': fields.NonNegativeIntegerField(),
    }

    @classmethod
    def from_record(cls, iface):
        obj = cls(name=iface.name, mac=iface.mac)
        _set_present(obj, iface, cls.COUNTERS)
        return obj


@register
class InstanceUsagePayload(base.UsageObject):
    """Usage of one instance as read from the hypervisor at ``read_at``.

    Counters are the hypervisor's raw cumulative values since the guest's
    process started.
    """
    # Version 1.0: initial version
    VERSION = '1.0'

    fields = {
        'instance_uuid': fields.UUIDField(),
        'instance_name': fields.StringField(nullable=True),
        'display_name': fields.StringField(nullable=True),
        'project_id': fields.StringField(nullable=True),
        'user_id': fields.StringField(nullable=True),
        'host': fields.StringField(nullable=True),
        'flavor_name': fields.StringField(nullable=True),
        'power_state': fields.StringField(),
        'cpu_time_ns': fields.NonNegativeIntegerField(),
        'vcpus': fields.NonNegativeIntegerField(),
        'memory_mb': fields.NonNegativeIntegerField(),
        'disks': fields.ListOfObjectsField('DiskUsagePayload'),
        'interfaces': fields.ListOfObjectsField('InterfaceUsagePayload'),
        'volumes': fields.ListOfObjectsField('AttachedVolumeUsagePayload'),
        'read_at': fields.DateTimeField(),
    }

    @classmethod
    def from_record(cls, usage, host=None):
        """Build the payload from a reader's ``InstanceUsage``."""
        obj = cls(
            instance_uuid=usage.uuid,
            instance_name=usage.name,
            display_name=usage.display_name,
            project_id=usage.project_id,
            user_id=usage.user_id,
            host=host,
            flavor_name=usage.flavor.name if usage.flavor else None,
            power_state=usage.state_name,
            disks=[DiskUsagePayload.from_record(d) for d in usage.disks],
            interfaces=[InterfaceUsagePayload.from_record(i)
                        for i in usage.interfaces],
            volumes=[AttachedVolumeUsagePayload.from_record(d)
                     for d in usage.disks if d.volume_id],
            read_at=usage.read_at,
        )
        _set_present(obj, usage, ('cpu_time_ns', 'vcpus', 'memory_mb'))
        return obj
