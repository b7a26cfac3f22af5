"""The notification hook: an oslo.messaging notifier driver.

Enabled in nova.conf with::

    [oslo_messaging_notifications]
    driver = nova_usage_ext

    [usage_ext]
    notification_drivers = messagingv2

It wraps the real drivers and passes every notification on to them. Inside
nova-compute (where the usage driver registered its service) it also:

- adds the instance's usage under ``usage`` to every legacy
  ``compute.instance.exists``, and sends a versioned ``instance.usage``
  right after every versioned ``instance.exists`` (waiting for its
  delivery within ``[usage_ext] final_exists_budget``, so that it comes
  before nova's next notification, unless older messages wait in the
  outbox); the first of them closes the instance's period;
- before ``compute.instance.delete.start`` or ``instance.delete.start``,
  reads the instance one last time and queues a final
  ``compute.instance.exists`` in the outbox, then waits for its delivery
  for at most ``[usage_ext] final_exists_budget`` seconds;
- before an event that ends the guest's process or moves it off the host
  (power off, shelve, suspend, reboot, rebuild, rescue, resize,
  migration), reads the instance, within the same budget;
- when the instance has left the host (live migration, resize or cold
  migration on the source, shelve offload), queues a final exists with
  ``final_reason`` saying why.

Messages that close a period are queued durably before they are sent and
stay queued until a driver took them (see :mod:`nova_usage_ext.delivery`).
Whatever happens in the hook is logged and swallowed: the notification
nova sent always goes on, unchanged but for the usage added.
"""

import time
import uuid as uuidlib

from oslo_log import log as logging
from oslo_messaging.notify import notifier
from stevedore import named

from nova_usage_ext import conf as usage_conf
from nova_usage_ext import delivery
from nova_usage_ext import exists
from nova_usage_ext import service as usage_service

LOG = logging.getLogger(__name__)

LEGACY_EXISTS = 'compute.instance.exists'
VERSIONED_EXISTS = 'instance.exists'
VERSIONED_USAGE = 'instance.usage'
DELETE_START = ('compute.instance.delete.start', 'instance.delete.start')
# The guest's process is about to end, or the instance to leave the host:
# its counters are read now, so that the period holds everything up to
# then. (nova sends the shelve exists before shelve.start: the exists
# reads too.)
_PROCESS_ENDS = ('power_off.start', 'shelve.start', 'suspend.start',
                 'reboot.start', 'rebuild.start', 'rescue.start',
                 'unrescue.start', 'resize.start', 'shelve_offload.start')
PROCESS_ENDS = tuple(prefix + event for event in _PROCESS_ENDS
                     for prefix in ('compute.instance.', 'instance.'))
# The instance has left this host (or its process here is gone for good):
# a final exists closes its usage here, with the reason. A read is tried
# first; by then it usually finds nothing and the last reading stands.
LEAVES = {
    'compute.instance.live_migration._post.start': 'migrated',
    'instance.live_migration_post.start': 'migrated',
    'compute.instance.resize.end': 'migrated',
    'instance.resize.end': 'migrated',
    'compute.instance.shelve_offload.end': 'shelved_offloaded',
    'instance.shelve_offload.end': 'shelved_offloaded',
}
# resize.end names the instance's new host: this one when resized to the
# same host, where it stays.
RESIZE_END = ('compute.instance.resize.end', 'instance.resize.end')


def _instance_uuid(payload):
    if not isinstance(payload, dict):
        return None
    if 'nova_object.data' in payload:
        data = payload['nova_object.data']
        return data.get('uuid') if isinstance(data, dict) else None
    return payload.get('instance_id')


def _payload_host(payload):
    data = payload.get('nova_object.data', payload)
    return data.get('host') if isinstance(data, dict) else None


def _versioned_topics(conf):
    # nova's [notifications] versioned_notifications_topics, where nova
    # registered it.
    try:
        return list(conf.notifications.versioned_notifications_topics)
    except Exception:
        return ['versioned_notifications']


def _versioned_ending(payload):
    data = payload.get('nova_object.data', {})
    return exists.parse_nova_time(data.get('audit_period', {}).get(
        'nova_object.data', {}).get('audit_period_ending'))


class UsageNotifierDriver(notifier.Driver):

    def __init__(self, conf, topics, transport):
        super().__init__(conf, topics, transport)
        # Never raises: bad values are logged once and replaced.
        self.budget = usage_conf.final_exists_budget(conf)
        names = list(usage_conf.notification_drivers(conf))
        # nova's own transport, unchanged but for noting a failed send:
        # oslo.messaging's drivers log it and return as if sent.
        self._transport = delivery.FailedSends(transport)
        self._drivers = named.NamedExtensionManager(
            delivery.DRIVER_NAMESPACE, names=names, invoke_on_load=True,
            invoke_args=[conf],
            invoke_kwds={'topics': topics, 'transport': self._transport},
            name_order=True,
            on_missing_entrypoints_callback=self._missing)
        # The package's own messages go through the same drivers over a
        # transport of their own, never nova's connections, on the topics
        # ceilometer reads: nova makes this driver for its versioned
        # notifier too (last, with notification_format = both or
        # versioned), whose topics ceilometer does not read.
        if list(topics or ()) == _versioned_topics(conf):
            topics = delivery.legacy_topics(conf)
        usage_service.register_sender(
            delivery.DriverSender(conf, topics, names))

    @staticmethod
    def _missing(names):
        LOG.error('[usage_ext] notification_drivers: %s: no such '
                  'oslo.messaging notification driver, or it failed to '
                  'load; notifications are not sent there',
                  ', '.join(sorted(names)))

    # -- oslo.messaging's driver interface ---------------------------------

    def notify(self, ctxt, msg, priority, retry):
        service = usage_service.current()
        if service is None or not isinstance(msg, dict):
            self._forward(ctxt, msg, priority, retry)
            return
        event_type = msg.get('event_type')
        seq = None
        try:
            uuid = _instance_uuid(msg.get('payload'))
            if not uuid:
                pass
            elif event_type in DELETE_START:
                self._final_exists(service, uuid, ctxt, msg, priority,
                                   usage_service.LEFT_DELETED)
            elif event_type in LEAVES and not (
                    event_type in RESIZE_END and
                    _payload_host(msg['payload']) == service.host):
                self._final_exists(service, uuid, ctxt, msg, priority,
                                   LEAVES[event_type])
            elif event_type in PROCESS_ENDS:
                service.read_bounded(uuid, self.budget)
            elif event_type == LEGACY_EXISTS:
                msg, seq = self._with_usage(service, uuid, ctxt, msg,
                                            priority)
        except Exception:
            LOG.exception('nova-usage-ext: hook failed on %s; passing it on '
                          'unchanged', event_type)
        if seq is None:
            self._forward(ctxt, msg, priority, retry)
        else:
            # nova's exists, now carrying a period: sent on nova's own
            # path as nova would; the outbox keeps it if that fails.
            service.delivery.send_here(
                seq, lambda: self._forward(ctxt, msg, priority, retry,
                                           raise_errors=True))
        if event_type == VERSIONED_EXISTS:
            try:
                self._companion_usage(service, ctxt, msg, priority)
            except Exception:
                LOG.exception('nova-usage-ext: no usage notification after '
                              '%s', event_type)

    def _forward(self, ctxt, msg, priority, retry, raise_errors=False):
        failed = None
        self._transport.forget()
        for ext in self._drivers.extensions:
            try:
                ext.obj.notify(ctxt, msg, priority, retry)
            except Exception as exc:
                failed = exc
                LOG.exception("Problem '%(e)s' attempting to send to "
                              "notification driver %(driver)s",
                              {'e': exc, 'driver': ext.name})
        try:
            self._transport.raise_failure()
        except Exception as exc:
            failed = exc
        if failed is not None and raise_errors:
            raise failed

    # -- exists -----------------------------------------------------------

    def _with_usage(self, service, uuid, ctxt, msg, priority):
        payload = msg['payload']
        # nova sends an exists of the current period right before rebuild,
        # rescue, revert_resize and shelve end the process: read now, not
        # the last poll (which stands when the read fails).
        ending = exists.parse_nova_time(payload.get('audit_period_ending'))
        source = exists.SOURCE_CACHE
        if (not service.audit_closed(uuid, ending) and
                service.read_bounded(uuid, self.budget) is not None):
            source = exists.SOURCE_HYPERVISOR
        built = {}

        def build(usage_wire):
            built['msg'] = dict(msg, payload=dict(payload, usage=usage_wire))
            return ctxt, built['msg'], priority

        usage_wire, seq = service.close_audit_period(uuid, ending, build,
                                                     source, held=True)
        if usage_wire is None:
            # Not an instance of this host (nova audits instances deleted
            # in the period; prep_resize sends one on the destination).
            LOG.debug('nova-usage-ext: no usage known for instance %s; its '
                      'exists goes out without it', uuid)
            return msg, None
        if seq is None:
            return dict(msg, payload=dict(payload, usage=usage_wire)), None
        return built['msg'], seq

    def _companion_usage(self, service, ctxt, msg, priority):
        uuid = _instance_uuid(msg.get('payload'))
        if not uuid:
            return
        started = time.monotonic()
        ending = _versioned_ending(msg['payload'])
        source = exists.SOURCE_CACHE
        if (not service.audit_closed(uuid, ending) and
                service.read_bounded(uuid, self.budget) is not None):
            source = exists.SOURCE_HYPERVISOR

        def build(usage_wire):
            return ctxt, dict(msg, message_id=str(uuidlib.uuid4()),
                              event_type=VERSIONED_USAGE,
                              payload=usage_wire), priority

        usage_wire, seq = service.close_audit_period(uuid, ending, build,
                                                     source)
        if usage_wire is not None and seq is None:
            # The legacy exists closed this period: report the same usage.
            companion = build(usage_wire)[1]
            self._forward(ctxt, companion, priority, None)
        elif seq is not None and service.ledger.store.outbox_size() <= 1:
            # Right after nova's exists, before nova's next notification
            # (the shelve.start or delete.start that often follows). Not
            # behind a backlog: nova's audit sends one exists per
            # instance, and would wait the budget for each.
            self._wait_delivered(service, seq, started, 'instance.usage',
                                 uuid, '')

    # -- the final exists -------------------------------------------------

    def _final_exists(self, service, uuid, ctxt, msg, priority, reason):
        started = time.monotonic()
        seq = service.close_final(uuid, msg.get('payload'), ctxt, priority,
                                  self.budget, reason=reason)
        if seq is None:
            return
        self._wait_delivered(service, seq, started, 'final exists', uuid,
                             ' and arrives after delete.start')

    def _wait_delivered(self, service, seq, started, what, uuid, after):
        """Wait for message ``seq`` for what is left of the budget since
        ``started``; say so when it did not go."""
        left = self.budget - (time.monotonic() - started)
        if not service.delivery.wait_delivered(seq, left):
            LOG.warning('nova-usage-ext: the %s of %s was not delivered '
                        'within %.1fs; it waits in the outbox%s', what, uuid,
                        self.budget, after)
