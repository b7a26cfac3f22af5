"""Parse a libvirt domain XML once: nova's metadata and the guest devices.

nova writes ``<nova:instance>`` into each guest's ``<metadata>`` in the
namespace ``http://openstack.org/xmlns/libvirt/nova/1.1`` (``/1.0`` before
nova 2023.1). A domain without it was not created by nova and is never
reported. The same parse yields the disk targets (with the Cinder volume id
that nova puts in ``<serial>``) and the interfaces (tap name and MAC), which
the bulk stats API does not return.
"""

import dataclasses
import xml.etree.ElementTree as ET

from nova_usage_ext.virt import base

NOVA_NAMESPACES = (
    'http://openstack.org/xmlns/libvirt/nova/1.1',
    'http://openstack.org/xmlns/libvirt/nova/1.0',
)


class MalformedMetadata(ValueError):
    """The domain claims to be nova's but its metadata is unusable."""


@dataclasses.dataclass(slots=True)
class NovaDomain:
    """What one parse of a nova guest's XML gives, cached per domain."""
    uuid: str
    name: str
    display_name: str | None
    project_id: str
    user_id: str
    flavor: base.Flavor
    namespace: str
    vcpus: int | None
    memory_mb: int | None
    # (target dev, volume id or None), in XML order
    disks: list[tuple[str, str | None]]
    # (target dev or None, MAC or None), in XML order
    interfaces: list[tuple[str | None, str | None]]
    # The image of <root type='image'>, None when booted from a volume.
    image_ref: str | None = None
    # Every disk's target dev, cdroms and floppies included (a config
    # drive): the names libvirt's stats list.
    disk_targets: frozenset = frozenset()


def _int_or_none(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _memory_mb(element):
    if element is None:
        return None
    value = _int_or_none(element.text)
    if value is None:
        return None
    unit = element.get('unit', 'KiB').lower()
    factor = {'b': 1, 'bytes': 1, 'k': 1024, 'kib': 1024, 'kb': 1000,
              'm': 1024 ** 2, 'mib': 1024 ** 2, 'mb': 1000 ** 2,
              'g': 1024 ** 3, 'gib': 1024 ** 3, 'gb': 1000 ** 3}.get(unit)
    if factor is None:
        return None
    return value * factor // (1024 ** 2)


def _find_nova_instance(root):
    metadata = root.find('metadata')
    if metadata is None:
        return None, None
    for ns in NOVA_NAMESPACES:
        element = metadata.find('{%s}instance' % ns)
        if element is not None:
            return element, ns
    return None, None


def _parse_metadata(element, ns):
    q = '{%s}' % ns
    flavor_el = element.find(q + 'flavor')
    owner = element.find(q + 'owner')
    user = owner.find(q + 'user') if owner is not None else None
    project = owner.find(q + 'project') if owner is not None else None
    missing = [what for what, el, attr in (
        ('flavor@name', flavor_el, 'name'),
        ('owner/user@uuid', user, 'uuid'),
        ('owner/project@uuid', project, 'uuid'))
        if el is None or not el.get(attr)]
    if missing:
        raise MalformedMetadata('nova metadata lacks %s' % ', '.join(missing))

    def flavor_int(tag):
        return _int_or_none(flavor_el.findtext(q + tag))

    flavor = base.Flavor(name=flavor_el.get('name'),
                         vcpus=flavor_int('vcpus'),
                         memory_mb=flavor_int('memory'),
                         root_gb=flavor_int('disk'),
                         ephemeral_gb=flavor_int('ephemeral'),
                         swap_mb=flavor_int('swap'),
                         id=flavor_el.get('id') or None)
    return (element.findtext(q + 'name'), project.get('uuid'),
            user.get('uuid'), flavor)


def parse(xml_text):
    """Parse a domain XML.

    :returns: :class:`NovaDomain`, or None when the domain is not nova's.
    :raises MalformedMetadata: nova's metadata is there but unusable, or
        the XML itself does not parse.
    """
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise MalformedMetadata('domain XML does not parse: %s' % exc)
    element, ns = _find_nova_instance(root)
    if element is None:
        return None
    display_name, project_id, user_id, flavor = _parse_metadata(element, ns)
    image = element.find("{%s}root[@type='image']" % ns)

    disks = []
    interfaces = []
    targets = set()
    devices = root.find('devices')
    if devices is not None:
        for disk in devices.findall('disk'):
            target = disk.find('target')
            if target is None or not target.get('dev'):
                continue
            targets.add(target.get('dev'))
            if disk.get('device', 'disk') not in ('disk', 'lun'):
                continue  # cdrom and floppy carry no billable I/O
            disks.append((target.get('dev'), disk.findtext('serial')))
        for iface in devices.findall('interface'):
            target = iface.find('target')
            mac = iface.find('mac')
            interfaces.append((
                target.get('dev') if target is not None else None,
                mac.get('address') if mac is not None else None))

    return NovaDomain(
        uuid=root.findtext('uuid'),
        name=root.findtext('name'),
        display_name=display_name,
        project_id=project_id,
        user_id=user_id,
        flavor=flavor,
        namespace=ns,
        vcpus=_int_or_none(root.findtext('vcpu')),
        memory_mb=_memory_mb(root.find('memory')),
        disks=disks,
        interfaces=interfaces,
        image_ref=image.get('uuid') if image is not None else None,
        disk_targets=frozenset(targets),
    )
