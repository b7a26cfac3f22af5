"""A stand-in for nova-compute in tests: oslo.service serves it with
restart_method='mutate' as nova 34 serves nova-compute, and it runs the
usage service with its metric plugins over a libvirt test-driver node,
reading CPU every second.

    python -m tests.functional.sighup_compute URI STATE_DIR \
        --config-file nova.conf
"""

import sys

from oslo_config import cfg
from oslo_log import log as logging
from oslo_service import service

from nova_usage_ext import ledger
from nova_usage_ext import service as usage_service
from nova_usage_ext import state
from nova_usage_ext.plugins import manager
from nova_usage_ext.virt import libvirt as libvirt_usage

CONF = cfg.CONF


class Compute(service.Service):

    def __init__(self, uri, state_dir):
        super().__init__()
        self.uri = uri
        self.state_dir = state_dir
        self.usage = None

    def start(self):
        super().start()
        plugins = manager.PluginManager(CONF, 'compute-1')
        reader = libvirt_usage.LibvirtUsageReader(
            libvirt_usage.LibvirtConnection(self.uri))
        self.usage = usage_service.UsageService(
            reader, ledger.Ledger(state.Store(self.state_dir)), 'compute-1',
            {'cpu': 1}, plugins=plugins)
        self.usage.start()

    def stop(self, graceful=False):
        if self.usage is not None:
            self.usage.stop()
        super().stop(graceful)


def main():
    uri, state_dir = sys.argv[1:3]
    logging.register_options(CONF)
    CONF(sys.argv[3:], project='nova')
    logging.setup(CONF, 'nova')
    launcher = service.launch(CONF, Compute(uri, state_dir),
                              restart_method='mutate')
    launcher.wait()


if __name__ == '__main__':
    main()
