"""Loads the enabled metric plugins and feeds them each cycle.

The poll thread only builds the cycle's records (once, shared) and offers
them to each plugin's bounded queue without waiting: a plugin that is
slow or stuck loses cycles (counted, logged once), never delays the poll
or another plugin. Each plugin runs on a daemon thread of its own. A
hook's error is logged with its traceback once per plugin, hook and
exception class, then only counted; after ``MAX_FAILURES`` failed cycles
in a row the plugin is disabled until the next reconfiguration (SIGHUP).
"""

import collections
import dataclasses
import logging
import queue
import threading
import time

import stevedore

from nova_usage_ext import conf as usage_conf
from nova_usage_ext import plugins
from nova_usage_ext.plugins import base
from nova_usage_ext.plugins import cycle as plugin_cycle

LOG = logging.getLogger(__name__)

# Cycles a plugin may have waiting; more are dropped.
QUEUE_SIZE = 4
# Failed cycles in a row before a plugin is disabled.
MAX_FAILURES = 5

_STOP = object()


def group_of(name):
    """The option group of the plugin named ``name``."""
    return 'usage_ext_%s' % name


def load_class(name):
    """The plugin class of entry point ``name``; raises when missing."""
    return stevedore.DriverManager(plugins.NAMESPACE, name,
                                   invoke_on_load=False,
                                   on_load_failure_callback=_load_failed
                                   ).driver


def _load_failed(_manager, entry_point, exc):
    # The import error, not stevedore's "no driver found".
    raise exc


@dataclasses.dataclass
class RunnerStats:
    """What a plugin's runner counted since it was loaded."""
    cycles: int = 0
    dropped: int = 0
    errors: collections.Counter = dataclasses.field(
        default_factory=collections.Counter)
    failures_in_a_row: int = 0
    disabled: bool = False


class Runner:
    """One plugin, its queue and its daemon thread."""

    def __init__(self, name, plugin, queue_size=QUEUE_SIZE,
                 max_failures=MAX_FAILURES):
        self.name = name
        self.plugin = plugin
        self.hooks = base.defined_hooks(plugin)
        self.max_failures = max_failures
        self.stats = RunnerStats()
        self._queue = queue.Queue(queue_size)
        self._logged = set()
        self._thread = threading.Thread(
            target=self._run, daemon=True,
            name='nova-usage-ext-plugin-%s' % name)
        self._thread.start()

    def offer(self, cycle):
        """Queue a cycle without waiting; False when dropped."""
        if self.stats.disabled:
            return False
        try:
            self._queue.put_nowait(cycle)
            return True
        except queue.Full:
            self.stats.dropped += 1
            self._once('full', logging.WARNING,
                       'nova-usage-ext: metric plugin %s is not keeping up '
                       '(%d cycles waiting); dropping cycles for it, '
                       'counted from now on', self.name, self._queue.maxsize)
            return False

    def enable(self):
        """Reconfigured: a disabled plugin gets another chance."""
        if self.stats.disabled:
            LOG.info('nova-usage-ext: metric plugin %s enabled again',
                     self.name)
        self.stats.disabled = False
        self.stats.failures_in_a_row = 0

    def stop(self):
        """Ask the thread to end after what it runs now; never waits."""
        self.stats.disabled = True
        while True:
            try:
                self._queue.put_nowait(_STOP)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self._queue.task_done()
                except queue.Empty:
                    pass

    def wait_idle(self, timeout):
        """For tests and benchmarks: wait until the queue is drained and
        processed; False on timeout."""
        done = threading.Event()

        def waiter():
            self._queue.join()
            done.set()
        threading.Thread(target=waiter, daemon=True).start()
        return done.wait(timeout)

    def _run(self):
        while True:
            cycle = self._queue.get()
            try:
                if cycle is _STOP:
                    self._call('close', ())
                    return
                if not self.stats.disabled:
                    self._cycle(cycle)
            finally:
                self._queue.task_done()

    def _cycle(self, cycle):
        failed = False
        ran = False
        for hook in self.hooks:
            argument = cycle.argument(hook)
            if argument is None:
                continue
            ran = True
            if not self._call(hook, (argument,)):
                failed = True
        if not ran:
            return
        self.stats.cycles += 1
        if not failed:
            self.stats.failures_in_a_row = 0
            return
        self.stats.failures_in_a_row += 1
        if self.stats.failures_in_a_row >= self.max_failures:
            self.stats.disabled = True
            LOG.error('nova-usage-ext: metric plugin %s failed %d cycles in '
                      'a row and is disabled until the configuration is '
                      'reloaded (SIGHUP)', self.name,
                      self.stats.failures_in_a_row)

    def _call(self, hook, args):
        try:
            getattr(self.plugin, hook)(*args)
            return True
        except Exception as exc:
            kind = (hook, type(exc).__name__)
            self.stats.errors[kind] += 1
            if kind not in self._logged:
                self._logged.add(kind)
                LOG.exception('nova-usage-ext: metric plugin %s failed in '
                              '%s (further %s errors there are only '
                              'counted)', self.name, hook,
                              type(exc).__name__)
            return False

    def _once(self, key, level, message, *args):
        if key not in self._logged:
            self._logged.add(key)
            LOG.log(level, message, *args)


class PluginManager:
    """The enabled plugins of one nova-compute.

    :param conf: the process's ConfigOpts.
    :param host: the compute host's name.
    :param load: ``name -> plugin class`` (default: the entry points).
    """

    def __init__(self, conf, host, load=load_class, queue_size=QUEUE_SIZE,
                 max_failures=MAX_FAILURES):
        self.conf = conf
        self.host = host
        self._load = load
        self._queue_size = queue_size
        self._max_failures = max_failures
        self._runners = {}
        self._lock = threading.Lock()
        self._builder = plugin_cycle.CycleBuilder(host)
        self._hooks = frozenset()
        self._closed = False

    @property
    def runners(self):
        return dict(self._runners)

    def wanted_hooks(self):
        """The hooks some running plugin defines."""
        return self._hooks

    def start(self):
        """Load the plugins named now, and again whenever the
        configuration is reloaded (nova-compute's SIGHUP)."""
        self.reconfigure()
        self.conf.register_mutate_hook(self._mutated)

    def _mutated(self, conf, fresh):
        self.reconfigure()

    def reconfigure(self):
        """Load the plugins now named, unload the others, let the kept
        ones re-read their configuration and enable the disabled ones.
        Never raises."""
        with self._lock:
            if self._closed:
                return
            try:
                self._reconfigure()
            except Exception:
                LOG.exception('nova-usage-ext: reconfiguring the metric '
                              'plugins failed')
            self._hooks = frozenset(
                hook for runner in self._runners.values()
                for hook in runner.hooks)

    def _reconfigure(self):
        wanted = usage_conf.metric_plugins(self.conf)
        for name in list(self._runners):
            if name not in wanted:
                self._runners.pop(name).stop()
                LOG.info('nova-usage-ext: metric plugin %s unloaded', name)
        for name in wanted:
            runner = self._runners.get(name)
            if runner is not None:
                try:
                    runner.plugin.reconfigure()
                except Exception:
                    LOG.exception('nova-usage-ext: metric plugin %s failed '
                                  'to reconfigure', name)
                runner.enable()
                continue
            plugin = self._start(name)
            if plugin is not None:
                self._runners[name] = Runner(name, plugin, self._queue_size,
                                             self._max_failures)
                LOG.info('nova-usage-ext: metric plugin %s loaded (%s)',
                         name, ', '.join(self._runners[name].hooks) or
                         'no hook')

    def _start(self, name):
        try:
            cls = self._load(name)
        except Exception as exc:
            LOG.error('nova-usage-ext: no metric plugin %r can be loaded '
                      '([usage_ext] metric_plugins): %s', name, exc)
            return None
        group = group_of(name)
        try:
            self.conf.register_opts(list(cls.CONFIG_OPTS), group=group)
            return cls(self.conf, group, self.host)
        except Exception:
            LOG.exception('nova-usage-ext: metric plugin %s failed to start',
                          name)
            return None

    def dispatch(self, usages, kinds, totals, read_host_figures,
                 complete=True, outbox_size=None):
        """Offer one cycle to every plugin; never raises, never waits.

        :param usages: the cycle's ``InstanceUsage`` records.
        :param kinds: the kinds of counters the cycle read.
        :param totals: ``uuid -> ledger totals``, after the cycle's update.
        :param read_host_figures: ``() -> HostFigures or None``; called
            only when a plugin defines ``on_host``.
        :param complete: the read skipped no nova instance.
        :param outbox_size: ``() -> int``, the messages in the outbox;
            called only when a plugin defines ``on_health``.
        """
        hooks = self._hooks
        if not hooks:
            return None
        try:
            figures = None
            if 'on_host' in hooks:
                figures = self._host_figures(read_host_figures, len(usages))
            cycle = self._builder.build(usages, kinds, totals, figures, hooks)
            if 'on_health' in hooks:
                cycle = dataclasses.replace(cycle, health=self._health(
                    usages, complete, outbox_size))
            for runner in list(self._runners.values()):
                runner.offer(cycle)
            return cycle
        except Exception:
            LOG.exception('nova-usage-ext: building the metric plugins\' '
                          'cycle failed')
            return None

    def _health(self, usages, complete, outbox_size):
        ended = time.time()
        duration = None
        if usages:
            started = min(usage.read_at for usage in usages).timestamp()
            duration = max(0.0, ended - started)
        outbox = None
        if outbox_size is not None:
            try:
                outbox = outbox_size()
            except Exception as exc:
                LOG.debug('nova-usage-ext: outbox size unknown: %s', exc)
        return base.HealthRecord(self.host, ended, duration, len(usages),
                                 complete, outbox)

    def _host_figures(self, read, instances):
        try:
            figures = read()
        except Exception as exc:
            LOG.warning('nova-usage-ext: cannot read the host figures for '
                        'the metric plugins this cycle: %s', exc)
            return None
        if figures is not None:
            figures = dataclasses.replace(figures, instances=instances)
        return figures

    def close(self):
        """Stop every plugin; never waits for one."""
        with self._lock:
            self._closed = True
            runners, self._runners = self._runners, {}
            self._hooks = frozenset()
        for runner in runners.values():
            runner.stop()
