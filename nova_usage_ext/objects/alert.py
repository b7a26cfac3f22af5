"""The alert payload the thresholds metric plugin sends.

Version history is kept in the class's comment; any field change must bump
the version (tests/unit/objects/test_objects.py pins the fingerprints).
"""

from oslo_versionedobjects import fields

from nova_usage_ext.objects import base

BREACHED = 'breached'
CLEARED = 'cleared'


@base.UsageObjectRegistry.register
class UsageAlertPayload(base.UsageObject):
    """A threshold rule started or stopped being breached.

    One alert when the rule fires for a subject (an instance, one of its
    interfaces or disks, or the host) and one when it clears: never one
    per cycle. Instance fields are None in a host rule's alert.
    """
    # Version 1.0: initial version
    VERSION = '1.0'

    fields = {
        'rule': fields.StringField(),
        'metric': fields.StringField(),
        'unit': fields.StringField(),
        'comparison': fields.EnumField(['>', '>=', '<', '<=']),
        'threshold': fields.FloatField(),
        # The value measured in the cycle that fired or cleared the rule.
        'value': fields.FloatField(),
        'state': fields.EnumField([BREACHED, CLEARED]),
        # Consecutive cycles that fired or cleared it.
        'cycles': fields.IntegerField(),
        'measured_at': fields.DateTimeField(),
        'host': fields.StringField(),
        'instance_uuid': fields.UUIDField(nullable=True),
        'display_name': fields.StringField(nullable=True),
        'project_id': fields.StringField(nullable=True),
        'user_id': fields.StringField(nullable=True),
        'flavor_name': fields.StringField(nullable=True),
        # The interface (tap) or disk of a per-device rule, else None.
        'device': fields.StringField(nullable=True),
    }
