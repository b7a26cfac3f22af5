"""`nova-usage-ext poll`: outputs and errors."""

import io
import json
import os
import socket
import subprocess
import sys
import time

import fixtures
import testtools

from nova_usage_ext.cmd import main
from tests import libvirt_node

DEMO_INSTANCES = {'1b1c7e5e-5f4a-4c1e-9d55-0c3f6b1a0001',
                  '2c2d8f6f-6a5b-4d2f-8e66-1d4a7c2b0002',
                  '3d3e9a7a-7b6c-4e3a-9f77-2e5b8d3c0003'}


class PollTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.stderr = self.useFixture(
            fixtures.MonkeyPatch('sys.stderr', io.StringIO())).new_value
        self.useFixture(fixtures.FakeLogger())

    def poll(self, *argv):
        out = io.StringIO()
        rc = main.main(['poll', '--host', 'compute-1'] + list(argv), out=out)
        return rc, out.getvalue()


class TestOutputs(PollTestCase):

    def test_default_reads_the_demo_node_as_json_payloads(self):
        rc, out = self.poll()
        self.assertEqual(0, rc)
        lines = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(DEMO_INSTANCES, {
            line['nova_object.data']['instance_uuid'] for line in lines})
        for line in lines:
            self.assertEqual('InstanceUsagePayload', line['nova_object.name'])
            data = line['nova_object.data']
            self.assertEqual('compute-1', data['host'])
            self.assertGreater(data['cpu_time_ns'], 0)
        db = [line['nova_object.data'] for line in lines
              if line['nova_object.data']['display_name'] == 'db-1'][0]
        self.assertEqual(['vda', 'vdb'],
                         [d['nova_object.data']['device']
                          for d in db['disks']])
        self.assertEqual(['8e1f7a2b-3c4d-4e5f-9a6b-7c8d9e0f1a2b'],
                         [v['nova_object.data']['volume_id']
                          for v in db['volumes']])
        self.assertEqual(2, len(db['interfaces']))

    def test_table(self):
        rc, out = self.poll('--format', 'table')
        self.assertEqual(0, rc)
        header, *rows = out.splitlines()
        self.assertEqual(main.TABLE_COLUMNS, tuple(header.split()))
        self.assertEqual(DEMO_INSTANCES, {row.split()[0] for row in rows})
        self.assertEqual(['db-1', 'legacy-1', 'web-1'],
                         sorted(row.split()[1] for row in rows))
        for row in rows:
            self.assertEqual('running', row.split()[3])

    def test_notification(self):
        rc, out = self.poll('--format', 'notification', '--audit-period',
                            'day')
        self.assertEqual(0, rc)
        messages = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(3, len(messages))
        for message in messages:
            self.assertEqual('compute.instance.exists',
                             message['event_type'])
            self.assertEqual('INFO', message['priority'])
            self.assertEqual('compute.compute-1', message['publisher_id'])
            payload = message['payload']
            self.assertIn(payload['instance_id'], DEMO_INSTANCES)
            self.assertEqual(payload['instance_id'], payload['usage'][
                'nova_object.data']['instance_uuid'])
            self.assertTrue(payload['audit_period_beginning'].endswith(
                ' 00:00:00'))
            self.assertGreater(payload['audit_period_ending'],
                               payload['audit_period_beginning'])
        db = [m['payload'] for m in messages
              if m['payload']['display_name'] == 'db-1'][0]
        self.assertEqual(('m1.medium', 2, 4096, 40, 10, 50),
                         (db['instance_type'], db['vcpus'], db['memory_mb'],
                          db['root_gb'], db['ephemeral_gb'], db['disk_gb']))
        self.assertEqual('b4d6f8a0c2e34a7b9d1f3b5c7d9e1f23', db['tenant_id'])

    def test_interval_and_count(self):
        rc, out = self.poll('--interval', '0.01', '--count', '3')
        self.assertEqual(0, rc)
        lines = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(9, len(lines))
        web = [line['nova_object.data']['cpu_time_ns'] for line in lines
               if line['nova_object.data']['display_name'] == 'web-1']
        self.assertEqual(sorted(web), web)
        self.assertEqual(3, len(set(web)))

    def test_other_node_file(self):
        node = self.useFixture(libvirt_node.TestNode(
            [libvirt_node.nova_test_domain(0), libvirt_node.domain_xml('x')]))
        rc, out = self.poll('--connection-uri', node.uri)
        self.assertEqual(0, rc)
        (line,) = out.splitlines()
        self.assertEqual('00000000-0000-0000-0000-000000000001',
                         json.loads(line)['nova_object.data']['instance_uuid'])


class TestErrors(PollTestCase):

    def test_unreachable_uri(self):
        rc, out = self.poll('--connection-uri',
                            'qemu+unix:///system?socket=/nonexistent/sock')
        self.assertEqual(1, rc)
        self.assertEqual('', out)
        (line,) = self.stderr.getvalue().splitlines()
        self.assertIn('nova-usage-ext: error: cannot connect to libvirt at '
                      'qemu+unix:///system?socket=/nonexistent/sock', line)

    def test_unreadable_node_file(self):
        rc, out = self.poll('--connection-uri', 'test:///nonexistent/n.xml')
        self.assertEqual(1, rc)
        self.assertEqual('nova-usage-ext: error: cannot read libvirt test '
                         'node file /nonexistent/n.xml\n',
                         self.stderr.getvalue())

    def test_node_file_that_is_not_a_node(self):
        path = os.path.join(self.useFixture(fixtures.TempDir()).path, 'x')
        with open(path, 'w') as f:
            f.write('this is not xml')
        rc, _out = self.poll('--connection-uri', 'test://' + path)
        self.assertEqual(1, rc)
        self.assertIn('cannot connect to libvirt at test://' + path,
                      self.stderr.getvalue())

    def test_libvirt_that_never_answers(self):
        # A socket that takes the connection and never says a word.
        path = os.path.join(self.useFixture(fixtures.TempDir()).path, 's')
        silent = socket.socket(socket.AF_UNIX)
        self.addCleanup(silent.close)  # also ends the call left waiting
        silent.bind(path)
        silent.listen(5)
        uri = 'qemu+unix:///system?socket=' + path
        started = time.monotonic()
        rc, out = self.poll('--connection-uri', uri, '--timeout', '0.5')
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(1, rc)
        self.assertEqual('', out)
        self.assertEqual('nova-usage-ext: error: libvirt at %s did not '
                         'answer within 0.5s\n' % uri,
                         self.stderr.getvalue())

    def test_port_out_of_range(self):
        rc, _out = self.poll('--connection-uri',
                             'qemu+tcp://127.0.0.1:99999/system')
        self.assertEqual(1, rc)
        self.assertEqual('nova-usage-ext: error: bad libvirt URI '
                         'qemu+tcp://127.0.0.1:99999/system: Port out of '
                         'range 0-65535\n', self.stderr.getvalue())

    def test_multi_line_libvirt_error_is_one_line(self):
        # libvirt's XML parser error spans three lines.
        path = os.path.join(self.useFixture(fixtures.TempDir()).path, 'x')
        with open(path, 'w') as f:
            f.write('not xml')
        rc, _out = self.poll('--connection-uri', 'test://' + path)
        self.assertEqual(1, rc)
        (line,) = self.stderr.getvalue().splitlines()
        self.assertIn('Start tag expected', line)
        self.assertIn('; not xml; ^', line)

    def test_bad_options(self):
        for argv in (['--format', 'yaml'], ['--interval', '-1'],
                     ['--interval', 'soon'], ['--bogus'],
                     ['--interval', 'nan'], ['--interval', 'inf'],
                     ['--interval', '-inf'], ['--interval', '1e9'],
                     ['--timeout', '0'], ['--timeout', 'nan'],
                     ['--timeout', '1e308'], ['--count', '-1'],
                     ['--count', '2.5']):
            self.stderr.seek(0)
            self.stderr.truncate()
            exc = self.assertRaises(SystemExit, self.poll, *argv)
            self.assertEqual(2, exc.code, argv)
            self.assertIn('error:', self.stderr.getvalue())


class TestConsoleScript(testtools.TestCase):
    """The installed command, as an operator runs it."""

    def test_runs_as_a_process(self):
        result = subprocess.run(
            [sys.executable, '-m', 'nova_usage_ext.cmd.main', 'poll',
             '--format', 'table'], capture_output=True, text=True,
            timeout=60)
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertEqual(4, len(result.stdout.splitlines()))

    def test_bad_option_exits_2_with_one_usage_error(self):
        result = subprocess.run(
            [sys.executable, '-m', 'nova_usage_ext.cmd.main', 'poll',
             '--format', 'xml'], capture_output=True, text=True, timeout=60)
        self.assertEqual(2, result.returncode)
        self.assertIn("invalid choice: 'xml'", result.stderr)
