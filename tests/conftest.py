"""Test setup shared by every module in tests/.

- tests/ and examples/ go on sys.path, so test modules import `helpers` (the shared helpers:
  tests/helpers.py), the `corpus` package (tests/corpus/) and the example model (`fox_lm`,
  `train`) by name, without sys.path edits of their own.
- Fixtures used by several modules live here.
"""

import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
for _path in (TESTS, TESTS.parent / "examples"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches emptied before and after the test (a compiled model from an earlier test
    must not be reused, nor its guards count against the recompile limit)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
