"""The project's object registry and base class.

Objects serialize in nova's wire format (``nova_object.name``,
``nova_object.namespace``, ``nova_object.version``, ``nova_object.data``)
under this project's own namespace, so a consumer can tell them from nova's.
oslo.versionedobjects keeps one registry per process, shared with nova's
objects: every class name here must differ from nova's (nova already has a
``VolumeUsagePayload``), which a test checks against the installed nova.
"""

import sys

from oslo_versionedobjects import base as ovo_base

NAMESPACE = 'nova_usage_ext'


class UsageObjectRegistry(ovo_base.VersionedObjectRegistry):
    def registration_hook(self, cls, index):
        # Expose the newest version as nova_usage_ext.objects.<name>.
        package = sys.modules['nova_usage_ext.objects']
        newest = getattr(package, cls.obj_name(), None)
        if newest is None or cls.VERSION >= newest.VERSION:
            setattr(package, cls.obj_name(), cls)


class UsageObject(ovo_base.VersionedObject):
    OBJ_SERIAL_NAMESPACE = 'nova_object'
    OBJ_PROJECT_NAMESPACE = NAMESPACE

    def to_wire(self, target_version=None):
        """The object as it goes on the bus: nova's wire format, without
        the ``nova_object.changes`` bookkeeping (nova strips it too)."""
        self.obj_reset_changes(recursive=True)
        return self.obj_to_primitive(target_version=target_version)


def wire(cls, data):
    """The envelope of an object of ``cls`` whose data is already in wire
    form (the fast path of :mod:`nova_usage_ext.objects.usage`)."""
    return {'nova_object.name': cls.obj_name(),
            'nova_object.namespace': NAMESPACE,
            'nova_object.version': cls.VERSION,
            'nova_object.data': data}


def registered_classes():
    """Name -> [classes] of this project's objects only."""
    return {name: classes for name, classes
            in UsageObjectRegistry.obj_classes().items()
            if classes[0].OBJ_PROJECT_NAMESPACE == NAMESPACE}
