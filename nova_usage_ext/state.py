"""The package's durable state: one SQLite database in ``state_dir``.

Two tables share it, so that one transaction can move a usage period and
queue the message that reports it:

* ``instances``: the ledger's state, one JSON row per instance, written
  only for the instances that changed (a save costs O(changed
  instances));
* ``outbox``: messages that close a usage period, kept until a
  notification driver has accepted them.

SQLite in WAL mode with ``synchronous = FULL``: a committed transaction
survives a crash of nova-compute or of the machine, and a crash before the
commit leaves the state of the last one. The first start migrates the
JSON cache of earlier releases (``counters.json``).

State that cannot be used (corrupt, unreadable, a read-only directory) is
logged as an ERROR and the store falls back to memory: usage is then
counted from the first reading on (earlier usage unknown), never re-billed.
"""

import contextlib
import dataclasses
import json
import os
import sqlite3
import threading

from oslo_log import log as logging

from nova_usage_ext.virt import base

LOG = logging.getLogger(__name__)

DB_NAME = 'usage.db'
LEGACY_JSON = 'counters.json'
SCHEMA_VERSION = 1

_SCHEMA = (
    'CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)',
    'CREATE TABLE IF NOT EXISTS instances ('
    ' uuid TEXT PRIMARY KEY, data TEXT NOT NULL)',
    'CREATE TABLE IF NOT EXISTS outbox ('
    ' seq INTEGER PRIMARY KEY AUTOINCREMENT,'
    ' message_id TEXT NOT NULL, uuid TEXT, priority TEXT NOT NULL,'
    ' ctxt TEXT NOT NULL, message TEXT NOT NULL, queued_at TEXT NOT NULL,'
    # Held: being sent on nova's own path right now; the delivery thread
    # leaves it alone. Released at every start.
    ' held INTEGER NOT NULL DEFAULT 0)',
)


class StateError(Exception):
    """The state database cannot be used."""


@dataclasses.dataclass(slots=True)
class OutboxEntry:
    """One queued message: what a notification driver's ``notify`` takes.
    """
    seq: int
    uuid: str | None
    priority: str
    ctxt: dict
    message: dict

    @property
    def message_id(self):
        return self.message.get('message_id')


def _dumps(value):
    # Contexts may hold datetimes and other non-JSON values: their str()
    # is what oslo.messaging's JSON serialisation would send anyway.
    return json.dumps(value, sort_keys=True, separators=(',', ':'),
                      default=str)


class Store:
    """The database; thread-safe (one connection under a lock).

    :param state_dir: the directory, created if missing; None keeps
        everything in memory (tests, the CLI).
    """

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.path = (os.path.join(state_dir, DB_NAME)
                     if state_dir is not None else None)
        self._lock = threading.RLock()
        #: False when the state could not be used and nothing survives a
        #: restart; the ledger then counts from the first reading.
        self.durable = False
        #: True when usage counted before this start was lost (unusable
        #: state): the ledger baselines what it reads first.
        self.lost_state = False
        #: True when the state starts empty: no database or JSON cache
        #: from an earlier start.
        self.fresh = True
        self.legacy_instances = {}
        self._db = self._open()

    # -- opening -----------------------------------------------------------

    def _open(self):
        if self.path is None:
            return self._memory()
        existed = os.path.exists(self.path)
        try:
            db = self._connect(self.path)
        except (sqlite3.Error, OSError) as exc:
            if existed and self._set_aside(exc):
                try:
                    db = self._connect(self.path)
                except (sqlite3.Error, OSError) as exc2:
                    return self._unusable(exc2)
            else:
                return self._unusable(exc)
        self.durable = True
        self.fresh = not existed
        if not existed:
            self._migrate_legacy(db)
        LOG.info('nova-usage-ext: usage state kept in %s', self.path)
        return db

    def _connect(self, path):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False,
                             isolation_level=None, timeout=10)
        try:
            os.chmod(path, 0o600)  # it names the instances
            if db.execute('PRAGMA journal_mode=WAL').fetchone()[0] != 'wal':
                raise StateError('cannot use WAL journal mode')
            db.execute('PRAGMA synchronous=FULL')
            for statement in _SCHEMA:
                db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key='schema'"
                             ).fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)",
                           (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise StateError('schema version %s, not %d'
                                 % (row[0], SCHEMA_VERSION))
            db.execute('PRAGMA quick_check').fetchall()
            db.execute('UPDATE outbox SET held = 0 WHERE held != 0')
        except BaseException:
            db.close()
            raise
        return db

    def _memory(self):
        db = sqlite3.connect(':memory:', check_same_thread=False,
                             isolation_level=None)
        for statement in _SCHEMA:
            db.execute(statement)
        return db

    def _unusable(self, exc):
        LOG.error('nova-usage-ext: usage state %(path)s cannot be used '
                  '(%(error)s): keeping it in memory only. Usage counted '
                  'before now is unknown and is not reported again; '
                  'messages waiting for delivery are lost if nova-compute '
                  'stops before the bus takes them.',
                  {'path': self.path, 'error': exc})
        self.lost_state = True
        return self._memory()

    def _set_aside(self, exc):
        aside = '%s.corrupt-%s' % (self.path,
                                   base.utcnow().strftime('%Y%m%dT%H%M%SZ'))
        try:
            for suffix in ('-wal', '-shm'):
                if os.path.exists(self.path + suffix):
                    os.replace(self.path + suffix, aside + suffix)
            os.replace(self.path, aside)
        except OSError as move_exc:
            LOG.error('nova-usage-ext: usage state %s is unusable (%s) and '
                      'cannot be set aside (%s)', self.path, exc, move_exc)
            return False
        LOG.error('nova-usage-ext: usage state %s is unusable (%s); set '
                  'aside as %s. Usage counted before now is unknown and '
                  'is not reported again.', self.path, exc, aside)
        self.lost_state = True
        return True

    def _migrate_legacy(self, db):
        legacy = os.path.join(self.state_dir, LEGACY_JSON)
        if not os.path.exists(legacy):
            return
        try:
            with open(legacy, encoding='utf-8') as f:
                data = json.load(f)
            if not isinstance(data, dict) or data.get('version') != 1:
                raise ValueError('not a version 1 counter cache')
            instances = data['instances']
            if not isinstance(instances, dict):
                raise ValueError('no instances')
        except Exception as exc:  # RecursionError: deeply nested
            LOG.error('nova-usage-ext: cannot migrate %s (%s: %s): usage '
                      'counted before now is unknown and is not reported '
                      'again', legacy, type(exc).__name__, exc)
            self.lost_state = True
            return
        # The ledger validates each instance as it loads them.
        self.legacy_instances = instances
        self.fresh = False
        self._migrated_from = legacy

    def finish_migration(self, rows):
        """Store the migrated instances and retire the JSON file."""
        legacy = getattr(self, '_migrated_from', None)
        if legacy is None:
            return
        with self.transaction() as tx:
            tx.put_instances(rows)
        with contextlib.suppress(OSError):
            os.replace(legacy, legacy + '.migrated')
        LOG.info('nova-usage-ext: migrated the usage of %d instances from '
                 '%s', len(rows), legacy)
        self._migrated_from = None
        self.legacy_instances = {}

    # -- instances ---------------------------------------------------------

    def load_instances(self):
        """{uuid: decoded row} of every instance kept.

        Rows that cannot be decoded are logged and left out.
        """
        with self._lock:
            rows = self._db.execute('SELECT uuid, data FROM instances'
                                    ).fetchall()
        result = {}
        for uuid, text in rows:
            try:
                result[uuid] = json.loads(text)
            except (ValueError, RecursionError) as exc:
                LOG.error('nova-usage-ext: usage state of instance %s is '
                          'unreadable (%s): its earlier usage is unknown',
                          uuid, exc)
        return result

    @contextlib.contextmanager
    def transaction(self):
        """One atomic, durable change; yields a :class:`_Transaction`."""
        with self._lock:
            self._db.execute('BEGIN IMMEDIATE')
            try:
                yield _Transaction(self._db)
            except BaseException:
                self._db.execute('ROLLBACK')
                raise
            self._db.execute('COMMIT')

    # -- outbox ------------------------------------------------------------

    def pending(self, limit=100, after=0):
        """The oldest queued messages, in queue order."""
        with self._lock:
            rows = self._db.execute(
                'SELECT seq, uuid, priority, ctxt, message FROM outbox '
                'WHERE seq > ? AND held = 0 ORDER BY seq LIMIT ?',
                (after, limit)
            ).fetchall()
        return [OutboxEntry(seq, uuid, priority, json.loads(ctxt),
                            json.loads(message))
                for seq, uuid, priority, ctxt, message in rows]

    def outbox_size(self):
        with self._lock:
            return self._db.execute('SELECT COUNT(*) FROM outbox'
                                    ).fetchone()[0]

    def is_queued(self, seq):
        with self._lock:
            return self._db.execute('SELECT 1 FROM outbox WHERE seq = ?',
                                    (seq,)).fetchone() is not None

    def release(self, seq):
        """A held message is the delivery thread's to send."""
        with self._lock:
            self._db.execute('UPDATE outbox SET held = 0 WHERE seq = ?',
                             (seq,))

    def remove(self, seq):
        """A driver took the message: forget it.

        Not fsynced (the next fsynced commit, or a checkpoint, makes it
        durable): a removal lost in a power cut only sends the message
        again with its message_id, which consumers drop; the fsync cost
        the delete hook up to 18 ms at p99.
        """
        with self._lock:
            self._db.execute('PRAGMA synchronous=NORMAL')
            try:
                self._db.execute('DELETE FROM outbox WHERE seq = ?', (seq,))
            finally:
                self._db.execute('PRAGMA synchronous=FULL')

    def close(self):
        with self._lock:
            self._db.close()


class _Transaction:

    def __init__(self, db):
        self._db = db

    def put_instances(self, rows):
        self._db.executemany(
            'INSERT OR REPLACE INTO instances (uuid, data) VALUES (?, ?)',
            [(uuid, _dumps(data)) for uuid, data in rows.items()])

    def delete_instances(self, uuids):
        self._db.executemany('DELETE FROM instances WHERE uuid = ?',
                             [(uuid,) for uuid in uuids])

    def queue(self, uuid, priority, ctxt, message, max_messages,
              held=False):
        """Queue a message; returns (its sequence number, how many of the
        oldest were dropped to stay within ``max_messages``).

        :param held: the caller sends it itself first (see ``release``).
        """
        cursor = self._db.execute(
            'INSERT INTO outbox (message_id, uuid, priority, ctxt, message,'
            ' queued_at, held) VALUES (?, ?, ?, ?, ?, ?, ?)',
            (message.get('message_id', ''), uuid, priority, _dumps(ctxt),
             _dumps(message), base.utcnow().isoformat(), int(held)))
        seq = cursor.lastrowid
        dropped = 0
        count = self._db.execute('SELECT COUNT(*) FROM outbox').fetchone()[0]
        if count > max_messages:
            dropped = self._db.execute(
                'DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox '
                'ORDER BY seq LIMIT ?)', (count - max_messages,)).rowcount
        return seq, dropped
