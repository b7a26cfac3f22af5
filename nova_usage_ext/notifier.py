"""The notification hook: an oslo.messaging notifier driver.

Enabled in nova.conf with::

    [oslo_messaging_notifications]
    driver = nova_usage_ext

    [usage_ext]
    notification_drivers = messagingv2

It wraps the real drivers and passes every notification on to them. Inside
nova-compute (where the usage driver registered its service) it also:

- adds the instance's usage under ``usage`` to every legacy
  ``compute.instance.exists``;
- sends a versioned ``instance.usage`` right after every versioned
  ``instance.exists``;
- before ``compute.instance.delete.start`` or ``instance.delete.start``,
  reads the instance one last time and sends a final
  ``compute.instance.exists``, once per instance, within
  ``[usage_ext] final_exists_budget`` seconds;
- before power_off, shelve and suspend start, reads the instance into the
  counter cache (its process and counters end there), within the same
  budget.

Whatever happens in the hook is logged and swallowed: the notification
nova sent always goes on.
"""

import datetime
import threading
import uuid as uuidlib

from oslo_log import log as logging
from oslo_messaging.notify import notifier
from stevedore import named

from nova_usage_ext import conf as usage_conf
from nova_usage_ext import exists
from nova_usage_ext import service as usage_service
from nova_usage_ext.virt import base

LOG = logging.getLogger(__name__)

DRIVER_NAMESPACE = 'oslo.messaging.notify.drivers'
SELF = 'nova_usage_ext'
LEGACY_EXISTS = 'compute.instance.exists'
VERSIONED_EXISTS = 'instance.exists'
VERSIONED_USAGE = 'instance.usage'
DELETE_START = ('compute.instance.delete.start', 'instance.delete.start')
# The guest's process is about to end: its last counters go into the cache,
# so that the period's usage includes everything up to then.
PROCESS_ENDS = ('compute.instance.power_off.start', 'instance.power_off.start',
                'compute.instance.shelve.start', 'instance.shelve.start',
                'compute.instance.suspend.start', 'instance.suspend.start')

# Reads and sends under way at once. While the broker is unreachable the
# sends hang; past this many, new ones are given up at once instead of
# piling threads up.
MAX_IN_FLIGHT = 16


def _utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def _instance_uuid(payload):
    if 'nova_object.data' in payload:
        return payload['nova_object.data'].get('uuid')
    return payload.get('instance_id')


class UsageNotifierDriver(notifier.Driver):

    def __init__(self, conf, topics, transport):
        super().__init__(conf, topics, transport)
        usage_conf.register_opts(conf)
        self.budget = conf.usage_ext.final_exists_budget
        self._in_flight = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        names = [n for n in conf.usage_ext.notification_drivers if n != SELF]
        if len(names) != len(conf.usage_ext.notification_drivers):
            LOG.error('[usage_ext] notification_drivers must name the real '
                      'drivers, not %s itself; ignoring it', SELF)
        if not names:
            LOG.error('[usage_ext] notification_drivers names no driver: '
                      'notifications will not be sent anywhere')
        self._drivers = named.NamedExtensionManager(
            DRIVER_NAMESPACE, names=names, invoke_on_load=True,
            invoke_args=[conf],
            invoke_kwds={'topics': topics, 'transport': transport},
            name_order=True,
            on_missing_entrypoints_callback=self._missing)

    @staticmethod
    def _missing(names):
        LOG.error('[usage_ext] notification_drivers: %s: no such '
                  'oslo.messaging notification driver, or it failed to '
                  'load; notifications are not sent there',
                  ', '.join(sorted(names)))

    # -- oslo.messaging's driver interface ---------------------------------

    def notify(self, ctxt, msg, priority, retry):
        service = usage_service.current()
        if service is None:
            self._forward(ctxt, msg, priority, retry)
            return
        event_type = msg.get('event_type')
        try:
            if event_type in DELETE_START:
                self._final_exists(service, ctxt, msg, priority, retry)
            elif event_type in PROCESS_ENDS:
                uuid = _instance_uuid(msg['payload'])
                if uuid:
                    self._bounded(lambda: service.read_now(uuid),
                                  'read instance %s before %s'
                                  % (uuid, event_type))
            elif event_type == LEGACY_EXISTS:
                msg = self._with_usage(service, msg)
        except Exception:
            LOG.exception('nova-usage-ext: hook failed on %s; passing it on '
                          'unchanged', event_type)
        self._forward(ctxt, msg, priority, retry)
        if event_type == VERSIONED_EXISTS:
            try:
                self._companion_usage(service, ctxt, msg, priority, retry)
            except Exception:
                LOG.exception('nova-usage-ext: no usage notification after '
                              '%s', event_type)

    def _forward(self, ctxt, msg, priority, retry):
        for ext in self._drivers.extensions:
            try:
                ext.obj.notify(ctxt, msg, priority, retry)
            except Exception as exc:
                LOG.exception("Problem '%(e)s' attempting to send to "
                              "notification driver %(driver)s",
                              {'e': exc, 'driver': ext.name})

    # -- exists -----------------------------------------------------------

    def _usage_wire(self, service, usage, source, final=False, period=None):
        return exists.usage_primitive(usage, service.host, final=final,
                                      source=source, period=period)

    def _with_usage(self, service, msg):
        payload = msg['payload']
        uuid = _instance_uuid(payload)
        usage = service.latest(uuid)
        source = exists.SOURCE_CACHE
        if usage is None:
            usage = self._bounded(lambda: service.read_now(uuid),
                                  'read instance %s' % uuid)
            source = exists.SOURCE_HYPERVISOR
        if usage is None:
            LOG.info('nova-usage-ext: no usage known for instance %s; its '
                     'exists goes out without it', uuid)
            return msg
        ending = exists.parse_nova_time(payload.get('audit_period_ending'))
        period = service.period_for_exists(uuid, ending)
        payload = dict(payload, usage=self._usage_wire(
            service, usage, source, period=period))
        return dict(msg, payload=payload)

    def _companion_usage(self, service, ctxt, msg, priority, retry):
        data = msg['payload'].get('nova_object.data', {})
        uuid = data.get('uuid')
        usage = service.latest(uuid)
        if usage is None:
            return
        ending = exists.parse_nova_time(data.get('audit_period', {}).get(
            'nova_object.data', {}).get('audit_period_ending'))
        period = service.period_for_exists(uuid, ending)
        companion = dict(msg, message_id=str(uuidlib.uuid4()),
                         event_type=VERSIONED_USAGE,
                         payload=self._usage_wire(service, usage,
                                                  exists.SOURCE_CACHE,
                                                  period=period))
        self._forward(ctxt, companion, priority, retry)

    # -- the final exists -------------------------------------------------

    def _final_exists(self, service, ctxt, msg, priority, retry):
        payload = msg['payload']
        uuid = _instance_uuid(payload)
        if not uuid or not service.claim_final(uuid):
            return
        started = _utcnow()

        def read_and_send():
            source = exists.SOURCE_HYPERVISOR
            try:
                usage = service.read_now(uuid)
            except Exception as exc:
                if not isinstance(exc, base.UsageReaderError):
                    LOG.exception('nova-usage-ext: reading instance %s '
                                  'failed', uuid)
                usage = service.latest(uuid)
                source = exists.SOURCE_CACHE
                LOG.warning('nova-usage-ext: cannot read deleted instance %s '
                            '(%s); its final exists %s', uuid, exc,
                            'uses cached counters' if usage else
                            'has no usage')
            final = self._final_message(service, msg, uuid, usage, source)
            self._forward(ctxt, final, priority, retry)
            service.forget(uuid, save=False)
            return True

        if self._bounded(read_and_send, 'send the final exists of %s' % uuid,
                         late_ok=True) is None:
            return
        LOG.debug('nova-usage-ext: final exists of %s sent in %.3fs', uuid,
                  (_utcnow() - started).total_seconds())

    def _final_message(self, service, msg, uuid, usage, source):
        payload = msg['payload']
        if 'nova_object.data' in payload:
            legacy = exists.legacy_fields_from_versioned(
                payload['nova_object.data'])
        else:
            legacy = dict(payload)
        host = legacy.get('host') or service.host
        ending = _utcnow()
        beginning = service.audit_period_start(ending)
        usage_wire = None
        if usage is not None:
            usage_wire = self._usage_wire(service, usage, source, final=True,
                                          period=service.period_usage(uuid))
        body = exists.exists_payload(legacy, usage_wire, beginning, ending)
        return exists.notification(body, host, ending)

    # -- bounded work ------------------------------------------------------

    def _bounded(self, work, what, late_ok=False):
        """Run ``work`` for at most the budget; None when it did not finish.

        Work still running past the budget goes on in its thread (a send
        cannot be taken back) but nobody waits for it.
        """
        if not self._in_flight.acquire(blocking=False):
            LOG.error('nova-usage-ext: gave up to %s: %d earlier ones are '
                      'still waiting (message bus or hypervisor stuck?)', what,
                      MAX_IN_FLIGHT)
            return None
        result = {}

        def run():
            try:
                result['value'] = work()
            except Exception:
                LOG.exception('nova-usage-ext: failed to %s', what)
            finally:
                self._in_flight.release()

        thread = threading.Thread(target=run, name='nova-usage-ext',
                                  daemon=True)
        thread.start()
        thread.join(self.budget)
        if thread.is_alive():
            LOG.error('nova-usage-ext: could not %s within %.1fs%s', what,
                      self.budget,
                      '; it may still arrive, after delete.start'
                      if late_ok else '')
            return None
        return result.get('value')
