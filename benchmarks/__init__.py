"""Benchmarks of nova-usage-ext against ceilometer 27's compute agent.

Run them all with ``tools/bench.sh`` (or ``.venv/bin/python -m
benchmarks.run`` once ``tools/setup-env.sh test`` has run); see
``doc/source/performance.rst`` for the method and the latest results.
Nothing here is part of the test suite: no timing is ever asserted.
"""
