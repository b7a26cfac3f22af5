"""The periodic ``host.usage`` notification, sent beside the loop.

The loop hands each reading that holds memory (every
``[usage_ext] host_usage_interval``) to :class:`HostUsageSender`, which
builds the messages and sends them on a daemon thread of its own, so a
slow or stuck broker never delays the next cycle. It holds one reading at
most: a reading handed over while the previous one is still being sent is
skipped (logged, counted in ``skipped``). These messages close no usage
period, so they never go into the outbox: a message that fails is logged,
counted in ``failed`` and dropped; the next reading brings fresh figures.
"""

import threading

from oslo_log import log as logging

from nova_usage_ext import delivery
from nova_usage_ext import exists
from nova_usage_ext import state
from nova_usage_ext.objects import host as host_objects

LOG = logging.getLogger(__name__)

EVENT_TYPE = host_objects.EVENT_TYPE


def messages(host, read_at, usages, max_instances):
    """The ``host.usage`` messages of one reading, as oslo.messaging puts
    them on the bus (one per part)."""
    built = []
    for part in host_objects.HostUsagePayload.wire_parts(
            host, read_at, usages, max_instances):
        message = exists.notification(part, host, read_at,
                                      event_type=EVENT_TYPE)
        # A versioned payload: nova's versioned publisher.
        message['publisher_id'] = 'nova-compute:%s' % host
        built.append(message)
    return built


class DriversOnNovaTopics:
    """Sends through the notification drivers, over a transport of its
    own, on the topics of nova's legacy notifier (``[oslo_messaging_
    notifications] topics``, ``notifications`` by default): where
    ceilometer's notification agent listens, whatever nova's
    ``notification_format``. Made on first use, once nova set up its
    notifiers.
    """

    def __init__(self, conf, names):
        self._conf = conf
        self._names = names
        self._sender = None

    def __call__(self, entry):
        if self._sender is None:
            self._sender = delivery.DriverSender(
                self._conf, delivery.legacy_topics(self._conf), self._names)
        self._sender(entry)


class HostUsageSender:
    """Builds and sends each reading's ``host.usage`` messages.

    :param host: nova's host name.
    :param interval: seconds between two messages (the loop's schedule);
        0 or less: none are sent.
    :param max_instances: the most instances in one message.
    :param send: ``outbox entry -> None`` (the notification drivers'
        sender); raises when not sent.
    """

    def __init__(self, host, interval, max_instances, send):
        self.host = host
        self.interval = interval
        self.max_instances = max_instances
        self._send = send
        self._cond = threading.Condition()
        self._pending = None
        self._busy = False
        self._stopped = False
        self._thread = None
        self.sent = 0
        self.failed = 0
        self.skipped = 0

    def submit(self, read_at, usages):
        """Hand a reading over; never waits.

        :returns: False when it was skipped (the previous one is still
            being sent, or the sender is stopped).
        """
        with self._cond:
            if self._stopped:
                return False
            if self._busy:
                self.skipped += 1
                LOG.warning('nova-usage-ext: the host.usage of the previous '
                            'reading is still being sent; skipping this '
                            'one (%d skipped so far)', self.skipped)
                return False
            self._pending = (read_at, list(usages))
            self._busy = True
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name='usage-ext-host-usage',
                    daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return True

    def wait_idle(self, timeout):
        """True once nothing is pending or being sent (tests, shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy, timeout)

    def stop(self):
        """Send nothing more; a send under way ends on its own."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _run(self):
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._pending is not None or self._stopped)
                if self._pending is None:
                    return
                read_at, usages = self._pending
                self._pending = None
            try:
                self._send_reading(read_at, usages)
            except Exception:
                LOG.exception('nova-usage-ext: building the host.usage '
                              'notification failed')
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                if self._stopped:
                    return

    def _send_reading(self, read_at, usages):
        parts = messages(self.host, read_at, usages, self.max_instances)
        for index, message in enumerate(parts):
            if self._stopped:
                return
            try:
                self._send(state.OutboxEntry(
                    seq=0, uuid=None, priority=message['priority'],
                    ctxt={}, message=message))
            except Exception as exc:
                # The broker is away: the rest of this reading would fail
                # too, and the next one comes with fresh figures.
                self.failed += len(parts) - index
                LOG.warning('nova-usage-ext: cannot send host.usage '
                            '(%d of %d parts not sent; %d failed so far): '
                            '%s', len(parts) - index, len(parts),
                            self.failed, exc)
                return
            self.sent += 1
