"""nova-usage-ext: instance usage in nova-compute's own notifications."""

from oslo_service import backend as _service_backend

# oslo.messaging imports oslo.service, whose default backend is eventlet.
# nova-compute selects its backend before loading this package; in the
# package's own processes (CLI, listener, tests) nothing has, so default to
# native threads and never import eventlet.
if (_service_backend.get_backend_type() is None and
        getattr(_service_backend, '_backend_hook', None) is None):
    _service_backend.register_backend_default_hook(
        lambda: _service_backend.BackendType.THREADING)
