"""The options and the nova.conf sample shipped in etc/."""

import os
import subprocess
import sys

import fixtures
import testtools
from oslo_config import cfg

from nova_usage_ext import conf as usage_conf
from nova_usage_ext import opts

SAMPLE = os.path.join(os.path.dirname(__file__), '..', '..', 'etc', 'nova',
                      'nova.conf.sample-usage')


class TestOpts(testtools.TestCase):

    def test_list_opts_names_every_option(self):
        listed = {(group, opt.name) for group, group_opts in opts.list_opts()
                  for opt in group_opts}
        self.assertEqual({('usage_ext', 'cpu_poll_interval'),
                          ('usage_ext', 'interface_poll_interval'),
                          ('usage_ext', 'disk_poll_interval'),
                          ('usage_ext', 'notification_drivers'),
                          ('usage_ext', 'final_exists_budget'),
                          ('usage_ext', 'libvirt_stats_workers'),
                          ('usage_ext', 'outbox_max_messages'),
                          ('usage_ext', 'host_usage_interval'),
                          ('usage_ext', 'host_usage_max_instances'),
                          ('usage_ext', 'metric_plugins'),
                          ('usage_ext_thresholds', 'rules_file'),
                          ('usage_ext_thresholds', 'notification_topics'),
                          ('usage_ext_statsd', 'host'),
                          ('usage_ext_statsd', 'port'),
                          ('usage_ext_statsd', 'prefix'),
                          ('usage_ext_statsd', 'name_template'),
                          ('usage_ext_statsd', 'host_template'),
                          ('usage_ext_prometheus', 'listen_address'),
                          ('usage_ext_prometheus', 'port'),
                          ('usage_ext_prometheus', 'tls_enable'),
                          ('usage_ext_prometheus', 'tls_certfile'),
                          ('usage_ext_prometheus', 'tls_keyfile'),
                          ('usage_ext', 'state_dir')}, listed)

    def test_no_option_raises_when_read(self):
        # oslo.config checks min/max at read time, inside nova's code
        # paths: the accessors in nova_usage_ext.conf validate instead.
        for opt in usage_conf.usage_opts:
            self.assertIsNone(getattr(opt.type, 'min', None), opt.name)
            self.assertIsNone(getattr(opt.type, 'max', None), opt.name)
            self.assertIsNone(getattr(opt.type, 'choices', None), opt.name)

    def test_sample_matches_the_generator(self):
        out = os.path.join(self.useFixture(fixtures.TempDir()).path, 's')
        subprocess.run([sys.executable, '-m', 'oslo_config.generator',
                        '--namespace', 'nova_usage_ext', '--output-file',
                        out], check=True, capture_output=True, timeout=60)
        with open(out) as generated, open(SAMPLE) as shipped:
            self.assertEqual(generated.read(), shipped.read(),
                             'regenerate with tox -e genconfig')

    def test_registering_twice_is_harmless(self):
        conf = cfg.ConfigOpts()
        usage_conf.register_opts(conf)
        usage_conf.register_opts(conf)
        conf([])
        self.assertEqual(['messagingv2'],
                         conf.usage_ext.notification_drivers)

    def test_stats_workers_reach_the_reader_and_zero_is_one(self):
        from nova_usage_ext.virt import libvirt as libvirt_usage
        self.useFixture(fixtures.MonkeyPatch(
            'nova_usage_ext.conf._reported', set()))
        log = self.useFixture(fixtures.FakeLogger())
        conf = cfg.ConfigOpts()
        conf([])
        self.assertEqual(2, libvirt_usage.configured_stats_workers(conf))
        path = os.path.join(self.useFixture(fixtures.TempDir()).path, 'c')
        with open(path, 'w') as f:
            f.write('[usage_ext]\nlibvirt_stats_workers = 1\n')
        conf(['--config-file', path])
        self.assertEqual(1, libvirt_usage.configured_stats_workers(conf))
        with open(path, 'w') as f:
            f.write('[usage_ext]\nlibvirt_stats_workers = 0\n')
        conf.reload_config_files()
        self.assertEqual(1, libvirt_usage.configured_stats_workers(conf))
        self.assertIn('[usage_ext] libvirt_stats_workers = 0 is below the '
                      'minimum; using 1', log.output)
