"""In-service metric plugins: code that sees each poll cycle in memory.

Plugins are stevedore extensions in the :data:`NAMESPACE` entry point
group, enabled by name in ``[usage_ext] metric_plugins``. Each implements
some of the hooks of :class:`base.MetricPlugin`; :mod:`manager` runs every
plugin on a daemon thread of its own, fed by a bounded queue, so that no
plugin can delay the poll cycle or another plugin.
"""

NAMESPACE = 'nova_usage_ext.metric_plugins'
