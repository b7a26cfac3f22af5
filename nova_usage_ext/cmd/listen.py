"""``nova-usage-ext listen``: print or check the usage that reaches the bus.

It can run anywhere that reaches the message buses, and follows several
(one ``--transport-url`` per cell), on nova's legacy and versioned topics,
at the ``info`` and ``error`` priorities. It listens in a queue of its own
(``--pool``), so ceilometer's notification agent keeps getting every
message; that queue is deleted when it stops.
"""

import json
import os
import re
import signal
import socket
import sys
import threading
import time

import oslo_messaging
from oslo_config import cfg
from oslo_log import log as logging

from nova_usage_ext import cmd
from nova_usage_ext import exists
from nova_usage_ext import objects
from nova_usage_ext.objects import decode

objects.register_all()

LOG = logging.getLogger(__name__)

HOST_USAGE = 'host.usage'
USAGE_EVENTS = (exists.EVENT_TYPE, 'instance.usage', HOST_USAGE)
DEFAULT_TOPICS = ('notifications', 'versioned_notifications')


def usage_of(event_type, payload):
    """The InstanceUsagePayload wire dict a message carries, or None."""
    if event_type == 'instance.usage':
        return payload
    if isinstance(payload, dict):
        return payload.get('usage')
    return None


def check(event_type, payload):
    """What is wrong with a usage message, as a list of strings; any other
    event type has nothing wrong. Never raises."""
    if event_type not in USAGE_EVENTS:
        return []
    if event_type == HOST_USAGE:
        return check_host_usage(payload)
    usage = usage_of(event_type, payload)
    if usage is None:
        return ['no usage (is compute_driver usage_ext.LibvirtUsageDriver '
                'and the nova_usage_ext notification driver enabled on the '
                'host?)']
    try:
        obj = decode.usage_from_wire(usage)
    except decode.PayloadError as exc:
        return [str(exc)]
    problems = []
    instance = (payload.get('instance_id')
                if event_type == exists.EVENT_TYPE else obj.instance_uuid)
    if instance != obj.instance_uuid:
        problems.append('usage is of instance %s, the message of %s'
                        % (obj.instance_uuid, instance))
    if obj.power_state == 'running' and not obj.obj_attr_is_set(
            'cpu_time_ns'):
        problems.append('running instance without cpu_time_ns')
    return problems


def check_host_usage(payload):
    """What is wrong with a host.usage payload (see :func:`check`)."""
    try:
        obj = decode.host_usage_from_wire(payload)
    except decode.PayloadError as exc:
        return [str(exc)]
    problems = []
    if not 1 <= obj.part <= obj.parts:
        problems.append('part %d of %d' % (obj.part, obj.parts))
    for instance in obj.instances:
        if instance.power_state == 'running' and \
                not instance.obj_attr_is_set('cpu_time_ns'):
            problems.append('running instance %s without cpu_time_ns'
                            % instance.instance_uuid)
    return problems


DEFAULT_URL = 'rabbit://guest:guest@127.0.0.1:5672/'
DEFAULT_PORTS = {'rabbit': 5672}
DEFAULT_CONNECT_TIMEOUT = 10.0


def _one_line(text):
    return ' '.join(str(text).split())


def _cell(value):
    # One line per message and per problem, whatever a sender put in.
    return _one_line(value) or '-'


def _redacted(url):
    # Passwords stay off the terminal and out of logs.
    return re.sub(r'([:,/]/?[^:@,/]*):[^@,/]*@', r'\1:***@', url)


def parse_transport_url(conf, url):
    """oslo.messaging's reading of url (multi-host included), checked."""
    try:
        parsed = oslo_messaging.TransportURL.parse(conf, url)
    except Exception as exc:
        raise cmd.CommandError('bad transport URL %s: %s'
                               % (_redacted(url), _one_line(exc)))
    if not parsed.transport or not parsed.hosts or not all(
            host.hostname for host in parsed.hosts):
        raise cmd.CommandError('bad transport URL %s: no host'
                               % _redacted(url))
    for host in parsed.hosts:
        if host.port is not None and not 0 < host.port < 65536:
            raise cmd.CommandError(
                'bad transport URL %s: port %s is out of range 1-65535'
                % (_redacted(url), host.port))
    return parsed


def _address(parsed, host):
    port = host.port or DEFAULT_PORTS.get(parsed.transport)
    return host.hostname, port


def _transport_name(parsed):
    return ','.join('%s:%s' % (name, port or '') for name, port in (
        _address(parsed, host) for host in parsed.hosts))


def _amqp(parsed, host, timeout):
    import kombu
    hostname, port = _address(parsed, host)
    return kombu.Connection(
        hostname=hostname, port=port, userid=host.username or 'guest',
        password=host.password or 'guest',
        virtual_host=parsed.virtual_host or '/', transport='pyamqp',
        connect_timeout=timeout,
        transport_options={'read_timeout': timeout,
                           'write_timeout': timeout})


def _connect(conn):
    # One attempt: kombu would otherwise retry with growing pauses.
    conn.ensure_connection(max_retries=0, reraise_as_library_errors=False)


def _check_host(parsed, host, timeout):
    """None if the host answers (and, for RabbitMQ, takes the
    credentials) within timeout seconds, else what is wrong."""
    hostname, port = _address(parsed, host)
    where = 'the message bus at %s:%s' % (hostname, port)
    try:
        if parsed.transport == 'rabbit':
            with _amqp(parsed, host, timeout) as conn:
                _connect(conn)
        elif port is not None:
            socket.create_connection((hostname, port), timeout).close()
    except (socket.timeout, TimeoutError):
        return '%s did not answer within %gs' % (where, timeout)
    except OSError as exc:
        return 'cannot reach %s: %s' % (where, _one_line(exc))
    except Exception as exc:  # the AMQP handshake said no
        if getattr(exc, 'reply_code', None) == 403:
            return '%s refused the credentials of user %s' % (
                where, host.username or 'guest')
        return '%s refused the connection: %s' % (where, _one_line(exc))
    return None


def check_bus(parsed, timeout):
    """Every host of the URL must answer: oslo.messaging would retry one
    that does not forever, and fail over to it later."""
    problems = [problem for problem in (
        _check_host(parsed, host, timeout) for host in parsed.hosts)
        if problem]
    if problems:
        raise cmd.CommandError('; '.join(problems))


class Endpoint:
    """Receives both priorities of every topic of one transport."""

    def __init__(self, transport_name, sink):
        self.transport_name = transport_name
        self.sink = sink

    def _got(self, priority, publisher_id, event_type, payload, metadata):
        self.sink(dict(transport=self.transport_name, priority=priority,
                       publisher_id=publisher_id, event_type=event_type,
                       timestamp=metadata.get('timestamp'),
                       payload=payload))

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self._got('INFO', publisher_id, event_type, payload, metadata)

    def error(self, ctxt, publisher_id, event_type, payload, metadata):
        self._got('ERROR', publisher_id, event_type, payload, metadata)


class Printer:
    """Writes messages, counts them, and tells when to stop.

    It never raises into oslo.messaging (which would log and drop the
    message): a message it cannot handle is a problem it reports.
    """

    def __init__(self, args, out, err):
        self.args = args
        self.out = out
        self.err = err
        self.lock = threading.Lock()
        self.usage_messages = 0
        self.bad = 0
        self.done = threading.Event()

    def __call__(self, message):
        try:
            usage_event = message['event_type'] in USAGE_EVENTS
        except Exception:
            usage_event = False
        if not (usage_event or self.args.all):
            return
        with self.lock:
            if self.done.is_set():
                return
            try:
                problems = self._show(message)
            except Exception as exc:
                problems = ['cannot be read: %s: %s' % (
                    type(exc).__name__, _one_line(exc))]
            if problems and self.args.check:
                self.bad += 1
                for problem in problems:
                    self.err.write('nova-usage-ext: %s %s from %s: %s\n' % (
                        _cell(message.get('event_type')),
                        _cell(message.get('publisher_id')),
                        _cell(message.get('transport')), _cell(problem)))
                self.err.flush()
            if usage_event:
                self.usage_messages += 1
                if self.args.count and \
                        self.usage_messages >= self.args.count:
                    self.done.set()

    def _show(self, message):
        problems = check(message['event_type'], message['payload'])
        if self.args.format == 'table':
            self.out.write(self._row(message) + '\n')
        else:
            self.out.write(json.dumps(message, sort_keys=True,
                                      default=repr) + '\n')
        self.out.flush()
        return problems

    @staticmethod
    def _row(message):
        if message['event_type'] == HOST_USAGE:
            return _host_row(message)
        usage = usage_of(message['event_type'], message['payload'])
        data = usage.get('nova_object.data') if isinstance(
            usage, dict) else None
        data = data if isinstance(data, dict) else {}
        cpu = data.get('vcpu_time_ns', data.get('cpu_time_ns'))
        if not isinstance(cpu, int) or isinstance(cpu, bool):
            cpu = None
        return '  '.join(_cell(cell) for cell in (
            message['transport'], message['event_type'],
            data.get('instance_uuid', '-'),
            'final' if data.get('final') else '-',
            data.get('source', '-'),
            '-' if cpu is None else cpu // 10 ** 9))


def _host_row(message):
    payload = message['payload']
    data = payload.get('nova_object.data') if isinstance(
        payload, dict) else None
    data = data if isinstance(data, dict) else {}
    instances = data.get('instances')
    count = len(instances) if isinstance(instances, list) else '-'
    return '  '.join(_cell(cell) for cell in (
        message['transport'], message['event_type'], data.get('host', '-'),
        'part %s/%s' % (data.get('part', '-'), data.get('parts', '-')),
        '%s instances' % count))


def _delete_pool_queue(parsed, pool, timeout):
    # Rabbit keeps a named queue after its consumer left: remove ours,
    # through whichever host of the URL answers.
    if parsed.transport != 'rabbit':
        return
    errors = []
    for host in parsed.hosts:
        try:
            with _amqp(parsed, host, timeout) as conn:
                _connect(conn)
                conn.channel().queue_delete(pool)
            return
        except Exception as exc:
            errors.append('%s:%s: %s' % (_address(parsed, host) + (
                _one_line(exc) or type(exc).__name__,)))
    LOG.warning('Could not delete queue %s: %s', pool, '; '.join(errors))


class StopOnSignals:
    """SIGTERM and SIGINT ask the listener to stop (and so to remove its
    queues) instead of ending the process where it stands."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handler(self, signum, frame):
        # Only a flag: the main loop notices it within its poll step.
        self.signum = signum

    def __enter__(self):
        # Python delivers signals to the main thread only.
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


def listen(args, out, err=None):
    err = err or sys.stderr
    conf = cfg.ConfigOpts()
    conf([], project='nova-usage-ext')
    buses = [(url, parse_transport_url(conf, url))
             for url in args.transport_url]
    for _url, parsed in buses:
        check_bus(parsed, args.connect_timeout)
    if args.exchange:
        oslo_messaging.set_transport_defaults(args.exchange)
    printer = Printer(args, out, err)
    servers = []
    with StopOnSignals() as stop:
        try:
            for index, (url, parsed) in enumerate(buses):
                # A queue per bus: two URLs of one broker each get every
                # message.
                pool = (args.pool if len(buses) == 1
                        else '%s-%d' % (args.pool, index))
                try:
                    transport = oslo_messaging.get_notification_transport(
                        conf, url=url)
                except Exception as exc:
                    raise cmd.CommandError('bad transport URL %s: %s' % (
                        _redacted(url), _one_line(exc)))
                targets = [oslo_messaging.Target(topic=topic)
                           for topic in args.topic]
                server = oslo_messaging.get_notification_listener(
                    transport, targets,
                    [Endpoint(_transport_name(parsed), printer)],
                    executor='threading', pool=pool)
                servers.append((parsed, pool, transport, server))
                server.start()
            deadline = (time.monotonic() + args.timeout
                        if args.timeout else None)
            while not printer.done.is_set() and stop.signum is None:
                left = (None if deadline is None
                        else deadline - time.monotonic())
                if left is not None and left <= 0:
                    break
                printer.done.wait(0.2 if left is None else min(left, 0.2))
        finally:
            printer.done.set()
            for parsed, pool, transport, server in servers:
                server.stop()
                server.wait()
                transport.cleanup()
                _delete_pool_queue(parsed, pool, args.connect_timeout)
    if stop.signum is not None:
        return 128 + stop.signum
    if args.count and printer.usage_messages < args.count:
        err.write('nova-usage-ext: %d usage messages of %d within %ss\n'
                  % (printer.usage_messages, args.count, args.timeout))
        return 1
    return 1 if printer.bad else 0


def add_parser(sub, seconds, count):
    """The listen sub-command; seconds(low, high) and count are main's
    argument types (finite, bounded)."""
    p = sub.add_parser(
        'listen', help='print (and check) the usage arriving on the bus',
        description=__doc__.split('\n\n', 1)[1].replace('``', ''))
    p.add_argument('--transport-url', action='append', metavar='URL',
                   help='a message bus to follow, as in nova.conf (several '
                        'hosts of one cluster included); once per cell '
                        '(default: %s)' % DEFAULT_URL)
    p.add_argument('--topic', action='append', metavar='TOPIC',
                   help='notification topic (default: %s)'
                        % ' and '.join(DEFAULT_TOPICS))
    p.add_argument('--exchange', default='nova',
                   help="nova's control exchange (default: nova)")
    p.add_argument('--pool', default='nova-usage-ext-listen-%s-%d' % (
                       socket.gethostname(), os.getpid()),
                   help='queue to listen in, so that other consumers '
                        '(ceilometer) miss nothing (default: one of its '
                        'own, deleted on exit, SIGTERM and SIGINT included)')
    p.add_argument('--all', action='store_true',
                   help='print every notification, not only the usage')
    p.add_argument('--check', action='store_true',
                   help='report usage messages that lack, misstate or '
                        'garble the usage, and exit 1 if any did')
    p.add_argument('--format', choices=('json', 'table'), default='json')
    p.add_argument('--count', type=count, default=0, metavar='N',
                   help='stop after N usage messages (exit 1 if fewer came '
                        'before --timeout)')
    p.add_argument('--timeout', type=seconds(0, 7 * 86400), default=0,
                   metavar='SECONDS',
                   help='stop after SECONDS, at most a week (default: 0, '
                        'no limit)')
    p.add_argument('--connect-timeout', type=seconds(0.1, 300),
                   default=DEFAULT_CONNECT_TIMEOUT, metavar='SECONDS',
                   help='give up on a bus host that does not complete the '
                        'connection (and login) within SECONDS (default: '
                        '%g)' % DEFAULT_CONNECT_TIMEOUT)

    def run(args, out):
        args.transport_url = args.transport_url or [DEFAULT_URL]
        args.topic = args.topic or list(DEFAULT_TOPICS)
        return listen(args, out)

    p.set_defaults(func=run)
    return p
