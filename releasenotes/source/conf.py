# Sphinx configuration for the release notes (tox -e releasenotes): reno's
# Sphinx extension renders releasenotes/notes/*.yaml from the git history.

project = 'nova-usage-ext Release Notes'
copyright = '2026, nova-usage-ext developers'
author = 'nova-usage-ext developers'

extensions = ['reno.sphinxext']
root_doc = 'index'
exclude_patterns = ['_build']
pygments_style = 'sphinx'
html_theme = 'alabaster'
html_title = 'nova-usage-ext Release Notes'
html_static_path = []
