"""plan_windows on small hand-made inputs; every expected window list is written out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from chunker import ConfigError, OversizeSpanError, PrefixError, plan_windows
from chunker.spans import Spans


def spans(*pairs) -> Spans:
    s = np.array([a for a, _ in pairs], dtype=np.int64)
    e = np.array([b for _, b in pairs], dtype=np.int64)
    return Spans(s, e, np.zeros(len(s), np.int64), e - s)


def plan(n, sp=(), **kw):
    return [(w.context_start, w.start, w.end) for w in plan_windows(n, spans(*sp), **kw)]


def test_text_only_rows_are_cut_at_max_length():
    assert plan(10, max_length=4, loss_mask=np.zeros(10, bool)) == [(0, 0, 4), (4, 4, 8), (8, 8, 10)]


def test_a_row_that_fits_is_one_window_and_an_empty_row_none():
    assert plan(5, [(0, 5)], max_length=5) == [(0, 0, 5)]
    assert plan(0, max_length=5) == []


def test_a_span_across_the_limit_moves_whole_to_the_next_window():
    assert plan(10, [(3, 7)], max_length=5, loss_mask=np.zeros(10, bool)) == [(0, 0, 3), (3, 3, 8), (8, 8, 10)]


def test_a_window_starting_on_a_supervised_token_gets_the_token_before_it():
    mask = np.ones(10, bool)
    assert plan(10, max_length=4, loss_mask=mask) == [(0, 0, 4), (3, 4, 7), (6, 7, 10)]


def test_overlap_context_snaps_forward_out_of_a_span():
    # window 2 would take context from 6, inside [3, 7): it starts at 7 instead
    assert plan(12, [(3, 7)], max_length=6, overlap=3, loss_mask=np.zeros(12, bool)) == [
        (0, 0, 3), (3, 3, 9), (7, 9, 12)]


def test_the_prefix_counts_against_every_later_window():
    # windows after the first hold prefix (2) + new tokens: 5 - 2 = 3 new tokens each
    assert plan(11, max_length=5, prefix_len=2) == [(0, 0, 5), (5, 5, 8), (8, 8, 11)]


def test_turn_boundaries_are_preferred_cuts_past_min_fill():
    assert plan(12, max_length=8, boundaries=[6], loss_mask=np.zeros(12, bool)) == [(0, 0, 6), (6, 6, 12)]
    # a boundary before min_fill (0.5 of the room) is not used
    assert plan(12, max_length=8, boundaries=[3], loss_mask=np.zeros(12, bool)) == [(0, 0, 8), (8, 8, 12)]


def test_a_boundary_inside_a_span_is_no_cut():
    assert plan(12, [(4, 8)], max_length=9, boundaries=[6], loss_mask=np.zeros(12, bool)) == [(0, 0, 9), (9, 9, 12)]


def test_a_boundary_inside_the_prefix_does_not_end_the_first_window():
    # ending window 0 at 6 would repeat tokens 6-7 in window 1's prefix and its new tokens
    wins = plan(20, max_length=10, prefix_len=8, boundaries=[6], min_fill=0.0)
    assert wins[0] == (0, 0, 10) and all(cs >= 8 for cs, _, _ in wins[1:])


def test_a_span_longer_than_max_length_raises_naming_it_and_the_fix():
    with pytest.raises(OversizeSpanError, match=r"row 3: media span \[2, 9\) of 7 tokens .* max_length=6: raise "
                                                r"max_length to >= 7 or pass on_oversize='skip'") as err:
        plan_windows(12, spans((2, 9)), max_length=6, row=3)
    assert (err.value.span, err.value.span_len, err.value.needed, err.value.row) == ((2, 9), 7, 7, 3)


def test_a_span_that_the_next_supervised_token_needs_whole_is_named():
    # token 6 is supervised; its predecessor is the last token of [2, 6), so its window needs 4 + 1 tokens
    mask = np.ones(10, bool)
    mask[2:6] = False
    with pytest.raises(OversizeSpanError, match=r"\[2, 6\) of 4 tokens needs a window of 5") as err:
        plan_windows(10, spans((2, 6)), max_length=4, loss_mask=mask)
    assert err.value.span == (2, 6) and err.value.needed == 5


def test_a_prefix_that_leaves_no_room_is_refused():
    with pytest.raises(OversizeSpanError, match=r"prefix .* 4 tokens .* raise max_length to >= 5") as err:
        plan_windows(9, spans((0, 3)), max_length=4, prefix_len=4, row=1)
    assert err.value.span == (0, 3) and err.value.needed == 5
    with pytest.raises(PrefixError, match="row 2: the prefix"):
        plan_windows(9, spans(), max_length=4, prefix_len=4, row=2)
    assert plan(4, max_length=4, prefix_len=4) == [(0, 0, 4)]


def test_a_prefix_ending_inside_a_span_is_refused():
    with pytest.raises(PrefixError, match=r"ends inside media span \[1, 5\)"):
        plan_windows(20, spans((1, 5)), max_length=8, prefix_len=3)


@pytest.mark.parametrize("kw, match", [
    ({"max_length": 1}, "max_length=1 must be an integer >= 2"),
    ({"max_length": 0}, "max_length=0"),
    ({"max_length": 8, "overlap": 8}, "overlap=8 must be smaller than max_length=8"),
    ({"max_length": 8, "overlap": -1}, "overlap=-1 must be an integer >= 0"),
    ({"max_length": 8, "prefix_len": -1}, "prefix_len=-1"),
])
def test_settings_that_cannot_work_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        plan_windows(20, spans(), **kw)
