"""Usage methods for compute drivers, over any ``UsageReader``.

The mixin gives a driver the usage methods nova once had (or never had):
``interface_stats``, ``block_stats``, ``get_all_volume_usage``,
``get_all_bw_counters`` and ``get_info`` with ``cpu_time_ns``. It needs only
``self.usage_reader``; backend mixins (libvirt, Hyper-V) provide it.

These methods run inside nova's code paths, so nothing they add may raise
there: like nova's ``block_stats``, the per-device methods log and return
None when the instance or device is not there, the host-wide ones return
what they could read, and an unexpected error is logged with its traceback
and answered the same way. ``get_info`` on nova's drivers makes no
hypervisor call of its own (see there).
"""

from oslo_log import log as logging

from nova_usage_ext import service as usage_service
from nova_usage_ext.virt import base

LOG = logging.getLogger(__name__)


def never_raises(what, default, method, *args):
    """``method(*args)``, or ``default`` after logging an unexpected error
    with its traceback: it must not reach nova. (A helper rather than a
    decorator: nova's driver API checks compare the methods' signatures.)
    """
    try:
        return method(*args)
    except Exception:
        LOG.exception('nova-usage-ext: %s failed; answering %r', what,
                      default)
        return default


class UsageDriverMixin:

    usage_reader = None

    def _read_one(self, instance, devices=True):
        try:
            return self.usage_reader.read_instance(instance.uuid, devices)
        except base.UsageReaderError as exc:
            LOG.info('No usage for instance %s: %s', instance.uuid, exc)
            return None

    def interface_stats(self, instance, interface_id):
        """Counters of one interface, by tap name or MAC.

        :returns: ``[rx_bytes, rx_packets, rx_errors, rx_drops, tx_bytes,
            tx_packets, tx_errors, tx_drops]`` (libvirt's order), or None.
        """
        return never_raises('interface_stats', None, self._interface_stats,
                            instance, interface_id)

    def _interface_stats(self, instance, interface_id):
        usage = self._read_one(instance)
        if usage is None:
            return None
        try:
            i = usage.interface(interface_id)
        except base.DeviceNotFound as exc:
            LOG.info('%s', exc)
            return None
        return [i.rx_bytes, i.rx_packets, i.rx_errors, i.rx_drops,
                i.tx_bytes, i.tx_packets, i.tx_errors, i.tx_drops]

    def block_stats(self, instance, disk_id):
        """nova's ``[rd_req, rd_bytes, wr_req, wr_bytes, errs]`` or None.

        ``errs`` is -1 where the hypervisor keeps no error count, as
        libvirt reports it.
        """
        return never_raises('block_stats', None, self._block_stats,
                            instance, disk_id)

    def _block_stats(self, instance, disk_id):
        usage = self._read_one(instance)
        if usage is None:
            return None
        try:
            d = usage.disk(disk_id)
        except base.DeviceNotFound as exc:
            LOG.info('%s', exc)
            return None
        return [d.read_requests, d.read_bytes, d.write_requests,
                d.write_bytes, -1 if d.errors is None else d.errors]

    def get_all_volume_usage(self, context, compute_host_bdms):
        """Volume I/O in nova's format, from one read of the whole host.

        :param compute_host_bdms: ``[{'instance': instance,
            'instance_bdms': [bdm, ...]}, ...]`` as nova's compute manager
            builds it.
        :returns: ``[{'volume', 'instance', 'rd_req', 'rd_bytes', 'wr_req',
            'wr_bytes'}, ...]`` for the volumes the hypervisor has counters
            for.
        """
        return never_raises('get_all_volume_usage', [],
                            self._get_all_volume_usage, context,
                            compute_host_bdms)

    def _get_all_volume_usage(self, context, compute_host_bdms):
        by_uuid = self._read_host(base.DISKS)
        result = []
        for entry in compute_host_bdms:
            instance = entry['instance']
            usage = by_uuid.get(instance.uuid)
            if usage is None:
                continue
            by_volume = {d.volume_id: d for d in usage.disks if d.volume_id}
            for bdm in entry['instance_bdms']:
                # The volume id the hypervisor knows (libvirt's <serial>)
                # first: device names in nova's BDMs can be stale.
                disk = by_volume.get(bdm['volume_id'])
                if disk is None:
                    device = (bdm['device_name'] or '').removeprefix('/dev/')
                    try:
                        disk = usage.disk(device)
                    except base.DeviceNotFound:
                        LOG.debug('Volume %s of %s not seen on the '
                                  'hypervisor', bdm['volume_id'],
                                  instance.uuid)
                        continue
                if disk.read_requests is None:
                    continue
                result.append(dict(volume=bdm['volume_id'],
                                   instance=instance,
                                   rd_req=disk.read_requests,
                                   rd_bytes=disk.read_bytes,
                                   wr_req=disk.write_requests,
                                   wr_bytes=disk.write_bytes))
        return result

    def get_all_bw_counters(self, instances):
        """Per-vif byte counters, in the format nova used until 23.0.0.

        :returns: ``[{'uuid', 'mac_address', 'bw_in', 'bw_out'}, ...]``;
            ``bw_in`` is what the instance received.
        """
        return never_raises('get_all_bw_counters', [],
                            self._get_all_bw_counters, instances)

    def _get_all_bw_counters(self, instances):
        by_uuid = self._read_host(base.INTERFACES)
        result = []
        for instance in instances:
            usage = by_uuid.get(instance.uuid)
            if usage is None:
                continue
            for iface in usage.interfaces:
                if iface.rx_bytes is None:
                    continue
                result.append(dict(uuid=instance.uuid,
                                   mac_address=iface.mac,
                                   bw_in=iface.rx_bytes,
                                   bw_out=iface.tx_bytes))
        return result

    def get_info(self, instance, use_cache=True):
        """nova's InstanceInfo with ``cpu_time_ns`` (None when unknown).

        On nova's drivers nova's own ``get_info`` runs, so its states and
        exceptions are unchanged, and ``cpu_time_ns`` is the instance's
        CPU time as of the usage service's last reading, without a
        hypervisor call: nova calls ``get_info`` every half second while
        it waits for a guest to stop, and for every instance in its
        power-state sync. Without a driver of nova's underneath (the
        CLI), the instance is read now.
        """
        parent = getattr(super(), 'get_info', None)
        if parent is not None:
            info = parent(instance, use_cache=use_cache)
            info.cpu_time_ns = never_raises('get_info', None,
                                            self._latest_cpu_time,
                                            instance.uuid)
            return info
        usage = self.usage_reader.read_instance(instance.uuid, devices=False)
        return base.UsageInstanceInfo(usage.state,
                                      cpu_time_ns=usage.cpu_time_ns)

    def _latest_cpu_time(self, uuid):
        service = usage_service.current()
        usage = service.latest(uuid) if service else None
        return usage.cpu_time_ns if usage else None

    def _read_host(self, kind):
        try:
            return {u.uuid: u for u in self.usage_reader.read_all((kind,))}
        except base.UsageReaderError as exc:
            LOG.warning('Cannot read usage from the hypervisor: %s', exc)
            return {}
