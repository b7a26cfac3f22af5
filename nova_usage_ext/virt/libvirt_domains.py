"""The list of domains that the libvirt reader splits its stats calls over.

libvirtd serves one stats call by asking each guest's QEMU in turn (libvirt
9 sends six QMP commands per guest for the CPU, vCPU and block groups), so
the wall time of a single call is the number of guests times QEMU's reply
latency. Given disjoint lists of domains, a few concurrent calls let
libvirtd's worker threads overlap those waits.

Splitting needs the list of domains, and listing them every cycle would be
one more call per cycle. So the list is the one the last full
``getAllDomainStats`` returned, trusted for as long as libvirt's lifecycle
events report no domain defined, undefined, started or stopped (and at most
``MAX_AGE`` seconds, in case events stop coming). That is safe because a
stats call on a listed domain returns its current id and state (a restart
needs no new list), and libvirt skips listed domains that are gone.

Events need an event loop. Outside nova, ``ensure_event_loop`` starts
libvirt's default one before the connection is opened, and the list
registers its own lifecycle callback. Inside nova-compute the list watches
nothing itself (``own_events=False``): nova's ``Host`` already receives
every lifecycle event of its connection and hands each to its driver's
``emit_event``, which passes it on with ``changed()``; a second callback on
nova's connection would only duplicate that traffic. Where no events can
be had, every cycle is one full call, as before.
"""

import threading
import time

import libvirt
from oslo_log import log as logging

LOG = logging.getLogger(__name__)

# The lifecycle events after which the set of domains may differ.
RELIST_EVENTS = frozenset((libvirt.VIR_DOMAIN_EVENT_DEFINED,
                           libvirt.VIR_DOMAIN_EVENT_UNDEFINED,
                           libvirt.VIR_DOMAIN_EVENT_STARTED,
                           libvirt.VIR_DOMAIN_EVENT_STOPPED))
MAX_AGE = 3600.0

_event_loop_lock = threading.Lock()
_event_loop_started = False


def ensure_event_loop():
    """Register libvirt's default event loop and run it in a daemon thread,
    once per process. Call it before opening a connection: the remote
    driver watches its socket for events only if a loop exists at open."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        thread = threading.Thread(target=_run_event_loop,
                                  name='libvirt-events', daemon=True)
        thread.start()
        _event_loop_started = True


def _run_event_loop():
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except Exception:  # never let the loop thread die
            LOG.exception('libvirt event loop iteration failed')
            time.sleep(1)


class DomainList:
    """The domains of one connection, as last listed, while still valid.

    ``begin_listing`` before a full stats call and ``store`` after it keep
    the list; ``current`` gives it back, or None when a full call is due.
    An event that arrives while a listing is under way voids that listing.

    :param own_events: register a lifecycle callback on each connection
        listed; False when the owner reports changes with ``changed()``.
    """

    def __init__(self, max_age=MAX_AGE, clock=time.monotonic,
                 own_events=True):
        self.max_age = max_age
        self.own_events = own_events
        self._clock = clock
        self._lock = threading.Lock()
        self._conn = None
        self._callback = None
        self._domains = None
        self._listed_at = 0.0
        self._changes = 0
        self._no_events_logged = False

    @property
    def watching(self):
        return not self.own_events or self._callback is not None

    def current(self, conn):
        """The last list of ``conn``'s domains, or None if it may be stale."""
        with self._lock:
            if conn is not self._conn or self._domains is None:
                return None
            if self._clock() - self._listed_at > self.max_age:
                self._domains = None
                return None
            return self._domains

    def begin_listing(self, conn):
        """Watch ``conn`` for lifecycle events; returns a token for
        ``store``, or None where no events can be had."""
        if conn is not self._conn:
            self._watch(conn)
        with self._lock:
            return self._changes if self.watching else None

    def changed(self):
        """The set of domains may have changed: the next cycle lists them.
        """
        with self._lock:
            self._changes += 1
            self._domains = None

    def store(self, token, domains):
        """Keep ``domains`` as the list, unless an event came meanwhile."""
        if token is None:
            return
        with self._lock:
            if token == self._changes:
                self._domains = list(domains)
                self._listed_at = self._clock()

    def close(self):
        self._unwatch()
        with self._lock:
            self._conn = None
            self._domains = None

    # -- events --------------------------------------------------------------

    def _on_lifecycle(self, _conn, _dom, event, _detail, _opaque):
        if event in RELIST_EVENTS:
            self.changed()

    def _watch(self, conn):
        self._unwatch()
        callback = self._register(conn) if self.own_events else None
        with self._lock:
            self._conn = conn
            self._callback = callback
            self._domains = None
            self._changes += 1

    def _register(self, conn):
        try:
            # The older registration call: libvirt takes one lifecycle
            # callback for all domains per connection through
            # domainEventRegisterAny.
            conn.domainEventRegister(self._on_lifecycle, None)
            return self._on_lifecycle
        except Exception as exc:  # libvirtError, or a connection without
            if not self._no_events_logged:
                self._no_events_logged = True
                LOG.info('libvirt gives no domain events on this connection '
                         '(%s); each cycle reads all domains in one call',
                         getattr(exc, 'get_error_message', exc.__str__)())
            return None

    def _unwatch(self):
        with self._lock:
            conn, callback = self._conn, self._callback
            self._callback = None
        if conn is not None and callback is not None:
            try:
                conn.domainEventDeregister(callback)
            except Exception:
                pass  # the connection is gone, and its callbacks with it
