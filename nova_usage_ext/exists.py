"""The ``compute.instance.exists`` body this package sends.

Inside nova-compute the legacy fields come from nova itself and only
``usage`` is added; outside nova (``nova-usage-ext poll``) the legacy
fields are rebuilt from what the hypervisor recorded about the instance.
"""

import datetime
import uuid as uuidlib

from nova_usage_ext.objects import usage as usage_objects

EVENT_TYPE = 'compute.instance.exists'
AUDIT_PERIODS = ('hour', 'day', 'month', 'year')


def audit_period_start(now, unit):
    """Start of nova's audit period of ``unit`` containing ``now``."""
    if unit == 'hour':
        return now.replace(minute=0, second=0, microsecond=0)
    if unit == 'day':
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == 'month':
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if unit == 'year':
        return now.replace(month=1, day=1, hour=0, minute=0, second=0,
                           microsecond=0)
    raise ValueError('audit period must be one of %s, not %r'
                     % (', '.join(AUDIT_PERIODS), unit))


def _nova_time(value):
    # nova writes audit periods as str() of a naive UTC datetime.
    if value.tzinfo is not None:
        value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return str(value)


def legacy_fields(usage, host):
    """nova's legacy exists fields that the hypervisor's record gives."""
    flavor = usage.flavor
    fields = {
        'tenant_id': usage.project_id,
        'user_id': usage.user_id,
        'instance_id': usage.uuid,
        'display_name': usage.display_name,
        'host': host,
        'instance_type': flavor.name if flavor else None,
        'vcpus': usage.vcpus,
        'memory_mb': usage.memory_mb,
    }
    if flavor is not None and flavor.root_gb is not None:
        fields['root_gb'] = flavor.root_gb
        fields['ephemeral_gb'] = flavor.ephemeral_gb or 0
        fields['disk_gb'] = flavor.root_gb + (flavor.ephemeral_gb or 0)
    return fields


def usage_primitive(usage, host):
    """The versioned usage payload of one reading, in nova's wire format."""
    payload = usage_objects.InstanceUsagePayload.from_record(usage, host=host)
    return payload.to_wire()


def exists_payload(legacy, usage_wire, audit_period_beginning,
                   audit_period_ending):
    """A legacy exists payload with the usage added under ``usage``."""
    payload = dict(legacy)
    payload['audit_period_beginning'] = _nova_time(audit_period_beginning)
    payload['audit_period_ending'] = _nova_time(audit_period_ending)
    payload['usage'] = usage_wire
    return payload


def notification(payload, host, timestamp, event_type=EVENT_TYPE):
    """The message as oslo.messaging puts it on the bus."""
    return {
        'message_id': str(uuidlib.uuid4()),
        'publisher_id': 'compute.%s' % host,
        'event_type': event_type,
        'priority': 'INFO',
        'payload': payload,
        'timestamp': _nova_time(timestamp),
    }


def exists_notification(usage, host, audit_period='hour'):
    """The full exists message for one reading, as the CLI shows it."""
    ending = usage.read_at
    beginning = audit_period_start(ending, audit_period)
    payload = exists_payload(legacy_fields(usage, host),
                             usage_primitive(usage, host),
                             beginning, ending)
    return notification(payload, host, ending)
