# The tests run on native threads, as nova-compute 34 does: importing the
# package's command layer forbids eventlet for the whole test process.
import nova_usage_ext.cmd  # noqa: F401
