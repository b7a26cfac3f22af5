"""Count the libvirt API calls a reader makes, by wrapping the connection.

Only calls that reach the hypervisor are counted: a domain object's uuid,
id and name are kept by the client library and cost no round trip.
"""

import collections
import threading

LOCAL_DOMAIN_METHODS = frozenset(('UUIDString', 'UUID', 'ID', 'name',
                                  'connect'))
LOCAL_CONNECTION_METHODS = frozenset(('getURI', 'isAlive', 'close'))


# Readers call from several threads at once; a Counter's += is not atomic.
_COUNT_LOCK = threading.Lock()


def _count(counter, name):
    with _COUNT_LOCK:
        counter[name] += 1


class CountingDomain:
    def __init__(self, dom, counter):
        self._dom = dom
        self._counter = counter

    def __getattr__(self, attr):
        value = getattr(self._dom, attr)
        if callable(value) and attr not in LOCAL_DOMAIN_METHODS:
            def call(*args, **kwargs):
                _count(self._counter, 'domain.' + attr)
                return value(*args, **kwargs)
            return call
        return value


class CountingConnection:
    """A virConnect proxy; ``calls`` maps API name to number of calls."""

    def __init__(self, conn):
        self._conn = conn
        self.calls = collections.Counter()

    @property
    def total(self):
        return sum(self.calls.values())

    def reset_counts(self):
        self.calls.clear()

    def _wrap(self, result):
        if isinstance(result, list):
            return [self._wrap(item) for item in result]
        if isinstance(result, tuple) and len(result) == 2 and \
                isinstance(result[1], dict):
            return (self._wrap(result[0]), result[1])
        if type(result).__name__ == 'virDomain':
            return CountingDomain(result, self.calls)
        return result

    @staticmethod
    def _unwrap(arg):
        if isinstance(arg, CountingDomain):
            return arg._dom
        if isinstance(arg, list):
            return [CountingConnection._unwrap(a) for a in arg]
        return arg

    def __getattr__(self, attr):
        value = getattr(self._conn, attr)
        if callable(value) and attr not in LOCAL_CONNECTION_METHODS:
            def call(*args, **kwargs):
                _count(self.calls, attr)
                args = [self._unwrap(a) for a in args]
                return self._wrap(value(*args, **kwargs))
            return call
        return value


class StaticConnection:
    """The reader's connection protocol over one given virConnect."""

    def __init__(self, conn):
        self.conn = conn
        self.resets = 0

    def get(self):
        return self.conn

    def reset(self):
        self.resets += 1
