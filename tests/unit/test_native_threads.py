"""nova 34 runs nova-compute on native threads: never pull in eventlet."""

import subprocess
import sys

import testtools

LIBRARY_MODULES = ('nova_usage_ext.virt.libvirt', 'nova_usage_ext.virt.hyperv',
                   'nova_usage_ext.exists', 'nova_usage_ext.objects.usage',
                   'nova_usage_ext.notifier', 'nova_usage_ext.service')


def _run(code):
    return subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=120)


class TestNativeThreads(testtools.TestCase):

    def test_library_selects_the_threading_backend(self):
        result = _run(
            'import %s\n'
            'import oslo_messaging\n'
            'from oslo_service import backend\n'
            'print(backend.get_backend().__class__.__module__)\n'
            % ', '.join(LIBRARY_MODULES))
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertIn('threading', result.stdout)
        self.assertNotIn('eventlet', result.stdout)

    def test_library_respects_a_backend_nova_chose(self):
        # nova-compute picks its backend before loading this package.
        result = _run(
            'from oslo_service import backend\n'
            'backend.init_backend(backend.BackendType.THREADING)\n'
            'import %s\n'
            'print(backend.get_backend_type().value)\n'
            % ', '.join(LIBRARY_MODULES))
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertEqual('threading', result.stdout.strip())

    def test_commands_never_import_eventlet(self):
        result = _run(
            'import sys\n'
            'from nova_usage_ext.cmd import main\n'
            'import %s, oslo_messaging\n'
            'main.main(["poll", "--format", "table"])\n'
            'print("eventlet" in sys.modules)\n' % ', '.join(LIBRARY_MODULES))
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertEqual('False', result.stdout.splitlines()[-1])
