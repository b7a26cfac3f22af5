"""The ``thresholds`` metric plugin: alerts when a rule is breached.

Rules come from a YAML file (``[usage_ext_thresholds] rules_file``)::

    rules:
      - name: busy-cpu            # unique; named in the alert
        metric: cpu_percent       # one of METRICS
        comparison: '>'           # >, >=, < or <=
        value: 90                 # the threshold, never negative
        fire_after: 3             # cycles in a row before it fires (1)
        clear_after: 3            # cycles in a row before it clears (1)
        per: instance             # or device: each interface or disk
        scope:                    # all instances when left out
          project: 0123abcd...    # any of project, flavor, instance;
          flavor: m1.large        # all that are given must match

A rule fires once per subject (an instance, one of its devices, or the
host) and clears once: an ``instance.usage_alert`` (``compute.usage_alert``
for host rules) notification with a ``UsageAlertPayload``, at WARN when
breached and INFO when cleared. The file is read again when it changes
(checked each cycle) and on SIGHUP; a file that cannot be used is logged
in one line naming the problem, and the rules in force stay.
"""

import dataclasses
import logging
import math
import os
import threading

from oslo_config import cfg
import oslo_messaging
import yaml

from nova_usage_ext import conf as usage_conf
from nova_usage_ext.objects import alert
from nova_usage_ext.plugins import base

LOG = logging.getLogger(__name__)

INSTANCE_EVENT = 'instance.usage_alert'
HOST_EVENT = 'compute.usage_alert'
DEFAULT_TOPICS = ('versioned_notifications',)

CONFIG_OPTS = [
    cfg.StrOpt('rules_file',
               mutable=True,
               help='Path of the YAML file of threshold rules. Read again '
                    'when it changes and on SIGHUP; a file with an error '
                    'is logged and the rules in force stay.'),
    cfg.ListOpt('notification_topics',
                mutable=True,
                help="Topics of the alert notifications. Default: nova's "
                     '[notifications] versioned_notifications_topics, '
                     'else versioned_notifications.'),
]


@dataclasses.dataclass(frozen=True)
class Metric:
    hook: str
    unit: str
    # record -> value, or None when the cycle gives none
    value: object
    # True for metrics of a device record, summed per instance unless
    # the rule says per: device.
    device: bool = False
    host: bool = False


def _rate(name, factor=1.0):
    def value(record):
        rate = record.rates.get(name)
        return None if rate is None else rate * factor
    return value


METRICS = {
    'cpu_percent': Metric('on_cpu', '%', lambda r: r.percent),
    'memory_percent': Metric('on_ram', '%', lambda r: r.percent),
    'network_incoming_bits_per_s': Metric(
        'on_bandwidth', 'bit/s', _rate('rx_bytes', 8.0), device=True),
    'network_outgoing_bits_per_s': Metric(
        'on_bandwidth', 'bit/s', _rate('tx_bytes', 8.0), device=True),
    'disk_read_bytes_per_s': Metric(
        'on_volume', 'B/s', _rate('read_bytes'), device=True),
    'disk_write_bytes_per_s': Metric(
        'on_volume', 'B/s', _rate('write_bytes'), device=True),
    'disk_read_iops': Metric(
        'on_volume', 'request/s', _rate('read_requests'), device=True),
    'disk_write_iops': Metric(
        'on_volume', 'request/s', _rate('write_requests'), device=True),
    'host_cpu_percent': Metric('on_host', '%', lambda r: r.cpu_percent,
                               host=True),
    'host_memory_percent': Metric('on_host', '%',
                                  lambda r: r.memory_percent, host=True),
}

COMPARISONS = {
    '>': lambda value, threshold: value > threshold,
    '>=': lambda value, threshold: value >= threshold,
    '<': lambda value, threshold: value < threshold,
    '<=': lambda value, threshold: value <= threshold,
}
SCOPES = {'project': 'project_id', 'flavor': 'flavor_name',
          'instance': 'uuid'}
RULE_KEYS = frozenset(('name', 'metric', 'comparison', 'value', 'fire_after',
                       'clear_after', 'per', 'scope'))


class RulesError(ValueError):
    """The rules file cannot be used; the message names the problem."""


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    metric: str
    comparison: str
    value: float
    fire_after: int = 1
    clear_after: int = 1
    per_device: bool = False
    scope: tuple = ()

    def breached(self, value):
        return COMPARISONS[self.comparison](value, self.value)

    def applies_to(self, instance):
        return all(getattr(instance, SCOPES[key]) == wanted
                   for key, wanted in self.scope)


def _count(rule, key, raw):
    if raw is None:
        return 1
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise RulesError('rule %r: %s must be a whole number of cycles, 1 '
                         'or more, not %r' % (rule, key, raw))
    return raw


def parse_rule(index, raw):
    """A :class:`Rule` from one YAML mapping; raises RulesError."""
    if not isinstance(raw, dict):
        raise RulesError('rule #%d is not a mapping' % (index + 1))
    name = raw.get('name')
    if not isinstance(name, str) or not name.strip():
        raise RulesError('rule #%d has no name' % (index + 1))
    unknown = sorted(set(raw) - RULE_KEYS)
    if unknown:
        raise RulesError('rule %r: unknown key %s' % (name, unknown[0]))
    metric = raw.get('metric')
    if metric not in METRICS:
        raise RulesError('rule %r: unknown metric %r (known: %s)' % (
            name, metric, ', '.join(sorted(METRICS))))
    comparison = str(raw.get('comparison', '>'))
    if comparison not in COMPARISONS:
        raise RulesError('rule %r: comparison %r is not one of %s' % (
            name, comparison, ' '.join(COMPARISONS)))
    value = raw.get('value')
    if isinstance(value, str):
        # YAML 1.1 reads 5e9 (no dot, no exponent sign) as a string.
        try:
            value = float(value)
        except ValueError:
            pass
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or
            not math.isfinite(value)):
        raise RulesError('rule %r: value %r is not a number'
                         % (name, value))
    if value < 0:
        raise RulesError('rule %r: value %r is negative' % (name, value))
    per = raw.get('per', 'instance')
    if per not in ('instance', 'device'):
        raise RulesError('rule %r: per must be instance or device, not %r'
                         % (name, per))
    if per == 'device' and not METRICS[metric].device:
        raise RulesError('rule %r: %s is not measured per device'
                         % (name, metric))
    scope = raw.get('scope') or {}
    if not isinstance(scope, dict):
        raise RulesError('rule %r: scope is not a mapping' % name)
    for key, wanted in scope.items():
        if key not in SCOPES:
            raise RulesError('rule %r: unknown scope %r (known: %s)' % (
                name, key, ', '.join(sorted(SCOPES))))
        if not isinstance(wanted, str):
            raise RulesError('rule %r: scope %s must be a string'
                             % (name, key))
    if scope and METRICS[metric].host:
        raise RulesError('rule %r: a host metric takes no scope' % name)
    return Rule(name=name, metric=metric, comparison=comparison,
                value=float(value),
                fire_after=_count(name, 'fire_after', raw.get('fire_after')),
                clear_after=_count(name, 'clear_after',
                                   raw.get('clear_after')),
                per_device=per == 'device',
                scope=tuple(sorted(scope.items())))


def parse_rules(text):
    """The rules of a YAML document; raises RulesError."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError('not valid YAML: %s' % ' '.join(str(exc).split()))
    if document is None:
        return ()
    if not isinstance(document, dict) or set(document) - {'rules'}:
        raise RulesError('the file must be a mapping with one key, rules')
    raw_rules = document.get('rules') or []
    if not isinstance(raw_rules, list):
        raise RulesError('rules is not a list')
    rules = tuple(parse_rule(i, raw) for i, raw in enumerate(raw_rules))
    names = [rule.name for rule in rules]
    for name in names:
        if names.count(name) > 1:
            raise RulesError('rule %r is defined twice' % name)
    return rules


@dataclasses.dataclass
class _State:
    breached: int = 0
    calm: int = 0
    firing: bool = False


class ThresholdsPlugin(base.MetricPlugin):
    """Sends an alert when a rule fires and when it clears."""

    CONFIG_OPTS = CONFIG_OPTS

    def __init__(self, conf, group, host):
        super().__init__(conf, group, host)
        self._rules = ()
        self._seen_file = None
        self._load_lock = threading.Lock()
        self._states = {}
        self._transport = None
        self._notifiers = None
        self._notifier_key = None
        self.load_rules(force=True)

    @property
    def rules(self):
        return self._rules

    # -- the rules file ---------------------------------------------------

    def reconfigure(self):
        self.load_rules(force=True)

    def load_rules(self, force=False):
        """Read the rules file if it changed (or ``force``); keep the
        rules in force when it cannot be used."""
        with self._load_lock:
            path = self.options.rules_file
            try:
                st = os.stat(path) if path else None
                stamp = (path, st.st_ino, st.st_mtime_ns, st.st_size) \
                    if st else (path,)
            except OSError as exc:
                stamp = (path, 'error', exc.errno)
            if stamp == self._seen_file and not force:
                return
            self._seen_file = stamp
            if not path:
                self._use((), 'no [%s] rules_file: no rules' % self.group)
                return
            try:
                with open(path) as f:
                    rules = parse_rules(f.read())
            except (OSError, RulesError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else exc
                LOG.error('nova-usage-ext thresholds: %s: %s; the %d rules '
                          'in force stay', path, reason, len(self._rules))
                return
            self._use(rules, '%d rules from %s' % (len(rules), path))

    def _use(self, rules, what):
        if rules != self._rules:
            LOG.info('nova-usage-ext thresholds: %s', what)
        self._rules = rules

    # -- the hooks --------------------------------------------------------

    def on_host(self, record):
        self._evaluate('on_host', [record])

    def on_cpu(self, records):
        self._evaluate('on_cpu', records)

    def on_ram(self, records):
        self._evaluate('on_ram', records)

    def on_volume(self, records):
        self._evaluate('on_volume', records)

    def on_bandwidth(self, records):
        self._evaluate('on_bandwidth', records)

    def close(self):
        transport, self._transport = self._transport, None
        self._notifiers = None
        if transport is not None:
            transport.cleanup()

    def _evaluate(self, hook, records):
        self.load_rules()
        rules = self._rules
        names = {rule.name for rule in rules}
        for key in [k for k in self._states if k[0] not in names]:
            del self._states[key]
        for rule in rules:
            metric = METRICS[rule.metric]
            if metric.hook != hook:
                continue
            for subject, value, record in self._measure(rule, metric,
                                                        records):
                self._step(rule, metric, subject, value, record)

    def _measure(self, rule, metric, records):
        """(subject, value, record) of each subject of the rule."""
        if metric.host:
            for record in records:
                yield ('host',), metric.value(record), record
            return
        if not metric.device or rule.per_device:
            for record in records:
                if rule.applies_to(record.instance):
                    subject = (record.instance.uuid,
                               getattr(record, 'device', None))
                    yield subject, metric.value(record), record
            return
        sums = {}
        for record in records:
            if not rule.applies_to(record.instance):
                continue
            value = metric.value(record)
            uuid = record.instance.uuid
            if uuid in sums:
                total, first = sums[uuid]
                sums[uuid] = (None if total is None or value is None
                              else total + value, first)
            else:
                sums[uuid] = (value, record)
        for uuid, (total, record) in sums.items():
            yield (uuid, None), total, record

    def _step(self, rule, metric, subject, value, record):
        if value is None:
            return  # no rate yet: neither breached nor calm
        state = self._states.setdefault((rule.name,) + subject, _State())
        if rule.breached(value):
            state.breached += 1
            state.calm = 0
            if not state.firing and state.breached >= rule.fire_after:
                state.firing = True
                self._send(rule, metric, subject, value, record,
                           alert.BREACHED, state.breached)
        else:
            state.calm += 1
            state.breached = 0
            if state.firing and state.calm >= rule.clear_after:
                state.firing = False
                self._send(rule, metric, subject, value, record,
                           alert.CLEARED, state.calm)

    # -- the alert ----------------------------------------------------------

    def _send(self, rule, metric, subject, value, record, state, cycles):
        payload = alert.UsageAlertPayload(
            rule=rule.name, metric=rule.metric, unit=metric.unit,
            comparison=rule.comparison, threshold=rule.value,
            value=float(value), state=state, cycles=cycles,
            measured_at=record.read_at, host=self.host,
            instance_uuid=None, display_name=None, project_id=None,
            user_id=None, flavor_name=None, device=subject[-1]
            if not metric.host else None)
        instance = getattr(record, 'instance', None)
        if instance is not None:
            payload.instance_uuid = instance.uuid
            payload.display_name = instance.display_name
            payload.project_id = instance.project_id
            payload.user_id = instance.user_id
            payload.flavor_name = instance.flavor_name
        event_type = HOST_EVENT if metric.host else INSTANCE_EVENT
        LOG.info('nova-usage-ext thresholds: rule %s %s for %s: %s = %.6g '
                 '(%s %.6g)', rule.name, state,
                 '/'.join(s for s in subject if s) or self.host,
                 rule.metric, value, rule.comparison, rule.value)
        priority = 'warn' if state == alert.BREACHED else 'info'
        for notifier in self._get_notifiers():
            getattr(notifier, priority)({}, event_type, payload.to_wire())

    def _topics(self):
        topics = self.options.notification_topics
        if topics:
            return list(topics)
        try:
            return list(self.conf.notifications
                        .versioned_notifications_topics)
        except (cfg.NoSuchOptError, cfg.NoSuchGroupError, AttributeError):
            return list(DEFAULT_TOPICS)

    def _get_notifiers(self):
        # One notifier per driver: oslo.messaging takes one name, or
        # none for [oslo_messaging_notifications] driver (the hook).
        key = (tuple(self._topics()),
               usage_conf.notification_drivers(self.conf))
        if self._notifiers is None or key != self._notifier_key:
            self.close()
            self._transport = oslo_messaging.get_notification_transport(
                self.conf)
            self._notifiers = [
                oslo_messaging.Notifier(
                    self._transport,
                    publisher_id='nova-compute:%s' % self.host,
                    driver=driver, topics=list(key[0]))
                for driver in key[1]]
            self._notifier_key = key
        return self._notifiers
