"""``benchmarks.report`` is ``benchmarks.suite.report``

Kept importable for tests/benchmarks/test_shipped_data.py."""

import sys

from benchmarks.suite import report as _impl

sys.modules[__name__] = _impl
