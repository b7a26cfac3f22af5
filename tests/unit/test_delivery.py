"""The outbox sender through oslo.messaging's real drivers.

oslo.messaging's messaging drivers log a failed send and return normally;
the sender must still report it, or a message leaves the outbox unsent.
"""

import socket

import fixtures
import oslo_messaging
import testtools
from oslo_config import cfg
from oslo_messaging.notify import _impl_test

from nova_usage_ext import delivery
from nova_usage_ext import state


def _closed_port():
    probe = socket.socket()
    probe.bind(('127.0.0.1', 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


class TestDriverSender(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.FakeLogger())
        _impl_test.reset()
        self.conf = cfg.ConfigOpts()
        self.conf([])
        # Registers [oslo_messaging_notifications].
        oslo_messaging.get_notification_transport(
            self.conf, url='fake:/').cleanup()
        self.store = state.Store(self.useFixture(fixtures.TempDir()).path)
        self.addCleanup(self.store.close)
        with self.store.transaction() as tx:
            self.seq, _dropped = tx.queue(
                'u1', 'INFO', {}, {'message_id': 'm1', 'event_type': 'e',
                                   'payload': {}, 'priority': 'INFO',
                                   'publisher_id': 'p', 'timestamp': 't'},
                10)
        (self.entry,) = self.store.pending()

    def sender(self, url, names):
        self.conf.set_override('transport_url', url,
                               group='oslo_messaging_notifications')
        return delivery.DriverSender(self.conf, ['notifications'], names)

    def test_a_send_the_messaging_driver_swallowed_raises(self):
        url = 'rabbit://guest:guest@127.0.0.1:%d/' % _closed_port()
        send = self.sender(url, ['messagingv2'])
        # (kombu's error on a new connection, whatever its class.)
        self.assertRaises(Exception, send, self.entry)  # noqa: H202
        # And the outbox keeps it for the next try.
        book = delivery.Delivery(self.store, send, first_pause=30)
        book.start()
        self.addCleanup(book.stop)
        self.assertFalse(book.wait_delivered(self.seq, 5))
        self.assertEqual(1, self.store.outbox_size())
        self.assertGreaterEqual(book.failed, 1)

    def test_a_send_that_went_out_does_not_raise(self):
        send = self.sender('fake:/', ['test'])
        send(self.entry)
        send(self.entry)
        self.assertEqual(['m1', 'm1'], [m['message_id'] for _c, m, _p, _r
                                        in _impl_test.NOTIFICATIONS])
