"""Options for oslo-config-generator (namespace ``nova_usage_ext``)."""

from nova_usage_ext import conf
from nova_usage_ext.plugins import prometheus
from nova_usage_ext.plugins import statsd
from nova_usage_ext.plugins import thresholds


def list_opts():
    # The built-in metric plugins' options, in the group each is
    # registered in when loaded (usage_ext_<entry point name>).
    return [(conf.GROUP, conf.usage_opts),
            ('usage_ext_thresholds', thresholds.CONFIG_OPTS),
            ('usage_ext_statsd', statsd.CONFIG_OPTS),
            ('usage_ext_prometheus', prometheus.CONFIG_OPTS)]
