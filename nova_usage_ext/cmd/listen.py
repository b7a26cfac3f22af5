"""``nova-usage-ext listen``: print or check the usage that reaches the bus.

It can run anywhere that reaches the message buses, and follows several
(one ``--transport-url`` per cell), on nova's legacy and versioned topics,
at the ``info`` and ``error`` priorities. It listens in a queue of its own
(``--pool``), so ceilometer's notification agent keeps getting every
message; that queue is deleted when it stops.
"""

import json
import socket
import sys
import threading
import time
import urllib.parse

import oslo_messaging
from oslo_config import cfg
from oslo_log import log as logging

from nova_usage_ext import cmd
from nova_usage_ext import exists
from nova_usage_ext import objects
from nova_usage_ext.objects import base as obj_base
from nova_usage_ext.objects import usage as usage_objects

objects.register_all()

LOG = logging.getLogger(__name__)

USAGE_EVENTS = (exists.EVENT_TYPE, 'instance.usage')
DEFAULT_TOPICS = ('notifications', 'versioned_notifications')


def usage_of(event_type, payload):
    """The InstanceUsagePayload wire dict a message carries, or None."""
    if event_type == 'instance.usage':
        return payload
    if isinstance(payload, dict):
        return payload.get('usage')
    return None


def check(event_type, payload):
    """What is wrong with a usage message, as a list of strings."""
    if event_type not in USAGE_EVENTS:
        return []
    usage = usage_of(event_type, payload)
    if usage is None:
        return ['no usage (is compute_driver usage_ext.LibvirtUsageDriver '
                'and the nova_usage_ext notification driver enabled on the '
                'host?)']
    if not isinstance(usage, dict) or \
            usage.get('nova_object.namespace') != obj_base.NAMESPACE:
        return ['usage is not a %s object' % obj_base.NAMESPACE]
    try:
        obj = usage_objects.InstanceUsagePayload.obj_from_primitive(usage)
    except Exception as exc:
        return ['usage does not deserialize: %s' % exc]
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


def _transport_name(url):
    parsed = urllib.parse.urlparse(url)
    return parsed.hostname and '%s:%s' % (parsed.hostname,
                                          parsed.port or '') or url


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
    """Writes messages, counts them, and tells when to stop."""

    def __init__(self, args, out, err):
        self.args = args
        self.out = out
        self.err = err
        self.lock = threading.Lock()
        self.usage_messages = 0
        self.bad = 0
        self.done = threading.Event()

    def __call__(self, message):
        usage_event = message['event_type'] in USAGE_EVENTS
        if not (usage_event or self.args.all):
            return
        with self.lock:
            if self.done.is_set():
                return
            problems = check(message['event_type'], message['payload'])
            if self.args.format == 'table':
                self.out.write(self._row(message) + '\n')
            else:
                self.out.write(json.dumps(message, sort_keys=True) + '\n')
            self.out.flush()
            if problems and self.args.check:
                self.bad += 1
                for problem in problems:
                    self.err.write('nova-usage-ext: %s %s from %s: %s\n' % (
                        message['event_type'], message['publisher_id'],
                        message['transport'], problem))
                self.err.flush()
            if usage_event:
                self.usage_messages += 1
                if self.args.count and \
                        self.usage_messages >= self.args.count:
                    self.done.set()

    @staticmethod
    def _row(message):
        usage = usage_of(message['event_type'], message['payload']) or {}
        data = usage.get('nova_object.data', {}) if isinstance(
            usage, dict) else {}
        cpu = data.get('vcpu_time_ns', data.get('cpu_time_ns'))
        return '  '.join(str(cell) for cell in (
            message['transport'], message['event_type'],
            data.get('instance_uuid', '-'),
            'final' if data.get('final') else '-',
            data.get('source', '-'),
            '-' if cpu is None else cpu // 10 ** 9))


def _delete_pool_queue(url, pool):
    # Rabbit keeps a named queue after its consumer left: remove ours.
    if not url.startswith('rabbit://'):
        return
    try:
        import kombu
        with kombu.Connection(url.replace('rabbit://', 'amqp://', 1),
                              connect_timeout=5) as conn:
            conn.channel().queue_delete(pool)
    except Exception as exc:
        LOG.warning('Could not delete queue %s at %s: %s', pool,
                    _transport_name(url), exc)


def _check_reachable(url):
    # oslo.messaging retries a bus it cannot reach forever: say so now.
    parsed = urllib.parse.urlparse(url)
    if not parsed.scheme or not parsed.hostname:
        raise cmd.CommandError('bad transport URL %s' % url)
    port = parsed.port or {'rabbit': 5672}.get(parsed.scheme)
    if port is None:
        return
    try:
        socket.create_connection((parsed.hostname, port), timeout=5).close()
    except OSError as exc:
        raise cmd.CommandError('cannot reach the message bus at %s:%s: %s'
                               % (parsed.hostname, port, exc))


def listen(args, out, err=None):
    err = err or sys.stderr
    for url in args.transport_url:
        _check_reachable(url)
    conf = cfg.ConfigOpts()
    conf([], project='nova-usage-ext')
    if args.exchange:
        oslo_messaging.set_transport_defaults(args.exchange)
    printer = Printer(args, out, err)
    servers = []
    try:
        for index, url in enumerate(args.transport_url):
            # A queue per bus: two URLs of one broker each get every message.
            pool = (args.pool if len(args.transport_url) == 1
                    else '%s-%d' % (args.pool, index))
            try:
                transport = oslo_messaging.get_notification_transport(
                    conf, url=url)
            except Exception as exc:
                raise cmd.CommandError('bad transport URL %s: %s'
                                       % (url, exc))
            targets = [oslo_messaging.Target(topic=topic)
                       for topic in args.topic]
            server = oslo_messaging.get_notification_listener(
                transport, targets, [Endpoint(_transport_name(url), printer)],
                executor='threading', pool=pool)
            servers.append((url, pool, transport, server))
            server.start()
        deadline = (time.monotonic() + args.timeout) if args.timeout else None
        while not printer.done.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            printer.done.wait(1 if left is None else min(left, 1))
    finally:
        printer.done.set()
        for url, pool, transport, server in servers:
            server.stop()
            server.wait()
            transport.cleanup()
            _delete_pool_queue(url, pool)
    if args.count and printer.usage_messages < args.count:
        err.write('nova-usage-ext: %d usage messages of %d within %ss\n'
                  % (printer.usage_messages, args.count, args.timeout))
        return 1
    return 1 if printer.bad else 0


def add_parser(sub, positive_number):
    p = sub.add_parser(
        'listen', help='print (and check) the usage arriving on the bus',
        description=__doc__.split('\n\n', 1)[1].replace('``', ''))
    p.add_argument('--transport-url', action='append', metavar='URL',
                   help='a message bus to follow, as in nova.conf; once per '
                        'cell (default: rabbit://guest:guest@127.0.0.1:5672/)')
    p.add_argument('--topic', action='append', metavar='TOPIC',
                   help='notification topic (default: %s)'
                        % ' and '.join(DEFAULT_TOPICS))
    p.add_argument('--exchange', default='nova',
                   help="nova's control exchange (default: nova)")
    p.add_argument('--pool', default='nova-usage-ext-listen-%s-%d' % (
                       socket.gethostname(), __import__('os').getpid()),
                   help='queue to listen in, so that other consumers '
                        '(ceilometer) miss nothing (default: one of its '
                        'own, deleted on exit)')
    p.add_argument('--all', action='store_true',
                   help='print every notification, not only the usage')
    p.add_argument('--check', action='store_true',
                   help='report usage messages that lack or misstate the '
                        'usage, and exit 1 if any did')
    p.add_argument('--format', choices=('json', 'table'), default='json')
    p.add_argument('--count', type=int, default=0, metavar='N',
                   help='stop after N usage messages (exit 1 if fewer came '
                        'before --timeout)')
    p.add_argument('--timeout', type=positive_number, default=0,
                   metavar='SECONDS', help='stop after SECONDS')

    def run(args, out):
        args.transport_url = args.transport_url or [
            'rabbit://guest:guest@127.0.0.1:5672/']
        args.topic = args.topic or list(DEFAULT_TOPICS)
        return listen(args, out)

    p.set_defaults(func=run)
    return p
