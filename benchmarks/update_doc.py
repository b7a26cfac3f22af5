"""Put the latest results into doc/source/performance.rst:
``python -m benchmarks.update_doc [results.json]``.

Replaces what lies between the ``.. BEGIN RESULTS`` and ``.. END RESULTS``
comments with the tables of the given run (default
benchmarks/results/latest.json, which only a full default run writes).
"""

import json
import os
import sys

from benchmarks import report

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(os.path.dirname(HERE), 'doc', 'source',
                   'performance.rst')
BEGIN = '.. BEGIN RESULTS'
END = '.. END RESULTS'


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else os.path.join(HERE, 'results', 'latest.json')
    with open(path) as f:
        results = json.load(f)
    if not results.get('default_run'):
        print('update_doc: %s is not from a full default run; not used'
              % path, file=sys.stderr)
        return 1
    with open(DOC) as f:
        doc = f.read()
    head, sep, rest = doc.partition(BEGIN + '\n')
    _old, sep2, tail = rest.partition(END + '\n')
    if not sep or not sep2:
        print('update_doc: no %s / %s markers in %s' % (BEGIN, END, DOC),
              file=sys.stderr)
        return 1
    note = ('Produced by ``%s`` on %s (%.0f s).\n\n'
            % (results.get('via', 'python -m benchmarks.run'),
               results['started_at'], results['duration_s']))
    body = note + report.to_rst(results['markdown'])
    with open(DOC, 'w') as f:
        f.write(head + BEGIN + '\n\n' + body + '\n' + END + '\n' + tail)
    print('update_doc: %s updated from %s' % (DOC, path))
    return 0


if __name__ == '__main__':
    sys.exit(main())
