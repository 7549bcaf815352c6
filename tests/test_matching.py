"""core.grouping.matching: clusters of two runs matched by shared items."""

from core.grouping.matching import match_by_overlap


def test_hungarian_match_maximizes_total_overlap_not_greedy():
    # A shares 2 items with x and 2 with y, B shares 2 with x: only A-y + B-x reaches 4.
    first = {1: "A", 2: "A", 3: "A", 4: "B", 5: "B", 6: "A"}
    second = {1: "x", 2: "x", 3: "y", 4: "x", 5: "x", 6: "y"}
    assert match_by_overlap(first, second) == [("A", "y", 2), ("B", "x", 2)]


def test_only_shared_items_count_and_empty_pairs_are_left_out():
    assert match_by_overlap({1: "A"}, {2: "x"}) == []
    first = {1: "A", 2: "B", 3: "C"}
    second = {1: "x", 2: "x", 9: "z"}
    assert match_by_overlap(first, second) == [("A", "x", 1)]
