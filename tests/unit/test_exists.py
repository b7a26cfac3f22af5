"""The exists body: audit periods and legacy fields."""

import datetime

import testtools

from nova_usage_ext import exists

UTC = datetime.timezone.utc


class TestAuditPeriods(testtools.TestCase):

    def test_period_starts(self):
        now = datetime.datetime(2026, 11, 22, 10, 17, 41, 5, tzinfo=UTC)
        self.assertEqual(
            ['2026-11-22 10:00:00+00:00', '2026-11-22 00:00:00+00:00',
             '2026-11-01 00:00:00+00:00', '2026-01-01 00:00:00+00:00'],
            [str(exists.audit_period_start(now, unit))
             for unit in exists.AUDIT_PERIODS])

    def test_unknown_unit(self):
        self.assertRaises(ValueError, exists.audit_period_start,
                          datetime.datetime.now(UTC), 'week')

    def test_nova_times_parse_to_aware_utc(self):
        for text in ('2026-11-22 10:00:00', '2026-11-22 10:00:00.512000',
                     '2026-11-22T10:00:00Z'):
            value = exists.parse_nova_time(text)
            self.assertEqual(UTC, value.tzinfo)
            self.assertEqual((10, 0, 0), (value.hour, value.minute,
                                          value.second))
        self.assertIsNone(exists.parse_nova_time('yesterday'))
        self.assertIsNone(exists.parse_nova_time(None))


class TestLegacyFromVersioned(testtools.TestCase):

    def test_nova_legacy_formats(self):
        data = {
            'uuid': 'u1', 'tenant_id': 'p', 'user_id': 'u',
            'display_name': 'vm', 'host': 'compute-1', 'node': 'n1',
            'created_at': '2026-11-20T07:58:12Z',
            'launched_at': '2026-11-20T08:00:03Z',
            'terminated_at': None, 'deleted_at': None,
            'task_state': 'deleting', 'progress': 0,
            'image_uuid': 'img-1', 'state': 'active',
            'flavor': {'nova_object.data': {
                'name': 'm1.small', 'flavorid': '2', 'memory_mb': 2048,
                'vcpus': 1, 'root_gb': 20, 'ephemeral_gb': 5}}}
        fields = exists.legacy_fields_from_versioned(data)
        self.assertEqual('2026-11-20 07:58:12+00:00', fields['created_at'])
        self.assertEqual('2026-11-20T08:00:03.000000', fields['launched_at'])
        self.assertEqual('', fields['terminated_at'])
        self.assertEqual('', fields['deleted_at'])
        self.assertEqual('deleting', fields['state_description'])
        self.assertEqual('', fields['progress'])
        self.assertEqual({'base_image_ref': 'img-1'}, fields['image_meta'])
        self.assertEqual(('m1.small', '2', 2048, 1, 20, 5, 25),
                         (fields['instance_type'],
                          fields['instance_flavor_id'], fields['memory_mb'],
                          fields['vcpus'], fields['root_gb'],
                          fields['ephemeral_gb'], fields['disk_gb']))
