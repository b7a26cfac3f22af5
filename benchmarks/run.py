"""Run the benchmarks: ``python -m benchmarks.run [options]``.

Needs what ``tools/setup-env.sh test`` installs (libvirtd, QEMU, RabbitMQ
on 127.0.0.1:5672, nova and ceilometer in .venv) and root. Prints progress
on stderr and the markdown tables on stdout, and writes every number to a
JSON file: ``benchmarks/results/latest.json`` for a full default run,
``benchmarks/results/partial.json`` otherwise (unless ``--output``).
"""

import argparse
import datetime
import json
import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, 'results')
KVM_PLOT = os.path.join(REPO, 'doc', 'source', 'images',
                        'kvm-poll-cycle.png')


def _sizes(text):
    return [int(x) for x in text.split(',') if x.strip()]


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog='python -m benchmarks.run',
        description='nova-usage-ext against ceilometer 27: poll cycle on '
                    'real QEMU guests, scale on the test driver, delete '
                    'hook over RabbitMQ, payload and bus.')
    p.add_argument('--guests', type=int, default=20,
                   help='QEMU guests for the poll cycle (default 20)')
    p.add_argument('--cycles', type=int, default=10,
                   help='measured cycles of each poller (default 10)')
    p.add_argument('--scale-sizes', type=_sizes, default=[100, 1000],
                   help='test-driver domain counts (default 100,1000)')
    p.add_argument('--scale-cycles', type=int, default=3,
                   help='measured cycles per scale size (default 3)')
    p.add_argument('--deletes', type=int, default=300,
                   help='simulated deletes with the broker up (default 300)')
    p.add_argument('--down-deletes', type=int, default=20,
                   help='deletes per broker-down case (default 20)')
    p.add_argument('--budget', type=float, default=0.5,
                   help='final_exists_budget with the broker down, s '
                        '(default 0.5)')
    p.add_argument('--host-instances', type=_sizes, default=[20, 200],
                   help='instances in the counter cache at each delete, one '
                        'broker-up run per size (default 20,200)')
    p.add_argument('--bus-instances', type=int, default=2000,
                   help='instances sent per bus mode (default 2000)')
    p.add_argument('--bus-host-sizes', type=_sizes, default=[20, 200],
                   help='instances per host for the bus (default 20,200)')
    for part in ('poll', 'scale', 'hook', 'payload'):
        p.add_argument('--skip-' + part, action='store_true',
                       help='skip the %s part' % part)
    p.add_argument('--kvm', action='store_true',
                   help='run only the KVM poll cycle: --kvm-sizes KVM '
                        'guests and 20 TCG guests against ceilometer, each '
                        'stats group\'s cost, and the picture (writes '
                        'benchmarks/results/kvm.json and --kvm-plot)')
    p.add_argument('--kvm-sizes', type=_sizes, default=[20, 50, 100, 200],
                   help='KVM guest counts (default 20,50,100,200)')
    p.add_argument('--kvm-cycles', type=int, default=5,
                   help='measured cycles of each poller per KVM size '
                        '(default 5)')
    p.add_argument('--kvm-tcg-guests', type=int, default=20,
                   help='TCG guests of the comparison row (default 20; 0: '
                        'none)')
    p.add_argument('--kvm-plot', default=KVM_PLOT,
                   help='PNG of cost per cycle against guests (default '
                        'doc/source/images/kvm-poll-cycle.png)')
    p.add_argument('--quick', action='store_true',
                   help='a short smoke run: 5 guests, 3 cycles, 100 '
                        'domains, 50 deletes, 5 per broker-down case')
    p.add_argument('--output', help='JSON file to write (default: see '
                   'above)')
    args = p.parse_args(argv)
    if args.quick:
        args.guests, args.cycles = 5, 3
        args.scale_sizes, args.scale_cycles = [100], 2
        args.deletes, args.down_deletes = 50, 5
        args.host_instances = [20]
        args.bus_instances = 400
    return args, p


def is_default_run(args, parser):
    defaults = vars(parser.parse_args([]))
    mine = dict(vars(args))
    mine.pop('output')
    defaults.pop('output')
    return mine == defaults


def log(message):
    print('[%s] %s' % (time.strftime('%H:%M:%S'), message), file=sys.stderr,
          flush=True)


def _load():
    with open('/proc/loadavg') as f:
        return float(f.read().split()[0])


def run_parts(args, results):
    """Each part in turn; the 1-minute load average before and after each
    is kept, since the machine may be shared."""
    from benchmarks import common

    load = results['load_average_1min'] = {}

    def part(name, func, *a, **kw):
        before = _load()
        results[name] = func(*a, log, **kw)
        load[name] = [before, _load()]

    with common.interruptible():
        if args.kvm:
            from benchmarks import kvm_cycle
            os.makedirs(os.path.dirname(os.path.abspath(args.kvm_plot)),
                        exist_ok=True)
            part('kvm', kvm_cycle.run, args.kvm_sizes, args.kvm_cycles,
                 tcg_guests=args.kvm_tcg_guests, plot=args.kvm_plot)
            return
        if not args.skip_poll:
            from benchmarks import poll_cycle
            part('poll', poll_cycle.run, args.guests, args.cycles)
        if not args.skip_scale:
            from benchmarks import scale
            part('scale', scale.run, args.scale_sizes, args.scale_cycles)
        if not args.skip_hook:
            from benchmarks import hook
            part('hook', hook.run, args.deletes, args.down_deletes,
                 args.budget, args.host_instances)
        if not args.skip_payload:
            from benchmarks import payload
            part('payload', payload.run, args.bus_host_sizes,
                 args.bus_instances)


def main(argv=None):
    args, parser = parse_args(sys.argv[1:] if argv is None else argv)
    # Deprecation chatter of libraries (eventlet via oslo.service) is not
    # ours to fix here and would drown the progress lines.
    warnings.filterwarnings('ignore', category=DeprecationWarning)
    warnings.filterwarnings('ignore', message='(?s).*eventlet')
    if os.geteuid() != 0:
        print('benchmarks: run as root (libvirtd, QEMU guests)',
              file=sys.stderr)
        return 2

    from benchmarks import common
    from benchmarks import report

    common.quiet_logging()
    full = is_default_run(args, parser)
    output = args.output or os.path.join(
        RESULTS, 'kvm.json' if args.kvm else
        'latest.json' if full else 'partial.json')
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    results = {
        'started_at': started.strftime('%Y-%m-%d %H:%M:%S UTC'),
        'command': ' '.join(['python -m benchmarks.run'] + (
            sys.argv[1:] if argv is None else list(argv))),
        'via': os.environ.get('NOVA_USAGE_EXT_BENCH_VIA', 'python -m '
                              'benchmarks.run'),
        'default_run': full,
        'args': {k: v for k, v in vars(args).items()},
        'machine': common.machine(),
    }
    try:
        run_parts(args, results)
    except (KeyboardInterrupt, common.Interrupted) as exc:
        log('interrupted (%s): clean-up done, no results written'
            % (str(exc) or 'Ctrl-C'))
        return 130
    results['duration_s'] = time.monotonic() - t0
    text, rows = report.markdown(results)
    results['targets'] = [{'target': t, 'measured': m, 'status': s}
                          for t, m, s in rows]
    results['markdown'] = text
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, 'w') as f:
        json.dump(results, f, indent=1, sort_keys=True, default=str)
        f.write('\n')
    print(text)
    log('results written to %s' % os.path.relpath(output, os.getcwd()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
