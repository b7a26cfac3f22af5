"""The periodic runner: a daemon thread that never keeps a process alive."""

import logging
import subprocess
import sys
import threading
import time

import fixtures
import testtools

from nova_usage_ext import periodic


def _run(code):
    return subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=60)


class TestPeriodicRunner(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.INFO))

    def runner(self, func, max_interval=60):
        runner = periodic.PeriodicRunner(func, max_interval, name='test-loop')
        self.addCleanup(runner.stop, 5)
        return runner

    def test_calls_again_after_the_wait_the_call_returned(self):
        calls = []
        enough = threading.Event()

        def func():
            calls.append(time.monotonic())
            if len(calls) == 3:
                enough.set()
            return 0.05

        runner = self.runner(func)
        runner.start()
        self.assertTrue(enough.wait(5))
        self.assertTrue(runner.stop(5))
        gaps = [b - a for a, b in zip(calls, calls[1:])]
        self.assertTrue(all(gap >= 0.05 for gap in gaps), gaps)

    def test_stop_wakes_a_long_wait_at_once(self):
        called = threading.Event()

        def func():
            called.set()
            return 3600

        runner = self.runner(func, max_interval=3600)
        runner.start()
        self.assertTrue(called.wait(5))
        started = time.monotonic()
        self.assertTrue(runner.stop(5))
        self.assertLess(time.monotonic() - started, 1)
        self.assertFalse(runner.running)

    def test_a_call_that_raises_is_logged_and_the_loop_goes_on(self):
        calls = []
        again = threading.Event()

        def func():
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError('first call fails')
            again.set()
            return 60

        runner = self.runner(func, max_interval=0.05)
        runner.start()
        self.assertTrue(again.wait(5))
        self.assertIn('test-loop: periodic call failed', self.log.output)
        self.assertIn('RuntimeError: first call fails', self.log.output)

    def test_none_waits_max_interval(self):
        calls = []
        enough = threading.Event()

        def func():
            calls.append(time.monotonic())
            if len(calls) == 2:
                enough.set()

        runner = self.runner(func, max_interval=0.1)
        runner.start()
        self.assertTrue(enough.wait(5))
        self.assertGreaterEqual(calls[1] - calls[0], 0.1)

    def test_stop_from_the_loop_itself_does_not_wait_on_itself(self):
        stopped = []

        def func():
            stopped.append(runner.stop(5))

        runner = self.runner(func)
        runner.start()
        runner._thread.join(5)
        self.assertEqual([False], stopped)
        self.assertFalse(runner.running)

    def test_thread_is_a_daemon(self):
        runner = self.runner(lambda: 60)
        runner.start()
        self.assertTrue(runner._thread.daemon)
        self.assertEqual('test-loop', runner._thread.name)


class TestProcessExits(testtools.TestCase):
    """A process whose usage loop was started and never stopped (nova-compute
    failing after init_host, before cleanup_host) still exits."""

    def test_a_running_usage_service_does_not_keep_a_process_alive(self):
        state = self.useFixture(fixtures.TempDir()).path
        result = _run(
            'import os, sys, threading\n'
            'from nova_usage_ext import ledger, service, state\n'
            'from nova_usage_ext.virt import libvirt as libvirt_usage\n'
            'from tests import libvirt_calls, libvirt_node\n'
            'node = libvirt_node.TestNode([libvirt_node.nova_test_domain(0)])'
            '\n'
            'node.setUp()\n'
            'reader = libvirt_usage.LibvirtUsageReader(\n'
            '    libvirt_calls.StaticConnection(node.conn))\n'
            'cache = ledger.Ledger(state.Store(%r))\n'
            'svc = service.UsageService(reader, cache, "compute-1",\n'
            '                           {"cpu": 3600})\n'
            'svc.start()\n'
            'while svc.latest(\n'
            '        "00000000-0000-0000-0000-000000000001") is None:\n'
            '    threading.Event().wait(0.01)\n'
            'print(sorted(t.name for t in threading.enumerate()))\n'
            'sys.exit(3)\n' % state)
        self.assertEqual(3, result.returncode, result.stderr)
        self.assertIn("'usage-ext-poll'", result.stdout)
