"""The ``statsd`` metric plugin: each cycle's figures to statsd over UDP.

Per instance, gauges of the rates and CPU share, and counters of what was
used since the previous cycle (the growth of the ledger's totals, which
never go down across guest restarts); per host, gauges of its CPU and
memory share and its instance count. Names come from
``[usage_ext_statsd] name_template``, whose fields are bounded by the
host's instances and devices (never a time or a value), so the number of
names does not grow without bound.
"""

import logging
import re
import string

from oslo_config import cfg
import statsd

from nova_usage_ext.plugins import base

LOG = logging.getLogger(__name__)

DEFAULT_TEMPLATE = '{prefix}.{host}.{uuid}.{metric}'
DEFAULT_HOST_TEMPLATE = '{prefix}.{host}.host.{metric}'
# The fields a template may use.
INSTANCE_FIELDS = frozenset(('prefix', 'host', 'uuid', 'name', 'project',
                             'flavor', 'metric'))
HOST_FIELDS = frozenset(('prefix', 'host', 'metric'))

CONFIG_OPTS = [
    cfg.HostAddressOpt('host', default='127.0.0.1', mutable=True,
                       help='The statsd server.'),
    cfg.PortOpt('port', default=8125, mutable=True,
                help='The statsd server\'s UDP port.'),
    cfg.StrOpt('prefix', default='nova', mutable=True,
               help='The first part of every name ({prefix}).'),
    cfg.StrOpt('name_template', default=DEFAULT_TEMPLATE, mutable=True,
               help='Name of an instance\'s metrics, from the fields '
                    '{prefix}, {host}, {uuid}, {name} (libvirt\'s), '
                    '{project}, {flavor} and {metric} (for example '
                    'cpu.percent or interface.tap1.rx_bytes). A template '
                    'with another field is logged and the default used.'),
    cfg.StrOpt('host_template', default=DEFAULT_HOST_TEMPLATE, mutable=True,
               help='Name of the host\'s metrics, from {prefix}, {host} '
                    'and {metric}.'),
]

_UNSAFE = re.compile(r'[^A-Za-z0-9_-]')


def safe(part):
    """A name part without statsd's separators (. : | @) or spaces."""
    return _UNSAFE.sub('_', str(part)) if part is not None else 'none'


def template_fields(template):
    return {field for _text, field, _spec, _conv
            in string.Formatter().parse(template) if field is not None}


class StatsdPlugin(base.MetricPlugin):
    """Gauges and counters of each cycle, sent as UDP packets."""

    CONFIG_OPTS = CONFIG_OPTS

    def __init__(self, conf, group, host):
        super().__init__(conf, group, host)
        self._client = None
        self._client_key = None
        self._bad_templates = set()

    def reconfigure(self):
        self._client = None  # the next cycle uses the new target

    def _pipeline(self):
        key = (self.options.host, self.options.port)
        if self._client is None or key != self._client_key:
            self._client = statsd.StatsClient(*key)
            self._client_key = key
        return self._client.pipeline()

    def _template(self, option, default, allowed):
        template = getattr(self.options, option)
        fields = template_fields(template)
        if fields <= allowed and 'metric' in fields:
            return template
        if template not in self._bad_templates:
            self._bad_templates.add(template)
            LOG.error('nova-usage-ext statsd: [%s] %s = %s: fields %s are '
                      'not all known (%s) or {metric} is missing; using %s',
                      self.group, option, template,
                      ', '.join(sorted(fields)) or 'none',
                      ', '.join(sorted(allowed)), default)
        return default

    def _namer(self, instance):
        template = self._template('name_template', DEFAULT_TEMPLATE,
                                  INSTANCE_FIELDS)
        fields = {'prefix': self.options.prefix, 'host': safe(self.host),
                  'uuid': safe(instance.uuid), 'name': safe(instance.name),
                  'project': safe(instance.project_id),
                  'flavor': safe(instance.flavor_name)}
        return lambda metric: template.format(metric=metric, **fields)

    def on_host(self, record):
        template = self._template('host_template', DEFAULT_HOST_TEMPLATE,
                                  HOST_FIELDS)
        pipe = self._pipeline()

        def name(metric):
            return template.format(prefix=self.options.prefix,
                                   host=safe(self.host), metric=metric)
        for metric, value in (('cpu_percent', record.cpu_percent),
                              ('memory_percent', record.memory_percent),
                              ('instances', record.figures.instances),
                              ('cpus', record.figures.cpus)):
            if value is not None:
                pipe.gauge(name(metric), value)
        pipe.send()

    def on_cpu(self, records):
        pipe = self._pipeline()
        for record in records:
            name = self._namer(record.instance)
            if record.percent is not None:
                pipe.gauge(name('cpu.percent'), record.percent)
            self._counters(pipe, name, 'cpu', record)
        pipe.send()

    def on_volume(self, records):
        self._devices(records, 'disk')

    def on_bandwidth(self, records):
        self._devices(records, 'interface')

    def _devices(self, records, kind):
        pipe = self._pipeline()
        for record in records:
            name = self._namer(record.instance)
            prefix = '%s.%s' % (kind, safe(record.device))
            for counter, rate in record.rates.items():
                pipe.gauge(name('%s.%s_per_s' % (prefix, counter)), rate)
            self._counters(pipe, name, prefix, record)
        pipe.send()

    @staticmethod
    def _counters(pipe, name, prefix, record):
        # What was used over the interval: the growth of the totals.
        if record.interval_s is None:
            return
        for counter, rate in record.rates.items():
            used = round(rate * record.interval_s)
            if used:
                pipe.incr(name('%s.%s' % (prefix, counter)), used)
