"""Makes nova-usage-ext's driver loadable by nova's ``compute_driver``.

nova loads ``nova.virt.<compute_driver>``, so
``compute_driver = usage_ext.LibvirtUsageDriver`` finds the class here.
Installed by the nova-usage-ext package; nova itself is not modified.
"""

from nova_usage_ext.compute import LibvirtUsageDriver

__all__ = ['LibvirtUsageDriver']
