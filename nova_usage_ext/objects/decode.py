"""Reading a usage payload back from the wire (listeners, consumers, tests).

:func:`usage_from_wire` is the one way in. It returns an
``InstanceUsagePayload`` whose identifying fields are all set, or raises
:class:`PayloadError`, never any other exception, whatever the input.
oslo.versionedobjects alone would accept a payload without
``instance_uuid`` and raise ``NotImplementedError`` later, when the field
is read.
"""

from oslo_utils import uuidutils

from nova_usage_ext.objects import base
from nova_usage_ext.objects import usage as usage_objects

# The fields every version of each payload has always carried; counters
# are optional by design (absent when the hypervisor has none).
REQUIRED = {
    'InstanceUsagePayload': ('instance_uuid', 'power_state', 'read_at'),
    'DiskUsagePayload': ('device',),
    'InterfaceUsagePayload': ('name',),
    'AttachedVolumeUsagePayload': ('volume_id', 'device'),
}


class PayloadError(ValueError):
    """The data is not a well-formed nova_usage_ext InstanceUsagePayload."""


def _one_line(exc):
    text = ' '.join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + '...'


def _check_required(obj, where):
    for name in REQUIRED.get(obj.obj_name(), ()):
        if not obj.obj_attr_is_set(name):
            raise PayloadError('%s has no %s' % (where, name))
    for name in obj.fields:
        if not obj.obj_attr_is_set(name):
            continue
        value = getattr(obj, name)
        if isinstance(value, base.UsageObject):
            _check_required(value, '%s.%s' % (where, name))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, base.UsageObject):
                    _check_required(item, '%s.%s[%d]' % (where, name, index))


def usage_from_wire(primitive):
    """The ``InstanceUsagePayload`` a wire dict holds.

    :param primitive: the ``nova_object.*`` dict, as decoded from JSON.
    :raises PayloadError: for anything that is not one, with a one-line
        reason.
    """
    cls = usage_objects.InstanceUsagePayload
    if not isinstance(primitive, dict):
        raise PayloadError('usage is a %s, not an object'
                           % type(primitive).__name__)
    namespace = primitive.get('nova_object.namespace')
    if namespace != base.NAMESPACE:
        raise PayloadError('usage is not a %s object (namespace %r)'
                           % (base.NAMESPACE, namespace))
    name = primitive.get('nova_object.name')
    if name != cls.obj_name():
        raise PayloadError('usage is a %r, not a %s' % (name,
                                                        cls.obj_name()))
    data = primitive.get('nova_object.data')
    if isinstance(data, dict) and 'instance_uuid' in data and \
            not uuidutils.is_uuid_like(data['instance_uuid']):
        # oslo.versionedobjects would only warn.
        raise PayloadError('usage has an invalid instance_uuid %.60r'
                           % (data['instance_uuid'],))
    try:
        obj = cls.obj_from_primitive(primitive)
    except Exception as exc:  # ovo raises many kinds, RecursionError too
        raise PayloadError('usage does not deserialize: %s'
                           % _one_line(exc))
    _check_required(obj, 'usage')
    return obj


HOST_REQUIRED = {
    'HostUsagePayload': ('host', 'read_at', 'part', 'parts', 'instances'),
    'HostInstanceUsagePayload': ('instance_uuid', 'power_state'),
}


def host_usage_from_wire(primitive):
    """The ``HostUsagePayload`` a wire dict holds.

    :raises PayloadError: for anything that is not one, with a one-line
        reason.
    """
    # Imported here: registering the host payloads is the caller's choice.
    from nova_usage_ext.objects import host as host_objects
    cls = host_objects.HostUsagePayload
    if not isinstance(primitive, dict):
        raise PayloadError('payload is a %s, not an object'
                           % type(primitive).__name__)
    namespace = primitive.get('nova_object.namespace')
    name = primitive.get('nova_object.name')
    if namespace != base.NAMESPACE or name != cls.obj_name():
        raise PayloadError('payload is not a %s %s (%r in %r)'
                           % (base.NAMESPACE, cls.obj_name(), name,
                              namespace))
    data = primitive.get('nova_object.data')
    instances = data.get('instances') if isinstance(data, dict) else None
    for index, instance in enumerate(
            instances if isinstance(instances, list) else ()):
        fields = (instance.get('nova_object.data')
                  if isinstance(instance, dict) else None)
        if isinstance(fields, dict) and 'instance_uuid' in fields and \
                not uuidutils.is_uuid_like(fields['instance_uuid']):
            # oslo.versionedobjects would only warn.
            raise PayloadError('instances[%d] has an invalid instance_uuid '
                               '%.60r' % (index, fields['instance_uuid']))
    try:
        obj = cls.obj_from_primitive(primitive)
    except Exception as exc:  # ovo raises many kinds
        raise PayloadError('payload does not deserialize: %s'
                           % _one_line(exc))
    for field in HOST_REQUIRED['HostUsagePayload']:
        if not obj.obj_attr_is_set(field):
            raise PayloadError('payload has no %s' % field)
    for index, instance in enumerate(obj.instances):
        for field in HOST_REQUIRED['HostInstanceUsagePayload']:
            if not instance.obj_attr_is_set(field):
                raise PayloadError('instances[%d] has no %s'
                                   % (index, field))
    return obj
