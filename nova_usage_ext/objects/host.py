"""The host usage payload: every nova instance of a host from one reading.

The periodic loop sends it every ``[usage_ext] host_usage_interval`` as
``host.usage`` (nova's ``<object>.<action>``), in parts of at most
``host_usage_max_instances`` instances: ``part`` of ``parts`` (from 1) says
which. It carries what ceilometer's default compute meters need (raw
cumulative counters, memory, power state), so ceilometer can listen instead
of polling; the audit period's usage stays in ``compute.instance.exists``.

A figure the hypervisor did not give is absent from ``nova_object.data``
(never 0). Version history is kept in each class's comment.
"""

from oslo_versionedobjects import fields

from nova_usage_ext.objects import base
from nova_usage_ext.objects import usage
from nova_usage_ext.virt import base as virt_base

register = base.UsageObjectRegistry.register

EVENT_TYPE = 'host.usage'

# The memory figures, from the reader contract's one list (KiB).
MEMORY_FIELDS = tuple('memory_' + name for name in virt_base.MEMORY_GAUGES)


@register
class HostInstanceUsagePayload(base.UsageObject):
    """One instance in a host usage message: the raw readings (since the
    guest's process started), its identity, memory and power state."""
    # Version 1.0: initial version
    VERSION = '1.0'

    fields = {
        'instance_uuid': fields.UUIDField(),
        'instance_name': fields.StringField(nullable=True),
        'display_name': fields.StringField(nullable=True),
        'project_id': fields.StringField(nullable=True),
        'user_id': fields.StringField(nullable=True),
        'flavor_name': fields.StringField(nullable=True),
        'flavor_id': fields.StringField(nullable=True),
        'image_ref': fields.StringField(nullable=True),
        'vcpus': fields.NonNegativeIntegerField(),
        'memory_mb': fields.NonNegativeIntegerField(),
        'root_gb': fields.NonNegativeIntegerField(),
        'ephemeral_gb': fields.NonNegativeIntegerField(),
        'swap_mb': fields.NonNegativeIntegerField(),
        # nova's power state name, and the hypervisor's own code, which is
        # what ceilometer's power.state meter reports.
        'power_state': fields.StringField(),
        'hypervisor_state': fields.IntegerField(),
        **usage.counter_fields(virt_base.CPU_COUNTERS + MEMORY_FIELDS),
        'disks': fields.ListOfObjectsField('DiskUsagePayload'),
        'interfaces': fields.ListOfObjectsField('InterfaceUsagePayload'),
    }

    obj_relationships = {
        'disks': [('1.0', '1.0')],
        'interfaces': [('1.0', '1.0')],
    }

    @classmethod
    def wire_from_record(cls, record):
        """The wire dict of a reader's ``InstanceUsage``."""
        data = {
            'instance_uuid': record.uuid,
            'instance_name': record.name,
            'display_name': record.display_name,
            'project_id': record.project_id,
            'user_id': record.user_id,
            'flavor_name': record.flavor.name if record.flavor else None,
            'flavor_id': record.flavor.id if record.flavor else None,
            'image_ref': record.image_ref,
            'power_state': record.state_name,
        }
        flavor = record.flavor
        optional = {
            'vcpus': record.vcpus,
            'memory_mb': record.memory_mb,
            'root_gb': flavor.root_gb if flavor else None,
            'ephemeral_gb': flavor.ephemeral_gb if flavor else None,
            'swap_mb': flavor.swap_mb if flavor else None,
            'hypervisor_state': record.hypervisor_state,
        }
        for name in virt_base.CPU_COUNTERS:
            optional[name] = getattr(record, name)
        if record.memory is not None:
            for name in virt_base.MEMORY_GAUGES:
                optional['memory_' + name] = getattr(record.memory, name)
        data.update((k, v) for k, v in optional.items() if v is not None)
        data['disks'] = [usage.DiskUsagePayload.wire_from(d.device, d)
                         for d in record.disks]
        data['interfaces'] = [
            usage.InterfaceUsagePayload.wire_from(i.name, i.mac, i)
            for i in record.interfaces]
        return base.wire(cls, data)


@register
class HostUsagePayload(base.UsageObject):
    """Part ``part`` of ``parts`` of one reading of a host's instances."""
    # Version 1.0: initial version
    VERSION = '1.0'

    fields = {
        'host': fields.StringField(),
        # When the reading began (UTC); every part of it has the same.
        'read_at': fields.DateTimeField(),
        'part': fields.IntegerField(),
        'parts': fields.IntegerField(),
        'instances': fields.ListOfObjectsField('HostInstanceUsagePayload'),
    }

    obj_relationships = {
        'instances': [('1.0', '1.0')],
    }

    @classmethod
    def wire_parts(cls, host, read_at, records, max_instances):
        """The wire dicts of a host reading, in parts of at most
        ``max_instances`` instances; one (empty) part for no instances."""
        instances = [HostInstanceUsagePayload.wire_from_record(r)
                     for r in records]
        size = max(1, max_instances)
        chunks = [instances[i:i + size]
                  for i in range(0, len(instances), size)] or [[]]
        when = cls.fields['read_at'].to_primitive(None, 'read_at', read_at)
        return [base.wire(cls, {'host': host, 'read_at': when,
                                'part': index, 'parts': len(chunks),
                                'instances': chunk})
                for index, chunk in enumerate(chunks, 1)]
