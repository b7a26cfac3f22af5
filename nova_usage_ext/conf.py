"""Configuration options, read from nova.conf inside nova-compute.

The options carry no oslo.config ``min``/``max``: oslo.config checks those
when an option is read, so a bad value would raise inside nova's own code
paths. Read them through :func:`settings` (or the accessor of one option),
which never raises: a value out of range is clamped, a malformed one
replaced by the default, and either is logged once per process at WARNING
with the value used instead.

Poll intervals: ``[DEFAULT] bandwidth_poll_interval`` (the option nova
removed in 23.0.0) is the deprecated name of ``[usage_ext]
interface_poll_interval``. Disks were polled at nova's own ``[DEFAULT]
volume_usage_poll_interval``, which also turns on nova's volume poll, its
database writes and ``volume.usage``; ``[usage_ext] disk_poll_interval``
replaces it. Where the operator left ``disk_poll_interval`` unset and set
nova's option above 0, that value is used, with a deprecation warning.
"""

import dataclasses
import logging
import math
import os
import threading

from oslo_config import cfg

from nova_usage_ext.virt import base

LOG = logging.getLogger(__name__)

GROUP = 'usage_ext'

# The name this package's notifier driver is registered under.
NOTIFIER_DRIVER = 'nova_usage_ext'

DEFAULT_POLL_INTERVAL = 600
# A poll interval longer than a day leaves every audit period but the
# daily and longer ones without a reading of its own.
MAX_POLL_INTERVAL = 86400
DEFAULT_BUDGET = 2.0
BUDGET_RANGE = (0.1, 30.0)
DEFAULT_STATS_WORKERS = 2
STATS_WORKERS_RANGE = (1, 8)
DEFAULT_NOTIFICATION_DRIVERS = ('messagingv2',)
DEFAULT_OUTBOX_MAX = 100000
# As often as ceilometer 27's default polling.yaml polls.
DEFAULT_HOST_USAGE_INTERVAL = 300
DEFAULT_HOST_USAGE_MAX_INSTANCES = 100
HOST_USAGE_MAX_INSTANCES_RANGE = (1, 10000)
OUTBOX_MAX_RANGE = (100, 10000000)
# Where state goes when nova's state_path is unset or unfit.
DEFAULT_STATE_DIR = '/var/lib/nova/usage_ext'

_interval_help = ('Interval in seconds at which the %s of this host\'s '
                  'instances are read and cached. 0 or less disables it; '
                  'values above %d are read as %d.')

usage_opts = [
    cfg.IntOpt('cpu_poll_interval',
               default=DEFAULT_POLL_INTERVAL,
               help=_interval_help % ('CPU times', MAX_POLL_INTERVAL,
                                      MAX_POLL_INTERVAL)),
    cfg.IntOpt('interface_poll_interval',
               default=DEFAULT_POLL_INTERVAL,
               deprecated_opts=[cfg.DeprecatedOpt('bandwidth_poll_interval',
                                                  group='DEFAULT')],
               help=_interval_help % ('network interface counters',
                                      MAX_POLL_INTERVAL, MAX_POLL_INTERVAL)
               + ' Was [DEFAULT] bandwidth_poll_interval (the option '
                 'nova removed in 23.0.0).'),
    cfg.IntOpt('disk_poll_interval',
               default=DEFAULT_POLL_INTERVAL,
               help=_interval_help % ('disk and volume I/O counters',
                                      MAX_POLL_INTERVAL, MAX_POLL_INTERVAL)
               + " Independent of nova's [DEFAULT] "
                 'volume_usage_poll_interval, which also turns on nova\'s '
                 'own volume poll, database writes and volume.usage '
                 'notifications. Deprecated fallback: while this option is '
                 'not set and volume_usage_poll_interval is above 0, that '
                 'value is used (with a warning).'),
    cfg.ListOpt('notification_drivers',
                default=list(DEFAULT_NOTIFICATION_DRIVERS),
                help='The oslo.messaging notification drivers that the '
                     'nova_usage_ext driver wraps and passes every '
                     'notification on to. Set [oslo_messaging_notifications]'
                     ' driver = nova_usage_ext and name the real drivers '
                     'here (nova_usage_ext itself is ignored; an empty '
                     'list means messagingv2).'),
    cfg.FloatOpt('final_exists_budget',
                 default=DEFAULT_BUDGET,
                 help='Seconds that reading a deleted instance one last '
                      'time and sending its final compute.instance.exists '
                      'may hold instance.delete.start back (and, with '
                      'versioned notifications, that sending the '
                      'instance.usage after an instance.exists may hold '
                      'nova\'s next notification back). Past it, '
                      'delete.start passes on and the final exists is '
                      'logged as late; it stays in the outbox. Values '
                      'outside %s to %s are read as the nearest bound.'
                      % BUDGET_RANGE),
    cfg.IntOpt('libvirt_stats_workers',
               default=DEFAULT_STATS_WORKERS,
               help='How many libvirt stats calls one poll cycle may run at '
                    'once, each over its own share of the domains. libvirtd '
                    "asks each guest's QEMU in turn within one call; two "
                    'calls overlap those waits (1.2 to 1.9 times faster '
                    'over 20 guests in the benchmarks). The '
                    'split uses the domain list of the last full call, kept '
                    "while libvirt's lifecycle events report no change; 1 "
                    'makes every cycle a single getAllDomainStats call. '
                    'Values outside %d to %d are read as the nearest bound.'
                    % STATS_WORKERS_RANGE),
    cfg.IntOpt('outbox_max_messages',
               default=DEFAULT_OUTBOX_MAX,
               help='The most messages that close a usage period (final '
                    'and period exists) the outbox keeps while the message '
                    'bus does not take them. Past it the oldest are '
                    'dropped, with an ERROR that counts them. Values '
                    'outside %d to %d are read as the nearest bound.'
                    % OUTBOX_MAX_RANGE),
    cfg.ListOpt('metric_plugins',
                default=[],
                mutable=True,
                help='The in-service metric plugins to run on each poll '
                     'cycle, by entry point name in the '
                     'nova_usage_ext.metric_plugins namespace (built in: '
                     'thresholds, statsd, prometheus). Each plugin has its '
                     'options in the group [usage_ext_<name>]. Applied on '
                     'SIGHUP without a restart. Unknown names are logged '
                     'and skipped.'),
    cfg.IntOpt('host_usage_interval',
               default=DEFAULT_HOST_USAGE_INTERVAL,
               help='Interval in seconds at which one host.usage '
                    'notification carries the counters, memory and power '
                    "state of every nova instance on this host (ceilometer's "
                    'compute meters, for its notification agent instead of '
                    'its compute polling), on the topics of '
                    '[oslo_messaging_notifications]. 0 or less disables '
                    'it; values above %d are read as %d.'
                    % (MAX_POLL_INTERVAL, MAX_POLL_INTERVAL)),
    cfg.IntOpt('host_usage_max_instances',
               default=DEFAULT_HOST_USAGE_MAX_INSTANCES,
               help='The most instances one host.usage notification '
                    'carries; a host with more sends several, each saying '
                    'which part of how many it is. Values outside %d to %d '
                    'are read as the nearest bound.'
                    % HOST_USAGE_MAX_INSTANCES_RANGE),
    cfg.StrOpt('state_dir',
               help='Absolute path of the directory for the state that '
                    'survives a nova-compute restart (counter cache). '
                    "Default: nova's $state_path/usage_ext when state_path "
                    'is set and outside any Python package or '
                    'site-packages directory, else %s. The directory used '
                    'is logged at start.' % DEFAULT_STATE_DIR),
]


def register_opts(conf):
    conf.register_opts(usage_opts, group=GROUP)


# -- validated values -------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Settings:
    """Every option of the package, validated."""
    #: {base.CPU: s, base.INTERFACES: s, base.DISKS: s}; 0 = off
    poll_intervals: dict
    notification_drivers: tuple
    final_exists_budget: float
    libvirt_stats_workers: int
    outbox_max_messages: int
    state_dir: str
    #: seconds, 0 = off
    host_usage_interval: int = DEFAULT_HOST_USAGE_INTERVAL
    host_usage_max_instances: int = DEFAULT_HOST_USAGE_MAX_INSTANCES


def settings(conf):
    """All options, validated; never raises. Call it at start so that
    every bad value is reported then."""
    return Settings(poll_intervals=poll_intervals(conf),
                    notification_drivers=notification_drivers(conf),
                    final_exists_budget=final_exists_budget(conf),
                    libvirt_stats_workers=libvirt_stats_workers(conf),
                    outbox_max_messages=outbox_max_messages(conf),
                    state_dir=state_dir(conf),
                    host_usage_interval=host_usage_interval(conf),
                    host_usage_max_instances=host_usage_max_instances(conf))


_reported = set()
_reported_lock = threading.Lock()


def _once(level, key, message, *args):
    # Each distinct problem once per process: these are read at every
    # cycle, and a SIGHUP that brings a new bad value reports it again.
    with _reported_lock:
        if key in _reported:
            return
        _reported.add(key)
    LOG.log(level, message, *args)


class _Malformed(Exception):
    pass


def _read(conf, name, group=GROUP):
    """The option's value, or _Malformed with oslo.config's reason;
    NoSuchOptError if the option is not registered (nova's, outside
    nova-compute)."""
    if name not in (conf[group] if group else conf):
        raise cfg.NoSuchOptError(name, group)
    try:
        return conf[group][name] if group else conf[name]
    except Exception as exc:  # ConfigFileValueError, a bad $substitution
        reason = str(exc).rsplit(' is not valid: ', 1)[-1]
        raise _Malformed(reason)


def _label(name, group):
    return '[%s] %s' % (group or 'DEFAULT', name)


def _number(conf, name, default, low, high, group=GROUP):
    """The option clamped into [low, high]; a malformed, nan or infinite
    value gives the default."""
    register_opts(conf)
    label = _label(name, group)
    try:
        value = _read(conf, name, group)
    except _Malformed as exc:
        _once(logging.WARNING, (label, 'malformed', str(exc)),
              '%s: invalid value (%s); using the default %s',
              label, exc, default)
        return default
    if value is None:
        return default
    if isinstance(value, float) and not math.isfinite(value):
        _once(logging.WARNING, (label, repr(value)),
              '%s = %s is not a finite number; using the default %s',
              label, value, default)
        return default
    if value > high or value < low:
        used, bound = (high, 'above the maximum') if value > high else (
            low, 'below the minimum')
        _once(logging.WARNING, (label, repr(value)),
              '%s = %s is %s; using %s', label, value, bound, used)
        return used
    return value


def _interval(conf, name, group=GROUP):
    # 0 or less is the documented way to turn a poll off: no warning.
    return max(0, _number(conf, name, DEFAULT_POLL_INTERVAL, -math.inf,
                          MAX_POLL_INTERVAL, group))


def _left_unset(conf, name, group=GROUP):
    try:
        location = conf.get_location(name, group).location
    except Exception:
        return False  # malformed: the operator did set it
    return location in (cfg.Locations.opt_default,
                        cfg.Locations.set_default)


def _disk_interval(conf):
    if _left_unset(conf, 'disk_poll_interval'):
        try:
            nova_value = _read(conf, 'volume_usage_poll_interval', None)
        except (cfg.NoSuchOptError, _Malformed):
            nova_value = None  # not nova-compute, or nova reports it
        if isinstance(nova_value, int) and nova_value > 0:
            used = min(nova_value, MAX_POLL_INTERVAL)
            _once(logging.WARNING, ('volume_usage_poll_interval', nova_value),
                  'Deprecated: disks are polled every %ss after [DEFAULT] '
                  "volume_usage_poll_interval, which also runs nova's own "
                  'volume usage poll; set [%s] disk_poll_interval instead',
                  used, GROUP)
            return used
    return _interval(conf, 'disk_poll_interval')


def poll_intervals(conf):
    """``{base.CPU: s, base.INTERFACES: s, base.DISKS: s}``, each in
    0..MAX_POLL_INTERVAL seconds; 0 means that kind is not polled."""
    return {base.CPU: _interval(conf, 'cpu_poll_interval'),
            base.INTERFACES: _interval(conf, 'interface_poll_interval'),
            base.DISKS: _disk_interval(conf)}


def host_usage_interval(conf):
    """Seconds between host.usage notifications, 0..MAX_POLL_INTERVAL;
    0 means none are sent."""
    return max(0, _number(conf, 'host_usage_interval',
                          DEFAULT_HOST_USAGE_INTERVAL, -math.inf,
                          MAX_POLL_INTERVAL))


def host_usage_max_instances(conf):
    """An int within HOST_USAGE_MAX_INSTANCES_RANGE."""
    return _number(conf, 'host_usage_max_instances',
                   DEFAULT_HOST_USAGE_MAX_INSTANCES,
                   *HOST_USAGE_MAX_INSTANCES_RANGE)


def final_exists_budget(conf):
    """Seconds, a finite float within BUDGET_RANGE."""
    return float(_number(conf, 'final_exists_budget', DEFAULT_BUDGET,
                         *BUDGET_RANGE))


def outbox_max_messages(conf):
    """An int within OUTBOX_MAX_RANGE."""
    return _number(conf, 'outbox_max_messages', DEFAULT_OUTBOX_MAX,
                   *OUTBOX_MAX_RANGE)


def libvirt_stats_workers(conf):
    """An int within STATS_WORKERS_RANGE."""
    return _number(conf, 'libvirt_stats_workers', DEFAULT_STATS_WORKERS,
                   *STATS_WORKERS_RANGE)


def notification_drivers(conf):
    """The real drivers to wrap, as a tuple of names: never empty and
    never naming this package's own driver."""
    register_opts(conf)
    label = _label('notification_drivers', GROUP)
    try:
        names = _read(conf, 'notification_drivers') or []
    except _Malformed as exc:
        names = []
        _once(logging.WARNING, (label, 'malformed', str(exc)),
              '%s: invalid value (%s)', label, exc)
    kept = []
    for name in names:
        name = name.strip()
        if name and name != NOTIFIER_DRIVER and name not in kept:
            kept.append(name)
    if NOTIFIER_DRIVER in (n.strip() for n in names):
        _once(logging.WARNING, (label, 'self'),
              '%s names %s itself, which would wrap itself; ignoring that '
              'name', label, NOTIFIER_DRIVER)
    if not kept:
        _once(logging.WARNING, (label, tuple(names)),
              '%s = %s names no driver; using %s', label,
              ','.join(names), ','.join(DEFAULT_NOTIFICATION_DRIVERS))
        return DEFAULT_NOTIFICATION_DRIVERS
    return tuple(kept)


def metric_plugins(conf):
    """The plugin names to run, as a tuple: stripped, without empty names
    or repeats; () when the value is malformed (logged once)."""
    register_opts(conf)
    label = _label('metric_plugins', GROUP)
    try:
        names = _read(conf, 'metric_plugins') or []
    except _Malformed as exc:
        _once(logging.WARNING, (label, 'malformed', str(exc)),
              '%s: invalid value (%s); running no plugin', label, exc)
        return ()
    kept = []
    for name in names:
        name = name.strip()
        if name and name not in kept:
            kept.append(name)
    return tuple(kept)


# -- the state directory ----------------------------------------------------

def _in_python_tree(path):
    """True if path is in a site-packages or dist-packages directory or
    inside a Python package (a directory with an __init__.py)."""
    parts = path.split(os.sep)
    if 'site-packages' in parts or 'dist-packages' in parts:
        return True
    directory = path
    while True:
        if os.path.isfile(os.path.join(directory, '__init__.py')):
            return True
        parent = os.path.dirname(directory)
        if parent == directory:
            return False
        directory = parent


def _fit_for_state(label, path):
    if not os.path.isabs(path):
        _once(logging.WARNING, (label, path),
              '%s = %s is not an absolute path; not writing state there',
              label, path)
        return False
    if _in_python_tree(os.path.normpath(path)):
        _once(logging.WARNING, (label, path),
              '%s = %s is inside an installed Python package; not writing '
              'state there', label, path)
        return False
    return True


def state_dir(conf):
    """The directory for the package's state, as an absolute path.

    ``[usage_ext] state_dir`` if set; else nova's ``$state_path/usage_ext``
    if the operator set state_path (nova's default is the directory nova
    is installed in); else DEFAULT_STATE_DIR. A path that is relative or
    inside site-packages, dist-packages or a Python package is never used
    (logged once). The result is logged once at INFO.
    """
    register_opts(conf)
    chosen = None
    explicit = _read_path(conf, 'state_dir', GROUP)
    if explicit and _fit_for_state(_label('state_dir', GROUP), explicit):
        chosen = explicit
    if chosen is None and not _left_unset(conf, 'state_path', None):
        state_path = _read_path(conf, 'state_path', None)
        if state_path and _fit_for_state('[DEFAULT] state_path',
                                         state_path):
            chosen = os.path.join(state_path, 'usage_ext')
    chosen = os.path.normpath(chosen or DEFAULT_STATE_DIR)
    _once(logging.INFO, ('state_dir', chosen),
          'nova-usage-ext keeps its state in %s', chosen)
    return chosen


def _read_path(conf, name, group):
    try:
        value = _read(conf, name, group)
    except (cfg.NoSuchOptError, _Malformed):
        return None
    return value.strip() if isinstance(value, str) else None
