"""nova's ``nova.tests.unit.virt.libvirt.test_host`` with LibvirtUsageDriver
in place of LibvirtDriver (see ``substitution``)."""

from tests.nova_driver import substitution
from nova.tests.unit.virt.libvirt import test_host  # noqa: I100

load_tests = substitution.substituted(test_host, globals())
