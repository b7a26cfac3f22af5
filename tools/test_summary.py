"""Print the last stestr run as 'tests: N passed, N failed, N skipped'.

Exits non-zero when no test ran, or when any test was skipped: a skipped
test hides a missing dependency, which the set-up must install instead.

    test_summary.py --next-run-id     print the id stestr gives its next run
    test_summary.py --since ID        summarize the last run only if its id
                                      is ID or later (a run whose discovery
                                      failed is not stored: without this
                                      check an older run would be reported)
"""

import io
import subprocess
import sys

import subunit
import testtools

NEXT_STREAM = '.stestr/next-stream'


def next_run_id():
    try:
        with open(NEXT_STREAM) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


def summarize():
    stream = subprocess.run(['.venv/bin/stestr', 'last', '--subunit'],
                            capture_output=True, check=True).stdout
    result = testtools.StreamSummary()
    case = subunit.ByteStreamToStreamResult(
        io.BytesIO(stream), non_subunit_name='stdout')
    result.startTestRun()
    case.run(result)
    result.stopTestRun()
    passed = result.testsRun - len(result.errors) - len(result.failures) \
        - len(result.skipped) - len(result.unexpectedSuccesses)
    failed = len(result.errors) + len(result.failures) + \
        len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    for test, reason in result.skipped:
        print('SKIPPED %s: %s' % (test.id(), reason.strip()))
    print('tests: %d passed, %d failed, %d skipped'
          % (passed, failed, skipped))
    return 0 if result.testsRun and not failed and not skipped else 1


def main(argv):
    if argv == ['--next-run-id']:
        print(next_run_id())
        return 0
    if len(argv) == 2 and argv[0] == '--since':
        if next_run_id() <= int(argv[1]):
            print('stestr stored no run this time: did test discovery '
                  'fail? (see the errors above)')
            print('tests: 0 passed, 0 failed, 0 skipped')
            return 1
    elif argv:
        raise SystemExit(__doc__)
    return summarize()


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
