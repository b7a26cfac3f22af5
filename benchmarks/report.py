"""The markdown tables and the targets, from a run's results."""

import collections

TARGETS_GUESTS = 20


def _ms(value, digits=1):
    if value is None:
        return 'n/a'
    return '%.*f' % (digits, value * 1e3)


def _spread_ms(s, digits=1):
    """median [min–max] of a summary in seconds, as ms."""
    if not s:
        return 'n/a'
    return '%s [%s–%s]' % (_ms(s['median'], digits), _ms(s['min'], digits),
                           _ms(s['max'], digits))


def _ratio(value):
    return 'n/a' if value is None else '%.1f×' % value


def _calls(by_api):
    return ', '.join('%s %d' % (k, v) for k, v in sorted(
        by_api.items(), key=lambda kv: (-kv[1], kv[0])))


def poll_table(poll):
    ours, one, ceil = poll['ours'], poll['ours_one_call'], poll['ceilometer']
    r, r1 = poll['ratios'], poll['ratios_one_call']
    w = poll['warmup']

    def row(label, fmt, key, ratio=True):
        return (label, fmt(ours[key]), fmt(one[key]), fmt(ceil[key]),
                '%s / %s' % (_ratio(r[key]), _ratio(r1[key])) if ratio
                else '')

    rows = [
        row('wall time per cycle, ms', _spread_ms, 'wall_s'),
        row('client CPU per cycle, ms (this process)',
            lambda s: _spread_ms(s, 2), 'cpu_s'),
        row('libvirtd CPU per cycle, ms (schedstat)',
            lambda s: _spread_ms(s, 2), 'libvirtd_cpu_sched_s'),
        row('libvirtd CPU per cycle, ms (/proc stat utime+stime, mean of '
            '10 ms ticks)', _ms, 'libvirtd_cpu_stat_mean_s'),
        row('QEMU CPU per cycle, ms (all guests, schedstat; includes the '
            'guests\' own idle work)', lambda s: _spread_ms(s, 1),
            'qemu_cpu_sched_s', ratio=False),
        row('libvirt API calls per cycle', lambda s: '%d' % s['median'],
            'calls'),
        row('calls by API', _calls, 'calls_by_api', ratio=False),
        row('instances read per cycle', lambda s: '%d' % s['median'],
            'instances', ratio=False),
        ('warm-up cycle (excluded): wall ms / calls',
         '%s / %d' % (_ms(w['ours']['wall_s']), w['ours']['calls']),
         '%s / %d' % (_ms(w['ours_one_call']['wall_s']),
                      w['ours_one_call']['calls']),
         '%s / %d' % (_ms(w['ceilometer']['wall_s']),
                      w['ceilometer']['calls']), ''),
        ('read path', ', '.join(ours.get('path', [])),
         ', '.join(one.get('path', [])),
         'discovery + 13 pollsters (%d samples)' % ceil.get('samples', 0),
         ''),
        ('payloads for the cycle\'s instances, ms (after the read, not '
         'in the times above)', _spread_ms(ours.get('payload_wall_s'), 2),
         _spread_ms(one.get('payload_wall_s'), 2),
         'n/a (samples are built inside the cycle)', ''),
    ]
    lines = ['### Poll cycle: %d real QEMU guests, %d cycles each, '
             'rotating (median [min–max])' % (poll['guests'],
                                              poll['cycles']), '',
             '| per cycle | nova-usage-ext (as shipped: stats_workers 2) | '
             'nova-usage-ext, one call (stats_workers 1) | ceilometer 27 | '
             'ceilometer / ours: shipped / one call |',
             '| --- | --- | --- | --- | --- |']
    lines += ['| %s | %s | %s | %s | %s |' % row for row in rows]
    if any(poll[who].get('foreign_domains_max')
           for who in ('ours', 'ours_one_call', 'ceilometer')):
        lines += ['', 'Other domains were on the daemon during the run '
                  '(hidden from the readers, but the daemon listed or '
                  'read them): the daemon CPU figures include them.']
    b = poll.get('bulk_breakdown_s')
    if b:
        lines += ['', '#### Where a single bulk call\'s time goes (%d '
                  'guests, median of 5 calls)' % poll['guests'], '',
                  '| domainListGetStats groups | wall ms |', '| --- | --- |']
        lines += ['| %s | %s |' % (k, _ms(v)) for k, v in b.items()]
    return '\n'.join(lines)


def scale_table(scale):
    lines = ['### Scale: libvirt test driver in the daemon (no guests), '
             'median [min–max]', '',
             '| domains | ours: calls | ours: wall ms | ours: client CPU ms '
             '| ceilometer: calls | ceilometer: wall ms | ceilometer: '
             'client CPU ms | wall per domain, µs: ours / ceilometer | '
             'wall ratio | calls ratio | ours: path |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- '
             '| --- |']
    for s in scale:
        o, c, r = s['ours'], s['ceilometer'], s['ratios']
        n = s['domains']
        lines.append('| %d | %d | %s | %s | %d | %s | %s | %.0f / %.0f | '
                     '%s | %s | %s |'
                     % (n, o['calls']['median'],
                        _spread_ms(o['wall_s']), _spread_ms(o['cpu_s']),
                        c['calls']['median'], _spread_ms(c['wall_s']),
                        _spread_ms(c['cpu_s']),
                        o['wall_s']['median'] / n * 1e6,
                        c['wall_s']['median'] / n * 1e6,
                        _ratio(r['wall_s']),
                        _ratio(r['calls']), ', '.join(o.get('path', []))))
    lines += ['', 'The test driver\'s bulk stats carry only the state '
              'group, so ours takes its per-domain fallback here (its '
              'stats calls, split as shipped, + info, blockStats, '
              'blockInfo, interfaceStats per domain), not the bulk path it '
              'takes on QEMU/KVM. '
              'blockStatsFlags is unsupported by the test driver: '
              'ceilometer\'s disk samples are missing (its calls are '
              'counted).']
    return '\n'.join(lines)


def _pp(s, key):
    return 'n/a' if not s or s.get(key) is None else '%.2f' % s[key]


def hook_table(hook):
    ups = hook['broker_up']
    lines = ['### Delete hook: %d deletes per row over RabbitMQ, '
             'alternating with messagingv2 alone' % ups[0]['deletes'], '',
             '| case | delete.start passed on after, ms p50 / p99 / max | '
             'Notifier.info() returns after, ms p50 / p99 | n |',
             '| --- | --- | --- | --- |']

    def trio(s):
        return '%s / %s / %s' % (_pp(s, 'p50'), _pp(s, 'p99'),
                                 _pp(s, 'max'))

    for up in ups:
        lines.append('| messagingv2 alone | %s | %s / %s | %d |' % (
            trio(up['base_pass']), _pp(up['base_total'], 'p50'),
            _pp(up['base_total'], 'p99'), up['deletes']))
        lines.append('| nova_usage_ext → messagingv2, broker up, ledger '
                     'of %d instances (budget %.1f s) | %s | %s / %s '
                     '| %d |' % (
                         up['host_instances'], up['budget_s'],
                         trio(up['ours_pass']),
                         _pp(up['ours_total'], 'p50'),
                         _pp(up['ours_total'], 'p99'), up['deletes']))
        lines.append('| added by the hook (difference of the call times), '
                     '%d instances | | %.2f / %.2f | |' % (
                         up['host_instances'], up['added_p50_ms'],
                         up['added_p99_ms']))
    for kind, label in (('refused', 'broker refuses connections'),
                        ('hanging', 'broker accepts and never answers')):
        d = hook.get('broker_' + kind)
        if not d:
            continue
        lines.append('| %s (budget %.1f s, retry=0) | %s | (not waited '
                     'for) | %d |' % (label, d['budget_s'], trio(d),
                                      d['deletes']))
    lines.append('')
    for up in ups:
        order = up.get('order', {})
        lines.append('On the bus (%d instances): %d of %d deleted instances '
                     'had their final exists on the bus before their '
                     'delete.start.' % (
                         up['host_instances'],
                         order.get('final_exists_then_delete_start', 0),
                         order.get('deletes', 0)))
    if ups[0].get('steps'):
        from benchmarks.hook import STEPS
        lines += ['', '#### Where the hook\'s time goes (ms per delete, '
                  'p50 / p99)', '',
                  '| step | ' + ' | '.join(
                      '%d instances' % u['host_instances'] for u in ups) +
                  ' |', '| --- |' + ' --- |' * len(ups)]
        for key, label in STEPS:
            lines.append('| %s | %s |' % (label, ' | '.join(
                '%s / %s' % (_pp(u['steps'].get(key), 'p50'),
                             _pp(u['steps'].get(key), 'p99'))
                for u in ups)))
        lines.append('')
    for kind, label in (('refused', 'refusing'), ('hanging', 'hanging')):
        d = hook.get('broker_' + kind)
        if not d or 'finals_in_outbox' not in d:
            continue
        lines.append('Broker %s: %d of %d final exists waiting in the '
                     'outbox at the end, %+d threads, %d deletes passed on '
                     'before half the budget.' % (
                         label, d['finals_in_outbox'], d['deletes'],
                         d['threads_added'],
                         d['passed_before_half_budget']))
    save = hook.get('ledger_save')
    if save:
        some = next(iter(save.values()))
        lines += ['', 'Saving the ledger (SQLite, one transaction fsynced, '
                  'after each poll; not in the delete path), %d instances '
                  'held (%d kB of state), ms p50 / p99 by instances changed '
                  'since the last save: ' % (some['instances'],
                                             some['bytes'] // 1024) +
                  ', '.join('%s: %.1f / %.1f' % (k, v['p50'], v['p99'])
                            for k, v in save.items())]
    return '\n'.join(lines)


def payload_table(payload):
    b = payload['build']
    lines = ['### Usage payload and bus', '',
             '| build + serialize, per instance | µs (median [min–max] of 5 '
             'runs of %d) |' % b['instances'], '| --- | --- |']

    def us(s):
        return '%.1f [%.1f–%.1f]' % (s['median'], s['min'], s['max'])

    lines += [
        '| exists.usage_primitive() + json.dumps, no period (%d B) | %s |'
        % (b['bytes_no_period'], us(b['full_no_period_us'])),
        '| same, with the period usage, as the hook sends it (%d B) | %s |'
        % (b['bytes_with_period'], us(b['full_with_period_us'])),
        '| through the objects instead, with the period: from_record '
        '(fresh objects) | %s |' % us(b['from_record_with_period_us']),
        '| … then to_wire | %s |' % us(b['to_wire_with_period_us']),
        '| … then json.dumps | %s |' % us(b['json_dumps_with_period_us']),
    ]
    prof = b.get('profile')
    if prof:
        lines += ['', 'cProfile, with period (µs per instance under the '
                  'profiler, tottime): ' + ', '.join(
                      '%s %.0f' % (r['function'].split('/')[-1],
                                   r['tottime_us_per_instance'])
                      for r in prof['top_tottime'][:6])]
    if payload.get('bus'):
        lines += ['', '| instances per host | messages | mode | msg/s | '
                  'MB/s | instances/s | bytes per instance |',
                  '| --- | --- | --- | --- | --- | --- | --- |']
        for rec in payload['bus']:
            lines.append('| %d | %d | %s | %.0f | %.2f | %.0f | %.0f |' % (
                rec['host_instances'], rec['messages'], rec['mode'],
                rec['messages_per_s'], rec['bytes_per_s'] / 1e6,
                rec['instances_per_s'], rec['bytes_per_instance']))
        lines += ['', 'Sequential sends with oslo.messaging messagingv2, '
                  'timed until the broker holds them all; bytes are the '
                  'AMQP bodies as queued. per-host: one message carrying '
                  'the list of usage payloads (a stand-in: the package has '
                  'no host bulk notification yet).']
    return '\n'.join(lines)


def targets(results):
    rows = []
    poll = results.get('poll')
    if poll:
        at = poll['guests']
        note = ''
        if at != TARGETS_GUESTS:
            note = ' (measured at %d guests, target is at %d)' % (
                at, TARGETS_GUESTS)
        for key, label in (('wall_s', 'wall time'),
                           ('cpu_s', 'client CPU')):
            value = poll['ratios'][key]
            one_call = poll.get('ratios_one_call', {}).get(key)
            rows.append(('>= 5× less %s per cycle than ceilometer at %d '
                         'guests' % (label, TARGETS_GUESTS),
                         '%s%s (held to one call: %s)' % (
                             _ratio(value), note, _ratio(one_call)),
                         _status(value is not None and value >= 5,
                                 at == TARGETS_GUESTS)))
        calls = poll['ours']['calls']['max']
        rows.append(('<= 2 libvirt calls per steady-state cycle',
                     '%d (max over cycles; warm-up %d)' % (
                         calls, poll['warmup']['ours']['calls']),
                     _status(calls <= 2)))
    hook = results.get('hook')
    if hook:
        ups = hook['broker_up']
        # Issue #15's target (it was 20 ms before).
        rows.append(('hook p99 <= 5 ms, broker up', ', '.join(
            '%.2f ms at %d instances' % (u['ours_pass']['p99'],
                                         u['host_instances'])
            for u in ups) + ' (delete.start passed on)', _status_list(
                [u['ours_pass']['p99'] <= 5 for u in ups],
                ['%d instances' % u['host_instances'] for u in ups])))
        downs = [hook[k] for k in ('broker_refused', 'broker_hanging')
                 if hook.get(k) and hook[k].get('p99') is not None]
        if downs:
            budget = downs[0]['budget_s']
            worst = max(d['p99'] for d in downs)
            never = sum(d['never_passed'] for d in downs)
            rows.append(('hook p99 <= budget + 50 ms, broker down',
                         '%.1f ms worst p99 (budget %.0f ms)%s' % (
                             worst, budget * 1e3,
                             '; %d never passed' % never if never else ''),
                         _status(worst <= budget * 1e3 + 50 and not never)))
    payload = results.get('payload')
    if payload:
        b = payload['build']
        with_p = b['full_with_period_us']['median']
        no_p = b['full_no_period_us']['median']
        # Issue #15's target (it was 50 µs before), for the payload the
        # hook sends: with its period.
        rows.append(('<= 20 µs per instance to build and serialize the '
                     'usage with its period',
                     '%.1f µs with period (%.1f µs without)' % (with_p,
                                                                no_p),
                     _status(with_p <= 20)))
    lines = ['### Targets', '', '| target | measured | status |',
             '| --- | --- | --- |']
    lines += ['| %s | %s | %s |' % row for row in rows]
    return '\n'.join(lines), rows


def _status_list(oks, labels):
    if all(oks):
        return 'met'
    if not any(oks):
        return '**not met**'
    return '**not met** at %s (met at %s)' % (
        ', '.join(lab for ok, lab in zip(oks, labels) if not ok),
        ', '.join(lab for ok, lab in zip(oks, labels) if ok))


def _status(ok, valid=True):
    if not valid:
        return 'not measured as specified'
    return 'met' if ok else '**not met**'


def markdown(results):
    if results.get('kvm'):
        return kvm_markdown(results)
    parts = []
    m = results['machine']
    parts.append('Machine: %s CPUs (%s), %s MiB RAM; %s; %s; nova %s, '
                 'ceilometer %s. Run %s, %.0f s.' % (
                     m['nproc'], m['cpu_model'], m['memory_mib'],
                     m['libvirtd'], m['qemu'], m['nova'], m['ceilometer'],
                     results['started_at'], results['duration_s']))
    load = results.get('load_average_1min')
    if load:
        parts.append('1-minute load average before → after each part '
                     '(the machine may be shared): ' + ', '.join(
                         '%s %.2f → %.2f' % (k, v[0], v[1])
                         for k, v in load.items()) + '.')
    if results.get('poll'):
        parts.append(poll_table(results['poll']))
    if results.get('scale'):
        parts.append(scale_table(results['scale']))
    if results.get('hook'):
        parts.append(hook_table(results['hook']))
    if results.get('payload'):
        parts.append(payload_table(results['payload']))
    text, rows = targets(results)
    parts.append(text)
    return '\n\n'.join(parts) + '\n', rows


# -- reStructuredText, for doc/source/performance.rst -------------------------

_UNDERLINE = {'###': '~', '####': '^'}


def _cells(line):
    return [c.strip() for c in line.strip().strip('|').split('|')]


def to_rst(markdown_text):
    """The markdown above as reStructuredText (headings under the
    document's ``~`` level, pipe tables as list-tables)."""
    out = []
    lines = markdown_text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith('#'):
            marks, _, title = line.partition(' ')
            out += [title, _UNDERLINE[marks] * len(title)]
            i += 1
        elif line.startswith('|'):
            rows = []
            while i < len(lines) and lines[i].startswith('|'):
                if not set(lines[i].replace('|', '').strip()) <= set('- '):
                    rows.append(_cells(lines[i]))
                i += 1
            out += ['.. list-table::', '   :header-rows: 1', '']
            for row in rows:
                for j, cell in enumerate(row):
                    out.append('   %s - %s' % ('*' if j == 0 else ' ',
                                               cell) if cell else
                               '   %s -' % ('*' if j == 0 else ' '))
            out.append('')
        else:
            out.append(line)
            i += 1
    return '\n'.join(out).rstrip() + '\n'


# -- the KVM run (python -m benchmarks.run --kvm) -----------------------------

KVM_TARGET_GUESTS = 100
_POLLERS = (('ours', 'nova-usage-ext (shipped)'),
            ('ours_one_call', 'nova-usage-ext (one call)'),
            ('ceilometer', 'ceilometer 27'))


def _kvm_rows(kvm):
    return ([kvm['tcg']] if kvm.get('tcg') else []) + kvm['sizes']


def _label(row):
    return '%s %d' % ('KVM' if row['domain_type'] == 'kvm' else 'TCG',
                      row['guests'])


def kvm_cycle_table(kvm):
    lines = ['### Poll cycle by instance count (median [min–max] of %d '
             'cycles each, rotating)' % kvm['cycles'], '',
             '| guests | poller | wall ms | client CPU ms | libvirtd CPU ms '
             '| QEMU CPU ms | libvirt calls |',
             '| --- | --- | --- | --- | --- | --- | --- |']
    for row in _kvm_rows(kvm):
        for who, name in _POLLERS:
            s = row[who]
            lines.append('| %s | %s | %s | %s | %s | %s | %d |' % (
                _label(row), name, _spread_ms(s['wall_s']),
                _spread_ms(s['cpu_s'], 2),
                _spread_ms(s['libvirtd_cpu_sched_s'], 1),
                _spread_ms(s['qemu_cpu_sched_s'], 1), s['calls']['max']))
        r = row['ratios']
        lines.append('| %s | ceilometer / ours (shipped) | %s | %s | %s | '
                     '| %s |' % (_label(row), _ratio(r['wall_s']),
                                 _ratio(r['cpu_s']),
                                 _ratio(r['libvirtd_cpu_sched_s']),
                                 _ratio(r['calls'])))
    if kvm.get('stopped'):
        lines += ['', 'Stopped %s.' % kvm['stopped']]
    return '\n'.join(lines)


def _per_guest_us(row, who):
    s = row[who]['libvirtd_cpu_sched_s']
    return s and s['median'] / row['guests'] * 1e6


def _counts(counter):
    return ', '.join('%s %.2g' % kv for kv in sorted(counter.items())) or '–'


GROUP_ORDER = ('state', 'cpu-total', 'vcpu', 'balloon', 'interface', 'block')


def kvm_group_table(kvm):
    rows = _kvm_rows(kvm)
    kvms = [r for r in rows if r['domain_type'] == 'kvm'] or rows
    groups = sorted(rows[-1]['floor']['groups'], key=lambda g: (
        GROUP_ORDER.index(g) if g in GROUP_ORDER else len(GROUP_ORDER), g))
    heads = ' / '.join('%s' % _label(r) for r in rows)
    lines = ['### Each stats group alone, per guest (state group included; '
             'median of 5 calls; QMP commands and files from strace of '
             'libvirtd, the least over 3 traced windows at every KVM '
             'size)', '',
             '| group | QMP commands per guest | files opened per guest | '
             'libvirtd CPU µs per guest: %s | wall µs per guest: %s |'
             % (heads, heads), '| --- | --- | --- | --- | --- |']
    # Each size's counts are the least over its traced windows; the least
    # over all sizes drops what other clients of the daemon added.
    work = {}
    for g in groups:
        qmp = opens = None
        for r in kvms:
            q = collections.Counter(r['floor']['groups'][g]['qmp_per_guest'])
            o = collections.Counter(
                r['floor']['groups'][g]['opens_per_guest'])
            qmp = q if qmp is None else qmp & q
            opens = o if opens is None else opens & o
        work[g] = qmp, opens
    for g in groups:
        cpu = ' / '.join('%.0f' % (r['floor']['groups'][g]
                                   ['libvirtd_cpu_per_guest_s'] * 1e6)
                         for r in rows)
        wall = ' / '.join('%.0f' % (r['floor']['groups'][g]
                                    ['wall_per_guest_s'] * 1e6)
                          for r in rows)
        lines.append('| %s | %s | %s | %s | %s |' % (
            g, _counts(work[g][0]), _counts(work[g][1]), cpu, wall))
    return '\n'.join(lines)


FLOOR_GROUP = 'vcpu+interface+block'


def floor_table(kvm):
    lines = ['### Against the floor: libvirtd CPU per guest per cycle, µs',
             '', '| guests | floor (%s in one call) | nova-usage-ext (shipped)'
             ' | ours / floor | ceilometer 27 | ceilometer / floor |'
             % FLOOR_GROUP, '| --- | --- | --- | --- | --- | --- |']
    for row in _kvm_rows(kvm):
        f = row['floor']['groups'][FLOOR_GROUP]['libvirtd_cpu_per_guest_s']
        f *= 1e6
        ours, ceil = _per_guest_us(row, 'ours'), _per_guest_us(
            row, 'ceilometer')
        lines.append('| %s | %.0f | %.0f | %s | %.0f | %s |' % (
            _label(row), f, ours, _ratio(common_ratio(ours, f)), ceil,
            _ratio(common_ratio(ceil, f))))
    return '\n'.join(lines)


def single_read_table(kvm):
    """The hook's read of one instance, by size; None for a run from
    before it was measured."""
    rows = [r for r in _kvm_rows(kvm) if r.get('single_read')]
    if not rows:
        return None
    lines = ['### The hook\'s read: one instance (read_instance, every '
             'counter but memory), each guest read twice', '',
             '| guests | wall ms p50 / p99 / max | libvirtd CPU ms, median |'
             ' reads |', '| --- | --- | --- | --- |']
    for row in rows:
        w = row['single_read']['wall_ms']
        c = row['single_read']['libvirtd_cpu_ms']
        lines.append('| %s | %.2f / %.2f / %.2f | %.2f | %d |' % (
            _label(row), w['p50'], w['p99'], w['max'], c['median'], w['n']))
    return '\n'.join(lines)


def common_ratio(a, b):
    if a is None or not b:
        return None
    return a / b


def kvm_targets(kvm):
    rows = []
    kvms = kvm['sizes']
    at = [r for r in kvms if r['guests'] == KVM_TARGET_GUESTS]
    for key, label, need in (('wall_s', 'wall time', 10),
                             ('libvirtd_cpu_sched_s', 'libvirtd CPU', 10),
                             ('cpu_s', 'client CPU', 30)):
        if at:
            value = at[0]['ratios'][key]
            rows.append(('>= %d× less %s per cycle than ceilometer at %d '
                         'KVM guests' % (need, label, KVM_TARGET_GUESTS),
                         '%s (other sizes: %s)' % (_ratio(value), ', '.join(
                             '%s at %d' % (_ratio(r['ratios'][key]),
                                           r['guests'])
                             for r in kvms if r is not at[0])),
                         _status(value is not None and value >= need)))
        else:
            rows.append(('>= %d× less %s than ceilometer at %d KVM guests'
                         % (need, label, KVM_TARGET_GUESTS), 'not reached',
                         _status(False, False)))
    calls = [(r['ours']['calls']['max'], _label(r)) for r in _kvm_rows(kvm)]
    rows.append(('<= 2 libvirt calls per steady-state cycle at every size',
                 ', '.join('%d at %s' % c for c in calls),
                 _status_list([c[0] <= 2 for c in calls],
                              [c[1] for c in calls])))
    ratios = []
    for r in kvms:
        f = r['floor']['groups'][FLOOR_GROUP]['libvirtd_cpu_per_guest_s']
        ratios.append((common_ratio(_per_guest_us(r, 'ours'), f * 1e6),
                       _label(r)))
    rows.append(('libvirtd CPU per guest within 2× of the floor',
                 ', '.join('%s at %s' % (_ratio(v), lab)
                           for v, lab in ratios),
                 _status_list([v is not None and v <= 2 for v, _ in ratios],
                              [lab for _, lab in ratios])))
    lines = ['### Targets (KVM)', '', '| target | measured | status |',
             '| --- | --- | --- |']
    lines += ['| %s | %s | %s |' % row for row in rows]
    return '\n'.join(lines), rows


def kvm_markdown(results):
    kvm = results['kvm']
    m = results['machine']
    parts = ['Machine: %s CPUs (%s), %s MiB RAM; %s; %s; ceilometer %s. '
             'Run %s, %.0f s; 1-minute load average %.1f → %.1f.' % (
                 m['nproc'], m['cpu_model'], m['memory_mib'], m['libvirtd'],
                 m['qemu'], m['ceilometer'], results['started_at'],
                 results['duration_s'],
                 *results['load_average_1min']['kvm']),
             kvm_cycle_table(kvm), kvm_group_table(kvm), floor_table(kvm)]
    single = single_read_table(kvm)
    if single:
        parts.append(single)
    text, rows = kvm_targets(kvm)
    parts.append(text)
    return '\n\n'.join(parts) + '\n', rows
