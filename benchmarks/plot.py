"""The picture of the KVM run: cost per cycle against instance count, for
this package and ceilometer 27 (matplotlib, a test/bench dependency)."""

import matplotlib

matplotlib.use('Agg')  # no display: write a file

from matplotlib import pyplot  # noqa: E402
from matplotlib import ticker  # noqa: E402

from benchmarks import common  # noqa: E402

SERIES = ((common.OURS, 'nova-usage-ext (shipped)', 'tab:blue', 'o'),
          (common.ONE_CALL, 'nova-usage-ext (one call)', 'tab:cyan',
           's'),
          (common.CEILOMETER, 'ceilometer 27 compute agent', 'tab:red',
           '^'))
FLOOR = 'vcpu+interface+block'
PANELS = (('wall_s', 'wall time per cycle (ms)'),
          ('libvirtd_cpu_sched_s', 'libvirtd CPU per cycle (ms)'))


def cost_per_cycle(kvm, path):
    """Two panels (wall, libvirtd CPU), log-log, median with min–max bars,
    one line per poller over the KVM sizes."""
    rows = kvm['sizes']
    fig, axes = pyplot.subplots(1, 2, figsize=(10, 4.2))
    for ax, (key, title) in zip(axes, PANELS):
        for who, label, colour, marker in SERIES:
            xs, ys, lo, hi = [], [], [], []
            for row in rows:
                s = row[who][key]
                if not s:
                    continue
                xs.append(row['guests'])
                ys.append(s['median'] * 1e3)
                lo.append((s['median'] - s['min']) * 1e3)
                hi.append((s['max'] - s['median']) * 1e3)
            ax.errorbar(xs, ys, yerr=[lo, hi], label=label, color=colour,
                        marker=marker, capsize=3)
        if key == 'libvirtd_cpu_sched_s':
            # The floor: the due groups alone in one call, per guest,
            # times the guests.
            ax.plot([r['guests'] for r in rows],
                    [r['floor']['groups'][FLOOR]['libvirtd_cpu_per_guest_s']
                     * r['guests'] * 1e3 for r in rows],
                    color='grey', linestyle='--', marker='.',
                    label='floor (%s, one call)' % FLOOR)
            ax.legend(fontsize='small')
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xticks([r['guests'] for r in rows])
        ax.set_xticklabels([str(r['guests']) for r in rows])
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel('KVM guests on the host')
        ax.set_title(title)
        ax.grid(True, which='both', alpha=0.3)
    axes[0].legend(fontsize='small')
    fig.suptitle('Poll cycle cost against instance count (median, min–max; '
                 '%d cycles each)' % kvm['cycles'])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot.close(fig)
