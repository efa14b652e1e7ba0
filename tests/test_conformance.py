"""timm-style registry-driven tests: every registered routing, squash, loss and model, one suite."""

import pytest

from capslab.testing import cases


@pytest.mark.parametrize("kind,name,check", [pytest.param(*c, id=f"{c[0]}-{c[1]}-{c[2].__name__}") for c in cases()])
def test_conformance(kind, name, check):
    check(name)


def test_cases_for_a_name_nobody_registered_raise_instead_of_running_nothing():
    # a third-party plugin that forgot @capslab.hookimpl registers nothing: its conformance run must fail
    with pytest.raises(LookupError, match="'cosine'.*@capslab.hookimpl"):
        list(cases(names=["cosine"]))
    assert {name for _, name, _ in cases(names=["dynamic"])} == {"dynamic"}
