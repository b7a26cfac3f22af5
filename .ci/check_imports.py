"""Import every module of the package with only what it declares installed.

Run with the venv's python right after `tools/poll.sh` set the venv up from
the package alone: a module whose third-party import is missing from the
runtime requirements fails here, even where the main job never loads it
(the metric plugins, the listener). Only the host's own packages may be
missing: nova and ceilometer (they load the package, never the reverse) and
os-win (the `hyperv` extra).
"""

import importlib
import pkgutil
import sys

HOST_PROVIDED = {'nova', 'ceilometer', 'os_win'}


def main():
    import nova_usage_ext
    names = ['nova_usage_ext'] + [
        info.name for info in pkgutil.walk_packages(
            nova_usage_ext.__path__, 'nova_usage_ext.')]
    missing, host_only = [], []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            # nova's name alone is there (the package's shim module in
            # nova/virt/): "cannot import name ... from 'nova'".
            top = (exc.name or '').split('.')[0]
            if top in HOST_PROVIDED:
                host_only.append('%s (needs %s)' % (name, top))
            else:
                missing.append('%s: %s' % (name, exc))
    for line in missing:
        print('ci: missing runtime requirement: %s' % line, file=sys.stderr)
    imported = len(names) - len(missing) - len(host_only)
    print('ci: imported %d of %d modules with the runtime requirements; '
          'left to the host: %s'
          % (imported, len(names), ', '.join(host_only) or 'none'))
    return 1 if missing else 0


if __name__ == '__main__':
    sys.exit(main())
