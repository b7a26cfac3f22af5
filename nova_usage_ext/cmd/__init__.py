"""The package's own processes run on native threads, as nova 34 does.

Importing this package forbids eventlet for the rest of the process (like
nova's native-threading mode): libraries that import it opportunistically
(futurist) then take their threading paths.
"""

import sys


class _NoEventlet:
    def find_spec(self, fullname, path, target=None):
        if fullname == 'eventlet' or fullname.startswith('eventlet.'):
            raise ImportError('nova-usage-ext runs on native threads; '
                              'eventlet is not to be imported')


def forbid_eventlet():
    if 'eventlet' in sys.modules:
        return  # a host process chose eventlet already; leave it be
    if not any(isinstance(f, _NoEventlet) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoEventlet())


forbid_eventlet()


class CommandError(Exception):
    """A problem to report on one line of stderr, then exit non-zero."""
