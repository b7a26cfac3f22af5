"""Print the last stestr run as 'tests: N passed, N failed, N skipped'.

Exits non-zero when no test ran, or when any test was skipped: a skipped
test hides a missing dependency, which the set-up must install instead.
"""

import subprocess
import sys

import subunit
import testtools


def main():
    stream = subprocess.run(['.venv/bin/stestr', 'last', '--subunit'],
                            capture_output=True, check=True).stdout
    result = testtools.StreamSummary()
    case = subunit.ByteStreamToStreamResult(
        __import__('io').BytesIO(stream), non_subunit_name='stdout')
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


if __name__ == '__main__':
    sys.exit(main())
