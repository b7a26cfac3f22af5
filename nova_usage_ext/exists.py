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
SOURCE_HYPERVISOR = 'hypervisor'
SOURCE_CACHE = 'cache'


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


def audit_unit(conf):
    """The unit of nova's ``instance_usage_audit_period`` (``month@15``
    style offsets are not applied: the unit's start is used)."""
    value = getattr(conf, 'instance_usage_audit_period', None) or 'month'
    unit = value.split('@', 1)[0].strip().lower()
    return unit if unit in AUDIT_PERIODS else 'month'


def parse_nova_time(text):
    """A time as nova writes it in notifications, as aware UTC; or None."""
    if not text:
        return None
    try:
        value = datetime.datetime.fromisoformat(
            text.replace('Z', '+00:00'))
    except (TypeError, ValueError):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value


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


def _legacy_str_time(text):
    # nova's legacy created_at is str() of an aware datetime.
    value = parse_nova_time(text)
    return str(value) if value is not None else ''


def _legacy_iso_time(text):
    # nova's legacy launched_at and kin: ISO with microseconds, '' if unset.
    value = parse_nova_time(text)
    return value.strftime('%Y-%m-%dT%H:%M:%S.%f') if value else ''


def legacy_fields_from_versioned(data):
    """Legacy exists fields from a versioned instance payload's data.

    For ``instance.delete.start`` when nova sends versioned notifications
    only: the final exists keeps the legacy format that billing reads.
    Fields the versioned payload does not carry (image_ref_url) are left
    out.
    """
    flavor = (data.get('flavor') or {}).get('nova_object.data', {})
    root_gb = flavor.get('root_gb')
    ephemeral_gb = flavor.get('ephemeral_gb')
    fields = {
        'tenant_id': data.get('tenant_id'),
        'user_id': data.get('user_id'),
        'instance_id': data.get('uuid'),
        'display_name': data.get('display_name'),
        'reservation_id': data.get('reservation_id'),
        'hostname': data.get('host_name'),
        'instance_type': flavor.get('name'),
        'instance_flavor_id': flavor.get('flavorid'),
        'architecture': data.get('architecture'),
        'memory_mb': flavor.get('memory_mb'),
        'vcpus': flavor.get('vcpus'),
        'root_gb': root_gb,
        'ephemeral_gb': ephemeral_gb,
        'host': data.get('host'),
        'node': data.get('node'),
        'availability_zone': data.get('availability_zone'),
        'created_at': _legacy_str_time(data.get('created_at')),
        'terminated_at': _legacy_iso_time(data.get('terminated_at')),
        'deleted_at': _legacy_iso_time(data.get('deleted_at')),
        'launched_at': _legacy_iso_time(data.get('launched_at')),
        'os_type': data.get('os_type'),
        'kernel_id': data.get('kernel_id'),
        'ramdisk_id': data.get('ramdisk_id'),
        'state': data.get('state'),
        'state_description': data.get('task_state') or '',
        'progress': data.get('progress') or '',
        'image_meta': ({'base_image_ref': data['image_uuid']}
                       if data.get('image_uuid') else {}),
        'metadata': data.get('metadata') or {},
    }
    if root_gb is not None:
        fields['disk_gb'] = root_gb + (ephemeral_gb or 0)
    return fields


def usage_primitive(usage, host, final=False, source=SOURCE_HYPERVISOR,
                    period=None):
    """The versioned usage payload of one reading, in nova's wire format."""
    return usage_objects.InstanceUsagePayload.wire_from_record(
        usage, host=host, final=final, source=source, period=period)


def exists_payload(legacy, usage_wire, audit_period_beginning,
                   audit_period_ending):
    """A legacy exists payload with the usage added under ``usage``."""
    payload = dict(legacy)
    payload['audit_period_beginning'] = _nova_time(audit_period_beginning)
    payload['audit_period_ending'] = _nova_time(audit_period_ending)
    if usage_wire is not None:
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
