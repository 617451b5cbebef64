"""bench/bench_load.py's exec comparison order: the side that goes first turns every round."""
from __future__ import annotations

from bench.bench_load import window_order


def test_each_round_turns_the_order_of_the_one_before():
    assert window_order(1) == ["raw", "api"]
    assert window_order(3) == ["raw", "api", "api", "raw", "raw", "api"]
    assert window_order(0) == []


def test_an_even_number_of_rounds_puts_each_side_first_as_often():
    order = window_order(4)
    firsts = [order[i] for i in range(0, len(order), 2)]
    assert firsts.count("raw") == firsts.count("api") == 2
    assert order.count("raw") == order.count("api") == 4
