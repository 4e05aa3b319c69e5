"""The Geometry page's numbers (``ui.facts``): short counts, subsets per scope, memory fits."""

from obsviz import Geometry
from obsviz.estimate import METHODS, memory_estimate
from obsviz.obs import MAX_SUBSETS

from ui import facts


def test_counts_stay_short_enough_for_a_metric():
    assert facts.count(73_728) == "73,728"
    assert facts.count(2_818_048) == "2.82 M"
    assert facts.count(10**301 + 7) == "~10^301"


def test_subsets_per_scope_turn_greedy_above_the_enumeration_limit():
    assert facts.subsets_per_scope(4, 2) == ("6", False)
    text, greedy = facts.subsets_per_scope(64, 32)
    assert greedy and text == f"more than {MAX_SUBSETS:,} → greedy"


def test_memory_table_lists_every_method_against_the_free_memory():
    geom = Geometry.preset("2:4", (64, 128))
    table, free = facts.memory_table(geom, "cpu")
    assert table["method"] == list(METHODS)
    fits = facts.memory_fits(geom, METHODS, "cpu")
    assert [e["memory"] for e in fits] == [memory_estimate(geom, m) for m in METHODS]
    if free is not None:
        assert table["fits"] == ["✓" if e["memory"] < free else "too big" for e in fits]
