"""The nova tests this tier leaves out, checked: each still exists in nova,
fails with LibvirtUsageDriver and passes with nova's own driver (by design),
or is skipped by nova itself with either driver; every other test of nova's
two modules is in the tier."""

import unittest

import testtools

from tests.nova_driver import substitution
from tests.nova_driver import test_nova_libvirt_driver
from tests.nova_driver import test_nova_libvirt_host


def run(test):
    result = unittest.TestResult()
    test.run(result)
    return result


def problems(result):
    return result.failures + result.errors


class TestExcluded(testtools.TestCase):

    def test_by_design_fail_with_the_usage_driver_only(self):
        for short_id in substitution.BY_DESIGN:
            ours = run(substitution.with_usage_driver(
                substitution.nova_test(short_id)))
            self.assertTrue(problems(ours), '%s passes with '
                            'LibvirtUsageDriver: include it' % short_id)
            novas = run(substitution.nova_test(short_id))
            self.assertTrue(novas.wasSuccessful() and not novas.skipped,
                            '%s fails with nova\'s own driver: %s'
                            % (short_id, problems(novas)))

    def test_public_api_check_fails_for_the_usage_methods_only(self):
        (failure,) = problems(run(substitution.with_usage_driver(
            substitution.nova_test(
                'test_driver.LibvirtConnTestCase.'
                'test_public_api_signatures'))))
        self.assertIn("['get_all_bw_counters', 'interface_stats']: public "
                      'APIs not listed in base class ComputeDriver',
                      failure[1])

    def test_skipped_by_nova_with_either_driver(self):
        for short_id in substitution.SKIPPED_BY_NOVA:
            for test in (substitution.nova_test(short_id),
                         substitution.with_usage_driver(
                             substitution.nova_test(short_id))):
                result = run(test)
                self.assertEqual(1, len(result.skipped), short_id)
                self.assertEqual([], problems(result), short_id)

    def test_every_other_nova_test_is_in_the_tier(self):
        nova_ids = substitution.nova_test_ids()
        self.assertEqual(len(nova_ids), len(set(nova_ids)))
        self.assertLessEqual(set(substitution.EXCLUDED), set(nova_ids))
        loader = unittest.TestLoader()
        tier = []
        for module in (test_nova_libvirt_driver, test_nova_libvirt_host):
            suite = module.load_tests(loader, None, None)
            tier += [t.id().split('.', 2)[-1] for t in suite]
        self.assertEqual(sorted(set(nova_ids) - set(substitution.EXCLUDED)),
                         sorted(t.replace('test_nova_libvirt_driver.',
                                          'test_driver.')
                                 .replace('test_nova_libvirt_host.',
                                          'test_host.') for t in tier))
