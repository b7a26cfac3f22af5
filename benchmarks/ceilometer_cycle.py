"""One polling cycle of ceilometer 27's compute agent, for the meters this
package reports, with ceilometer's own code.

What ``ceilometer-polling`` does per cycle (ceilometer/polling/manager.py,
``PollingTask.poll_and_notify``): one ``discovery_cache`` and one pollster
``cache`` per cycle; the first pollster runs the ``local_instances``
discovery (``ceilometer.compute.discovery.InstanceDiscovery``, method
``libvirt_metadata`` by default), whose result the others reuse; each
pollster then calls ``get_samples(manager, cache, resources)``, and the
inspector method behind it runs once per instance and cycle, shared
through ``cache`` (``cpu`` -> ``inspect_instance``, the four
``disk.device.*`` -> ``inspect_disks``, the eight ``network.*`` ->
``inspect_vnics``). The samples are then published; publishing is left out
here, as sending is left out of this package's cycle.

Discovery, per cycle: ``listAllDomains``, then per domain ``metadata()``
(nova's 1.1 namespace; the 1.0 one as well when 1.1 is absent),
``XMLDesc`` and ``state()``. Its nova API part cannot run here (no nova
API): with ``fetch_extra_metadata`` off (the default) it asks nova only
for a flavor id that the libvirt metadata lacks, once per flavor name
(an LRU cache). nova 34 writes ``flavor@id`` into the metadata, so a
real deployment makes no nova API call per cycle; the test guests'
metadata has no id, so ``get_flavor_id`` is replaced by a function
returning None (what ceilometer falls back to when nova has no answer).
"""

import contextlib

from ceilometer.compute import discovery as ceilometer_discovery
from ceilometer.compute import pollsters as ceilometer_pollsters
from ceilometer.compute.virt.libvirt import inspector as libvirt_inspector
from ceilometer.polling import plugin_base
from ceilometer import service as ceilometer_service
from oslo_log import log as oslo_log
from stevedore import extension

# The ceilometer meters this package's payload carries (the parity test in
# tests/functional/test_ceilometer.py lists the others and why not).
METERS = (
    'cpu',
    'disk.device.read.bytes', 'disk.device.read.requests',
    'disk.device.write.bytes', 'disk.device.write.requests',
    'network.incoming.bytes', 'network.incoming.packets',
    'network.incoming.packets.drop', 'network.incoming.packets.error',
    'network.outgoing.bytes', 'network.outgoing.packets',
    'network.outgoing.packets.drop', 'network.outgoing.packets.error',
)

_CONF = None


def make_conf(uri):
    """ceilometer's configuration as its services build it
    (``prepare_service``), without letting oslo.log take over logging."""
    global _CONF
    if _CONF is None:
        real_setup = oslo_log.setup
        oslo_log.setup = lambda *a, **k: None
        try:
            _CONF = ceilometer_service.prepare_service([], [])
        finally:
            oslo_log.setup = real_setup
        _CONF.set_override('host', 'bench-compute')
    _CONF.set_override('libvirt_uri', uri)
    return _CONF


class CeilometerCycle:
    """ceilometer's discovery and compute pollsters on one libvirt URI.

    :param wrap: called with each libvirt connection ceilometer opens
        (the inspector's, the discovery's); returns what ceilometer is
        given instead (a call counter, a filter).
    :param meters: the pollsters to run, by meter name.
    """

    def __init__(self, uri, wrap, meters=METERS):
        self.conf = make_conf(uri)
        self.inspector = libvirt_inspector.LibvirtInspector(self.conf)
        self._raw = []
        # Both keep their connection in ``_libvirt_connection``
        # (ceilometer.compute.virt.libvirt.utils.refresh_libvirt_connection
        # reopens it when ``isAlive()`` is false).
        raw = self.inspector._libvirt_connection
        self._raw.append(raw)
        self.inspector._libvirt_connection = wrap(raw)
        self.discovery = ceilometer_discovery.InstanceDiscovery(self.conf)
        assert self.discovery.method == 'libvirt_metadata'
        self.discovery.get_flavor_id = lambda name: None
        raw = self.discovery.connection  # opens it
        self._raw.append(raw)
        self.discovery._libvirt_connection = wrap(raw)
        # The pollsters share one inspector, kept on their base class.
        self._saved = getattr(ceilometer_pollsters.GenericComputePollster,
                              '_inspector', None)
        ceilometer_pollsters.GenericComputePollster._inspector = \
            self.inspector
        manager = extension.ExtensionManager(
            namespace='ceilometer.poll.compute', invoke_on_load=True,
            invoke_args=(self.conf,), on_load_failure_callback=self._failed)
        found = {ext.name: ext.obj for ext in manager}
        missing = set(meters) - set(found)
        if missing:
            raise RuntimeError('ceilometer has no pollster for %s'
                               % sorted(missing))
        self.pollsters = [(name, found[name]) for name in sorted(meters)]

    @staticmethod
    def _failed(manager, entrypoint, exc):
        raise exc

    def cycle(self):
        """One polling cycle; returns the samples."""
        cache = {}
        discovery_cache = {}
        samples = []
        for _name, pollster in self.pollsters:
            if 'local_instances' not in discovery_cache:
                discovery_cache['local_instances'] = list(
                    self.discovery.discover(None))
            resources = discovery_cache['local_instances']
            try:
                samples.extend(pollster.get_samples(None, cache, resources))
            except plugin_base.PollsterPermanentError:
                pass
        return samples

    def close(self):
        if self._saved is None:
            with contextlib.suppress(AttributeError):
                del ceilometer_pollsters.GenericComputePollster._inspector
        else:
            ceilometer_pollsters.GenericComputePollster._inspector = \
                self._saved
        for conn in self._raw:
            with contextlib.suppress(Exception):
                conn.close()
