"""ceilometer glue: a trait plugin for the meter definitions.

``etc/ceilometer/meters.d/nova-usage-ext.yaml`` sums each instance's disk
counters into the aggregate ``disk.read.bytes`` and kin; jsonpath cannot
sum, so the definitions name this plugin (entry point
``nova_usage_ext_sum`` in ``ceilometer.event.trait_plugin``). It needs the
package installed where ceilometer's notification agent runs.

This is the only module of the package that imports ceilometer.
"""

from ceilometer.event import trait_plugins


class SumPlugin(trait_plugins.TraitPluginBase):
    """The sum of every number the field's jsonpath matches, as one value.

    No number matched (an instance without disk counters): no value.
    """

    support_return_all_values = True

    def trait_values(self, match_list):
        numbers = [value for _path, value in match_list
                   if isinstance(value, (int, float)) and
                   not isinstance(value, bool)]
        return [sum(numbers)] if numbers else []
