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
from nova.virt import event as virtevent
from nova.virt.libvirt import driver as libvirt_driver
from oslo_log import log as logging

from nova_usage_ext import service as usage_service
from nova_usage_ext.virt import driver as usage_driver
from nova_usage_ext.virt import libvirt as libvirt_usage

LOG = logging.getLogger(__name__)
CONF = nova_conf.CONF

# The lifecycle events nova's Host passes to its driver after which the
# set of running domains may differ (nova passes no define/undefine).
RELIST_TRANSITIONS = frozenset((virtevent.EVENT_LIFECYCLE_STARTED,
                                virtevent.EVENT_LIFECYCLE_STOPPED))
# The events after which the guest's counters stop on this host while its
# domain is still here: libvirt pauses the guest on the source for a live
# migration's switch-over (nova passes PAUSED, or MIGRATION_COMPLETED when
# the job was already done), or post-copy moves its vCPUs to the
# destination. Nothing else is sent on the source before the domain is
# gone: a read now holds the usage up to the switch-over, which the final
# at live_migration._post.start then reports.
READ_TRANSITIONS = frozenset((virtevent.EVENT_LIFECYCLE_PAUSED,
                              virtevent.EVENT_LIFECYCLE_MIGRATION_COMPLETED,
                              virtevent.EVENT_LIFECYCLE_POSTCOPY_STARTED))


def _nova_audit_period_start(now):
    """Start of nova's current audit period: the end of its last completed
    one, by nova's own reckoning of instance_usage_audit_period."""
    naive = now.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    _begin, end = nova_utils.last_completed_audit_period(before=naive)
    return end.replace(tzinfo=datetime.timezone.utc)


def _stop(service):
    """Stop a usage service and release its reader; never raises."""
    try:
        service.stop()
        usage_service.unregister(service)
        service.reader.close()
    except Exception:
        LOG.exception('nova-usage-ext: failed to stop usage reporting')


class LibvirtUsageDriver(libvirt_usage.LibvirtUsageMixin,
                         libvirt_driver.LibvirtDriver):
    """nova's libvirt driver, reporting instance usage.

    Its usage loop runs on a daemon thread: it stops in ``cleanup_host``,
    and never keeps a nova-compute that failed before it from exiting.
    """

    _usage_service = None

    def init_host(self, host):
        super().init_host(host)
        # Usage reporting must never keep nova-compute from starting.
        try:
            svc = usage_service.UsageService.from_conf(
                CONF, self.usage_reader, CONF.host or host,
                audit_period_start=_nova_audit_period_start)
            usage_service.register(svc)
            svc.start()
            self._usage_service = svc
        except Exception:
            LOG.exception('nova-usage-ext: usage reporting is off: it failed '
                          'to start')

    def cleanup_host(self, host):
        svc, self._usage_service = self._usage_service, None
        if svc is not None:
            _stop(svc)
        super().cleanup_host(host)

    def emit_event(self, event):
        # nova's Host already gets every lifecycle event of its connection
        # and hands it here: the reader's domain list follows them instead
        # of registering a callback of its own on nova's connection.
        transition = getattr(event, 'transition', None)
        if transition in RELIST_TRANSITIONS:
            reader = getattr(self, '_usage_reader', None)
            if reader is not None:
                usage_driver.never_raises('emit_event', None,
                                          reader.domains_changed)
        svc = self._usage_service
        uuid = getattr(event, 'uuid', None)
        if transition in READ_TRANSITIONS and svc is not None and uuid:
            # Queued for the service's read workers: nova's event thread
            # never waits for libvirt here.
            usage_driver.never_raises('emit_event', None, svc.read_soon,
                                      uuid)
        super().emit_event(event)
