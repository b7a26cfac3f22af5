"""``nova-usage-ext listen`` on a real RabbitMQ."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid as uuidlib

import fixtures
import oslo_messaging
import testtools

from nova_usage_ext import exists
from nova_usage_ext.cmd import main
from tests import libvirt_node
from tests.functional import bus
from nova_usage_ext.virt import libvirt as libvirt_usage

URLS = ('rabbit://guest:guest@127.0.0.1:5672/',
        'rabbit://guest:guest@localhost:5672/')


def queue_exists(name):
    return bus.queue_depth(name) is not None


def delete_exchange(name):
    with bus._amqp() as conn:
        conn.channel().exchange_delete(name)


class TestListen(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.FakeLogger())
        self.useFixture(fixtures.Timeout(60, gentle=True))
        # The command sets oslo.messaging's default exchange process-wide.
        self.addCleanup(oslo_messaging.set_transport_defaults, 'openstack')
        self.token = uuidlib.uuid4().hex[:12]
        self.exchange = 'nue-listen-%s' % self.token
        self.topic = 'nue-listen-%s' % self.token
        self.pool = 'nue-listen-pool-%s' % self.token
        # What the notifier declared (topic queues, the exchange) goes too.
        self.addCleanup(delete_exchange, self.exchange)
        self.addCleanup(bus.delete_queues, self.topic)
        self.stderr = io.StringIO()
        self.useFixture(fixtures.MonkeyPatch('sys.stderr', self.stderr))
        node = self.useFixture(libvirt_node.TestNode(
            [libvirt_node.nova_test_domain(0)]))
        (self.usage,) = libvirt_usage.LibvirtUsageReader(
            node.connection).read_all()

    def start(self, *extra, urls=URLS[:1]):
        argv = ['listen', '--exchange', self.exchange, '--topic', self.topic,
                '--pool', self.pool, '--timeout', '30'] + list(extra)
        for url in urls:
            argv += ['--transport-url', url]
        out = io.StringIO()
        result = {}

        def run():
            result['rc'] = main.main(argv, out=out)

        thread = threading.Thread(target=run)
        thread.start()
        pools = ([self.pool] if len(urls) == 1 else
                 ['%s-%d' % (self.pool, i) for i in range(len(urls))])
        deadline = time.monotonic() + 20
        while not all(queue_exists(p) for p in pools):
            self.assertLess(time.monotonic(), deadline, 'listener not up')
            time.sleep(0.1)
        return thread, out, result, pools

    def notifier(self):
        conf = bus.make_conf()
        oslo_messaging.set_transport_defaults(self.exchange)
        self.addCleanup(oslo_messaging.set_transport_defaults, 'openstack')
        transport = oslo_messaging.get_notification_transport(
            conf, url=URLS[0])
        self.addCleanup(transport.cleanup)
        return oslo_messaging.Notifier(
            transport, driver='messagingv2', topics=[self.topic],
            publisher_id='compute.compute-1')

    def test_follows_two_buses_and_checks(self):
        thread, out, result, pools = self.start(
            '--count', '2', '--check', urls=URLS)
        message = exists.exists_notification(self.usage, 'compute-1')
        self.notifier().info({}, message['event_type'], message['payload'])
        thread.join(40)
        self.assertEqual(0, result['rc'], self.stderr.getvalue())
        lines = [__import__('json').loads(line)
                 for line in out.getvalue().splitlines()]
        self.assertEqual(['127.0.0.1:5672', 'localhost:5672'],
                         sorted(line['transport'] for line in lines))
        for line in lines:
            self.assertEqual('compute.instance.exists', line['event_type'])
            self.assertEqual(self.usage.uuid,
                             line['payload']['usage']['nova_object.data'][
                                 'instance_uuid'])
        # Its queues go with it.
        self.assertEqual([False, False], [queue_exists(p) for p in pools])

    def test_check_reports_an_exists_without_usage(self):
        thread, out, result, _pools = self.start('--count', '2', '--check')
        notifier = self.notifier()
        bare = exists.legacy_fields(self.usage, 'compute-1')
        notifier.info({}, 'compute.instance.exists', bare)
        message = exists.exists_notification(self.usage, 'compute-1')
        notifier.error({}, message['event_type'], message['payload'])
        thread.join(40)
        self.assertEqual(1, result['rc'])
        self.assertIn('compute.instance.exists compute.compute-1 from '
                      '127.0.0.1:5672: no usage', self.stderr.getvalue())
        priorities = [__import__('json').loads(line)['priority']
                      for line in out.getvalue().splitlines()]
        self.assertEqual(['INFO', 'ERROR'], priorities)

    def test_other_notifications_only_with_all(self):
        thread, out, result, _pools = self.start('--count', '1', '--all',
                                                 '--format', 'table')
        notifier = self.notifier()
        notifier.info({}, 'compute.instance.create.end', {'x': 1})
        usage = exists.usage_primitive(self.usage, 'compute-1', final=True)
        notifier.info({}, 'instance.usage', usage)
        thread.join(40)
        self.assertEqual(0, result['rc'])
        first, second = out.getvalue().splitlines()
        self.assertIn('compute.instance.create.end', first)
        self.assertEqual(['127.0.0.1:5672', 'instance.usage',
                          self.usage.uuid, 'final', 'hypervisor'],
                         second.split()[:5])

    def test_too_few_messages_before_the_timeout(self):
        rc = main.main(['listen', '--exchange', self.exchange, '--topic',
                        self.topic, '--pool', self.pool, '--count', '1',
                        '--timeout', '1', '--transport-url', URLS[0]],
                       out=io.StringIO())
        self.assertEqual(1, rc)
        self.assertIn('0 usage messages of 1 within 1', self.stderr.getvalue())
        self.assertFalse(queue_exists(self.pool))

    def test_unreachable_bus_is_one_clear_error(self):
        rc = main.main(['listen', '--transport-url',
                        'rabbit://guest:guest@127.0.0.1:1/'],
                       out=io.StringIO())
        self.assertEqual(1, rc)
        self.assertEqual('nova-usage-ext: error: cannot reach the message '
                         'bus at 127.0.0.1:1: [Errno 111] Connection '
                         'refused\n', self.stderr.getvalue())

    def test_check_reports_malformed_usage_and_exits_1(self):
        thread, out, result, _pools = self.start('--count', '3', '--check')
        notifier = self.notifier()
        message = exists.exists_notification(self.usage, 'compute-1')
        no_uuid = json.loads(json.dumps(message['payload']))
        del no_uuid['usage']['nova_object.data']['instance_uuid']
        garbled = json.loads(json.dumps(message['payload']))
        garbled['usage']['nova_object.data']['disks'] = [{'x': [1, {}]}]
        notifier.info({}, message['event_type'], no_uuid)
        notifier.info({}, message['event_type'], garbled)
        notifier.info({}, message['event_type'], message['payload'])
        thread.join(40)
        self.assertEqual(1, result['rc'])
        self.assertEqual(3, len(out.getvalue().splitlines()))
        problems = self.stderr.getvalue().splitlines()
        self.assertEqual(2, len(problems), problems)
        self.assertEqual('nova-usage-ext: compute.instance.exists '
                         'compute.compute-1 from 127.0.0.1:5672: usage has '
                         'no instance_uuid', problems[0])
        self.assertIn('usage does not deserialize', problems[1])

    def test_multi_host_url(self):
        url = ('rabbit://guest:guest@127.0.0.1:5672,'
               'guest:guest@localhost:5672/')
        thread, out, result, _pools = self.start('--count', '1',
                                                 urls=[url])
        message = exists.exists_notification(self.usage, 'compute-1')
        self.notifier().info({}, message['event_type'], message['payload'])
        thread.join(40)
        self.assertEqual(0, result['rc'], self.stderr.getvalue())
        (line,) = out.getvalue().splitlines()
        self.assertEqual('127.0.0.1:5672,localhost:5672',
                         json.loads(line)['transport'])

    def test_a_silent_host_of_a_multi_host_url_is_named(self):
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(('127.0.0.1', 0))
        silent.listen(5)
        port = silent.getsockname()[1]
        started = time.monotonic()
        rc = main.main(['listen', '--connect-timeout', '1', '--pool',
                        self.pool, '--transport-url',
                        'rabbit://guest:guest@127.0.0.1:5672,'
                        'guest:guest@127.0.0.1:%d/' % port],
                       out=io.StringIO())
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(1, rc)
        self.assertEqual('nova-usage-ext: error: the message bus at '
                         '127.0.0.1:%d did not answer within 1s\n' % port,
                         self.stderr.getvalue())
        self.assertFalse(queue_exists(self.pool))

    def test_bad_credentials_are_one_line(self):
        rc = main.main(['listen', '--transport-url',
                        'rabbit://guest:wrong-%s@127.0.0.1:5672/'
                        % self.token], out=io.StringIO())
        self.assertEqual(1, rc)
        self.assertEqual('nova-usage-ext: error: the message bus at '
                         '127.0.0.1:5672 refused the credentials of user '
                         'guest\n', self.stderr.getvalue())
        self.assertNotIn('wrong', self.stderr.getvalue())


class TestListenProcess(testtools.TestCase):
    """The installed command stopped by a signal, as systemd or ^C does."""

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(60, gentle=True))
        self.token = uuidlib.uuid4().hex[:12]
        self.pool = 'nue-listen-pool-%s' % self.token
        self.topic = 'nue-listen-%s' % self.token
        self.exchange = 'nue-listen-%s' % self.token

    def run_until_signalled(self, signum):
        process = subprocess.Popen(
            [sys.executable, '-m', 'nova_usage_ext.cmd.main', 'listen',
             '--pool', self.pool, '--topic', self.topic, '--exchange',
             self.exchange, '--transport-url', URLS[0]],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=os.path.join(os.path.dirname(__file__), '..', '..'))

        def reap():
            if process.poll() is None:
                process.kill()
            process.communicate()
            if queue_exists(self.pool):
                with bus._amqp() as conn:
                    conn.channel().queue_delete(self.pool)
            delete_exchange(self.exchange)
        self.addCleanup(reap)
        deadline = time.monotonic() + 30
        while not queue_exists(self.pool):
            self.assertIsNone(process.poll(), 'listen exited early')
            self.assertLess(time.monotonic(), deadline, 'listener not up')
            time.sleep(0.1)
        os.kill(process.pid, signum)
        rc = process.wait(20)
        return rc, process.stderr.read()

    def test_sigterm_removes_the_queue(self):
        rc, stderr = self.run_until_signalled(signal.SIGTERM)
        self.assertEqual(128 + signal.SIGTERM, rc, stderr)
        self.assertFalse(queue_exists(self.pool))
        self.assertNotIn('Traceback', stderr)

    def test_sigint_removes_the_queue(self):
        rc, stderr = self.run_until_signalled(signal.SIGINT)
        self.assertEqual(128 + signal.SIGINT, rc, stderr)
        self.assertFalse(queue_exists(self.pool))
        self.assertNotIn('Traceback', stderr)
