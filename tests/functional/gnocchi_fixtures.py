"""A real gnocchi (PyPI ``gnocchi`` 4.7.1) for the functional tests.

``GnocchiServer`` makes a database of its own in the PostgreSQL on
127.0.0.1:5432, file storage in a temporary directory, runs
``gnocchi-upgrade``, then gnocchi's API (its WSGI application, basic
authentication) and ``gnocchi-metricd`` as processes of its own, and
removes all of it again. gnocchi lives in a virtualenv of its own
(``tools/setup-gnocchi.sh``, run here when it is missing).
"""

import base64
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid as uuidlib

import fixtures

from tests.functional import ceilometer_fixtures as cf

SETUP = os.path.join(cf.REPO, 'tools', 'setup-gnocchi.sh')
VENV = os.environ.get('GNOCCHI_VENV',
                      os.path.join(cf.REPO, 'tmp', 'gnocchi-venv'))
PSQL = ['psql', '-h', '127.0.0.1', '-p', '5432', '-U', 'postgres', '-q',
        '-v', 'ON_ERROR_STOP=1']
USER = 'admin'

# gnocchi's API under the standard library's WSGI server (gnocchi-api
# itself needs uwsgi).
SERVE = """
import sys
from wsgiref import simple_server
from gnocchi import opts, service
from gnocchi.rest import app
opts.set_defaults()
conf = service.prepare_service(args=['--config-file', sys.argv[1]])
server = simple_server.make_server('127.0.0.1', int(sys.argv[2]),
                                   app.load_app(conf))
server.serve_forever()
"""


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class GnocchiServer(fixtures.Fixture):
    """``url`` is the API's; ``get``/``post`` speak to it as ``admin``."""

    def _setUp(self):
        subprocess.run([SETUP], check=True, env=dict(os.environ,
                                                     GNOCCHI_VENV=VENV))
        tmp = self.useFixture(fixtures.TempDir()).path
        self.database = 'nue_gnocchi_%d_%s' % (os.getpid(),
                                               uuidlib.uuid4().hex[:8])
        subprocess.run(PSQL + ['-c', 'CREATE DATABASE %s' % self.database],
                       check=True)
        self.addCleanup(subprocess.run, PSQL + [
            '-c', 'DROP DATABASE IF EXISTS %s WITH (FORCE)' % self.database])
        conf = os.path.join(tmp, 'gnocchi.conf')
        with open(conf, 'w') as f:
            f.write('[indexer]\nurl = postgresql://postgres@127.0.0.1:5432/'
                    '%s\n[storage]\ndriver = file\nfile_basepath = %s\n'
                    '[api]\nauth_mode = basic\n'
                    '[metricd]\nmetric_processing_delay = 1\n'
                    % (self.database, os.path.join(tmp, 'storage')))
        bin_dir = os.path.join(VENV, 'bin')
        subprocess.run([os.path.join(bin_dir, 'gnocchi-upgrade'),
                        '--config-file', conf], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = _free_port()
        self.url = 'http://127.0.0.1:%d' % port
        serve = os.path.join(tmp, 'serve.py')
        with open(serve, 'w') as f:
            f.write(SERVE)
        self._start([os.path.join(bin_dir, 'python'), serve, conf,
                     str(port)], os.path.join(tmp, 'api.log'))
        self._start([os.path.join(bin_dir, 'gnocchi-metricd'),
                     '--config-file', conf], os.path.join(tmp, 'metricd.log'))
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get('/v1/archive_policy')
                break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _start(self, argv, log_path):
        log = open(log_path, 'w')
        self.addCleanup(log.close)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(self._stop, proc)

    @staticmethod
    def _stop(proc):
        # Only the processes started here, by their own handle.
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def _request(self, method, path, body=None):
        request = urllib.request.Request(
            self.url + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={'Content-Type': 'application/json',
                     'Authorization': 'basic ' + base64.b64encode(
                         (USER + ':').encode()).decode()})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b'null')

    def get(self, path):
        return self._request('GET', path)

    def post(self, path, body):
        return self._request('POST', path, body)
