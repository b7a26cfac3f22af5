"""nova-like domains on libvirt's test driver inside the running libvirtd
(``test+unix:///default``): many of them, in no time, no QEMU needed.

The test driver's state lives in the daemon and is shared with anything
else that connects to it, so every domain made here is named
``nue-bench-<pid>-...`` and removed again; domains left by a benchmark
process that died are removed on the next start.
"""

import os
import re
import uuid as uuidlib

import libvirt

from benchmarks import common
from tests import libvirt_node
from tests.functional import fixtures as qemu_fixtures

URI = 'test+unix:///default'


def _remove(dom):
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError:
        pass
    try:
        dom.undefine()
    except libvirt.libvirtError:
        pass


def domain_xml(name, uuid, index):
    """The same shape as tests.libvirt_node.nova_test_domain (one disk, one
    tap, nova's 1.1 metadata), under a name and uuid of this run's own."""
    disks = [('vda', '/var/lib/nova/instances/%s/disk' % uuid, None)]
    nics = [('tapb%07x-%02d' % (index % 0x10000000, 0),
             'fa:16:3e:%02x:%02x:%02x' % ((index >> 16) & 0xff,
                                          (index >> 8) & 0xff, index & 0xff))]
    meta = libvirt_node.nova_metadata(display_name='bench-vm-%d' % index)
    return libvirt_node.domain_xml(name, uuid, meta, disks, nics)


class TestDomains:
    """Running nova-like domains on the daemon's test driver."""

    def __init__(self, tag):
        libvirt.registerErrorHandler(lambda ctx, err: None, None)
        self.conn = libvirt.open(URI)
        self.prefix = '%s%d-%s-' % (common.PREFIX, os.getpid(), tag)
        self.uuids = []
        self._remove_stale()

    def _remove_stale(self):
        pattern = re.compile(r'^%s(\d+)-' % re.escape(common.PREFIX))
        for dom in self.conn.listAllDomains():
            match = pattern.match(dom.name())
            if match and not qemu_fixtures.pid_alive(int(match.group(1))):
                _remove(dom)

    def grow_to(self, count):
        """Define and start domains until there are ``count``."""
        while len(self.uuids) < count:
            index = len(self.uuids)
            uuid = str(uuidlib.uuid4())
            dom = self.conn.defineXML(domain_xml(
                '%s%d' % (self.prefix, index), uuid, index))
            self.uuids.append(uuid)  # from here on close() removes it
            dom.create()

    def close(self):
        with common.shielded():
            for uuid in self.uuids:
                try:
                    _remove(self.conn.lookupByUUIDString(uuid))
                except libvirt.libvirtError:
                    pass
            self.uuids = []
            try:
                self.conn.close()
            except libvirt.libvirtError:
                pass
