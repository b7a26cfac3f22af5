"""`nova-usage-ext listen` without a broker: checks, URLs, dead endpoints.

The runs over a real RabbitMQ are in tests/functional/test_listen.py.
"""

import argparse
import copy
import io
import json
import os
import socket
import time

import fixtures
import testtools
from hypothesis import example, given, settings, strategies as st
from oslo_config import cfg

from nova_usage_ext import cmd
from nova_usage_ext.cmd import listen
from nova_usage_ext.cmd import main

SAMPLES = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'doc',
                       'notification_samples')


def sample(name):
    with open(os.path.join(SAMPLES, name + '.json')) as f:
        return json.load(f)


def received(message, transport='127.0.0.1:5672'):
    """A sample notification as the listener's endpoint hands it on."""
    return dict(transport=transport, priority=message['priority'],
                publisher_id=message['publisher_id'],
                event_type=message['event_type'],
                timestamp=message['timestamp'], payload=message['payload'])


def make_conf():
    conf = cfg.ConfigOpts()
    conf([])
    return conf


def printer(check=True, fmt='json'):
    args = argparse.Namespace(all=True, check=check, format=fmt, count=0)
    return listen.Printer(args, io.StringIO(), io.StringIO())


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() |
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) |
    st.dictionaries(st.text(max_size=20), inner, max_size=4),
    max_leaves=20)


class TestCheck(testtools.TestCase):

    def test_documented_samples_pass(self):
        for name in ('compute.instance.exists',
                     'compute.instance.exists-final', 'instance.usage',
                     'host.usage'):
            message = received(sample(name))
            self.assertEqual([], listen.check(message['event_type'],
                                              message['payload']), name)
            p = printer()
            p(message)
            self.assertEqual(0, p.bad)
            self.assertEqual(1, p.usage_messages)

    def test_usage_without_instance_uuid_is_a_problem(self):
        # This raised NotImplementedError inside oslo.messaging's callback:
        # the message was dropped and the command exited 0.
        message = received(sample('compute.instance.exists'))
        del message['payload']['usage']['nova_object.data']['instance_uuid']
        for fmt in ('json', 'table'):
            p = printer(fmt=fmt)
            p(message)
            self.assertEqual(1, p.bad)
            self.assertEqual('nova-usage-ext: compute.instance.exists '
                             'compute.compute-1 from 127.0.0.1:5672: usage '
                             'has no instance_uuid\n', p.err.getvalue())
            self.assertEqual(1, len(p.out.getvalue().splitlines()))

    def test_host_usage_problems(self):
        message = received(sample('host.usage'))
        data = message['payload']['nova_object.data']
        data['part'] = 3
        instance = data['instances'][0]['nova_object.data']
        del instance['cpu_time_ns']
        self.assertEqual(
            ['part 3 of 1', 'running instance %s without cpu_time_ns'
             % instance['instance_uuid']],
            listen.check('host.usage', message['payload']))
        del instance['instance_uuid']
        self.assertEqual(['instances[0] has no instance_uuid'],
                         listen.check('host.usage', message['payload']))
        p = printer(fmt='table')
        p(received(sample('host.usage')))
        self.assertEqual('127.0.0.1:5672  host.usage  compute-1  part 1/1  '
                         '1 instances\n', p.out.getvalue())

    @settings(max_examples=300, deadline=None)
    @given(event_type=st.sampled_from(
        ['compute.instance.exists', 'instance.usage', 'host.usage',
         'other']) | JSON,
        payload=JSON)
    @example(event_type='\r', payload=None)  # one table row all the same
    @example(event_type='instance.usage', payload={'a\nb': 1})
    def test_arbitrary_json_is_printed_and_judged_never_raised(
            self, event_type, payload):
        self._judged(dict(transport='t', priority='INFO', publisher_id='p',
                          event_type=event_type, timestamp=None,
                          payload=payload))

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def test_mutated_samples_are_judged_never_raised(self, data):
        message = received(sample(data.draw(st.sampled_from(
            ['compute.instance.exists', 'instance.usage', 'host.usage']))))
        target = message['payload']
        if message['event_type'] == 'compute.instance.exists':
            target = target['usage']
        elif message['event_type'] == 'host.usage' and data.draw(
                st.booleans()):
            target = target['nova_object.data']['instances'][0]
        data_dict = target['nova_object.data']
        key = data.draw(st.sampled_from(sorted(data_dict)))
        if data.draw(st.booleans()):
            del data_dict[key]
        else:
            data_dict[key] = data.draw(JSON)
        self._judged(message)

    def _judged(self, message):
        for fmt in ('json', 'table'):
            p = printer(fmt=fmt)
            p(copy.deepcopy(message))  # never raises
            problems = listen.check(message['event_type'],
                                    message['payload'])
            self.assertIsInstance(problems, list)
            usage_event = message['event_type'] in listen.USAGE_EVENTS
            self.assertEqual(int(usage_event), p.usage_messages)
            # Every problem is reported, and makes the command fail.
            self.assertEqual(1 if problems else 0, p.bad)
            self.assertEqual(len(problems), len(p.err.getvalue().splitlines()))
            self.assertEqual(1, len(p.out.getvalue().splitlines()))


class TestTransportURL(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = make_conf()

    def test_multi_host(self):
        parsed = listen.parse_transport_url(
            self.conf, 'rabbit://a:pw@h1:5673,b:pw@h2/vhost')
        self.assertEqual('h1:5673,h2:5672', listen._transport_name(parsed))

    def test_bad_urls_are_one_clear_line_without_password(self):
        for url, reason in (
                ('rabbit://u:secret@h:99999/',
                 'bad transport URL rabbit://u:***@h:99999/: port 99999 is '
                 'out of range 1-65535'),
                ('rabbit://u:secret@h1:5672,u:secret@h2:0/',
                 'bad transport URL rabbit://u:***@h1:5672,u:***@h2:0/: '
                 'port 0 is out of range 1-65535'),
                ('rabbit://u:secret@h:port/',
                 'bad transport URL rabbit://u:***@h:port/: invalid literal '
                 "for int() with base 10: 'port'"),
                ('rabbit:///', 'bad transport URL rabbit:///: no host'),
                ('127.0.0.1:5672',
                 'bad transport URL 127.0.0.1:5672: No scheme specified')):
            exc = self.assertRaises(cmd.CommandError,
                                    listen.parse_transport_url, self.conf,
                                    url)
            self.assertEqual(reason, str(exc))


class TestDeadEndpoints(testtools.TestCase):
    """Hosts that refuse, or take the connection and never answer."""

    def setUp(self):
        super().setUp()
        self.stderr = self.useFixture(
            fixtures.MonkeyPatch('sys.stderr', io.StringIO())).new_value
        self.useFixture(fixtures.FakeLogger())

    def silent_port(self):
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(('127.0.0.1', 0))
        silent.listen(5)
        return silent.getsockname()[1]

    def closed_port(self):
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
        s.close()
        return port

    def test_every_host_is_checked_and_named(self):
        silent, closed = self.silent_port(), self.closed_port()
        started = time.monotonic()
        rc = main.main(['listen', '--connect-timeout', '0.5',
                        '--transport-url',
                        'rabbit://guest:guest@127.0.0.1:%d,'
                        'guest:guest@127.0.0.1:%d/' % (silent, closed)],
                       out=io.StringIO())
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(1, rc)
        self.assertEqual(
            'nova-usage-ext: error: the message bus at 127.0.0.1:%d did not '
            'answer within 0.5s; cannot reach the message bus at '
            '127.0.0.1:%d: [Errno 111] Connection refused\n'
            % (silent, closed), self.stderr.getvalue())

    def test_other_drivers_get_a_bounded_tcp_check(self):
        silent = self.silent_port()
        parsed = listen.parse_transport_url(
            make_conf(), 'kafka://127.0.0.1:%d' % self.closed_port())
        exc = self.assertRaises(cmd.CommandError, listen.check_bus, parsed,
                                0.5)
        self.assertIn('Connection refused', str(exc))
        # A TCP listener answers the TCP handshake: that is all we can ask.
        parsed = listen.parse_transport_url(
            make_conf(), 'kafka://127.0.0.1:%d' % silent)
        listen.check_bus(parsed, 0.5)

    def test_bad_values(self):
        for argv in (['--timeout', 'nan'], ['--timeout', 'inf'],
                     ['--timeout', '-1'], ['--timeout', '1e12'],
                     ['--connect-timeout', '0'],
                     ['--connect-timeout', 'nan'], ['--count', '-3']):
            self.stderr.seek(0)
            self.stderr.truncate()
            exc = self.assertRaises(SystemExit, main.main,
                                    ['listen'] + argv, out=io.StringIO())
            self.assertEqual(2, exc.code, argv)
            self.assertIn('error: argument %s' % argv[0],
                          self.stderr.getvalue())
