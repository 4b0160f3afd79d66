"""``benchmarks.specs`` is ``benchmarks.core.specs``

Kept importable for tests/unit/test_describe.py."""

import sys

from benchmarks.core import specs as _impl

sys.modules[__name__] = _impl
