"""A TCP proxy in front of the real RabbitMQ that a test turns off and on.

The machine's broker is never stopped: clients connect to the proxy's
port, and the proxy plays the broker's faults:

- ``pass``: every byte goes through, both ways;
- ``refuse``: the listening socket is closed (a new connection is refused
  by the kernel) and every open connection is reset: a broker that is down;
- ``blackhole``: new connections are accepted and never answered, open
  ones stop moving (their bytes wait in the kernel's buffers): a broker
  that hangs. Back to ``pass``, everything held moves on, as when a hung
  broker recovers.

One thread runs it. It stops by itself after ``lifetime`` seconds even if
the test never stops it, closes everything and frees its port.
"""

import selectors
import socket
import struct
import threading
import time

import fixtures

PASS = 'pass'
REFUSE = 'refuse'
BLACKHOLE = 'blackhole'
MODES = (PASS, REFUSE, BLACKHOLE)


def _reset(sock):
    """Close with a reset (RST), as a crashed peer would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack('ii', 1, 0))
    except OSError:
        pass
    sock.close()


class _Pair:
    """A client connection and its upstream (None until connected)."""

    def __init__(self, client):
        self.client = client
        self.upstream = None


class Proxy:
    """Listens on 127.0.0.1:``port`` (0: a free one) and forwards to
    ``target``.

    :param target: ``(host, port)`` of the broker.
    :param lifetime: seconds after which the proxy stops by itself.
    """

    def __init__(self, target, port=0, lifetime=900.0):
        self.target = target
        self._lifetime = lifetime
        self._lock = threading.Lock()
        self._mode = PASS
        self._wanted = PASS
        self._pairs = []
        self._stopping = False
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, 'wake')
        self._listener = None
        self.port = port
        self._listen()
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='tcp-proxy-%d' % self.port)
        self._thread.start()

    @property
    def url(self):
        return 'rabbit://guest:guest@127.0.0.1:%d/' % self.port

    @property
    def mode(self):
        return self._mode

    def set_mode(self, mode, timeout=5.0):
        """Switch to ``mode`` (one of MODES); returns once it applies."""
        if mode not in MODES:
            raise ValueError('mode must be one of %s, not %r'
                             % (MODES, mode))
        with self._lock:
            self._wanted = mode
        self._wake()
        deadline = time.monotonic() + timeout
        while self._mode != mode:
            if not self._thread.is_alive():
                raise RuntimeError('the proxy has stopped')
            if time.monotonic() > deadline:
                raise RuntimeError('the proxy did not switch to %s' % mode)
            time.sleep(0.005)

    def open_connections(self):
        with self._lock:
            return len(self._pairs)

    def stop(self, timeout=5.0):
        with self._lock:
            self._stopping = True
        self._wake()
        self._thread.join(timeout)

    # -- the loop (the proxy's thread only) --------------------------------

    def _wake(self):
        try:
            self._wake_w.send(b'x')
        except OSError:
            pass

    def _listen(self):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(('127.0.0.1', self.port))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._selector.register(sock, selectors.EVENT_READ, 'accept')

    def _unlisten(self):
        if self._listener is not None:
            self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None

    def _run(self):
        deadline = time.monotonic() + self._lifetime
        try:
            while time.monotonic() < deadline:
                with self._lock:
                    if self._stopping:
                        return
                    wanted = self._wanted
                if wanted != self._mode:
                    self._switch(wanted)
                for key, _events in self._selector.select(0.2):
                    if key.data == 'wake':
                        self._wake_r.recv(4096)
                    elif key.data == 'accept':
                        self._accept()
                    else:
                        self._forward(*key.data)
        finally:
            self._close_all()

    def _switch(self, mode):
        if mode == REFUSE:
            self._unlisten()
            with self._lock:
                pairs, self._pairs = self._pairs, []
            for pair in pairs:
                self._drop(pair, reset=True)
        else:
            if self._listener is None:
                self._listen()
            if mode == PASS:
                for pair in list(self._pairs):
                    if pair.upstream is None:
                        self._connect(pair)
        if mode == BLACKHOLE:
            # Nothing moves: stop watching the open connections.
            for pair in self._pairs:
                self._unwatch(pair)
        elif mode == PASS:
            for pair in self._pairs:
                self._watch(pair)
        self._mode = mode

    def _accept(self):
        try:
            client, _addr = self._listener.accept()
        except OSError:
            return
        self.accepted += 1
        client.setblocking(True)
        pair = _Pair(client)
        with self._lock:
            self._pairs.append(pair)
        if self._mode == PASS:
            self._connect(pair)
            self._watch(pair)
        # In blackhole mode, the client waits for an answer that never
        # comes (until the mode is pass again).

    def _connect(self, pair):
        try:
            pair.upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            self._drop(pair, reset=True)
            return
        pair.upstream.settimeout(None)

    def _watch(self, pair):
        if pair.upstream is None:
            return
        for src, dst in ((pair.client, pair.upstream),
                         (pair.upstream, pair.client)):
            if src.fileno() >= 0 and src not in self._selector.get_map():
                try:
                    self._selector.register(src, selectors.EVENT_READ,
                                            (pair, src, dst))
                except (KeyError, ValueError):
                    pass

    def _unwatch(self, pair):
        for sock in (pair.client, pair.upstream):
            if sock is not None:
                try:
                    self._selector.unregister(sock)
                except (KeyError, ValueError):
                    pass

    def _forward(self, pair, src, dst):
        try:
            data = src.recv(65536)
            if data:
                dst.sendall(data)
                return
        except OSError:
            pass
        self._drop(pair, reset=False)

    def _drop(self, pair, reset):
        self._unwatch(pair)
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)
        for sock in (pair.client, pair.upstream):
            if sock is not None:
                if reset:
                    _reset(sock)
                else:
                    sock.close()

    def _close_all(self):
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            self._drop(pair, reset=True)
        self._unlisten()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


class ProxyFixture(fixtures.Fixture):
    """A :class:`Proxy` to the test broker, stopped (its port freed) at
    cleanup."""

    def __init__(self, target=('127.0.0.1', 5672)):
        super().__init__()
        self.target = target

    def _setUp(self):
        self.proxy = Proxy(self.target)
        self.addCleanup(self.proxy.stop)
