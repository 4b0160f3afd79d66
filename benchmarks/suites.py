"""``benchmarks.suites`` is ``benchmarks.suite.suites``

Kept importable for tests/unit/test_describe.py."""

import sys

from benchmarks.suite import suites as _impl

sys.modules[__name__] = _impl
