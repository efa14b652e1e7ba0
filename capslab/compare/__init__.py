"""``capslab compare``: variants under the same data, budget and seeds, summarised as mean ± std."""

from capslab.compare.results import VariantRow, aggregate, markdown_table, write_results
from capslab.compare.runner import run_compare
from capslab.compare.sweep import CompareSpec, PlannedRun, load_compare

__all__ = [
    "CompareSpec",
    "PlannedRun",
    "VariantRow",
    "aggregate",
    "load_compare",
    "markdown_table",
    "run_compare",
    "write_results",
]
