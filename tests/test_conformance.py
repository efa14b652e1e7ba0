"""timm-style registry-driven tests: every registered routing, squash, loss and model, one suite."""

import pytest

from capslab.testing import cases


@pytest.mark.parametrize(
    "kind,name,check", [pytest.param(*c, id=f"{c[0]}-{c[1]}-{c[2].__name__}") for c in cases()]
)
def test_conformance(kind, name, check):
    check(name)
