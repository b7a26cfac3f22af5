"""Part 4: the usage payload and the bus.

- Build and serialize cost per instance: ``exists.usage_primitive`` (the
  package's path, which builds the wire dicts directly) and ``json.dumps``,
  for a reading the shape of the benchmark guests' (one disk, one tap),
  without and with the audit period's usage (the hook sends the latter);
  profiled with cProfile. For comparison, the same through the objects
  (``from_record(...).to_wire()``), timed in its parts.
- Messages and bytes per second to RabbitMQ: one ``compute.instance.exists``
  per instance against one message per host carrying the list of usage
  payloads (the host bulk notification of DESIGN.md section 1, which this
  package does not send yet: its shape here is a stand-in, ``{"host": ...,
  "instances": [<usage payload>, ...]}``).
"""

import cProfile
import dataclasses
import datetime
import gc
import io
import json
import os
import pstats
import time
import uuid as uuidlib

import oslo_messaging

from benchmarks import common
from benchmarks import hook
from nova_usage_ext import ledger
from nova_usage_ext import state
from nova_usage_ext import exists
from nova_usage_ext.objects import usage as usage_objects
from nova_usage_ext.virt import base
from tests.functional import bus

HOST = 'bench-compute'


def sample_usage(i=0):
    now = base.utcnow()
    return base.InstanceUsage(
        uuid=str(uuidlib.uuid4()), name='instance-%08x' % i,
        display_name='bench-vm-%d' % i, project_id=uuidlib.uuid4().hex,
        user_id=uuidlib.uuid4().hex,
        flavor=base.Flavor('m1.nano', 1, 64, 0, 0, 0), state=base.RUNNING,
        read_at=now, cpu_time_ns=123456789000 + i,
        vcpu_time_ns=120000000000 + i, vcpus=1, memory_mb=64,
        disks=[base.DiskUsage('vda', 5632 + i, 11, 0, 0, None, 67108864)],
        interfaces=[base.InterfaceUsage('tapnue%06x' % i,
                                        'fa:16:3e:00:00:%02x' % (i % 256),
                                        90, 1, 0, 0, 0, 0, 0, 0)],
        generation=7)


def sample_period(usage):
    """The usage of the current period as the ledger gives it: an exists
    ten minutes earlier closed the previous one."""
    book = ledger.Ledger(state.Store(None))
    second = 10 ** 9
    earlier = dataclasses.replace(
        usage, read_at=usage.read_at - datetime.timedelta(minutes=10),
        cpu_time_ns=usage.cpu_time_ns - 30 * second,
        vcpu_time_ns=usage.vcpu_time_ns - 29 * second,
        disks=[dataclasses.replace(d, read_bytes=d.read_bytes - 512)
               for d in usage.disks],
        interfaces=[dataclasses.replace(i, rx_bytes=i.rx_bytes - 90)
                    for i in usage.interfaces])
    book.update_one(earlier)
    book.close_period(usage.uuid, earlier.read_at,
                      lambda period: ({}, {'event_type': 'exists'}, 'INFO'))
    book.update_one(usage)
    period = book.period_usage(usage.uuid)
    assert period.cpu_time_ns == 30 * second, period
    return period


def _per_instance(func, items, repeat):
    """Median over ``repeat`` runs of the time per item, in µs."""
    runs = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        for item in items:
            func(item)
        runs.append((time.perf_counter() - t0) / len(items) * 1e6)
    return common.summary(runs)


def _fresh_split(usages, periods, repeat):
    """from_record, to_wire and json.dumps timed apart, each on fresh
    objects (a second to_wire of the same object is cheaper)."""
    parts = {'from_record': [], 'to_wire': [], 'json_dumps': []}
    n = len(usages)
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        objs = [usage_objects.InstanceUsagePayload.from_record(
            u, host=HOST, final=True, source='hypervisor',
            period=periods[u.uuid]) for u in usages]
        t1 = time.perf_counter()
        wires = [o.to_wire() for o in objs]
        t2 = time.perf_counter()
        for w in wires:
            json.dumps(w)
        t3 = time.perf_counter()
        parts['from_record'].append((t1 - t0) / n * 1e6)
        parts['to_wire'].append((t2 - t1) / n * 1e6)
        parts['json_dumps'].append((t3 - t2) / n * 1e6)
    return {k + '_with_period_us': common.summary(v)
            for k, v in parts.items()}


def build_cost(n=1000, repeat=5):
    usages = [sample_usage(i) for i in range(n)]
    periods = {u.uuid: sample_period(u) for u in usages}
    out = {
        'instances': n,
        'full_no_period_us': _per_instance(
            lambda u: json.dumps(exists.usage_primitive(u, HOST)),
            usages, repeat),
        'full_with_period_us': _per_instance(
            lambda u: json.dumps(exists.usage_primitive(
                u, HOST, final=True, period=periods[u.uuid])),
            usages, repeat),
    }
    out.update(_fresh_split(usages, periods, repeat))
    wire = exists.usage_primitive(usages[0], HOST, final=True,
                                  period=periods[usages[0].uuid])
    out['bytes_no_period'] = len(json.dumps(exists.usage_primitive(
        usages[0], HOST)))
    out['bytes_with_period'] = len(json.dumps(wire))
    out['profile'] = profile(usages, periods)
    return out


def profile(usages, periods, top=12):
    prof = cProfile.Profile()
    prof.enable()
    for u in usages:
        json.dumps(exists.usage_primitive(u, HOST, final=True,
                                          period=periods[u.uuid]))
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    total = stats.total_tt
    rows = []
    for (path, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():
        rows.append({'function': '%s:%d(%s)' % (
            os.path.relpath(path, os.path.dirname(os.path.dirname(
                os.path.dirname(path)))) if path.startswith('/') else path,
            line, func),
            'calls_per_instance': nc / len(usages),
            'tottime_us_per_instance': tt / len(usages) * 1e6,
            'cumtime_us_per_instance': ct / len(usages) * 1e6})
    rows.sort(key=lambda r: -r['tottime_us_per_instance'])
    cum = sorted(rows, key=lambda r: -r['cumtime_us_per_instance'])
    return {'total_us_per_instance_profiled': total / len(usages) * 1e6,
            'top_tottime': rows[:top], 'top_cumtime': cum[:top]}


# -- the bus ------------------------------------------------------------------

def _queue_stats(queue):
    """Number and total body bytes of the messages in a queue (drained)."""
    bodies = bus.drain(queue)
    return len(bodies), sum(len(body) for body in bodies)


def _send_all(notifier, messages, queue, expected):
    """Send, then wait until the broker holds them all: time to the last."""
    t0 = time.perf_counter()
    for event_type, payload in messages:
        notifier.info({}, event_type, payload)
    sent = time.perf_counter() - t0
    deadline = time.monotonic() + 60
    while (hook.queue_depth(queue) or 0) < expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    return sent, time.perf_counter() - t0


def bus_throughput(host_sizes, total_instances, log):
    conf = bus.make_conf()
    transport = oslo_messaging.get_notification_transport(
        conf, url=bus.RABBIT_URL)
    topic = '%s%d-bus-%s' % (common.PREFIX, os.getpid(),
                             uuidlib.uuid4().hex[:8])
    queue = '%s.info' % topic
    results = []
    try:
        notifier = oslo_messaging.Notifier(
            transport, driver='messagingv2', topics=[topic],
            publisher_id='compute.%s' % HOST)
        # Warm up: connection, exchange, queue.
        _send_all(notifier, [('warmup', {})] * 20, queue, 20)
        _queue_stats(queue)
        for size in host_sizes:
            rounds = max(1, total_instances // size)
            usages = [sample_usage(i) for i in range(size)]
            wires = [exists.usage_primitive(u, HOST) for u in usages]
            now = base.utcnow()
            start = exists.audit_period_start(now, 'hour')
            per_instance = [
                (exists.EVENT_TYPE, exists.exists_payload(
                    exists.legacy_fields(u, HOST), w, start, now))
                for u, w in zip(usages, wires)] * rounds
            per_host = [('compute.host.usage',
                         {'host': HOST, 'instances': wires})] * rounds
            for mode, messages in (('per-instance', per_instance),
                                   ('per-host', per_host)):
                sent, landed = _send_all(notifier, messages, queue,
                                         len(messages))
                count, size_bytes = _queue_stats(queue)
                instances = size * rounds
                rec = {'host_instances': size, 'mode': mode,
                       'messages': len(messages), 'landed': count,
                       'instances': instances, 'bytes': size_bytes,
                       'send_s': sent, 'until_queued_s': landed,
                       'messages_per_s': len(messages) / landed,
                       'bytes_per_s': size_bytes / landed,
                       'instances_per_s': instances / landed,
                       'bytes_per_instance': size_bytes / instances}
                results.append(rec)
                log('bus: %d instances/host, %s: %d messages, %.0f msg/s, '
                    '%.2f MB/s, %.0f instances/s' % (
                        size, mode, len(messages), rec['messages_per_s'],
                        rec['bytes_per_s'] / 1e6, rec['instances_per_s']))
        return results
    finally:
        with common.shielded():
            hook.delete_queues(topic)
            transport.cleanup()


def run(host_sizes, total_instances, log):
    log('payload: build and serialize cost')
    out = {'build': build_cost()}
    b = out['build']
    log('payload: %.1f µs/instance without period, %.1f with period'
        % (b['full_no_period_us']['median'],
           b['full_with_period_us']['median']))
    out['bus'] = bus_throughput(host_sizes, total_instances, log)
    return out
