"""Ceilometer 27's own code, set up for the tests of the sample endpoint.

- ``CeilometerConf``: ``ceilometer.service.prepare_service([], [])``, the way
  ceilometer's services build their configuration, without its process-wide
  side effects outliving the test (oslo.log's handlers, oslo.messaging's
  default exchange).
- ``ComputePollsters``: ceilometer's compute pollsters (its
  ``ceilometer.poll.compute`` entry points) on its own
  ``LibvirtInspector``; ``discover`` runs its libvirt-metadata instance
  discovery on a given set of guests.
- ``NotificationAgent``: ceilometer's ``NotificationService`` listening on
  the real RabbitMQ, publishing to a file.
- ``load_gnocchi_resources``: the gnocchi publisher's resource definitions.
"""

import contextlib
import io
import json
import os
import sys
import time

import fixtures
import libvirt
import yaml
from ceilometer.compute import discovery as ceilometer_discovery
from ceilometer.compute.virt.libvirt import inspector as libvirt_inspector
from ceilometer.meter import notifications as meter_notifications
from ceilometer import messaging as ceilometer_messaging
from ceilometer import notification as ceilometer_notification
from ceilometer.polling import plugin_base
from ceilometer import service as ceilometer_service
from oslo_log import log as oslo_log
import oslo_messaging
from stevedore import extension

from tests.functional import bus
from tests.functional import fixtures as qemu_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CEILOMETER_DIR = os.path.dirname(os.path.dirname(
    os.path.abspath(meter_notifications.__file__)))
PACKAGED_METERS_DIR = os.path.join(CEILOMETER_DIR, 'data', 'meters.d')
PACKAGED_GNOCCHI_RESOURCES = os.path.join(
    CEILOMETER_DIR, 'publisher', 'data', 'gnocchi_resources.yaml')

CUMULATIVE = 'cumulative'
GAUGE = 'gauge'

# The meters the package's endpoint gives: name -> (type, unit, device
# kind), as ceilometer's compute pollsters of the same names give them
# (ceilometer/compute/pollsters/*.py).
METERS = {
    'power.state': (GAUGE, '', 'instance'),
    'cpu': (CUMULATIVE, 'ns', 'instance'),
    'memory.usage': (GAUGE, 'MiB', 'instance'),
    'memory.available': (GAUGE, 'MiB', 'instance'),
    'disk.device.read.bytes': (CUMULATIVE, 'B', 'disk'),
    'disk.device.read.requests': (CUMULATIVE, 'request', 'disk'),
    'disk.device.write.bytes': (CUMULATIVE, 'B', 'disk'),
    'disk.device.write.requests': (CUMULATIVE, 'request', 'disk'),
    'network.incoming.bytes': (CUMULATIVE, 'B', 'vnic'),
    'network.incoming.packets': (CUMULATIVE, 'packet', 'vnic'),
    'network.incoming.packets.drop': (CUMULATIVE, 'packet', 'vnic'),
    'network.incoming.packets.error': (CUMULATIVE, 'packet', 'vnic'),
    'network.outgoing.bytes': (CUMULATIVE, 'B', 'vnic'),
    'network.outgoing.packets': (CUMULATIVE, 'packet', 'vnic'),
    'network.outgoing.packets.drop': (CUMULATIVE, 'packet', 'vnic'),
    'network.outgoing.packets.error': (CUMULATIVE, 'packet', 'vnic'),
}

# Every other meter of ceilometer 27's compute pollsters, and why the
# package does not give it. Together with METERS this must be exactly the
# ceilometer.poll.compute entry points: a pollster added by a later
# ceilometer fails the parity test until it is classified here.
_NO_DATA = 'the host usage payload has no data for it'
OUT_OF_SCOPE = {
    'memory': 'ceilometer\'s own meters.yaml gives it from nova\'s '
              'compute.instance.* notifications (flavor memory_mb; the '
              'pollster reports the balloon size)',
    'vcpus': 'ceilometer\'s own meters.yaml gives it from nova\'s '
             'notifications',
    'disk.root.size': 'ceilometer\'s own meters.yaml gives it from nova\'s '
                      'notifications',
    'disk.ephemeral.size': 'ceilometer\'s own meters.yaml gives it from '
                           'nova\'s notifications',
    'memory.resident': 'not in the default polling.yaml (the payload has '
                       'memory_rss_kib; not mapped)',
    'memory.swap.in': _NO_DATA + ' (balloon swap counters)',
    'memory.swap.out': _NO_DATA + ' (balloon swap counters)',
    'disk.device.capacity': 'a gauge of the disk size, not usage, not in '
                            'the default polling.yaml (the payload has '
                            'capacity_bytes; not mapped)',
    'disk.device.allocation': _NO_DATA + ' (blockInfo allocation)',
    'disk.device.usage': _NO_DATA + ' (blockInfo physical size)',
    'disk.device.read.latency': _NO_DATA + ' (blockStatsFlags times)',
    'disk.device.write.latency': _NO_DATA + ' (blockStatsFlags times)',
    'network.incoming.bytes.rate': 'a rate the polling agent derives '
                                   'between its own polls',
    'network.outgoing.bytes.rate': 'a rate the polling agent derives '
                                   'between its own polls',
    'network.incoming.bytes.delta': 'a delta between two polls of the '
                                    'agent\'s own in-memory cache',
    'network.outgoing.bytes.delta': 'a delta between two polls of the '
                                    'agent\'s own in-memory cache',
    'perf.cpu.cycles': _NO_DATA + ' (perf events, off by default)',
    'perf.instructions': _NO_DATA + ' (perf events, off by default)',
    'perf.cache.references': _NO_DATA + ' (perf events, off by default)',
    'perf.cache.misses': _NO_DATA + ' (perf events, off by default)',
}


@contextlib.contextmanager
def quiet_stdout():
    """jsonpath_rw_ext prints every `sub(...)` it parses to stdout, which
    is the test runner's subunit stream: keep that away from it."""
    saved = sys.stdout
    sys.stdout = io.StringIO()
    try:
        yield
    finally:
        sys.stdout = saved


class CeilometerConf(fixtures.Fixture):
    """``prepare_service([], [])`` as ceilometer's services call it.

    oslo.log's ``setup`` (which would replace the test process's logging
    handlers) is left out; oslo.messaging's default exchange, which
    ceilometer sets process-wide to ``ceilometer``, is put back afterwards.
    """

    def _setUp(self):
        self.useFixture(fixtures.MockPatchObject(oslo_log, 'setup'))
        self.addCleanup(oslo_messaging.set_transport_defaults, 'openstack')
        self.conf = ceilometer_service.prepare_service([], [])
        self.addCleanup(self.conf.reset)
        self.conf.set_override('host', 'compute-func')


def as_received(message):
    """A message as the bus has it (what ``exists.notification`` builds and
    the samples in doc/notification_samples show) as oslo.messaging's
    notification dispatcher hands it to ceilometer's endpoints."""
    return {
        'ctxt': {},
        'publisher_id': message['publisher_id'],
        'event_type': message['event_type'],
        'priority': message.get('priority', 'INFO').lower(),
        'payload': message['payload'],
        'metadata': {'message_id': message.get('message_id'),
                     'timestamp': message.get('timestamp')},
    }


def sample_dict(sample):
    """A ceilometer Sample (or its as_dict()) as a comparable dict."""
    if not isinstance(sample, dict):
        sample = sample.as_dict()
    return {key: sample[key] for key in (
        'name', 'type', 'unit', 'volume', 'resource_id', 'project_id',
        'user_id', 'timestamp')}


def sample_key(sample):
    return (sample['name'], sample['resource_id'])


# -- ceilometer's compute pollsters -----------------------------------------

class _TheseDomainsOnly:
    """A libvirt connection that lists only the given domains.

    The daemon is shared with other test processes whose guests come and
    go: ceilometer's discovery must see this test's guests only.
    """

    def __init__(self, conn, uuids):
        self._conn = conn
        self._uuids = list(uuids)

    def listAllDomains(self, flags=0):
        return [self._conn.lookupByUUIDString(u) for u in self._uuids]

    def __getattr__(self, name):
        return getattr(self._conn, name)


class ComputePollsters(fixtures.Fixture):
    """ceilometer's compute pollsters with its libvirt inspector.

    ``conf`` must have ``[DEFAULT] libvirt_uri`` set. ``pollsters`` maps
    meter names (entry point names) to pollster objects.
    """

    def __init__(self, conf):
        super().__init__()
        self.conf = conf

    def _setUp(self):
        # The inspector connects at once (to qemu:///system unless the
        # test set another URI): on a fresh machine no other test may have
        # started libvirtd yet.
        self.useFixture(qemu_fixtures.LibvirtDaemon())
        self.inspector = libvirt_inspector.LibvirtInspector(self.conf)
        self.addCleanup(self.inspector.connection.close)
        # The pollsters share one inspector, created on first use and kept
        # on the class; make it this one for the test's duration.
        self.useFixture(fixtures.MonkeyPatch(
            'ceilometer.compute.pollsters.GenericComputePollster._inspector',
            self.inspector))
        manager = extension.ExtensionManager(
            namespace='ceilometer.poll.compute', invoke_on_load=True,
            invoke_args=(self.conf,),
            on_load_failure_callback=self._load_failed)
        self.pollsters = {ext.name: ext.obj for ext in manager}

    @staticmethod
    def _load_failed(manager, entrypoint, exc):
        raise exc

    def entry_points(self):
        return set(extension.ExtensionManager(
            namespace='ceilometer.poll.compute').names()) | set(
                self.pollsters)

    def poll(self, instances):
        """One polling cycle over ``instances``: every sample, as the
        polling agent gets them (one cache per cycle)."""
        cache = {}
        samples = []
        for name, pollster in sorted(self.pollsters.items()):
            try:
                samples.extend(pollster.get_samples(None, cache, instances))
            except plugin_base.PollsterPermanentError:
                # The libvirt inspector does not implement it (the rates):
                # the polling agent then stops calling the pollster.
                pass
        return samples


def discover(conf, guests_uuids):
    """ceilometer's own libvirt-metadata instance discovery, on the given
    guests only. Its one call to nova's API (the flavor id, which nova 34's
    metadata does not carry) is replaced by the flavor name, which is what
    the discovery falls back to when nova does not answer."""
    conn = libvirt.openReadOnly(conf.libvirt_uri)
    try:
        finder = ceilometer_discovery.InstanceDiscovery(conf)
        assert finder.method == 'libvirt_metadata', finder.method
        finder.get_flavor_id = lambda name: None
        finder._libvirt_connection = _TheseDomainsOnly(conn, guests_uuids)
        return list(finder.discover(None))
    finally:
        conn.close()


# -- ceilometer's notification agent ----------------------------------------

def wait_for_queue(name, timeout=15):
    deadline = time.monotonic() + timeout
    while bus.queue_depth(name) is None:
        if time.monotonic() > deadline:
            raise AssertionError('queue %s did not appear within %d s'
                                 % (name, timeout))
        time.sleep(0.05)


class NotificationAgent(fixtures.Fixture):
    """ceilometer's notification agent (``NotificationService``, worker 0)
    in this process, listening on ``topic`` of the real RabbitMQ for
    messages on ``exchange``, with the meter pipeline only, publishing
    every sample to ``samples_path`` (file publisher, JSON lines) and to
    ``publishers`` (ceilometer publisher URLs).

    No coordination is involved: ceilometer 27's notification agent has
    none (its workload partitioning, which used tooz, is gone).
    """

    def __init__(self, conf, topic, meter_dirs, samples_path,
                 exchange='nova', publishers=()):
        super().__init__()
        self.publishers = list(publishers)
        self.conf = conf
        self.topic = topic
        self.meter_dirs = meter_dirs
        self.samples_path = samples_path
        self.exchange = exchange

    def _setUp(self):
        conf = self.conf
        tmp = self.useFixture(fixtures.TempDir()).path
        pipeline = os.path.join(tmp, 'pipeline.yaml')
        with open(pipeline, 'w') as f:
            yaml.safe_dump({
                'sources': [{'name': 'meter_source', 'meters': ['*'],
                             'sinks': ['file_sink']}],
                'sinks': [{'name': 'file_sink', 'publishers': [
                    'file://%s?json' % self.samples_path] +
                    self.publishers}],
            }, f)
        conf.set_override('pipeline_cfg_file', pipeline)
        conf.set_override('meter_definitions_dirs', list(self.meter_dirs),
                          group='meter')
        # The event pipeline needs event definitions and a store: not what
        # is tested here.
        conf.set_override('pipelines', ['meter'], group='notification')
        conf.set_override('notification_control_exchanges', [self.exchange],
                          group='notification')
        # oslo.messaging registers its options when a transport is first
        # made for a configuration; then point them at the test broker.
        oslo_messaging.get_notification_transport(
            conf, url=bus.RABBIT_URL).cleanup()
        conf.set_override('transport_url', bus.RABBIT_URL)
        conf.set_override('topics', [self.topic],
                          group='oslo_messaging_notifications')

        # ceilometer keeps its transports in a module-level cache.
        self._drop_transports()
        self.addCleanup(bus.delete_queues, self.topic)
        self.addCleanup(self._drop_transports)
        self.service = ceilometer_notification.NotificationService(0, conf)
        self.addCleanup(self._stop)
        with quiet_stdout():
            self.service.run()
        wait_for_queue('%s.info' % self.topic)

    def _stop(self):
        self.service.terminate()
        for manager in getattr(self.service, 'managers', []):
            for pipeline in manager.pipelines:
                for publisher in pipeline.sink.publishers:
                    logger = getattr(publisher, 'publisher_logger', None)
                    for handler in list(getattr(logger, 'handlers', [])):
                        handler.close()
                        logger.removeHandler(handler)

    @staticmethod
    def _drop_transports():
        while ceilometer_messaging.TRANSPORTS:
            _url, transport = ceilometer_messaging.TRANSPORTS.popitem()
            transport.cleanup()

    def published(self):
        """Every sample published so far (dicts)."""
        try:
            with open(self.samples_path) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []


def load_gnocchi_resources(overrides=None):
    """ceilometer's gnocchi resource definitions (the publisher's own
    class), with the ``attributes`` of some resource types replaced."""
    from ceilometer.publisher import gnocchi as gnocchi_publisher
    with open(PACKAGED_GNOCCHI_RESOURCES) as f:
        resources = yaml.safe_load(f)['resources']
    overrides = {r['resource_type']: r['attributes']
                 for r in (overrides or [])}
    definitions = {}
    for cfg in resources:
        if cfg['resource_type'] in overrides:
            cfg = dict(cfg, attributes=overrides[cfg['resource_type']])
        with quiet_stdout():
            rd = gnocchi_publisher.ResourcesDefinition(cfg, 'low', None, {})
        for metric in rd.metrics:
            definitions[metric] = rd
    return definitions
