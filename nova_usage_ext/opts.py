"""Options for oslo-config-generator (namespace ``nova_usage_ext``)."""

from nova_usage_ext import conf


def list_opts():
    return [(conf.GROUP, conf.usage_opts)]
