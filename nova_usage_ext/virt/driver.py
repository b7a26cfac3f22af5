"""Usage methods for compute drivers, over any ``UsageReader``.

The mixin gives a driver the usage methods nova once had (or never had):
``interface_stats``, ``block_stats``, ``get_all_volume_usage``,
``get_all_bw_counters`` and ``get_info`` with ``cpu_time_ns``. It needs only
``self.usage_reader``; backend mixins (libvirt, Hyper-V) provide it.

Like nova's ``block_stats``, the per-device methods log and return None when
the instance or device is not there; they never raise a hypervisor error.
"""

from oslo_log import log as logging

from nova_usage_ext.virt import base

LOG = logging.getLogger(__name__)


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
        by_uuid = self._read_host()
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
        by_uuid = self._read_host()
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

        On nova's drivers nova's own ``get_info`` runs first, so its
        states and exceptions are unchanged.
        """
        parent = getattr(super(), 'get_info', None)
        if parent is not None:
            info = parent(instance, use_cache=use_cache)
            usage = self._read_one(instance, devices=False)
            info.cpu_time_ns = usage.cpu_time_ns if usage else None
            return info
        usage = self.usage_reader.read_instance(instance.uuid, devices=False)
        return base.UsageInstanceInfo(usage.state,
                                      cpu_time_ns=usage.cpu_time_ns)

    def _read_host(self):
        try:
            return {u.uuid: u for u in self.usage_reader.read_all()}
        except base.UsageReaderError as exc:
            LOG.warning('Cannot read usage from the hypervisor: %s', exc)
            return {}
