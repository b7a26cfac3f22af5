"""Domain XML with nova's metadata, and a libvirt test-driver node of them.

Shared by the unit tests (libvirt's in-process test driver) and the
functional tests (real QEMU guests), so both describe guests the same way.
"""

import os
import uuid as uuidlib
from xml.sax import saxutils

import fixtures

from nova_usage_ext.virt import libvirt as libvirt_usage

NS_1_1 = 'http://openstack.org/xmlns/libvirt/nova/1.1'
NS_1_0 = 'http://openstack.org/xmlns/libvirt/nova/1.0'


def nova_metadata(display_name='vm', flavor='m1.tiny', vcpus=1, memory_mb=64,
                  root_gb=1, ephemeral_gb=0, user_id=None, project_id=None,
                  namespace=NS_1_1):
    user_id = user_id or uuidlib.uuid4().hex
    project_id = project_id or uuidlib.uuid4().hex
    return f"""
    <nova:instance xmlns:nova="{namespace}">
      <nova:package version="34.0.0"/>
      <nova:name>{saxutils.escape(display_name)}</nova:name>
      <nova:creationTime>2026-11-22 00:00:00</nova:creationTime>
      <nova:flavor name="{flavor}">
        <nova:memory>{memory_mb}</nova:memory>
        <nova:disk>{root_gb}</nova:disk>
        <nova:swap>0</nova:swap>
        <nova:ephemeral>{ephemeral_gb}</nova:ephemeral>
        <nova:vcpus>{vcpus}</nova:vcpus>
      </nova:flavor>
      <nova:owner>
        <nova:user uuid="{user_id}">demo</nova:user>
        <nova:project uuid="{project_id}">demo</nova:project>
      </nova:owner>
      <nova:root type="image" uuid="{uuidlib.uuid4()}"/>
    </nova:instance>"""


def domain_xml(name, uuid=None, metadata='', disks=(), interfaces=(),
               domain_type='test', memory_mb=64, vcpus=1, os_xml=None,
               extra_devices=''):
    """A domain.

    :param disks: (target dev, source path, volume id or None) tuples.
    :param interfaces: (tap name, MAC) tuples, as type='ethernet'.
    """
    uuid = uuid or str(uuidlib.uuid4())
    os_xml = os_xml or "<type arch='x86_64'>hvm</type>"
    meta = '<metadata>%s</metadata>' % metadata if metadata else ''
    devices = []
    for dev, path, volume_id in disks:
        serial = '<serial>%s</serial>' % volume_id if volume_id else ''
        driver = ("<driver name='qemu' type='qcow2'/>"
                  if domain_type != 'test' else '')
        devices.append(
            f"<disk type='file' device='disk'>{driver}"
            f"<source file='{path}'/><target dev='{dev}' bus='virtio'/>"
            f"{serial}</disk>")
    for tap, mac in interfaces:
        devices.append(
            f"<interface type='ethernet'><mac address='{mac}'/>"
            f"<target dev='{tap}' managed='yes'/><model type='virtio'/>"
            f"</interface>")
    return f"""<domain type='{domain_type}'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  {meta}
  <memory unit='MiB'>{memory_mb}</memory>
  <vcpu>{vcpus}</vcpu>
  <os>{os_xml}</os>
  <devices>{''.join(devices)}{extra_devices}</devices>
</domain>"""


def nova_test_domain(index, namespace=NS_1_1, n_disks=1, n_nics=1, **meta):
    """A test-driver domain the way nova would define it."""
    uuid = str(uuidlib.UUID(int=index + 1))
    disks = [('vd' + chr(ord('a') + i),
              '/var/lib/nova/instances/%s/disk%d' % (uuid, i), None)
             for i in range(n_disks)]
    nics = [('tap%08x-%02d' % (index, i), 'fa:16:3e:%02x:%02x:%02x'
             % ((index >> 8) & 0xff, index & 0xff, i))
            for i in range(n_nics)]
    meta.setdefault('display_name', 'vm-%d' % index)
    return domain_xml('instance-%08x' % index, uuid,
                      nova_metadata(namespace=namespace, **meta), disks, nics)


class TestNode(fixtures.Fixture):
    """libvirt's test driver loaded from a node file of the given domains.

    ``connection`` is the reader's connection object (read-write, so tests
    can start, stop and undefine domains through ``conn``).
    """

    def __init__(self, domains):
        super().__init__()
        self.domains = domains

    def _setUp(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        self.path = os.path.join(tmp, 'node.xml')
        with open(self.path, 'w') as f:
            f.write('<node>\n%s\n</node>\n' % '\n'.join(self.domains))
        self.uri = 'test://' + self.path
        self.connection = libvirt_usage.LibvirtConnection(self.uri,
                                                          read_only=False)
        self.addCleanup(self.connection.reset)

    @property
    def conn(self):
        return self.connection.get()
