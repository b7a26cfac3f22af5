"""Options read through nova_usage_ext.conf: validated, never raising."""

import logging
import os
import string

import fixtures
import testtools
from hypothesis import given, settings as hsettings, strategies as st
from oslo_config import cfg
from oslo_config import fixture as config_fixture

from nova_usage_ext import conf as usage_conf
from nova_usage_ext.virt import base
from tests import libvirt_node


class ConfTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        # Each test starts as a fresh process would: nothing reported yet.
        self.useFixture(fixtures.MonkeyPatch(
            'nova_usage_ext.conf._reported', set()))
        self.log = self.useFixture(fixtures.FakeLogger(
            level=logging.INFO, format='%(levelname)s %(message)s'))
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.path = os.path.join(self.tmp, 'nova.conf')
        self.conf = cfg.ConfigOpts()

    def load(self, text, nova_opts=()):
        """Parse a nova.conf holding text, with nova's own options."""
        with open(self.path, 'w') as f:
            f.write(text)
        self.conf.register_opts(list(nova_opts))
        self.conf(['--config-file', self.path])
        return self.conf

    def reload(self, text):
        with open(self.path, 'w') as f:
            f.write(text)
        self.conf.reload_config_files()

    def warnings(self):
        return [line for line in self.log.output.splitlines()
                if line.startswith('WARNING')]


def nova_volume_opt():
    return cfg.IntOpt('volume_usage_poll_interval', default=0)


def nova_path_opts(pybasedir):
    # As nova registers them: state_path defaults to where nova lives.
    return [cfg.StrOpt('pybasedir', default=pybasedir),
            cfg.StrOpt('state_path', default='$pybasedir')]


class TestDefaults(ConfTestCase):

    def test_an_empty_conf_gives_the_documented_defaults(self):
        got = usage_conf.settings(self.load(''))
        self.assertEqual(usage_conf.Settings(
            poll_intervals={base.CPU: 600, base.INTERFACES: 600,
                            base.DISKS: 600},
            notification_drivers=('messagingv2',),
            final_exists_budget=2.0,
            libvirt_stats_workers=2,
            outbox_max_messages=100000,
            state_dir='/var/lib/nova/usage_ext',
            host_usage_interval=300,
            host_usage_max_instances=100), got)
        self.assertEqual([], self.warnings())

    def test_values_in_range_are_used_as_given(self):
        conf = self.load('[usage_ext]\ncpu_poll_interval = 60\n'
                         'interface_poll_interval = 120\n'
                         'disk_poll_interval = 86400\n'
                         'final_exists_budget = 0.1\n'
                         'libvirt_stats_workers = 8\n'
                         'notification_drivers = messagingv2,log\n')
        got = usage_conf.settings(conf)
        self.assertEqual({base.CPU: 60, base.INTERFACES: 120,
                          base.DISKS: 86400}, got.poll_intervals)
        self.assertEqual(0.1, got.final_exists_budget)
        self.assertEqual(8, got.libvirt_stats_workers)
        self.assertEqual(('messagingv2', 'log'), got.notification_drivers)
        self.assertEqual([], self.warnings())


class TestBadValues(ConfTestCase):

    def test_out_of_range_values_are_clamped_and_reported_once(self):
        conf = self.load('[usage_ext]\nfinal_exists_budget = 0\n'
                         'libvirt_stats_workers = 100\n'
                         'cpu_poll_interval = 999999999999\n')
        for _ in range(3):
            got = usage_conf.settings(conf)
            self.assertEqual(0.1, got.final_exists_budget)
            self.assertEqual(8, got.libvirt_stats_workers)
            self.assertEqual(86400, got.poll_intervals[base.CPU])
        self.assertEqual(sorted([
            'WARNING [usage_ext] cpu_poll_interval = 999999999999 is above '
            'the maximum; using 86400',
            'WARNING [usage_ext] final_exists_budget = 0.0 is below the '
            'minimum; using 0.1',
            'WARNING [usage_ext] libvirt_stats_workers = 100 is above the '
            'maximum; using 8']), sorted(self.warnings()))

    def test_outbox_bound_is_clamped(self):
        conf = self.load('[usage_ext]\noutbox_max_messages = 0\n')
        self.assertEqual(100, usage_conf.outbox_max_messages(conf))
        (warning,) = self.warnings()
        self.assertIn('outbox_max_messages = 0 is below the minimum; '
                      'using 100', warning)

    def test_host_usage_options(self):
        conf = self.load('[usage_ext]\nhost_usage_interval = 60\n'
                         'host_usage_max_instances = 500\n')
        got = usage_conf.settings(conf)
        self.assertEqual((60, 500), (got.host_usage_interval,
                                     got.host_usage_max_instances))
        self.assertEqual([], self.warnings())
        # 0 or less turns the message off, silently.
        conf = self.load('[usage_ext]\nhost_usage_interval = -1\n')
        self.assertEqual(0, usage_conf.host_usage_interval(conf))
        self.assertEqual([], self.warnings())

    def test_host_usage_bounds_are_clamped(self):
        conf = self.load('[usage_ext]\nhost_usage_interval = 100000\n'
                         'host_usage_max_instances = 0\n')
        self.assertEqual(86400, usage_conf.host_usage_interval(conf))
        self.assertEqual(1, usage_conf.host_usage_max_instances(conf))
        conf = self.load('[usage_ext]\nhost_usage_max_instances = x\n')
        self.assertEqual(100, usage_conf.host_usage_max_instances(conf))
        self.assertEqual(3, len(self.warnings()))

    def test_zero_workers_read_as_one(self):
        conf = self.load('[usage_ext]\nlibvirt_stats_workers = 0\n')
        self.assertEqual(1, usage_conf.libvirt_stats_workers(conf))
        (warning,) = self.warnings()
        self.assertIn('libvirt_stats_workers = 0 is below the minimum; '
                      'using 1', warning)

    def test_malformed_values_give_the_default_and_are_reported_once(self):
        conf = self.load('[usage_ext]\nfinal_exists_budget = abc\n'
                         'libvirt_stats_workers = two\n'
                         'cpu_poll_interval = 1.5\n'
                         'disk_poll_interval = \n')
        for _ in range(2):
            got = usage_conf.settings(conf)
            self.assertEqual(2.0, got.final_exists_budget)
            self.assertEqual(2, got.libvirt_stats_workers)
            self.assertEqual(600, got.poll_intervals[base.CPU])
            self.assertEqual(600, got.poll_intervals[base.DISKS])
        warnings = self.warnings()
        # An empty value is no value: the default, without a warning.
        self.assertEqual(3, len(warnings), warnings)
        for option, shown, default in (
                ('final_exists_budget', "'abc'", '2.0'),
                ('libvirt_stats_workers', "'two'", '2'),
                ('cpu_poll_interval', "'1.5'", '600')):
            (line,) = [w for w in warnings if option in w]
            self.assertIn('[usage_ext] %s: invalid value' % option, line)
            self.assertIn(shown, line)
            self.assertTrue(line.endswith('using the default %s' % default),
                            line)

    def test_nan_and_infinite_budgets_give_the_default(self):
        for text in ('nan', 'inf', '-inf', '1e999'):
            self.conf = cfg.ConfigOpts()
            conf = self.load('[usage_ext]\nfinal_exists_budget = %s\n'
                             % text)
            self.assertEqual(2.0, usage_conf.final_exists_budget(conf))
            self.assertIn('is not a finite number; using the default 2.0',
                          self.warnings()[-1])

    def test_zero_or_negative_intervals_turn_polls_off_silently(self):
        conf = self.load('[usage_ext]\ncpu_poll_interval = 0\n'
                         'interface_poll_interval = -1\n'
                         'disk_poll_interval = -99999999999999999999\n')
        self.assertEqual({base.CPU: 0, base.INTERFACES: 0, base.DISKS: 0},
                         usage_conf.poll_intervals(conf))
        self.assertEqual([], self.warnings())

    def test_a_new_bad_value_after_a_reload_is_reported(self):
        conf = self.load('[usage_ext]\nlibvirt_stats_workers = 0\n')
        self.assertEqual(1, usage_conf.libvirt_stats_workers(conf))
        self.reload('[usage_ext]\nlibvirt_stats_workers = 50\n')
        self.assertEqual(8, usage_conf.libvirt_stats_workers(conf))
        self.reload('[usage_ext]\nlibvirt_stats_workers = 3\n')
        self.assertEqual(3, usage_conf.libvirt_stats_workers(conf))
        self.assertEqual(2, len(self.warnings()))

    def test_notification_drivers_never_name_the_hook_nor_nothing(self):
        conf = self.load('[usage_ext]\nnotification_drivers = '
                         'nova_usage_ext, messagingv2 ,messagingv2\n')
        self.assertEqual(('messagingv2',),
                         usage_conf.notification_drivers(conf))
        self.assertIn('names nova_usage_ext itself', self.warnings()[0])
        self.reload('[usage_ext]\nnotification_drivers = ,\n')
        self.assertEqual(('messagingv2',),
                         usage_conf.notification_drivers(conf))
        self.assertIn('names no driver; using messagingv2',
                      self.warnings()[-1])


class TestPollIntervals(ConfTestCase):

    def test_bandwidth_poll_interval_is_the_deprecated_interface_name(self):
        conf = self.load('[DEFAULT]\nbandwidth_poll_interval = 300\n')
        self.assertEqual(300, usage_conf.poll_intervals(conf)[
            base.INTERFACES])
        self.assertIn('Option "bandwidth_poll_interval" from group '
                      '"DEFAULT" is deprecated. Use option '
                      '"interface_poll_interval" from group "usage_ext"',
                      self.log.output)
        self.reload('[DEFAULT]\nbandwidth_poll_interval = 300\n'
                    '[usage_ext]\ninterface_poll_interval = 120\n')
        self.assertEqual(120, usage_conf.poll_intervals(conf)[
            base.INTERFACES])

    def test_nova_volume_interval_stands_in_while_disks_are_unset(self):
        conf = self.load('[DEFAULT]\nvolume_usage_poll_interval = 300\n',
                         [nova_volume_opt()])
        for _ in range(2):
            self.assertEqual({base.CPU: 600, base.INTERFACES: 600,
                              base.DISKS: 300},
                             usage_conf.poll_intervals(conf))
        (warning,) = self.warnings()
        self.assertIn('Deprecated: disks are polled every 300s after '
                      '[DEFAULT] volume_usage_poll_interval', warning)
        self.assertIn('set [usage_ext] disk_poll_interval', warning)

    def test_disk_interval_set_wins_over_nova_volume_interval(self):
        # Even set to its default value: the operator chose it.
        conf = self.load('[DEFAULT]\nvolume_usage_poll_interval = 300\n'
                         '[usage_ext]\ndisk_poll_interval = 600\n',
                         [nova_volume_opt()])
        self.assertEqual(600, usage_conf.poll_intervals(conf)[base.DISKS])
        self.assertEqual([], self.warnings())

    def test_disks_are_polled_while_nova_volume_poll_is_off(self):
        conf = self.load('', [nova_volume_opt()])
        self.assertEqual(600, usage_conf.poll_intervals(conf)[base.DISKS])
        self.assertEqual([], self.warnings())


class TestStateDir(ConfTestCase):

    def package_dir(self):
        # A directory as nova's own package directory is: a Python package.
        path = os.path.join(self.tmp, 'lib', 'nova')
        os.makedirs(path)
        open(os.path.join(path, '__init__.py'), 'w').close()
        return path

    def infos(self):
        return [line for line in self.log.output.splitlines()
                if line.startswith('INFO')]

    def test_explicit_state_dir(self):
        wanted = os.path.join(self.tmp, 'state')
        conf = self.load('[usage_ext]\nstate_dir = %s\n' % wanted)
        self.assertEqual(wanted, usage_conf.state_dir(conf))
        self.assertEqual(wanted, usage_conf.state_dir(conf))
        self.assertEqual(['INFO nova-usage-ext keeps its state in %s'
                          % wanted], self.infos())

    def test_nova_state_path_when_the_operator_set_it(self):
        conf = self.load('[DEFAULT]\nstate_path = %s\n' % self.tmp,
                         nova_path_opts(self.package_dir()))
        self.assertEqual(os.path.join(self.tmp, 'usage_ext'),
                         usage_conf.state_dir(conf))
        self.assertEqual([], self.warnings())

    def test_nova_default_state_path_is_never_used(self):
        # nova's default state_path is its install directory.
        conf = self.load('', nova_path_opts(self.package_dir()))
        self.assertEqual('/var/lib/nova/usage_ext',
                         usage_conf.state_dir(conf))
        self.assertEqual(['INFO nova-usage-ext keeps its state in '
                          '/var/lib/nova/usage_ext'], self.infos())

    def test_state_path_inside_site_packages_or_a_package_is_refused(self):
        inside = os.path.join(self.package_dir(), 'state')
        for path in (inside, '/usr/lib/python3/dist-packages',
                     '/opt/venv/lib/python3.11/site-packages'):
            self.conf = cfg.ConfigOpts()
            conf = self.load('[DEFAULT]\nstate_path = %s\n' % path,
                             nova_path_opts(self.tmp))
            self.assertEqual('/var/lib/nova/usage_ext',
                             usage_conf.state_dir(conf), path)
            self.assertIn('[DEFAULT] state_path = %s is inside an installed '
                          'Python package; not writing state there' % path,
                          self.warnings()[-1])

    def test_relative_or_site_packages_state_dir_is_refused(self):
        conf = self.load('[DEFAULT]\nstate_path = %s\n'
                         '[usage_ext]\nstate_dir = state\n' % self.tmp,
                         nova_path_opts(self.tmp))
        self.assertEqual(os.path.join(self.tmp, 'usage_ext'),
                         usage_conf.state_dir(conf))
        self.assertIn('[usage_ext] state_dir = state is not an absolute '
                      'path', self.warnings()[0])
        self.reload('[usage_ext]\nstate_dir = /x/site-packages/s\n')
        self.assertEqual('/var/lib/nova/usage_ext',
                         usage_conf.state_dir(conf))
        self.assertIn('inside an installed Python package',
                      self.warnings()[-1])


class TestLibvirtReadSite(ConfTestCase):
    """nova's driver builds its reader from the options at first use."""

    def test_workers_out_of_range_never_break_the_reader(self):
        from nova_usage_ext.virt import libvirt as libvirt_usage
        node = self.useFixture(libvirt_node.TestNode(
            [libvirt_node.nova_test_domain(0)]))

        class Host:
            def get_connection(self):
                return node.connection.get()

        class Driver(libvirt_usage.LibvirtUsageMixin):
            _host = Host()

        fixture = self.useFixture(config_fixture.Config(cfg.CONF))
        usage_conf.register_opts(cfg.CONF)
        for value, workers in ((0, 1), (100, 8)):
            fixture.config(libvirt_stats_workers=value, group='usage_ext')
            driver = Driver()
            self.assertEqual(workers, driver.usage_reader.stats_workers)
            (usage,) = driver.usage_reader.read_all()
            self.assertIsNotNone(usage.cpu_time_ns)


# Values an operator could type on one line of nova.conf.
CONF_VALUES = st.one_of(
    st.text(alphabet=string.printable.replace('\n', '').replace('\r', '')
            .replace('\x0b', '').replace('\x0c', ''), max_size=30),
    st.integers().map(str),
    st.floats().map(repr))


class TestFuzzedConf(ConfTestCase):

    @hsettings(max_examples=150, deadline=None)
    @given(values=st.fixed_dictionaries(
        {name: CONF_VALUES for name in (
            'cpu_poll_interval', 'interface_poll_interval',
            'disk_poll_interval', 'notification_drivers',
            'final_exists_budget', 'libvirt_stats_workers', 'state_dir',
            'host_usage_interval', 'host_usage_max_instances')}),
        bandwidth=CONF_VALUES, volume=CONF_VALUES)
    def test_any_value_gives_valid_settings(self, values, bandwidth,
                                            volume):
        self.conf = cfg.ConfigOpts()
        text = ('[DEFAULT]\nbandwidth_poll_interval = %s\n'
                'volume_usage_poll_interval = %s\n' % (bandwidth, volume))
        text += '[usage_ext]\n' + ''.join(
            '%s = %s\n' % item for item in values.items())
        try:
            conf = self.load(text, [nova_volume_opt()])
        except cfg.Error:
            return  # the file does not parse: nova itself would not start
        got = usage_conf.settings(conf)
        for seconds in got.poll_intervals.values():
            self.assertIsInstance(seconds, int)
            self.assertTrue(0 <= seconds <= 86400)
        self.assertTrue(0.1 <= got.final_exists_budget <= 30.0)
        self.assertIn(got.libvirt_stats_workers, range(1, 9))
        self.assertTrue(0 <= got.host_usage_interval <= 86400)
        self.assertIn(got.host_usage_max_instances, range(1, 10001))
        self.assertTrue(got.notification_drivers)
        self.assertNotIn('nova_usage_ext', got.notification_drivers)
        self.assertTrue(os.path.isabs(got.state_dir))


class TestMetricPlugins(ConfTestCase):

    def test_none_by_default(self):
        self.assertEqual((), usage_conf.metric_plugins(self.load('')))

    def test_names_stripped_without_empties_or_repeats(self):
        conf = self.load('[usage_ext]\nmetric_plugins = statsd, ,'
                         'thresholds,statsd\n')
        self.assertEqual(('statsd', 'thresholds'),
                         usage_conf.metric_plugins(conf))

    def test_mutable_so_a_reload_applies_it(self):
        conf = self.load('[usage_ext]\nmetric_plugins = statsd\n')
        with open(self.path, 'w') as f:
            f.write('[usage_ext]\nmetric_plugins = prometheus\n')
        conf.mutate_config_files()
        self.assertEqual(('prometheus',), usage_conf.metric_plugins(conf))
        self.assertEqual([], self.warnings())
