"""Test helpers for capslab and for plugin authors.

Run the conformance suite over your plugin's components from your own tests::

    import pytest
    from capslab.testing import cases

    @pytest.mark.parametrize("kind,name,check", list(cases(names=["my_routing"])))
    def test_conformance(kind, name, check):
        check(name)
"""

from capslab.testing.conformance import CHECKS, cases, make_routing, routing_inputs, run_all

__all__ = ["CHECKS", "cases", "make_routing", "routing_inputs", "run_all"]
