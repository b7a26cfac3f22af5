"""Loads the enabled metric plugins and feeds them each cycle.

The poll thread only copies the ledger's totals of the cycle and hands
them over; a builder thread builds the cycle's records (once, shared) and
offers them to each plugin's bounded queue without waiting: a plugin that
is slow or stuck loses cycles (counted, logged once), never delays the
poll or another plugin. Each plugin runs on a daemon thread of its own. A
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

# Cycles waiting for the builder thread; more are dropped.
BUILD_QUEUE_SIZE = 2
# The hooks whose records need the ledger's totals.
INSTANCE_HOOKS = frozenset(('on_cpu', 'on_volume', 'on_bandwidth'))

_STOP = object()


@dataclasses.dataclass(frozen=True)
class Job:
    """A cycle as the poll thread hands it over."""
    usages: list
    kinds: tuple
    # uuid -> the ledger's totals when the cycle was counted
    totals: dict
    read_host_figures: object
    complete: bool
    outbox_size: object
    ended_at: float
    skipped: int = 0


def _put_stop(pending):
    """Queue _STOP without waiting, dropping what waits if need be."""
    while True:
        try:
            pending.put_nowait(_STOP)
            return
        except queue.Full:
            try:
                pending.get_nowait()
                pending.task_done()
            except queue.Empty:
                pass


def _join(pending, timeout):
    done = threading.Event()

    def waiter():
        pending.join()
        done.set()
    threading.Thread(target=waiter, daemon=True).start()
    return done.wait(timeout)


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
        _put_stop(self._queue)

    def wait_idle(self, timeout):
        """For tests and benchmarks: wait until the queue is drained and
        processed; False on timeout."""
        return _join(self._queue, timeout)

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
        self._pending = queue.Queue(BUILD_QUEUE_SIZE)
        self._builder_thread = None
        self.dropped = 0
        self._dropped_logged = False

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
            if self._hooks and self._builder_thread is None:
                # Only once a plugin runs: no thread for no plugin.
                self._builder_thread = threading.Thread(
                    target=self._build_loop, daemon=True,
                    name='nova-usage-ext-plugin-cycles')
                self._builder_thread.start()

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
                 complete=True, outbox_size=None, skipped=0):
        """Hand one cycle to the plugins; never raises, never waits.

        The poll thread only copies the ledger's totals of the instances
        read (they move on with the next read); the records are built, the
        host figures read and the cycle offered to each plugin on the
        manager's own builder thread. A cycle that finds the builder still
        busy with two others is dropped (counted, logged once).

        :param usages: the cycle's ``InstanceUsage`` records.
        :param kinds: the kinds of counters the cycle read.
        :param totals: ``uuid -> ledger totals``, after the cycle's update.
        :param read_host_figures: ``() -> HostFigures or None``; called
            only when a plugin defines ``on_host``.
        :param complete: the read skipped no nova instance.
        :param outbox_size: ``() -> int``, the messages in the outbox;
            called only when a plugin defines ``on_health``.
        :param skipped: the nova instances the read could not read.
        :returns: True when the cycle was handed over.
        """
        hooks = self._hooks
        if not hooks:
            return False
        try:
            snapshot = {}
            if hooks & INSTANCE_HOOKS:
                snapshot = {usage.uuid: totals(usage.uuid)
                            for usage in usages}
            self._pending.put_nowait(Job(
                usages, kinds, snapshot, read_host_figures, complete,
                outbox_size, time.time(), skipped))
            return True
        except queue.Full:
            self.dropped += 1
            if not self._dropped_logged:
                self._dropped_logged = True
                LOG.warning('nova-usage-ext: the metric plugins\' cycles '
                            'are built more slowly than they come; '
                            'dropping cycles, counted from now on')
            return False
        except Exception:
            LOG.exception('nova-usage-ext: handing the cycle to the metric '
                          'plugins failed')
            return False

    def build(self, job):
        """The :class:`plugin_cycle.Cycle` of ``job`` for the hooks the
        running plugins define (runs on the builder thread)."""
        hooks = self._hooks
        figures = None
        if 'on_host' in hooks:
            figures = self._host_figures(job.read_host_figures,
                                         len(job.usages))
        cycle = self._builder.build(job.usages, job.kinds, job.totals.get,
                                    figures, hooks)
        if 'on_health' in hooks:
            cycle = dataclasses.replace(cycle, health=self._health(job))
        return cycle

    def wait_idle(self, timeout, names=None):
        """For tests and benchmarks: wait until every cycle handed over
        is built and processed by the plugins ``names`` (default: all);
        False on timeout."""
        deadline = time.monotonic() + timeout
        if not _join(self._pending, timeout):
            return False
        return all(runner.wait_idle(max(0.0, deadline - time.monotonic()))
                   for name, runner in list(self._runners.items())
                   if names is None or name in names)

    def _build_loop(self):
        while True:
            job = self._pending.get()
            try:
                if job is _STOP:
                    return
                cycle = self.build(job)
                for runner in list(self._runners.values()):
                    runner.offer(cycle)
            except Exception:
                LOG.exception('nova-usage-ext: building the metric plugins\' '
                              'cycle failed')
            finally:
                self._pending.task_done()

    def _health(self, job):
        duration = None
        if job.usages:
            started = min(u.read_at for u in job.usages).timestamp()
            duration = max(0.0, job.ended_at - started)
        outbox = None
        if job.outbox_size is not None:
            try:
                outbox = job.outbox_size()
            except Exception as exc:
                LOG.debug('nova-usage-ext: outbox size unknown: %s', exc)
        return base.HealthRecord(self.host, job.ended_at, duration,
                                 len(job.usages), job.complete, outbox,
                                 job.skipped)

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
        _put_stop(self._pending)
