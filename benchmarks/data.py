"""``benchmarks.data`` is ``benchmarks.core.data``

Kept importable for the notebooks and tests/unit/test_muon.py."""

import sys

from benchmarks.core import data as _impl

sys.modules[__name__] = _impl
