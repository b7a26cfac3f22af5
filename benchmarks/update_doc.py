"""Put the latest results into doc/source/performance.rst:
``python -m benchmarks.update_doc [results.json]``.

Replaces what lies between the ``.. BEGIN RESULTS`` and ``.. END RESULTS``
comments with the tables of the given run (default
benchmarks/results/latest.json, which only a full default run writes).
Results of a KVM run (``--kvm``, benchmarks/results/kvm.json) go between
``.. BEGIN KVM RESULTS`` and ``.. END KVM RESULTS`` instead.
"""

import json
import os
import sys

from benchmarks import report

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(os.path.dirname(HERE), 'doc', 'source',
                   'performance.rst')
MARKERS = {False: ('.. BEGIN RESULTS', '.. END RESULTS'),
           True: ('.. BEGIN KVM RESULTS', '.. END KVM RESULTS')}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else os.path.join(HERE, 'results', 'latest.json')
    with open(path) as f:
        results = json.load(f)
    kvm = bool(results.get('kvm'))
    if not kvm and not results.get('default_run'):
        print('update_doc: %s is not from a full default run; not used'
              % path, file=sys.stderr)
        return 1
    begin, end = MARKERS[kvm]
    with open(DOC) as f:
        doc = f.read()
    head, sep, rest = doc.partition(begin + '\n')
    _old, sep2, tail = rest.partition(end + '\n')
    if not sep or not sep2:
        print('update_doc: no %s / %s markers in %s' % (begin, end, DOC),
              file=sys.stderr)
        return 1
    note = ('Produced by ``%s`` on %s (%.0f s).\n\n'
            % (results.get('via', 'python -m benchmarks.run'),
               results['started_at'], results['duration_s']))
    body = note + report.to_rst(results['markdown'])
    with open(DOC, 'w') as f:
        f.write(head + begin + '\n\n' + body + '\n' + end + '\n' + tail)
    print('update_doc: %s updated from %s' % (DOC, path))
    return 0


if __name__ == '__main__':
    sys.exit(main())
