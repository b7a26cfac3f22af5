"""Configuration options, read from nova.conf inside nova-compute.

``[DEFAULT] bandwidth_poll_interval`` is the option nova removed in 23.0.0,
registered again under its old name and meaning so that old nova.conf
files work. ``[DEFAULT] volume_usage_poll_interval`` is nova's own and is
only read here.
"""

from oslo_config import cfg

GROUP = 'usage_ext'

default_opts = [
    cfg.IntOpt('bandwidth_poll_interval',
               default=600,
               help='Interval in seconds at which nova-usage-ext caches '
                    "network interface counters of this host's instances. "
                    '0 or less disables it. (nova removed its own option of '
                    'this name in 23.0.0.)'),
]

usage_opts = [
    cfg.IntOpt('cpu_poll_interval',
               default=600,
               help='Interval in seconds at which the CPU time of '
                    "this host's instances is cached. 0 or less disables "
                    'it.'),
    cfg.ListOpt('notification_drivers',
                default=['messagingv2'],
                help='The oslo.messaging notification drivers that the '
                     'nova_usage_ext driver wraps and passes every '
                     'notification on to. Set [oslo_messaging_notifications]'
                     ' driver = nova_usage_ext and name the real drivers '
                     'here.'),
    cfg.FloatOpt('final_exists_budget',
                 default=2.0,
                 min=0.1,
                 help='Seconds that reading a deleted instance one last '
                      'time and sending its final compute.instance.exists '
                      'may hold instance.delete.start back. Past it, '
                      'delete.start passes on and the final exists is '
                      'logged as late or lost.'),
    cfg.IntOpt('libvirt_stats_workers',
               default=2,
               min=1,
               max=8,
               help='How many libvirt stats calls one poll cycle may run at '
                    'once, each over its own share of the domains. libvirtd '
                    "asks each guest's QEMU in turn within one call; two "
                    'calls overlap those waits (1.2 to 1.9 times faster '
                    'over 20 guests in the benchmarks). The '
                    'split uses the domain list of the last full call, kept '
                    "while libvirt's lifecycle events report no change; 1 "
                    'makes every cycle a single getAllDomainStats call.'),
    cfg.StrOpt('state_dir',
               help='Directory for the counter cache that survives a '
                    "nova-compute restart. Defaults to nova's "
                    '$state_path/usage_ext.'),
]


def register_opts(conf):
    conf.register_opts(default_opts)
    conf.register_opts(usage_opts, group=GROUP)
