"""The instance usage payload and its nested device payloads.

A counter the hypervisor cannot provide is left unset, so it is absent from
``nova_object.data`` (never reported as 0).

Version history is kept in each class's comment; any field change must bump
the version (tests/unit/objects/test_objects.py pins the fingerprints).
"""

import datetime

from oslo_utils import versionutils
from oslo_versionedobjects import fields

from nova_usage_ext.objects import base
from nova_usage_ext.virt import base as virt_base

register = base.UsageObjectRegistry.register


def _present(record, names, data):
    """Add the counters of ``record`` that are not None to ``data``."""
    for name in names:
        value = getattr(record, name, None)
        if value is not None:
            data[name] = value
    return data


def _set_present(obj, record, names):
    for name in names:
        value = getattr(record, name, None)
        if value is not None:
            setattr(obj, name, value)


def counter_fields(names):
    """Non-negative integer fields named ``names`` (from the reader
    contract's lists in virt/base.py)."""
    return {name: fields.NonNegativeIntegerField() for name in names}


def _wire_time(cls, name, value):
    """``DateTimeField``'s wire form, formatted here for UTC (twice as
    fast as the field's ``strftime``; a unit test pins the two)."""
    if value is None:
        return None
    if value.tzinfo is datetime.timezone.utc and value.year >= 1000:
        return '%04d-%02d-%02dT%02d:%02d:%02dZ' % (
            value.year, value.month, value.day, value.hour, value.minute,
            value.second)
    return cls.fields[name].to_primitive(None, name, value)


@register
class DiskUsagePayload(base.UsageObject):
    # Version 1.0: initial version
    VERSION = '1.0'

    COUNTERS = virt_base.DISK_IO_COUNTERS + ('errors', 'capacity_bytes')

    fields = {
        'device': fields.StringField(),
        **counter_fields(COUNTERS),
    }

    @classmethod
    def from_record(cls, disk):
        obj = cls(device=disk.device)
        _set_present(obj, disk, cls.COUNTERS)
        return obj

    @classmethod
    def from_counters(cls, device, counters):
        obj = cls(device=device)
        _set_present(obj, counters, cls.COUNTERS)
        return obj

    @classmethod
    def wire_from(cls, device, record):
        return base.wire(cls, _present(record, cls.COUNTERS,
                                       {'device': device}))


@register
class AttachedVolumeUsagePayload(base.UsageObject):
    """I/O of one Cinder volume as seen from the guest it is attached to."""
    # Version 1.0: initial version
    VERSION = '1.0'

    COUNTERS = virt_base.DISK_IO_COUNTERS

    fields = {
        'volume_id': fields.StringField(),
        'device': fields.StringField(),
        **counter_fields(COUNTERS),
    }

    @classmethod
    def from_record(cls, disk):
        obj = cls(volume_id=disk.volume_id, device=disk.device)
        _set_present(obj, disk, cls.COUNTERS)
        return obj

    @classmethod
    def wire_from(cls, disk):
        return base.wire(cls, _present(disk, cls.COUNTERS, {
            'volume_id': disk.volume_id, 'device': disk.device}))


@register
class InterfaceUsagePayload(base.UsageObject):
    """Counters of one virtual NIC; rx is what the guest received."""
    # Version 1.0: initial version
    VERSION = '1.0'

    COUNTERS = virt_base.INTERFACE_COUNTERS

    fields = {
        'name': fields.StringField(),
        'mac': fields.StringField(nullable=True),
        **counter_fields(COUNTERS),
    }

    @classmethod
    def from_record(cls, iface):
        obj = cls(name=iface.name, mac=iface.mac)
        _set_present(obj, iface, cls.COUNTERS)
        return obj

    @classmethod
    def from_counters(cls, name, counters):
        obj = cls(name=name, mac=None)
        _set_present(obj, counters, cls.COUNTERS)
        return obj

    @classmethod
    def wire_from(cls, name, mac, record):
        return base.wire(cls, _present(record, cls.COUNTERS,
                                       {'name': name, 'mac': mac}))


@register
class PeriodUsagePayload(base.UsageObject):
    """Usage since the start of the audit period, safe across resets.

    Unlike the raw counters, these never go down when a guest restarts:
    the ledger adds what was counted after a reset.
    """
    # Version 1.0: initial version
    # Version 1.1: added vcpu_time_ns
    VERSION = '1.1'

    fields = {
        'period_beginning': fields.DateTimeField(nullable=True),
        **counter_fields(virt_base.CPU_COUNTERS),
        'disks': fields.ListOfObjectsField('DiskUsagePayload'),
        'interfaces': fields.ListOfObjectsField('InterfaceUsagePayload'),
    }

    # (own version, child version) pairs, for serializing to older versions
    obj_relationships = {
        'disks': [('1.0', '1.0')],
        'interfaces': [('1.0', '1.0')],
    }

    def obj_make_compatible(self, primitive, target_version):
        super().obj_make_compatible(primitive, target_version)
        target = versionutils.convert_version_to_tuple(target_version)
        if target < (1, 1):
            primitive.pop('vcpu_time_ns', None)

    @classmethod
    def from_counters(cls, period):
        """From the counter cache's ``UsageCounters`` of the period."""
        obj = cls(
            # None before the first exists: the usage then counts from
            # the start of the guest's process, which nobody knows.
            period_beginning=period.period_start,
            disks=[DiskUsagePayload.from_counters(name, disk)
                   for name, disk in sorted(period.disks.items())],
            interfaces=[InterfaceUsagePayload.from_counters(name, iface)
                        for name, iface in sorted(period.interfaces.items())])
        _set_present(obj, period, virt_base.CPU_COUNTERS)
        return obj

    @classmethod
    def wire_from_counters(cls, period):
        data = {'period_beginning': _wire_time(cls, 'period_beginning',
                                               period.period_start)}
        _present(period, virt_base.CPU_COUNTERS, data)
        data['disks'] = [DiskUsagePayload.wire_from(name, disk)
                         for name, disk in sorted(period.disks.items())]
        data['interfaces'] = [
            InterfaceUsagePayload.wire_from(name, None, iface)
            for name, iface in sorted(period.interfaces.items())]
        return base.wire(cls, data)


@register
class InstanceUsagePayload(base.UsageObject):
    """Usage of one instance as read from the hypervisor at ``read_at``.

    Counters are the hypervisor's raw cumulative values since the guest's
    process started; ``period`` has the audit period's usage.
    """
    # Version 1.0: initial version
    # Version 1.1: added final, source and period
    # Version 1.2: added vcpu_time_ns (and period 1.1 with it)
    VERSION = '1.2'

    COUNTERS = virt_base.CPU_COUNTERS + ('vcpus', 'memory_mb')

    fields = {
        'instance_uuid': fields.UUIDField(),
        'instance_name': fields.StringField(nullable=True),
        'display_name': fields.StringField(nullable=True),
        'project_id': fields.StringField(nullable=True),
        'user_id': fields.StringField(nullable=True),
        'host': fields.StringField(nullable=True),
        'flavor_name': fields.StringField(nullable=True),
        'power_state': fields.StringField(),
        **counter_fields(virt_base.CPU_COUNTERS),
        'vcpus': fields.NonNegativeIntegerField(),
        'memory_mb': fields.NonNegativeIntegerField(),
        'disks': fields.ListOfObjectsField('DiskUsagePayload'),
        'interfaces': fields.ListOfObjectsField('InterfaceUsagePayload'),
        'volumes': fields.ListOfObjectsField('AttachedVolumeUsagePayload'),
        'read_at': fields.DateTimeField(),
        # True in the exists sent just before instance.delete.start.
        'final': fields.BooleanField(default=False),
        # Where the counters come from: read for this message
        # ('hypervisor') or the last periodic reading ('cache').
        'source': fields.EnumField(['hypervisor', 'cache']),
        'period': fields.ObjectField('PeriodUsagePayload', nullable=True),
    }

    # (own version, child version) pairs, for serializing to older versions
    obj_relationships = {
        'disks': [('1.0', '1.0')],
        'interfaces': [('1.0', '1.0')],
        'volumes': [('1.0', '1.0')],
        'period': [('1.1', '1.0'), ('1.2', '1.1')],
    }

    def obj_make_compatible(self, primitive, target_version):
        # The base class drops sub-objects that did not exist at the target
        # version (period) by obj_relationships; plain fields are ours.
        super().obj_make_compatible(primitive, target_version)
        target = versionutils.convert_version_to_tuple(target_version)
        if target < (1, 2):
            primitive.pop('vcpu_time_ns', None)
        if target < (1, 1):
            for name in ('final', 'source', 'period'):
                primitive.pop(name, None)

    @classmethod
    def from_record(cls, usage, host=None, final=False, source='hypervisor',
                    period=None):
        """Build the payload from a reader's ``InstanceUsage``.

        :param period: the counter cache's ``UsageCounters`` of the audit
            period, or None.
        """
        obj = cls(
            final=final,
            source=source,
            period=(PeriodUsagePayload.from_counters(period)
                    if period is not None else None),
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
        _set_present(obj, usage,
                     cls.COUNTERS)
        return obj

    @classmethod
    def wire_from_record(cls, usage, host=None, final=False,
                         source='hypervisor', period=None):
        """``from_record(...).to_wire()``, ten times faster.

        oslo.versionedobjects' change tracking and coercion cost about
        300 us per instance; this builds the same dicts directly (a unit
        test pins the two to each other). Values are the reader's, already
        of the fields' types.
        """
        if source not in ('hypervisor', 'cache'):
            raise ValueError('source must be hypervisor or cache, not %r'
                             % (source,))
        data = {
            'instance_uuid': usage.uuid,
            'instance_name': usage.name,
            'display_name': usage.display_name,
            'project_id': usage.project_id,
            'user_id': usage.user_id,
            'host': host,
            'flavor_name': usage.flavor.name if usage.flavor else None,
            'power_state': usage.state_name,
        }
        _present(usage, cls.COUNTERS, data)
        data['disks'] = [DiskUsagePayload.wire_from(d.device, d)
                         for d in usage.disks]
        data['interfaces'] = [
            InterfaceUsagePayload.wire_from(i.name, i.mac, i)
            for i in usage.interfaces]
        data['volumes'] = [AttachedVolumeUsagePayload.wire_from(d)
                           for d in usage.disks if d.volume_id]
        data['read_at'] = _wire_time(cls, 'read_at', usage.read_at)
        data['final'] = bool(final)
        data['source'] = source
        data['period'] = (PeriodUsagePayload.wire_from_counters(period)
                          if period is not None else None)
        return base.wire(cls, data)
