"""The bus and ceilometer agent cost of host.usage (issue 13).

For hosts of 20, 200 and 1000 instances (records the shape of the
benchmark guests': one disk, one tap, memory figures), against one
``compute.instance.exists`` with usage per instance:

- the bus: messages per second to the real RabbitMQ (sent with
  oslo.messaging's ``messagingv2``, until the broker holds them all) and
  bytes per instance as the broker keeps them (message bodies);
- ceilometer's notification agent: CPU (this process's) per instance for
  the package's sample endpoint, run by ceilometer's code, to turn the
  messages into samples;
- ceilometer-polling: CPU per instance of one cycle of ceilometer 27's
  discovery and pollsters for the same meters (its default polling.yaml's
  compute meters) over as many domains of libvirt's test driver in the
  running libvirtd (``test+unix:///default``): the polling agent's own
  CPU, not libvirtd's or QEMU's (with real guests both cost more).

Targets (reported, not asserted): at most 500 bytes per instance on the
wire; the agent's CPU per instance at most 1/5 of ceilometer-polling's.

Run: ``python -m benchmarks.host_usage_cost [--sizes 20,200,1000]`` (as
root, with libvirtd and RabbitMQ up, after ``tools/setup-env.sh test``).
"""

import argparse
import json
import os
import sys
import time
import uuid as uuidlib

import oslo_messaging

from benchmarks import common
from benchmarks import payload as payload_bench
from nova_usage_ext import exists
from nova_usage_ext import host_usage
from nova_usage_ext.virt import base
from tests.functional import bus

HOST = 'bench-compute'
SIZES = (20, 200, 1000)
MAX_INSTANCES = 100  # [usage_ext] host_usage_max_instances default
BYTES_TARGET = 500
CPU_RATIO_TARGET = 5.0
DEFAULT_POLLED = ('power.state', 'cpu', 'memory.available', 'memory.usage',
                  'network.incoming.bytes', 'network.incoming.packets',
                  'network.outgoing.bytes', 'network.outgoing.packets',
                  'disk.device.read.bytes', 'disk.device.read.requests',
                  'disk.device.write.bytes', 'disk.device.write.requests')


def records(count):
    usages = []
    for i in range(count):
        usage = payload_bench.sample_usage(i)
        usage.hypervisor_state = 1
        usage.image_ref = str(uuidlib.uuid4())
        usage.memory = base.MemoryUsage(
            actual_kib=65536, available_kib=61212, usable_kib=40120,
            unused_kib=30400, rss_kib=52000)
        usage.kinds = frozenset(base.EVERY_KIND)
        usages.append(usage)
    return usages


def messages(usages):
    """(host.usage messages, one exists per instance) of one reading."""
    read_at = usages[0].read_at
    per_host = host_usage.messages(HOST, read_at, usages, MAX_INSTANCES)
    per_instance = [exists.exists_notification(u, HOST) for u in usages]
    return per_host, per_instance


def bus_cost(sizes, log):
    conf = bus.make_conf()
    transport = oslo_messaging.get_notification_transport(
        conf, url=bus.RABBIT_URL)
    topic = '%s%d-hostusage-%s' % (common.PREFIX, os.getpid(),
                                   uuidlib.uuid4().hex[:8])
    queue = '%s.info' % topic
    results = []
    try:
        notifier = oslo_messaging.Notifier(
            transport, driver='messagingv2', topics=[topic],
            publisher_id='nova-compute:%s' % HOST)
        payload_bench._send_all(notifier, [('warmup', {})] * 20, queue, 20)
        payload_bench._queue_stats(queue)
        for size in sizes:
            per_host, per_instance = messages(records(size))
            for mode, batch in (('host.usage', per_host),
                                ('exists per instance', per_instance)):
                pairs = [(m['event_type'], m['payload']) for m in batch]
                _sent, landed = payload_bench._send_all(
                    notifier, pairs, queue, len(pairs))
                count, size_bytes = payload_bench._queue_stats(queue)
                rec = {'instances': size, 'mode': mode,
                       'messages': len(pairs), 'landed': count,
                       'bytes': size_bytes, 'seconds': landed,
                       'messages_per_s': len(pairs) / landed,
                       'instances_per_s': size / landed,
                       'bytes_per_instance': size_bytes / size}
                results.append(rec)
                log('bus: %d instances, %s: %d messages, %.0f msg/s, '
                    '%.0f B/instance' % (size, mode, len(pairs),
                                         rec['messages_per_s'],
                                         rec['bytes_per_instance']))
        return results
    finally:
        with common.shielded():
            bus.delete_queues(topic)
            transport.cleanup()


def agent_cost(sizes, log, repeat=5):
    """CPU seconds per instance for the sample endpoint, in ceilometer."""
    from benchmarks import ceilometer_cycle
    from nova_usage_ext import ceilometer_endpoint
    from tests.functional import ceilometer_fixtures as cf
    conf = ceilometer_cycle.make_conf('test+unix:///default')
    endpoint = ceilometer_endpoint.UsageNotifications(conf, None)
    results = []
    for size in sizes:
        per_host, per_instance = messages(records(size))
        for mode, batch in (('host.usage', per_host),
                            ('exists per instance', per_instance)):
            received = [cf.as_received(m) for m in batch]
            times = []
            samples = 0
            for _ in range(repeat):
                t0 = time.process_time()
                samples = sum(len(list(endpoint.build_sample(m)))
                              for m in received)
                times.append(time.process_time() - t0)
            rec = {'instances': size, 'mode': mode, 'samples': samples,
                   'cpu_s_per_instance': min(times) / size}
            results.append(rec)
            log('agent: %d instances, %s: %d samples, %.1f µs CPU/instance'
                % (size, mode, samples, rec['cpu_s_per_instance'] * 1e6))
    return results


def polling_cost(sizes, log, cycles=3):
    """CPU seconds per instance of ceilometer-polling's cycle."""
    from benchmarks import ceilometer_cycle
    from benchmarks import testdriver
    domains = testdriver.TestDomains('hu')
    results = []
    try:
        for size in sizes:
            domains.grow_to(size)
            wanted = list(domains.uuids)
            cycle = ceilometer_cycle.CeilometerCycle(
                testdriver.URI,
                lambda raw: common.OnlyTheseDomains(raw, wanted),
                meters=DEFAULT_POLLED)
            try:
                cycle.cycle()  # warm up: connections, caches
                times = []
                samples = 0
                for _ in range(cycles):
                    t0 = time.process_time()
                    samples = len(cycle.cycle())
                    times.append(time.process_time() - t0)
            finally:
                cycle.close()
            rec = {'instances': size, 'samples': samples,
                   'cpu_s_per_instance': min(times) / size}
            results.append(rec)
            log('polling: %d instances, %d samples, %.1f µs CPU/instance'
                % (size, samples, rec['cpu_s_per_instance'] * 1e6))
    finally:
        domains.close()
    return results


def run(sizes, log):
    common.quiet_logging()
    return {'bus': bus_cost(sizes, log), 'agent': agent_cost(sizes, log),
            'polling': polling_cost(sizes, log)}


def table(out):
    """Markdown tables, with the targets met or not."""
    lines = ['| instances | mode | messages | msg/s | bytes/instance '
             '(target <= %d) |' % BYTES_TARGET,
             '| ---: | --- | ---: | ---: | ---: |']
    for rec in out['bus']:
        lines.append('| %d | %s | %d | %.0f | %.0f %s |' % (
            rec['instances'], rec['mode'], rec['messages'],
            rec['messages_per_s'], rec['bytes_per_instance'],
            'met' if rec['bytes_per_instance'] <= BYTES_TARGET
            else 'not met'))
    polling = {r['instances']: r['cpu_s_per_instance']
               for r in out['polling']}
    lines += ['', '| instances | mode | agent µs CPU/instance | '
              'ceilometer-polling µs CPU/instance | ratio (target >= %.0f) |'
              % CPU_RATIO_TARGET, '| ---: | --- | ---: | ---: | ---: |']
    for rec in out['agent']:
        poll = polling.get(rec['instances'])
        ratio = poll / rec['cpu_s_per_instance'] if poll else None
        lines.append('| %d | %s | %.1f | %s | %s |' % (
            rec['instances'], rec['mode'], rec['cpu_s_per_instance'] * 1e6,
            '%.1f' % (poll * 1e6) if poll else '-',
            '-' if ratio is None else '%.1f %s' % (
                ratio, 'met' if ratio >= CPU_RATIO_TARGET else 'not met')))
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default=','.join(map(str, SIZES)),
                        help='instances per host, comma separated')
    parser.add_argument('--json', help='also write the results here')
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(',') if s]
    out = run(sizes, lambda m: print(m, file=sys.stderr, flush=True))
    print(table(out))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(out, f, indent=1)


if __name__ == '__main__':
    main()
