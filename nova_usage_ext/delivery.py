"""Delivery of the outbox: every queued message is sent until a driver
takes it, oldest first, by one thread of the package's own.

A message leaves the outbox only when every notification driver returned
without error; after a failure it is sent again (same ``message_id``, so
that a consumer can drop the copies) with a growing pause, and after a
restart of nova-compute. The sends use a transport of the package's own
(:class:`DriverSender`): one connection at most, never one from the pool
that nova's own notifications use, and a short retry, so that a broker
outage keeps messages in the outbox, not threads blocked in a send.
"""

import threading
import time

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

DRIVER_NAMESPACE = 'oslo.messaging.notify.drivers'
# oslo.messaging's retry for the package's own sends: reconnect once, then
# fail, and the outbox retries.
SEND_RETRY = 1
FIRST_PAUSE = 1.0
MAX_PAUSE = 60.0
BATCH = 100
# A send taking longer than this is stuck: the hook stops waiting for it.
STUCK_SEND = 1.0


def legacy_topics(conf):
    """The topics of nova's legacy notifier (``[oslo_messaging_
    notifications] topics``, ``notifications`` by default): where
    ceilometer's notification agent listens, whatever nova's
    ``notification_format``."""
    try:
        return list(conf.oslo_messaging_notifications.topics)
    except Exception:  # oslo.messaging's options not registered
        return ['notifications']


class DriverSender:
    """Sends a queued message through the real notification drivers, over
    a transport of its own made on first use.

    :param conf: the service's configuration.
    :param topics: the topics of nova's notifier.
    :param names: the drivers' entry point names (``messagingv2`` ...).
    """

    def __init__(self, conf, topics, names):
        self._conf = conf
        self._topics = topics
        self._names = names
        self._drivers = None
        self._transport = None

    def _load(self):
        # Imported here: only a nova-compute that sends needs them.
        import oslo_messaging
        from stevedore import named
        self._transport = FailedSends(
            oslo_messaging.get_notification_transport(self._conf))
        return named.NamedExtensionManager(
            DRIVER_NAMESPACE, names=self._names, invoke_on_load=True,
            invoke_args=[self._conf],
            invoke_kwds={'topics': self._topics,
                         'transport': self._transport},
            name_order=True)

    def close(self):
        """Release the transport (a new one is made on the next send)."""
        drivers, self._drivers = self._drivers, None
        if drivers is not None:
            self._transport.cleanup()

    def __call__(self, entry):
        """:raises Exception: a driver failed to send."""
        if self._drivers is None:
            self._drivers = self._load()
        self._transport.forget()
        for ext in self._drivers.extensions:
            ext.obj.notify(entry.ctxt, entry.message, entry.priority,
                           SEND_RETRY)
        self._transport.raise_failure()


class FailedSends:
    """The package's transport as the drivers see it, keeping the error
    of a send that failed.

    oslo.messaging's messaging drivers log a failed send and return as if
    it went out: without this, a message would leave the outbox unsent.
    """

    def __init__(self, transport):
        self._transport = transport
        self._local = threading.local()

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def _send_notification(self, *args, **kwargs):
        try:
            return self._transport._send_notification(*args, **kwargs)
        except Exception as exc:
            self._local.error = exc
            raise

    def forget(self):
        self._local.error = None

    def raise_failure(self):
        error = getattr(self._local, 'error', None)
        if error is not None:
            self._local.error = None
            raise error


class Delivery:
    """The thread that empties the outbox.

    :param store: the :class:`nova_usage_ext.state.Store`.
    :param send: ``entry -> None``; raises when the message was not sent.
    """

    def __init__(self, store, send, first_pause=FIRST_PAUSE,
                 max_pause=MAX_PAUSE):
        self.store = store
        self._send = send
        self._first_pause = first_pause
        self._max_pause = max_pause
        self._cond = threading.Condition()
        self._wanted = False
        self._stopped = False
        self._thread = None
        #: False from a failed send until the next one that goes through:
        #: the hook then does not wait for a delivery that cannot come.
        self.healthy = True
        # When the send under way began (a broker that accepts and never
        # answers fails nothing: a send that hangs says it).
        self._sending_since = None
        # seq -> Event set once that message left the outbox.
        self._waiting = {}
        self.sent = 0
        self.failed = 0

    def start(self):
        with self._cond:
            if self._thread is not None:
                return
            self._stopped = False
            # A daemon: it must never keep nova-compute from exiting; what
            # it has not sent stays in the outbox for the next start.
            self._thread = threading.Thread(
                target=self._run, name='nova-usage-ext-delivery', daemon=True)
            self._thread.start()
            self._wanted = True
            self._cond.notify_all()

    def stop(self, timeout=5.0):
        with self._cond:
            self._stopped = True
            thread, self._thread = self._thread, None
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def wake(self):
        """New messages are queued."""
        with self._cond:
            self._wanted = True
            self._cond.notify_all()

    def wait_delivered(self, seq, timeout):
        """Wait until message ``seq`` left the outbox; False on timeout,
        at once while the bus is known to be away."""
        with self._cond:
            if not self.store.is_queued(seq):
                return True
            if not self.healthy or self._stuck():
                return False
            # One event per message: a burst of deletes waiting is woken
            # one by one, not all at every message sent.
            sent = self._waiting.setdefault(seq, threading.Event())
        try:
            return sent.wait(max(0.0, timeout))
        finally:
            with self._cond:
                self._waiting.pop(seq, None)

    def send_here(self, seq, send):
        """Send queued message ``seq``, queued held, in the calling thread
        with ``send`` (nova's own exists, on nova's own path); released to
        the delivery thread if it fails.

        :returns: True if sent.
        """
        ok = False
        try:
            send()
            ok = True
        except Exception as exc:
            LOG.warning('nova-usage-ext: message %d not sent (%s); it stays '
                        'in the outbox and is sent again', seq, exc)
        finally:
            with self._cond:
                if ok:
                    self._removed(seq)
                else:
                    self.store.release(seq)
                    self._wanted = True
                self._cond.notify_all()
        return ok

    # -- the thread --------------------------------------------------------

    def _run(self):
        pause = self._first_pause
        outage_logged = False
        while True:
            with self._cond:
                while not self._wanted and not self._stopped:
                    self._cond.wait(30.0)
                    self._wanted = self._wanted or self._has_pending()
                if self._stopped:
                    return
                self._wanted = False
            try:
                failed = self._send_pending()
            except Exception:
                LOG.exception('nova-usage-ext: outbox delivery failed')
                failed = True
            if not failed:
                if outage_logged:
                    LOG.info('nova-usage-ext: messages are delivered again')
                outage_logged = False
                self.healthy = True
                pause = self._first_pause
                continue
            self.healthy = False
            if not outage_logged:
                outage_logged = True
                LOG.warning('nova-usage-ext: cannot send usage messages; '
                            '%d wait in the outbox and are sent again',
                            self.store.outbox_size())
            # New messages do not cut the pause short: a burst of deletes
            # during an outage must not turn into a burst of reconnects.
            deadline = time.monotonic() + pause
            with self._cond:
                while not self._stopped:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                self._wanted = True
            pause = min(pause * 2, self._max_pause)

    def _removed(self, seq):
        # With the condition held.
        self.store.remove(seq)
        self.sent += 1
        sent = self._waiting.get(seq)
        if sent is not None:
            sent.set()

    def _stuck(self):
        since = self._sending_since
        return since is not None and time.monotonic() - since > STUCK_SEND

    def _has_pending(self):
        return bool(self.store.pending(limit=1))

    def _send_pending(self):
        """Send what is queued, oldest first; True when a send failed."""
        after = 0
        while True:
            entries = self.store.pending(limit=BATCH, after=after)
            if not entries:
                return False
            for entry in entries:
                after = entry.seq
                with self._cond:
                    if self._stopped:
                        return False
                self._sending_since = time.monotonic()
                try:
                    self._send(entry)
                except Exception as exc:
                    self.failed += 1
                    LOG.debug('nova-usage-ext: sending message %s failed: '
                              '%s', entry.message_id, exc)
                    return True
                finally:
                    self._sending_since = None
                with self._cond:
                    self._removed(entry.seq)
