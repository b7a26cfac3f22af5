"""Reading usage payloads back: a payload or PayloadError, nothing else."""

import copy
import json
import os

import fixtures
import testtools
from hypothesis import given, settings, strategies as st

from nova_usage_ext import objects
from nova_usage_ext.objects import decode
from nova_usage_ext.objects import usage as usage_objects

objects.register_all()

SAMPLES = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'doc',
                       'notification_samples')


def sample_usages():
    """The usage payloads of the documented notification samples."""
    found = []
    for name in sorted(os.listdir(SAMPLES)):
        with open(os.path.join(SAMPLES, name)) as f:
            message = json.load(f)
        payload = message['payload']
        if message['event_type'] == 'instance.usage':
            found.append(payload)
        elif message['event_type'] == 'compute.instance.exists':
            found.append(payload['usage'])
    return found


USAGES = sample_usages()

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() |
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) |
    st.dictionaries(st.text(max_size=20), inner, max_size=4),
    max_leaves=20)


def paths(value, prefix=()):
    """Every key path inside a JSON value."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, child in items:
        yield prefix + (key,)
        yield from paths(child, prefix + (key,))


def mutate(wire, path, op, replacement):
    """A copy of wire with the value at path deleted or replaced."""
    wire = copy.deepcopy(wire)
    parent = wire
    for key in path[:-1]:
        parent = parent[key]
    if op == 'delete':
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    return wire


class TestDecode(testtools.TestCase):

    def setUp(self):
        super().setUp()
        # oslo.versionedobjects logs what it cannot build.
        self.useFixture(fixtures.FakeLogger())

    def test_the_documented_samples_decode(self):
        self.assertEqual(3, len(USAGES))
        for wire in USAGES:
            obj = decode.usage_from_wire(wire)
            self.assertIsInstance(obj, usage_objects.InstanceUsagePayload)
            self.assertEqual(wire['nova_object.data']['instance_uuid'],
                             obj.instance_uuid)

    def test_a_payload_without_its_uuid_is_refused_not_deferred(self):
        # oslo.versionedobjects accepts it and raises NotImplementedError
        # when the field is read (the crash `listen --check` had).
        wire = mutate(USAGES[0], ('nova_object.data', 'instance_uuid'),
                      'delete', None)
        exc = self.assertRaises(decode.PayloadError,
                                decode.usage_from_wire, wire)
        self.assertEqual('usage has no instance_uuid', str(exc))

    def test_instance_uuid_must_be_a_uuid(self):
        for bad in ('web-1', 12, {}, None):
            wire = mutate(USAGES[0], ('nova_object.data', 'instance_uuid'),
                          'replace', bad)
            exc = self.assertRaises(decode.PayloadError,
                                    decode.usage_from_wire, wire)
            self.assertEqual('usage has an invalid instance_uuid %r'
                             % (bad,), str(exc))

    def test_nested_device_without_its_name_is_refused(self):
        wire = copy.deepcopy(USAGES[0])
        (disk, *_rest) = wire['nova_object.data']['disks']
        del disk['nova_object.data']['device']
        exc = self.assertRaises(decode.PayloadError,
                                decode.usage_from_wire, wire)
        self.assertEqual('usage.disks[0] has no device', str(exc))

    def test_not_our_object(self):
        for wire, reason in (
                ([], 'usage is a list, not an object'),
                ({'nova_object.namespace': 'nova'},
                 "usage is not a nova_usage_ext object (namespace 'nova')"),
                (dict(USAGES[0], **{'nova_object.name': 'Other'}),
                 "usage is a 'Other', not a InstanceUsagePayload")):
            exc = self.assertRaises(decode.PayloadError,
                                    decode.usage_from_wire, wire)
            self.assertEqual(reason, str(exc))

    def test_newer_version_and_garbage_fields(self):
        wire = dict(USAGES[0], **{'nova_object.version': '9.0'})
        exc = self.assertRaises(decode.PayloadError,
                                decode.usage_from_wire, wire)
        self.assertIn('does not deserialize', str(exc))
        wire = mutate(USAGES[0], ('nova_object.data', 'cpu_time_ns'),
                      'replace', -5)
        self.assertRaises(decode.PayloadError, decode.usage_from_wire, wire)

    def test_deep_nesting(self):
        wire = copy.deepcopy(USAGES[0])
        inner = wire
        for _ in range(400):
            inner['nova_object.data']['period'] = copy.deepcopy(USAGES[0])
            inner = inner['nova_object.data']['period']
        self.assertRaises(decode.PayloadError, decode.usage_from_wire, wire)

    @settings(max_examples=400, deadline=None)
    @given(JSON)
    def test_arbitrary_json(self, value):
        self._decodes_cleanly(value)

    @settings(max_examples=600, deadline=None)
    @given(st.data())
    def test_mutated_samples(self, data):
        wire = data.draw(st.sampled_from(USAGES))
        path = data.draw(st.sampled_from(list(paths(wire))))
        op = data.draw(st.sampled_from(['delete', 'replace']))
        self._decodes_cleanly(mutate(wire, path, op, data.draw(JSON)))

    def _decodes_cleanly(self, wire):
        try:
            obj = decode.usage_from_wire(wire)
        except decode.PayloadError as exc:
            self.assertTrue(str(exc))
            self.assertNotIn('\n', str(exc))
            return
        # What decodes can be read whole, as consumers will.
        for name in decode.REQUIRED['InstanceUsagePayload']:
            getattr(obj, name)
        for disk in obj.disks if obj.obj_attr_is_set('disks') else ():
            disk.device
        obj.obj_to_primitive()
