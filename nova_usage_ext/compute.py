"""nova glue: the compute driver that nova-compute loads.

nova.conf::

    [DEFAULT]
    compute_driver = usage_ext.LibvirtUsageDriver

nova imports ``nova.virt.<compute_driver>``; the package installs the
module ``nova/virt/usage_ext.py`` (and nothing else inside nova) that
re-exports the class below. The class is nova's own LibvirtDriver with the
usage methods mixed in; no nova code is changed or patched.

This is the only module of the package that imports nova.
"""

import datetime

from nova import conf as nova_conf
from nova import utils as nova_utils
from nova.virt.libvirt import driver as libvirt_driver
from oslo_log import log as logging

from nova_usage_ext import service as usage_service
from nova_usage_ext.virt import libvirt as libvirt_usage

LOG = logging.getLogger(__name__)
CONF = nova_conf.CONF


def _nova_audit_period_start(now):
    """Start of nova's current audit period: the end of its last completed
    one, by nova's own reckoning of instance_usage_audit_period."""
    naive = now.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    _begin, end = nova_utils.last_completed_audit_period(before=naive)
    return end.replace(tzinfo=datetime.timezone.utc)


class LibvirtUsageDriver(libvirt_usage.LibvirtUsageMixin,
                         libvirt_driver.LibvirtDriver):
    """nova's libvirt driver, reporting instance usage."""

    def init_host(self, host):
        super().init_host(host)
        # Usage reporting must never keep nova-compute from starting.
        try:
            svc = usage_service.UsageService.from_conf(
                CONF, self.usage_reader, CONF.host or host,
                audit_period_start=_nova_audit_period_start)
            usage_service.register(svc)
            svc.start()
        except Exception:
            LOG.exception('nova-usage-ext: usage reporting is off: it failed '
                          'to start')

    def cleanup_host(self, host):
        svc = usage_service.current()
        if svc is not None:
            svc.stop()
            usage_service.unregister(svc)
        super().cleanup_host(host)
