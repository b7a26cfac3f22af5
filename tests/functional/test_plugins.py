"""Metric plugins over the real RabbitMQ: the thresholds plugin's alerts
as they arrive, against doc/notification_samples."""

import glob
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import fixtures
import oslo_messaging
import testtools

from nova_usage_ext import conf as usage_conf
from nova_usage_ext import ledger
from nova_usage_ext import service as usage_service
from nova_usage_ext import state
from nova_usage_ext.plugins import manager
from nova_usage_ext.plugins import prometheus
from nova_usage_ext.virt import libvirt as libvirt_usage
from tests import libvirt_node
from tests.functional import bus
from tests.functional import fixtures as qemu_fixtures
from tests.functional import test_notifier

UUID0 = '00000000-0000-0000-0000-000000000001'
REPO = os.path.join(os.path.dirname(__file__), '..', '..')


class AlertEndpoint(bus.Endpoint):
    def warn(self, ctxt, publisher_id, event_type, payload, metadata):
        self._record('WARN', publisher_id, event_type, payload, metadata)


class AlertListener(bus.Listener):
    """The bus listener, also taking WARN (a breached alert)."""

    def _setUp(self):
        self.transport = oslo_messaging.get_notification_transport(
            self.conf, url=bus.RABBIT_URL)
        self.addCleanup(self.transport.cleanup)
        self.endpoint = AlertEndpoint()
        self.listener = oslo_messaging.get_notification_listener(
            self.transport, [oslo_messaging.Target(topic=self.topic)],
            [self.endpoint], executor='threading')
        self.listener.start()
        self.addCleanup(bus.delete_queues, self.topic)
        self.addCleanup(self.listener.wait)
        self.addCleanup(self.listener.stop)
        self._probe()


class TestAlertOnTheBus(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.INFO))
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.rules = os.path.join(self.tmp, 'rules.yaml')
        self.conf = bus.make_conf()
        self.listener = self.useFixture(AlertListener(self.conf))
        conf_path = os.path.join(self.tmp, 'nova.conf')
        with open(conf_path, 'w') as f:
            f.write('[DEFAULT]\ntransport_url = %s\n'
                    '[usage_ext]\nmetric_plugins = thresholds\n'
                    '[usage_ext_thresholds]\nrules_file = %s\n'
                    'notification_topics = %s\n'
                    % (bus.RABBIT_URL, self.rules, self.listener.topic))
        self.conf(['--config-file', conf_path])
        usage_conf.register_opts(self.conf)
        self.node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(0)]))
        self.plugins = manager.PluginManager(self.conf, 'compute-1')
        self.service = usage_service.UsageService(
            libvirt_usage.LibvirtUsageReader(self.node.connection),
            ledger.Ledger(state.Store(self.tmp)), 'compute-1', {},
            plugins=self.plugins)

    def start(self, rules):
        with open(self.rules, 'w') as f:
            f.write(rules)
        self.plugins.start()
        self.addCleanup(self.plugins.close)

    def cycle(self):
        self.service.poll(('cpu',))
        self.assertTrue(self.plugins.wait_idle(30))

    def test_breach_and_clear_match_the_sample(self):
        self.start('rules:\n  - {name: busy, metric: cpu_percent, '
                   "comparison: '>=', value: 0}\n")
        self.cycle()
        self.cycle()
        (breach,) = self.listener.wait_for(1, timeout=30)
        sample = test_notifier.load_sample('instance.usage_alert')
        for key in ('event_type', 'priority', 'publisher_id'):
            self.assertEqual(sample[key], breach[key], key)
        self.assertEqual([], test_notifier.shape_mismatches(
            sample['payload'], breach['payload']))
        data = breach['payload']['nova_object.data']
        self.assertEqual((UUID0, 'busy', 'breached'),
                         (data['instance_uuid'], data['rule'],
                          data['state']))
        # Never one per cycle while it stays breached.
        self.cycle()
        with open(self.rules, 'w') as f:
            f.write('rules:\n  - {name: busy, metric: cpu_percent, '
                    "comparison: '>=', value: 100000}\n")
        self.plugins.reconfigure()
        self.cycle()
        breach, clear = self.listener.wait_for(2, timeout=30)
        self.assertEqual(('INFO', 'cleared'), (
            clear['priority'], clear['payload']['nova_object.data'][
                'state']))
        self.assertEqual([], test_notifier.shape_mismatches(
            sample['payload'], clear['payload']))
        self.assertEqual(2, len(self.listener.messages))


def free_port(kind=socket.SOCK_DGRAM):
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class CollectdStatsd(fixtures.Fixture):
    """collectd's statsd plugin (Debian's collectd-core) on a free UDP
    port, writing what it flushes every second to CSV files."""

    def _setUp(self):
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.port = free_port()
        conf = os.path.join(self.dir, 'collectd.conf')
        with open(conf, 'w') as f:
            f.write(COLLECTD_CONF % {'dir': self.dir, 'port': self.port})
        self.log_path = os.path.join(self.dir, 'collectd.log')
        log = open(self.log_path, 'w')
        self.addCleanup(log.close)
        self.process = subprocess.Popen(
            ['collectd', '-C', conf, '-f'], stdout=log,
            stderr=subprocess.STDOUT)
        self.addCleanup(self._stop)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with open(self.log_path) as f:
                if 'Listening on' in f.read():
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        with open(self.log_path) as f:
            raise AssertionError('collectd did not start: %s' % f.read())

    def _stop(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def last(self, kind, name):
        """The last value collectd flushed for ``kind-name``, or None."""
        pattern = os.path.join(self.dir, 'csv', 'statsd-test', 'statsd',
                               '%s-%s-*' % (kind, name))
        values = []
        for path in glob.glob(pattern):
            with open(path) as f:
                values += [float(line.split(',')[1])
                           for line in f.read().splitlines()[1:]]
        return values[-1] if values else None

    def total(self, kind, name):
        """The sum of every value flushed for ``kind-name``."""
        pattern = os.path.join(self.dir, 'csv', 'statsd-test', 'statsd',
                               '%s-%s-*' % (kind, name))
        total = 0.0
        for path in glob.glob(pattern):
            with open(path) as f:
                total += sum(float(line.split(',')[1])
                             for line in f.read().splitlines()[1:])
        return total


COLLECTD_CONF = """
Hostname "statsd-test"
FQDNLookup false
Interval 1
BaseDir "%(dir)s"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin statsd
LoadPlugin csv
<Plugin statsd>
  Host "127.0.0.1"
  Port "%(port)d"
  DeleteGauges false
  CounterSum true
</Plugin>
<Plugin csv>
  DataDir "%(dir)s/csv"
  StoreRates false
</Plugin>
"""


class TestStatsdServer(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.FakeLogger(level=logging.INFO))
        self.server = self.useFixture(CollectdStatsd())
        tmp = self.useFixture(fixtures.TempDir()).path
        conf_path = os.path.join(tmp, 'nova.conf')
        with open(conf_path, 'w') as f:
            f.write('[usage_ext]\nmetric_plugins = statsd\n'
                    '[usage_ext_statsd]\nport = %d\n' % self.server.port)
        self.conf = bus.make_conf()
        self.conf(['--config-file', conf_path])
        self.node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(0)]))
        self.plugins = manager.PluginManager(self.conf, 'compute-1')
        self.service = usage_service.UsageService(
            libvirt_usage.LibvirtUsageReader(self.node.connection),
            ledger.Ledger(state.Store(tmp)), 'compute-1', {},
            plugins=self.plugins)
        self.plugins.start()
        self.addCleanup(self.plugins.close)

    def test_the_server_flushes_what_the_ledger_counted(self):
        self.service.poll()
        first = self.service.ledger.totals(UUID0)
        time.sleep(0.2)
        self.service.poll()
        second = self.service.ledger.totals(UUID0)
        self.assertTrue(self.plugins.wait_idle(10))
        name = 'nova.compute-1.%s.' % UUID0
        used = second.vcpu_time_ns - first.vcpu_time_ns
        read = (second.disks['vda'].read_bytes -
                first.disks['vda'].read_bytes)
        interval = (second.read_at - first.read_at).total_seconds()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if (self.server.total('count', name + 'cpu.vcpu_time_ns') and
                    self.server.last('gauge', name + 'cpu.percent')):
                break
            time.sleep(0.2)
        self.assertEqual(used, self.server.total(
            'count', name + 'cpu.vcpu_time_ns'))
        self.assertEqual(read, self.server.total(
            'count', name + 'disk.vda.read_bytes'))
        self.assertAlmostEqual(used / interval / 1e9 * 100, self.server.last(
            'gauge', name + 'cpu.percent'), places=3)
        self.assertEqual(1.0, self.server.last(
            'gauge', 'nova.compute-1.host.instances'))


class PrometheusServer(fixtures.Fixture):
    """Debian's prometheus on a free port, scraping ``target`` every
    second."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def _setUp(self):
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.port = free_port(socket.SOCK_STREAM)
        conf = os.path.join(self.dir, 'prometheus.yml')
        with open(conf, 'w') as f:
            f.write('global:\n  scrape_interval: 1s\n'
                    'scrape_configs:\n  - job_name: nova-usage-ext\n'
                    '    static_configs:\n'
                    "      - targets: ['%s']\n" % self.target)
        log = open(os.path.join(self.dir, 'prometheus.log'), 'w')
        self.addCleanup(log.close)
        self.process = subprocess.Popen(
            ['prometheus', '--config.file=' + conf,
             '--storage.tsdb.path=' + os.path.join(self.dir, 'data'),
             '--web.listen-address=127.0.0.1:%d' % self.port],
            stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(self._stop)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                        'http://127.0.0.1:%d/-/ready' % self.port,
                        timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError('prometheus did not start (see %s)' % self.dir)

    def _stop(self):
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def query(self, expression):
        url = 'http://127.0.0.1:%d/api/v1/query?%s' % (
            self.port, urllib.parse.urlencode({'query': expression}))
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        if body['status'] != 'success':
            raise AssertionError('query %s: %s' % (expression, body))
        return body['data']['result']


class TestPrometheusServer(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.FakeLogger(level=logging.INFO))
        tmp = self.useFixture(fixtures.TempDir()).path
        self.exporter_port = free_port(socket.SOCK_STREAM)
        conf_path = os.path.join(tmp, 'nova.conf')
        with open(conf_path, 'w') as f:
            f.write('[usage_ext]\nmetric_plugins = prometheus\n'
                    '[usage_ext_prometheus]\nport = %d\n'
                    % self.exporter_port)
        self.conf = bus.make_conf()
        self.conf(['--config-file', conf_path])
        self.node = self.useFixture(libvirt_node.TestNode([
            libvirt_node.nova_test_domain(0)]))
        self.plugins = manager.PluginManager(self.conf, 'compute-1')
        self.service = usage_service.UsageService(
            libvirt_usage.LibvirtUsageReader(self.node.connection),
            ledger.Ledger(state.Store(tmp)), 'compute-1', {},
            plugins=self.plugins)
        self.plugins.start()
        self.addCleanup(self.plugins.close)

    def test_a_real_prometheus_scrapes_the_cycles_values(self):
        self.service.poll()
        self.assertTrue(self.plugins.wait_idle(10))
        usage = self.service.latest(UUID0)
        server = self.useFixture(PrometheusServer(
            '127.0.0.1:%d' % self.exporter_port))
        deadline = time.monotonic() + 60
        result = []
        while time.monotonic() < deadline and not result:
            result = server.query('ceilometer_cpu{resource="%s"}' % UUID0)
            time.sleep(0.5)
        (cpu,) = result
        self.assertEqual(float(usage.vcpu_time_ns), float(cpu['value'][1]))
        self.assertEqual(('ceilometer', 'ns', prometheus.host_id(
            'compute-1', usage.project_id)), (
            cpu['metric']['publisher'], cpu['metric']['unit'],
            cpu['metric']['vm_instance']))
        (disk,) = server.query(
            'ceilometer_disk_device_write_bytes{resource="%s-vda"}' % UUID0)
        self.assertEqual(float(usage.disk('vda').write_bytes),
                         float(disk['value'][1]))
        (read,) = server.query('nova_usage_ext_instances_read')
        self.assertEqual('1', read['value'][1])


class UdpSink(fixtures.Fixture):
    """A UDP socket on a free port that counts the packets it gets."""

    def _setUp(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(self.sock.close)
        self.sock.bind(('127.0.0.1', 0))
        self.port = self.sock.getsockname()[1]

    def packets(self, wait):
        """The packets that arrive within ``wait`` seconds."""
        got = []
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            self.sock.settimeout(left)
            try:
                got.append(self.sock.recv(65536).decode())
            except socket.timeout:
                return got

    def wait_for_packet(self, timeout):
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536).decode()
        except socket.timeout:
            return None


class TestSighup(testtools.TestCase):
    """A real SIGHUP to a real process served as nova serves
    nova-compute (oslo.service, restart_method='mutate'): the new plugin
    options apply with no restart by hand. (oslo.service's threading
    launcher, nova 34's default, mutates the parent's configuration and
    starts the worker again with it; the eventlet one runs the mutate
    hooks in place.)"""

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.uri = self.useFixture(libvirt_node.TestNode(
            [libvirt_node.nova_test_domain(0)])).uri
        self.conf_path = os.path.join(self.tmp, 'nova.conf')

    def write_conf(self, port):
        with open(self.conf_path, 'w') as f:
            f.write('[usage_ext]\nmetric_plugins = statsd\n'
                    '[usage_ext_statsd]\nport = %d\n' % port)

    def start(self):
        log = open(os.path.join(self.tmp, 'compute.log'), 'w')
        self.addCleanup(log.close)
        # A session of its own: oslo.service's threading launcher passes
        # SIGHUP on to its whole process group.
        process = subprocess.Popen(
            [sys.executable, '-m', 'tests.functional.sighup_compute',
             self.uri, self.tmp, '--config-file', self.conf_path],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.addCleanup(self.stop, process)
        return process

    def stop(self, process):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                # Its workers too: the group is the session it leads.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)

    def log(self):
        with open(os.path.join(self.tmp, 'compute.log')) as f:
            return f.read()

    def test_sighup_moves_the_statsd_target(self):
        first = self.useFixture(UdpSink())
        second = self.useFixture(UdpSink())
        self.write_conf(first.port)
        process = self.start()
        self.assertIsNotNone(first.wait_for_packet(60), self.log())
        self.write_conf(second.port)
        os.kill(process.pid, signal.SIGHUP)
        self.assertIsNotNone(second.wait_for_packet(60), self.log())
        first.packets(1)  # what was on its way
        self.assertEqual([], first.packets(3))
        self.assertIsNone(process.poll(), self.log())


class TestThresholdOnAGuest(testtools.TestCase):
    """A real TCG guest driven past a CPU threshold (its firmware busy
    after a reset) and calm again: one alert and one clear on RabbitMQ."""

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(180, gentle=True))
        self.useFixture(fixtures.FakeLogger(level=logging.INFO))
        self.node = self.useFixture(qemu_fixtures.QemuGuests(1))
        (self.guest,) = self.node.guests
        tmp = self.useFixture(fixtures.TempDir()).path
        rules = os.path.join(tmp, 'rules.yaml')
        with open(rules, 'w') as f:
            # Other tests' guests may run on the same daemon.
            f.write('rules:\n  - {name: busy, metric: cpu_percent, '
                    'value: 10, clear_after: 3, scope: {instance: %s}}\n'
                    % self.guest.uuid)
        self.conf = bus.make_conf()
        self.listener = self.useFixture(AlertListener(self.conf))
        conf_path = os.path.join(tmp, 'nova.conf')
        with open(conf_path, 'w') as f:
            f.write('[DEFAULT]\ntransport_url = %s\n'
                    '[usage_ext]\nmetric_plugins = thresholds\n'
                    '[usage_ext_thresholds]\nrules_file = %s\n'
                    'notification_topics = %s\n'
                    % (bus.RABBIT_URL, rules, self.listener.topic))
        self.conf(['--config-file', conf_path])
        reader = libvirt_usage.LibvirtUsageReader(
            libvirt_usage.LibvirtConnection(qemu_fixtures.URI))
        self.addCleanup(reader.close)
        self.plugins = manager.PluginManager(self.conf, 'compute-1')
        self.service = usage_service.UsageService(
            reader, ledger.Ledger(state.Store(tmp)), 'compute-1', {},
            plugins=self.plugins)
        self.plugins.start()
        self.addCleanup(self.plugins.close)

    def cycle(self):
        time.sleep(0.5)
        self.service.poll(('cpu',))
        self.assertTrue(self.plugins.wait_idle(30))

    def firing(self):
        return self.plugins.runners['thresholds'].plugin._states.get(
            ('busy', self.guest.uuid, None))

    def test_one_alert_then_one_clear(self):
        # Until the guest's firmware is done: it may fire, then clears.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.cycle()
            state = self.firing()
            if state is not None and state.calm >= 3 and not state.firing:
                break
        before = len(self.listener.messages)
        self.node.domain(self.guest).reset()  # the firmware runs again
        for _ in range(20):
            self.cycle()
        messages = self.listener.wait_for(before + 2, timeout=30)[before:]
        self.assertEqual(['WARN', 'INFO'],
                         [m['priority'] for m in messages])
        breach, clear = [m['payload']['nova_object.data'] for m in messages]
        self.assertEqual(('breached', self.guest.uuid), (
            breach['state'], breach['instance_uuid']))
        self.assertGreater(breach['value'], 10)
        self.assertEqual(('cleared', 3), (clear['state'], clear['cycles']))
        self.assertLessEqual(clear['value'], 10)
        time.sleep(1)
        self.assertEqual(before + 2, len(self.listener.messages))
