"""Parity with ceilometer's own processes: ``ceilometer-polling
--polling-namespaces compute`` with ceilometer's default polling.yaml
meters, and ``ceilometer-agent-notification``, both real processes on the
real RabbitMQ, publishing to a file; the package's service in this process
sends host.usage for the same guest (a Linux guest with a balloon driver,
so that every default meter has a value). Both sides' samples come out of
the same agent: meter by meter, the same names, types, units, resource
ids, metadata keys and values, and volumes.

ceilometer's discovery lists every guest of the shared libvirtd and asks
nova's API for the flavor id of a guest whose metadata has none (other
test processes' guests): with no keystone here that failure would skip the
whole discovery. ``NoNovaFlavors`` answers those queries as a nova with no
such flavor does (404); ceilometer then uses the flavor's name, as it does
when nova does not know it.
"""

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import uuid as uuidlib

import fixtures
import testtools
import yaml
from testtools import content

from nova_usage_ext import host_usage
from nova_usage_ext import ledger
from nova_usage_ext import service as usage_service
from nova_usage_ext import state
from nova_usage_ext.virt import base
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests.functional import balloon_guest
from tests.functional import bus
from tests.functional import ceilometer_fixtures as cf
from tests.functional import fixtures as qemu_fixtures

HOST = 'compute-func'
# ceilometer's default polling.yaml, its compute meters.
DEFAULT_POLLED = ['power.state', 'cpu', 'memory.available', 'memory.usage',
                  'network.incoming.bytes', 'network.incoming.packets',
                  'network.outgoing.bytes', 'network.outgoing.packets',
                  'disk.device.read.bytes', 'disk.device.read.requests',
                  'disk.device.write.bytes', 'disk.device.write.requests']
# Metadata ceilometer's pollsters set that the endpoint does not (the
# guest's os_type and architecture, nova's image properties).
LEFT_OUT = {'os_type', 'architecture', 'image_meta', 'parameters',
            'cpu_number', 'user_metadata'}
GAUGES = {'power.state', 'memory.available', 'memory.usage'}


class _NotFound(http.server.BaseHTTPRequestHandler):

    def do_GET(self):
        body = json.dumps({'itemNotFound': {
            'code': 404, 'message': 'Flavor could not be found.'}}).encode()
        self.send_response(404)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class NoNovaFlavors(fixtures.Fixture):
    """An HTTP endpoint answering 404 to everything, on a thread of its
    own; ``url`` is its address."""

    def _setUp(self):
        server = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                 _NotFound)
        self.url = 'http://127.0.0.1:%d' % server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 10)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)


class TestCeilometerProcesses(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.balloon = self.useFixture(balloon_guest.BalloonGuest(
            flavor_id='7'))
        self.topic = 'usage-ext-procs-%s' % uuidlib.uuid4().hex
        self.addCleanup(bus.delete_queues, self.topic)
        self.samples_path = os.path.join(self.tmp, 'samples.json')
        self.nova = self.useFixture(NoNovaFlavors())
        self.config = self.write_config()

    def write_config(self):
        pipeline = os.path.join(self.tmp, 'pipeline.yaml')
        with open(pipeline, 'w') as f:
            yaml.safe_dump({
                'sources': [{'name': 'meter_source', 'meters': ['*'],
                             'sinks': ['file_sink']}],
                'sinks': [{'name': 'file_sink', 'publishers': [
                    'file://%s?json' % self.samples_path]}]}, f)
        polling = os.path.join(self.tmp, 'polling.yaml')
        with open(polling, 'w') as f:
            yaml.safe_dump({'sources': [{
                'name': 'some_pollsters', 'interval': 300,
                'meters': DEFAULT_POLLED}]}, f)
        config = os.path.join(self.tmp, 'ceilometer.conf')
        with open(config, 'w') as f:
            f.write('[DEFAULT]\ntransport_url = %s\nhost = %s\n'
                    'libvirt_uri = %s\npipeline_cfg_file = %s\n'
                    '[oslo_messaging_notifications]\ntopics = %s\n'
                    '[notification]\npipelines = meter\n'
                    '[meter]\nmeter_definitions_dirs = %s\n'
                    '[polling]\ncfg_file = %s\n'
                    '[service_credentials]\nauth_type = none\n'
                    'endpoint = %s\n'
                    % (bus.RABBIT_URL, HOST, qemu_fixtures.URI, pipeline,
                       self.topic, cf.PACKAGED_METERS_DIR, polling,
                       self.nova.url))
        return config

    def start(self, name, *args):
        path = os.path.join(self.tmp, name + '.log')
        log = open(path, 'w')
        self.addCleanup(log.close)
        # Its log with a failed test's result, before the file goes.
        self.addOnException(lambda _exc_info: self.addDetail(
            name, content.content_from_file(path, buffer_now=True)))
        proc = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), name),
             '--config-file', self.config] + list(args),
            stdout=log, stderr=subprocess.STDOUT)

        def stop():
            # Only the process started here, by its own handle.
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(15)
        self.addCleanup(stop)
        return proc

    def published(self):
        try:
            with open(self.samples_path) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def wait_for_samples(self, source, count, timeout=90):
        deadline = time.monotonic() + timeout
        while True:
            samples = [s for s in self.published()
                       if s['source'] == source and
                       self.balloon.guest.uuid in s['resource_id']]
            if len(samples) >= count:
                return samples
            if time.monotonic() > deadline:
                self.fail('%d samples from %s within %d s (of %d)'
                          % (len(samples), source, timeout, count))
            time.sleep(0.5)

    def send_host_usage(self):
        sender = bus.nova_sender_conf()
        sender.set_override('topics', [self.topic],
                            group='oslo_messaging_notifications')
        reader = libvirt_usage.LibvirtUsageReader(
            libvirt_usage.LibvirtConnection(qemu_fixtures.URI))
        self.addCleanup(reader.close)
        hosts = host_usage.HostUsageSender(
            HOST, 300, 100, host_usage.DriversOnNovaTopics(
                sender, ['messagingv2']))
        service = usage_service.UsageService(
            reader, ledger.Ledger(state.Store(self.tmp)), HOST, {},
            host_usage=hosts)
        self.addCleanup(service.stop)
        service.poll(base.EVERY_KIND)
        self.assertTrue(hosts.wait_idle(30))
        # One reading, in one part or more (other test processes' nova
        # guests on the shared daemon come in it too).
        self.assertEqual((0, 0), (hosts.failed, hosts.skipped))
        self.assertGreaterEqual(hosts.sent, 1)

    def test_same_samples_as_ceilometer_polling(self):
        guest = self.balloon.guest
        self.start('ceilometer-agent-notification')
        cf.wait_for_queue('%s.info' % self.topic, timeout=60)
        self.start('ceilometer-polling', '--polling-namespaces', 'compute')
        # 1 power.state, cpu, 2 memory, 4 per disk, 4 per vNIC
        polled = self.wait_for_samples('openstack', 12)
        self.send_host_usage()
        ours = self.wait_for_samples('nova-usage-ext', 16)

        def keyed(samples):
            return {(s['counter_name'] if 'counter_name' in s else s['name'],
                     s['resource_id']): s for s in samples
                    if (s.get('counter_name') or s.get('name'))
                    in DEFAULT_POLLED}

        theirs, mine = keyed(polled), keyed(ours)
        self.addDetail('samples', content.text_content(json.dumps(
            {'ceilometer-polling': polled, 'nova-usage-ext': ours},
            indent=1, default=str)))
        self.assertEqual(sorted(theirs), sorted(mine))
        self.assertEqual(set(DEFAULT_POLLED), {name for name, _ in theirs})
        for key in sorted(theirs):
            first, second = theirs[key], mine[key]
            for attr in ('type', 'unit', 'user_id', 'project_id'):
                self.assertEqual(first[attr], second[attr], (key, attr))
            if key[0] in GAUGES:
                # memory moves a little as the guest runs.
                self.assertAlmostEqual(first['volume'], second['volume'],
                                       delta=max(1, first['volume'] * 0.05),
                                       msg=key)
            else:
                # read after ceilometer's poll: never below it.
                self.assertLessEqual(first['volume'], second['volume'], key)
            meta_theirs = first['resource_metadata']
            meta_ours = second['resource_metadata']
            self.assertEqual(set(), set(meta_theirs) - set(meta_ours) -
                             LEFT_OUT, key)
            for name in set(meta_theirs) - LEFT_OUT:
                self.assertEqual(meta_theirs[name], meta_ours[name],
                                 (key, name))
        self.assertEqual('7', mine[('cpu', guest.uuid)][
            'resource_metadata']['flavor']['id'])
