"""A periodic call on a daemon thread, stopped by an event.

oslo.service's looping calls run on a futurist worker thread that is not
a daemon: in native-threading mode the interpreter waits for it at exit,
so a nova-compute that fails after ``init_host`` and never reaches
``cleanup_host`` would hang instead of exiting. This runner's thread is a
daemon, waits on an event (``stop`` wakes it at once, not at the next
call), and never lets an exception end it.
"""

import threading

from oslo_log import log as logging

LOG = logging.getLogger(__name__)


class PeriodicRunner:
    """Calls ``func`` until stopped.

    :param func: takes no argument and returns the seconds to wait before
        the next call, or None for ``max_interval``. It is called at once
        on start.
    :param max_interval: the longest wait between two calls, and the wait
        after a call that raised.
    """

    def __init__(self, func, max_interval, name='usage-ext-periodic'):
        self._func = func
        self.max_interval = max_interval
        self.name = name
        self._stop = threading.Event()
        self._thread = None

    @property
    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def start(self):
        if self._thread is not None:
            raise RuntimeError('%s is already started' % self.name)
        self._thread = threading.Thread(target=self._run, name=self.name,
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout=None):
        """Ask the loop to end; wait up to ``timeout`` seconds (None: do
        not wait) for a call under way to return. Never waits on itself.

        :returns: True when the thread has ended.
        """
        self._stop.set()
        thread = self._thread
        if thread is None:
            return True
        if timeout is not None and thread is not threading.current_thread():
            thread.join(timeout)
        return not thread.is_alive()

    def _run(self):
        while not self._stop.is_set():
            try:
                wait = self._func()
            except Exception:
                LOG.exception('%s: periodic call failed', self.name)
                wait = None
            if wait is None:
                wait = self.max_interval
            self._stop.wait(max(0.0, min(wait, self.max_interval)))
