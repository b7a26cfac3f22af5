"""The ``prometheus`` metric plugin: a ``/metrics`` endpoint inside
nova-compute.

The instance series carry the names and labels that ceilometer 27's
polling agent exports with ``[polling] enable_prometheus_exporter``
(``ceilometer_cpu``, ``ceilometer_disk_device_read_bytes``,
``ceilometer_network_incoming_bytes``, ...; labels ``resource``,
``project``, ``user``, ``vm_instance`` (nova's hostId), ``resource_name``,
``flavor_name``, ``server_group``, ``type``, ``unit``, ``counter``,
``publisher``), so that dashboards and alert rules built on that exporter
keep working when the compute agent stops polling. Not carried:
``flavor_id`` (nova does not write it into the guest's metadata) and
server groups (always ``none``). The package's own health is in the
``nova_usage_ext_*`` series. Each scrape serves the last cycle: an
instance that left the host leaves the endpoint with the next cycle.
"""

import hashlib
import logging
import threading

from oslo_config import cfg
import prometheus_client
from prometheus_client import core as prom_core

from nova_usage_ext.plugins import base

LOG = logging.getLogger(__name__)

CONFIG_OPTS = [
    cfg.HostAddressOpt('listen_address', default='127.0.0.1', mutable=True,
                       help='Address the /metrics endpoint listens on.'),
    cfg.PortOpt('port', default=9101, mutable=True,
                help="Port of the /metrics endpoint (ceilometer's polling "
                     'exporter uses 9101 too: run one or the other).'),
    cfg.BoolOpt('tls_enable', default=False, mutable=True,
                help='Serve /metrics over TLS with tls_certfile and '
                     'tls_keyfile.'),
    cfg.StrOpt('tls_certfile', mutable=True,
               help='The TLS certificate of the endpoint.'),
    cfg.StrOpt('tls_keyfile', mutable=True,
               help='The private key of the TLS certificate.'),
]

# ceilometer meter -> (record attribute or counter, unit)
DISK_METERS = {
    'disk.device.read.bytes': ('read_bytes', 'B'),
    'disk.device.read.requests': ('read_requests', 'request'),
    'disk.device.write.bytes': ('write_bytes', 'B'),
    'disk.device.write.requests': ('write_requests', 'request'),
}
NETWORK_METERS = {
    'network.incoming.bytes': ('rx_bytes', 'B'),
    'network.incoming.packets': ('rx_packets', 'packet'),
    'network.incoming.packets.drop': ('rx_drops', 'packet'),
    'network.incoming.packets.error': ('rx_errors', 'packet'),
    'network.outgoing.bytes': ('tx_bytes', 'B'),
    'network.outgoing.packets': ('tx_packets', 'packet'),
    'network.outgoing.packets.drop': ('tx_drops', 'packet'),
    'network.outgoing.packets.error': ('tx_errors', 'packet'),
}


def host_id(host, project_id):
    """nova's hostId of an instance (what ceilometer's ``vm_instance``
    label holds): sha224 of project id and host name, hex."""
    if not host:
        return ''
    return hashlib.sha224(((project_id or '') + host).encode(
        'utf-8')).hexdigest()


def metric_name(meter):
    return 'ceilometer_' + meter.replace('.', '_')


def label_names(meter):
    """The labels of a meter's series, in ceilometer's order."""
    shards = meter.split('.')
    return [shards[0], 'publisher', 'type', 'counter', 'project', 'user',
            'unit', 'resource', 'vm_instance', 'resource_name',
            'server_group', 'flavor_name']


def label_values(meter, unit, resource_id, instance, host):
    shards = meter.split('.')
    first = shards[2] if len(shards) > 2 else resource_id
    kind = shards[1] if len(shards) > 1 else shards[0]
    resource_name = instance.display_name or instance.name
    if instance.display_name and instance.name:
        resource_name = '%s:%s' % (instance.display_name, instance.name)
    return [first, 'ceilometer', kind, meter, instance.project_id or '',
            instance.user_id or '', unit, resource_id,
            host_id(host, instance.project_id), resource_name or '', 'none',
            instance.flavor_name or '']


class _Collector:
    """Serves the families of the last cycle, swapped whole."""

    def __init__(self):
        self.families = {}
        self.health = []

    def collect(self):
        for families in list(self.families.values()):
            yield from families
        yield from self.health


class PrometheusPlugin(base.MetricPlugin):
    """Keeps the last cycle's series for the endpoint to serve."""

    CONFIG_OPTS = CONFIG_OPTS

    def __init__(self, conf, group, host):
        super().__init__(conf, group, host)
        self.registry = prometheus_client.CollectorRegistry(
            auto_describe=False)
        self._collector = _Collector()
        self.registry.register(self._collector)
        self._server = None
        self._server_key = None
        self._lock = threading.Lock()
        self._serve()

    # -- the endpoint -----------------------------------------------------

    def _key(self):
        opts = self.options
        tls = (opts.tls_certfile, opts.tls_keyfile) if opts.tls_enable \
            else (None, None)
        return (opts.listen_address, opts.port) + tls

    def _serve(self):
        with self._lock:
            key = self._key()
            if key == self._server_key:
                return
            self._stop()
            address, port, certfile, keyfile = key
            if self.options.tls_enable and not (certfile and keyfile):
                raise ValueError('[%s] tls_enable needs tls_certfile and '
                                 'tls_keyfile' % self.group)
            self._server, _thread = prometheus_client.start_http_server(
                port, addr=address, registry=self.registry,
                certfile=certfile, keyfile=keyfile)
            self._server_key = key
            LOG.info('nova-usage-ext prometheus: /metrics on %s:%s%s',
                     address, self._server.server_port,
                     ' (TLS)' if certfile else '')

    @property
    def port(self):
        return self._server.server_port if self._server else None

    def _stop(self):
        server, self._server = self._server, None
        self._server_key = None
        if server is not None:
            server.shutdown()
            server.server_close()

    def reconfigure(self):
        self._serve()

    def close(self):
        with self._lock:
            self._stop()

    # -- the hooks --------------------------------------------------------

    def on_cpu(self, records):
        family = prom_core.GaugeMetricFamily(
            metric_name('cpu'), '', labels=label_names('cpu'))
        for record in records:
            value = record.counters.get('vcpu_time_ns')
            if value is None:
                value = record.counters.get('cpu_time_ns')
            if value is None:
                continue
            family.add_metric(label_values(
                'cpu', 'ns', record.instance.uuid, record.instance,
                self.host), value)
        self._collector.families['cpu'] = [family]

    def on_volume(self, records):
        self._collector.families['disk'] = self._device_families(
            DISK_METERS, records,
            lambda r: '%s-%s' % (r.instance.uuid, r.device))

    def on_bandwidth(self, records):
        self._collector.families['network'] = self._device_families(
            NETWORK_METERS, records,
            lambda r: '%s-%s-%s' % (r.instance.name, r.instance.uuid,
                                    r.device))

    def _device_families(self, meters, records, resource_id):
        families = []
        for meter, (counter, unit) in sorted(meters.items()):
            family = prom_core.GaugeMetricFamily(
                metric_name(meter), '', labels=label_names(meter))
            for record in records:
                value = record.counters.get(counter)
                if value is not None:
                    family.add_metric(label_values(
                        meter, unit, resource_id(record), record.instance,
                        self.host), value)
            families.append(family)
        return families

    def on_health(self, health):
        families = []
        for name, doc, value in (
                ('cycle_duration_seconds', 'Seconds the last poll cycle '
                 'took, from its read to the plugins.', health.duration_s),
                ('instances_read', 'nova instances the last cycle read.',
                 health.instances),
                ('instances_skipped', 'nova instances the last cycle could '
                 'not read (busy or failing; read again next cycle).',
                 health.skipped),
                ('last_read_complete', '1 when the last cycle read every '
                 'nova instance, 0 when it skipped some.',
                 1 if health.complete else 0),
                ('last_success_timestamp_seconds', 'When the last cycle '
                 'ended (Unix time).', health.ended_at),
                ('outbox_messages', 'Messages that close a usage period '
                 '(final and period exists) waiting in the outbox.',
                 health.outbox_messages)):
            if value is not None:
                families.append(prom_core.GaugeMetricFamily(
                    'nova_usage_ext_' + name, doc, value=value))
        self._collector.health = families
