"""Check what `tools/poll.sh` printed against the demo node it read.

usage: check_poll.py POLL_OUTPUT NODE_XML

The expected instances come from the node file: every domain carrying nova's
libvirt metadata must have exactly one usage line, any other domain none.
Standard library only: it runs with the system python, outside the venv.
"""

import json
import sys
import xml.etree.ElementTree as ET

NOVA_NS_PREFIX = '{http://openstack.org/xmlns/libvirt/nova/'


def node_domains(path):
    nova, other = set(), set()
    for domain in ET.parse(path).getroot().iter('domain'):
        uuid = domain.findtext('uuid').strip()
        metadata = domain.find('metadata')
        is_nova = metadata is not None and any(
            child.tag.startswith(NOVA_NS_PREFIX) and
            child.tag.endswith('}instance') for child in metadata)
        (nova if is_nova else other).add(uuid)
    return nova, other


def printed_usage(path):
    usage = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                payload = json.loads(line)
                data = payload['nova_object.data']
                name = payload['nova_object.name']
            except (ValueError, KeyError, TypeError) as exc:
                raise SystemExit('line %d is not a usage payload (%s): %s'
                                 % (number, exc, line.strip()[:200]))
            if name != 'InstanceUsagePayload':
                raise SystemExit('line %d is a %s' % (number, name))
            uuid = data.get('instance_uuid')
            if uuid in usage:
                raise SystemExit('instance %s printed twice' % uuid)
            if not isinstance(data.get('cpu_time_ns'), int) or \
                    data['cpu_time_ns'] <= 0:
                raise SystemExit('instance %s has no CPU time: %r'
                                 % (uuid, data.get('cpu_time_ns')))
            usage[uuid] = data
    return usage


def main(poll_output, node_xml):
    nova, other = node_domains(node_xml)
    if not nova or not other:
        raise SystemExit('%s should hold nova instances and another guest'
                         % node_xml)
    usage = printed_usage(poll_output)
    missing = sorted(nova - set(usage))
    unexpected = sorted(set(usage) - nova)
    if missing or unexpected:
        raise SystemExit('usage missing for %s; printed for non-nova or '
                         'unknown %s' % (missing or 'none',
                                         unexpected or 'none'))
    print('ci: poll printed usage for the %d nova instances of %s (%s), '
          'none for its other guest(s) (%s)'
          % (len(nova), node_xml, ', '.join(sorted(nova)),
             ', '.join(sorted(other))))


if __name__ == '__main__':
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.strip().splitlines()[2])
    main(*sys.argv[1:])
