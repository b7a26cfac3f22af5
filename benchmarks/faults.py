"""Faults of the message bus, with the issue's figures:
``python -m benchmarks.faults [options]`` (``tools/faults.sh``).

Runs tests/functional/test_faults.py's :class:`FaultRun` on the real
RabbitMQ through a TCP proxy (never the broker itself): 200 deletes at once
on a healthy broker; 20 deletes during a 60 s outage (refused) with a
nova-compute restart in the middle; the same with a busy connection pool
(22 open connections on nova's transport); a broker that accepts and never
answers; each outage also without the package (``driver = messagingv2``
alone) as the control. Then the options out of range. Prints markdown
tables with each target met or not, writes every number to
``benchmarks/results/faults.json`` and the tables into
``doc/source/reliability.rst`` (between its ``.. BEGIN FIGURES`` and
``.. END FIGURES`` comments) unless ``--no-doc``.
"""

import argparse
import datetime
import json
import os
import sys
import time
import types
import uuid as uuidlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DOC = os.path.join(REPO, 'doc', 'source', 'reliability.rst')
BEGIN = '.. BEGIN FIGURES'
END = '.. END FIGURES'
EXISTS = 'compute.instance.exists'
NOVA_EVENTS = (('compute.instance.delete.start', 'delete.start'),
               ('compute.instance.delete.end', 'delete.end'),
               ('compute.instance.exists', 'exists'))


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog='python -m benchmarks.faults',
        description='Final exists and nova notifications under bus faults '
                    '(TCP proxy in front of RabbitMQ).')
    p.add_argument('--outage', type=float, default=60.0,
                   help='seconds each outage lasts (default 60)')
    p.add_argument('--deletes', type=int, default=20,
                   help='deletes during each outage (default 20)')
    p.add_argument('--burst', type=int, default=200,
                   help='deletes at once on a healthy broker (default 200)')
    p.add_argument('--audits', type=int, default=5,
                   help="nova's audit exists during each outage (default 5)")
    p.add_argument('--pool', type=int, default=22,
                   help="open connections in nova's pool for the busy-pool "
                        'and hanging-broker runs (default 22)')
    p.add_argument('--settle', type=float, default=180.0,
                   help='seconds to wait for the last message after an '
                        'outage (default 180)')
    p.add_argument('--no-doc', action='store_true',
                   help='do not rewrite doc/source/reliability.rst')
    p.add_argument('--output', default=os.path.join(HERE, 'results',
                                                    'faults.json'))
    p.add_argument('--doc-from', metavar='JSON',
                   help='run nothing: rewrite the tables of '
                        'reliability.rst from the results of an earlier '
                        'run (its --output)')
    return p.parse_args(argv)


def _progress(text):
    print('[%s] %s' % (time.strftime('%H:%M:%S'), text), file=sys.stderr,
          flush=True)


def _run(test_faults, **kwargs):
    run = test_faults.FaultRun(**kwargs)
    run.setUp()
    try:
        return run.run().as_dict()
    finally:
        run.cleanUp()


def _stats_workers_check(value):
    """get_info, block_stats and get_all_bw_counters of the driver mixin
    with ``[usage_ext] libvirt_stats_workers = value``: the errors."""
    from oslo_config import cfg

    from nova_usage_ext import conf as usage_conf
    from tests import libvirt_node
    from tests.functional import test_faults

    usage_conf.register_opts(cfg.CONF)
    cfg.CONF.set_override('libvirt_stats_workers', value, group='usage_ext')
    node = libvirt_node.TestNode([libvirt_node.nova_test_domain(0)])
    node.setUp()
    errors = []
    try:
        driver = test_faults._Driver(test_faults._NovaHost(node.conn))
        instance = types.SimpleNamespace(uuid=str(uuidlib.UUID(int=1)))
        for name, call in (
                ('get_info', lambda: driver.get_info(instance).cpu_time_ns),
                ('block_stats', lambda: driver.block_stats(instance, 'vda')),
                ('get_all_bw_counters',
                 lambda: driver.get_all_bw_counters([instance]))):
            try:
                if not call():
                    errors.append('%s: no answer' % name)
            except Exception as exc:
                errors.append('%s: %s' % (name, exc))
        used = driver.usage_reader.stats_workers
    finally:
        cfg.CONF.clear_override('libvirt_stats_workers', group='usage_ext')
        node.cleanUp()
    return {'value': value, 'used': used, 'errors': errors}


def run(args):
    from tests.functional import tcp_proxy
    from tests.functional import test_faults

    results = {'started_at': datetime.datetime.now(datetime.timezone.utc)
               .strftime('%Y-%m-%d %H:%M UTC'), 'args': vars(args),
               'runs': {}}
    started = time.monotonic()
    common = dict(deletes=args.deletes, audits=args.audits,
                  outage_s=args.outage, settle=args.settle)
    plan = [
        ('burst', 'healthy broker, %d deletes at once' % args.burst,
         dict(deletes=args.burst, audits=0, outage_s=0, settle=args.settle),
         False),
        ('restart', 'refused %ds, restart in the middle' % args.outage,
         dict(common, mode=tcp_proxy.REFUSE, restart=True, pool=0), True),
        ('busy_pool', 'refused %ds, %d pooled connections'
         % (args.outage, args.pool),
         dict(common, mode=tcp_proxy.REFUSE, pool=args.pool), True),
        ('hangs', 'accepts, never answers, %ds, %d pooled connections'
         % (args.outage, args.pool),
         dict(common, mode=tcp_proxy.BLACKHOLE, pool=args.pool), True),
        ('budget_0', 'final_exists_budget = 0, healthy broker',
         dict(deletes=3, audits=2, outage_s=0, budget=0.0,
              settle=args.settle), False),
    ]
    for key, label, kwargs, control in plan:
        entry = {'label': label}
        _progress('%s: with the package' % label)
        entry['package'] = _run(test_faults, package=True, **kwargs)
        if control:
            _progress('%s: without it (messagingv2 alone)' % label)
            entry['control'] = _run(test_faults, package=False, **kwargs)
        results['runs'][key] = entry
    results['stats_workers'] = [_stats_workers_check(v) for v in (0, 100)]
    results['duration_s'] = time.monotonic() - started
    return results


# -- tables -------------------------------------------------------------------

def _ms(value):
    return '-' if value is None else '%.0f' % value


def _s(value):
    return '-' if value is None else '%.1f' % value


PACKAGE_THREADS = 4


def _met(ok):
    return 'met' if ok else '**not met**'


def _finals_ok(run):
    return (run['finals_queued'] == run['deletes'] ==
            run['finals_arrived'] and run['outbox_left'] == 0)


def _hold_ok(run):
    hold = run['hold_ms']['max']
    return hold is not None and hold <= run['budget_s'] * 1000 + 50


def finals_table(results):
    lines = ['| fault | finals sent | arrived | lost | copies | before '
             'their delete.start | last after the bus is back (s) | hold '
             "p50 / p99 / max (ms) | budget (s) | package's threads | "
             'target | |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- '
             '| --- | --- |']
    for key, entry in results['runs'].items():
        run = entry['package']
        hold = run['hold_ms']
        target = 'all arrive'
        # The delivery thread, the hook's two read workers and its closer
        # (twice around a restart).
        ok = _finals_ok(run) and _hold_ok(run) and (
            run['package_threads_max'] <= PACKAGE_THREADS * (
                2 if key == 'restart' else 1))
        lines.append('| %s | %d | %d | %d | %d | %d | %s | %s / %s / %s | '
                     '%.1f | %d | %s; hold <= budget + 50 ms | %s |' % (
                         entry['label'], run['finals_queued'],
                         run['finals_arrived'], run['finals_lost'],
                         run['finals_duplicates'],
                         run['finals_before_delete_start'],
                         _s(run['last_final_after_recovery_s']),
                         _ms(hold['p50']), _ms(hold['p99']),
                         _ms(hold['max']), run['budget_s'],
                         run['package_threads_max'], target, _met(ok)))
    return '\n'.join(lines)


def _nova_cell(run):
    return ' / '.join('%d' % run['nova_arrived'][event]
                      for event, _short in NOVA_EVENTS)


def nova_table(results):
    lines = ["| fault | sent by nova | arrived with the package | without "
             "(messagingv2 alone) | process threads peak with / without "
             "| target | |",
             '| --- | --- | --- | --- | --- | --- | --- |']
    for key, entry in results['runs'].items():
        run = entry['package']
        control = entry.get('control')
        expected = ' / '.join('%d' % run['nova_expected'][event]
                              for event, _short in NOVA_EVENTS)
        if control is None:
            ok = run['nova_arrived'] == run['nova_expected']
            lines.append('| %s | %s | %s | - | %d / - | all arrive | %s |'
                         % (entry['label'], expected, _nova_cell(run),
                            run['threads_max'], _met(ok)))
            continue
        got, want = run['nova_arrived'], control['nova_arrived']
        # nova's exists may do better: the outbox resends it.
        ok = all(got[event] == want[event] for event, short in NOVA_EVENTS
                 if short != 'exists') and got[EXISTS] >= want[EXISTS]
        lines.append(
            '| %s | %s | %s | %s | %d / %d | delete.start, delete.end as '
            'without; exists at least as many | %s |' % (
                entry['label'], expected, _nova_cell(run),
                _nova_cell(control), run['threads_max'],
                control['threads_max'], _met(ok)))
    return '\n'.join(lines)


def options_table(results):
    budget = results['runs']['budget_0']['package']
    lines = ['| option | what happened | target | |',
             '| --- | --- | --- | --- |']
    ok = (budget['nova_arrived'] == budget['nova_expected'] and
          _finals_ok(budget))
    lines.append('| final_exists_budget = 0 | the driver loaded; read as '
                 '%.1f s; nova sent %d, %d arrived; finals %d/%d | the '
                 "driver loads, nova's notifications pass | %s |" % (
                     budget['budget_s'], sum(budget['nova_expected']
                                             .values()),
                     sum(budget['nova_arrived'].values()),
                     budget['finals_arrived'], budget['deletes'], _met(ok)))
    for check in results['stats_workers']:
        errors = '; '.join(check['errors']) or 'none'
        lines.append('| libvirt_stats_workers = %d | read as %d; errors '
                     'of get_info, block_stats, get_all_bw_counters: %s | '
                     'nothing raises | %s |' % (
                         check['value'], check['used'], errors,
                         _met(not check['errors'])))
    return '\n'.join(lines)


def markdown(results):
    args = results['args']
    return '\n\n'.join([
        '### Final exists',
        finals_table(results),
        "### nova's own notifications",
        'delete.start / delete.end / exists, counted once each at a '
        'listener on the broker itself (%d deletes and %d audit exists '
        'per outage).' % (args['deletes'], args['audits']),
        nova_table(results),
        '### Options out of range',
        options_table(results)]) + '\n'


def all_met(text):
    return '**not met**' not in text


def update_doc(results, text):
    from benchmarks import report

    with open(DOC) as f:
        doc = f.read()
    head, sep, rest = doc.partition(BEGIN + '\n')
    _old, sep2, tail = rest.partition(END + '\n')
    if not sep or not sep2:
        raise SystemExit('faults: no %s / %s markers in %s'
                         % (BEGIN, END, DOC))
    note = ('Produced by ``tools/faults.sh`` on %s (%.0f s).\n\n'
            % (results['started_at'], results['duration_s']))
    with open(DOC, 'w') as f:
        f.write(head + BEGIN + '\n\n' + note + report.to_rst(text) + '\n' +
                END + '\n' + tail)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sys.path.insert(0, REPO)
    if args.doc_from:
        with open(args.doc_from) as f:
            results = json.load(f)
        # The tables again from the figures, with today's targets.
        text = markdown(results)
        update_doc(results, text)
        _progress('%s updated from %s' % (DOC, args.doc_from))
        print(text)
        return 0 if all_met(text) else 1
    from benchmarks import common
    common.quiet_logging()
    results = run(args)
    text = markdown(results)
    results['markdown'] = text
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, 'w') as f:
        json.dump(results, f, indent=1, sort_keys=True)
    print(text)
    if not args.no_doc:
        update_doc(results, text)
        _progress('%s updated' % DOC)
    return 0 if all_met(text) else 1


if __name__ == '__main__':
    sys.exit(main())
