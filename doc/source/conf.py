# Sphinx configuration for the nova-usage-ext documentation
# (tox -e docs: sphinx-build -W, so any warning fails the build).

project = 'nova-usage-ext'
copyright = '2026, nova-usage-ext developers'
author = 'nova-usage-ext developers'

# Plain Sphinx and its default theme: the pages are hand-written rst, nothing
# is generated from the code, so the build needs neither the package nor its
# dependencies.
extensions = []
root_doc = 'index'
exclude_patterns = ['_build']
pygments_style = 'sphinx'
html_theme = 'alabaster'
html_title = 'nova-usage-ext'
html_static_path = []
