"""A real RabbitMQ: oslo.messaging notifiers and listeners over it.

Each test uses topics of its own, so parallel test workers never see each
other's messages; the queues are deleted afterwards.
"""

import os
import threading
import time
import uuid

import fixtures
import kombu
import oslo_messaging
from oslo_config import cfg

from nova_usage_ext import conf as usage_conf

RABBIT_URL = os.environ.get('NOVA_USAGE_EXT_RABBIT_URL',
                            'rabbit://guest:guest@127.0.0.1:5672/')


PRIORITIES = ('audit', 'debug', 'info', 'warn', 'error', 'critical',
              'sample')


def _amqp():
    return kombu.Connection(RABBIT_URL.replace('rabbit://', 'amqp://'),
                            connect_timeout=5)


def delete_queues(topic):
    """Delete the queues oslo.messaging made for ``topic``."""
    with _amqp() as conn:
        channel = conn.channel()
        for priority in PRIORITIES:
            try:
                channel.queue_delete('%s.%s' % (topic, priority))
            except Exception:
                channel = conn.channel()


def queue_depth(queue):
    """Messages waiting in a queue, or None when there is no such queue."""
    with _amqp() as conn:
        try:
            return conn.channel().queue_declare(queue=queue, passive=True)[1]
        except Exception:
            return None


def drain(queue):
    """Every message body in a queue, oldest first; the queue is emptied."""
    bodies = []
    with _amqp() as conn:
        channel = conn.channel()
        while True:
            msg = channel.basic_get(queue, no_ack=True)
            if msg is None:
                return bodies
            bodies.append(msg.body)


def make_conf():
    conf = cfg.ConfigOpts()
    conf([], project='nova-usage-ext-tests')
    return conf


def nova_sender_conf():
    """nova-compute's notifier configuration: RabbitMQ, on exchange
    "nova" (nova's control_exchange, where ceilometer listens), with the
    package's options registered."""
    conf = make_conf()
    usage_conf.register_opts(conf)
    # Registers [oslo_messaging_notifications].
    oslo_messaging.get_notification_transport(conf, url=RABBIT_URL).cleanup()
    conf.set_override('control_exchange', 'nova')
    conf.set_override('transport_url', RABBIT_URL,
                      group='oslo_messaging_notifications')
    return conf


class Endpoint:
    def __init__(self):
        self.messages = []
        self.cond = threading.Condition()

    def _record(self, priority, publisher_id, event_type, payload,
                metadata):
        with self.cond:
            self.messages.append(dict(
                priority=priority, publisher_id=publisher_id,
                event_type=event_type, payload=payload,
                message_id=metadata.get('message_id'),
                timestamp=metadata.get('timestamp')))
            self.cond.notify_all()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self._record('INFO', publisher_id, event_type, payload, metadata)

    def error(self, ctxt, publisher_id, event_type, payload, metadata):
        self._record('ERROR', publisher_id, event_type, payload, metadata)


class Listener(fixtures.Fixture):
    """A notification listener on a fresh topic of the real broker."""

    def __init__(self, conf, topic=None):
        super().__init__()
        self.conf = conf
        self.topic = topic or 'usage-ext-test-%s' % uuid.uuid4().hex

    def _setUp(self):
        self.transport = oslo_messaging.get_notification_transport(
            self.conf, url=RABBIT_URL)
        self.addCleanup(self.transport.cleanup)
        self.endpoint = Endpoint()
        self.listener = oslo_messaging.get_notification_listener(
            self.transport, [oslo_messaging.Target(topic=self.topic)],
            [self.endpoint], executor='threading')
        self.listener.start()
        self.addCleanup(delete_queues, self.topic)
        self.addCleanup(self.listener.wait)
        self.addCleanup(self.listener.stop)
        self._probe()

    def _probe(self):
        # The queue exists once the listener consumes: send until a probe
        # arrives, then forget it.
        notifier = oslo_messaging.Notifier(
            self.transport, driver='messagingv2', topics=[self.topic],
            publisher_id='probe')
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            notifier.info({}, 'probe', {})
            if self.wait_for(1, timeout=1, raise_on_timeout=False):
                break
        else:
            raise AssertionError('no notification came back from %s'
                                 % RABBIT_URL)
        with self.endpoint.cond:
            self.endpoint.messages.clear()

    @property
    def messages(self):
        with self.endpoint.cond:
            return list(self.endpoint.messages)

    def wait_for(self, count, timeout=10, raise_on_timeout=True):
        """The first ``count`` messages, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.endpoint.cond:
            while len(self.endpoint.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    if raise_on_timeout:
                        raise AssertionError(
                            'expected %d notifications, got %d: %s' % (
                                count, len(self.endpoint.messages),
                                [m['event_type']
                                 for m in self.endpoint.messages]))
                    return None
                self.endpoint.cond.wait(left)
            return list(self.endpoint.messages[:count])
