"""ceilometer glue: a sample endpoint for the package's notifications.

Ceilometer's notification agent loads the classes of the
``ceilometer.sample.endpoint`` entry points; ``nova_usage_ext`` is this
one. It turns ``host.usage``, the ``compute.instance.exists`` that carry
usage and ``instance.usage`` into ceilometer's compute meters, each
sample with the metadata of its own instance, disk or interface (see
:mod:`nova_usage_ext.ceilometer_meters`). Other notifications are not
delivered to it (its ``event_types`` filter).

It needs the package installed where the notification agent runs; no
meter definition file is needed.
"""

from oslo_log import log as logging
from oslo_utils import timeutils

from ceilometer.pipeline import sample as sample_pipeline
from ceilometer import sample as ceilometer_sample

from nova_usage_ext import ceilometer_meters

LOG = logging.getLogger(__name__)


def _iso(text):
    # As ceilometer's own notification samples: ISO 8601 with the offset.
    return timeutils.parse_isotime(text).isoformat() if text else None


class UsageNotifications(sample_pipeline.SampleEndpoint):
    """Samples from nova-usage-ext's notifications."""

    event_types = [event_type.replace('.', r'\.') + '$'
                   for event_type in ceilometer_meters.EVENT_TYPES]

    def build_sample(self, message):
        try:
            built = ceilometer_meters.samples(message)
        except Exception:
            # A malformed message is dropped, never retried forever.
            LOG.exception('nova-usage-ext: cannot build samples from %s %s',
                          message.get('event_type'),
                          message.get('message_id'))
            return
        for item in built:
            yield ceilometer_sample.Sample(
                name=item['name'], type=item['type'], unit=item['unit'],
                volume=item['volume'], user_id=item['user_id'],
                project_id=item['project_id'],
                resource_id=item['resource_id'],
                timestamp=_iso(item['timestamp']),
                resource_metadata=item['resource_metadata'],
                source='nova-usage-ext')
