"""``nova-usage-ext``: read a hypervisor and print what would be sent.

``nova-usage-ext poll`` opens a libvirt URI, reads every nova instance
once (or every ``--interval`` seconds) and prints one line per instance.
With no ``--connection-uri`` it reads the demo node shipped with the
package through libvirt's test driver, so it runs with no hypervisor.
``nova-usage-ext listen`` prints or checks what arrives on the bus
(:mod:`nova_usage_ext.cmd.listen`).
"""

import argparse
import json
import logging
import math
import os
import socket
import sys
import threading
import time
import urllib.parse

from nova_usage_ext import cmd
from nova_usage_ext import exists
from nova_usage_ext.cmd import listen
from nova_usage_ext.virt import base

CommandError = cmd.CommandError

DEMO_NODE = 'demo-node.xml'


def demo_node_path():
    """The demo node file, installed (share/) or in a source checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = (
        os.path.join(sys.prefix, 'share', 'nova-usage-ext', DEMO_NODE),
        os.path.join(here, '..', '..', 'etc', 'nova-usage-ext', DEMO_NODE),
    )
    for path in candidates:
        if os.path.isfile(path):
            return os.path.normpath(path)
    return os.path.normpath(candidates[0])


def _check_uri(uri):
    """A clear error for a URI libvirt would misread or fail on unclearly."""
    try:
        urllib.parse.urlsplit(uri).port
    except ValueError as exc:
        raise CommandError('bad libvirt URI %s: %s' % (uri, exc))
    # libvirt's own message for a bad node file names no path; say which.
    for prefix in ('test:///', 'test+unix:///'):
        if uri.startswith(prefix):
            path = '/' + uri[len(prefix):].split('?', 1)[0]
            if prefix == 'test:///' and path != '/default':
                if not os.path.isfile(path) or not os.access(path, os.R_OK):
                    raise CommandError('cannot read libvirt test node file '
                                       '%s' % path)


class NoAnswer(CommandError):
    """The hypervisor took the connection but did not answer in time."""


def within(seconds, call, what):
    """call() in a thread of its own; NoAnswer if it has not returned
    within seconds. libvirt's calls cannot be interrupted: a call that
    never returns is left behind in a daemon thread, and the command
    exits."""
    result = {}

    def run():
        try:
            result['value'] = call()
        except BaseException as exc:
            result['error'] = exc

    thread = threading.Thread(target=run, name='nova-usage-ext-call',
                              daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise NoAnswer('%s did not answer within %gs' % (what, seconds))
    if 'error' in result:
        raise result['error']
    return result['value']


def _cell(value, scale=1):
    return '-' if value is None else str(value // scale)


def _sum(items, attr):
    values = [getattr(i, attr) for i in items if getattr(i, attr) is not None]
    return sum(values) if values else None


TABLE_COLUMNS = ('INSTANCE', 'NAME', 'PROJECT', 'STATE', 'CPU_S',
                 'DISK_RD_B', 'DISK_WR_B', 'NET_RX_B', 'NET_TX_B')


def table_row(usage):
    return (usage.uuid, usage.display_name or usage.name,
            usage.project_id or '-', usage.state_name,
            _cell(usage.cpu_time_ns, 10 ** 9),
            _cell(_sum(usage.disks, 'read_bytes')),
            _cell(_sum(usage.disks, 'write_bytes')),
            _cell(_sum(usage.interfaces, 'rx_bytes')),
            _cell(_sum(usage.interfaces, 'tx_bytes')))


def print_table(usages, out):
    rows = [TABLE_COLUMNS] + [table_row(u) for u in usages]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write('  '.join(cell.ljust(w) for cell, w
                            in zip(row, widths)).rstrip() + '\n')


def print_cycle(usages, args, out):
    usages = sorted(usages, key=lambda u: u.uuid)
    if args.format == 'table':
        print_table(usages, out)
    else:
        for usage in usages:
            if args.format == 'notification':
                line = exists.exists_notification(usage, args.host,
                                                  args.audit_period)
            else:
                line = exists.usage_primitive(usage, args.host)
            out.write(json.dumps(line, sort_keys=True) + '\n')
    out.flush()


def poll(args, out):
    # Imported here so that `--help` works where libvirt-python is missing.
    from nova_usage_ext.virt import libvirt as libvirt_usage

    uri = args.connection_uri or 'test://' + demo_node_path()
    _check_uri(uri)
    connection = libvirt_usage.LibvirtConnection(uri)
    reader = libvirt_usage.LibvirtUsageReader(connection)
    what = 'libvirt at %s' % uri
    cycle = 0
    try:
        while True:
            cycle += 1
            try:
                usages = within(args.timeout, reader.read_all, what)
            except base.HypervisorUnavailable as exc:
                if not args.interval or cycle == 1:
                    raise CommandError(str(exc))
                logging.getLogger('nova_usage_ext').error(
                    '%s; trying again in %ss', exc, args.interval)
            else:
                print_cycle(usages, args, out)
            if not args.interval or (args.count and cycle >= args.count):
                return 0
            time.sleep(args.interval)
    finally:
        try:
            # A call left hanging holds the connection: do not wait on it.
            within(1, reader.close, what)
        except NoAnswer:
            pass


def seconds(low, high):
    """An argparse type: a finite number of seconds within [low, high]."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError('%r is not a number' % text)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError('%s is not a finite number'
                                             % text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                'must be from %g to %g seconds, not %s' % (low, high, text))
        return value
    return parse


def count(text):
    """An argparse type: 0 or a positive whole number."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError('%r is not a whole number' % text)
    if value < 0:
        raise argparse.ArgumentTypeError('must be 0 or more, not %s' % text)
    return value


DEFAULT_TIMEOUT = 30.0


def build_parser():
    parser = argparse.ArgumentParser(
        prog='nova-usage-ext',
        description='Read instance usage the way nova-compute will report '
                    'it, and print it.')
    parser.add_argument('-v', '--verbose', action='store_true',
                        help='log what the reader does (to stderr)')
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser(
        'poll', help='read the hypervisor and print usage per instance',
        description='Print one line per nova instance on the hypervisor.')
    p.add_argument('--connection-uri', metavar='URI',
                   help='libvirt URI to read (default: the demo node through '
                        "libvirt's test driver, test://%s)" % demo_node_path())
    p.add_argument('--format', choices=('json', 'table', 'notification'),
                   default='json',
                   help='json: the versioned usage payload (default); '
                        'table: readable columns; notification: the '
                        'compute.instance.exists message nova-compute sends')
    p.add_argument('--interval', type=seconds(0, 86400), default=0,
                   metavar='SECONDS',
                   help='read again every SECONDS, at most a day (default: '
                        'read once)')
    p.add_argument('--count', type=count, default=0, metavar='N',
                   help='with --interval, stop after N reads')
    p.add_argument('--timeout', type=seconds(0.1, 3600),
                   default=DEFAULT_TIMEOUT, metavar='SECONDS',
                   help='give up (exit 1) when libvirt does not answer a '
                        'connection or a read within SECONDS (default: %g)'
                        % DEFAULT_TIMEOUT)
    p.add_argument('--host', default=socket.gethostname(),
                   help='host name to put in payloads (default: this host)')
    p.add_argument('--audit-period', choices=exists.AUDIT_PERIODS,
                   default='hour',
                   help="nova's instance_usage_audit_period, for the audit "
                        'period of --format notification (default: hour)')
    p.set_defaults(func=poll)
    listen.add_parser(sub, seconds, count)
    return parser


def one_line(text):
    """libvirt's and others' multi-line messages, on one line."""
    return '; '.join(line.strip() for line in str(text).splitlines()
                     if line.strip())


def main(argv=None, out=None):
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if args.verbose else logging.WARNING,
        format='%(levelname)s %(name)s: %(message)s')
    try:
        return args.func(args, out)
    except CommandError as exc:
        sys.stderr.write('nova-usage-ext: error: %s\n' % one_line(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        # Still one line; the traceback only with --verbose.
        if args.verbose:
            logging.getLogger('nova_usage_ext').exception('failed')
        sys.stderr.write('nova-usage-ext: error: %s: %s\n' % (
            type(exc).__name__, one_line(exc)))
        return 1


if __name__ == '__main__':
    sys.exit(main())
