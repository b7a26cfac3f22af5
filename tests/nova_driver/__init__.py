# nova's test packages apply nova's concurrency mode when imported: select
# native threads, as nova-compute 34 runs (this test process forbids
# eventlet, tests/__init__.py), before any module here imports them.
import os

os.environ['OS_NOVA_DISABLE_EVENTLET_PATCHING'] = '1'
