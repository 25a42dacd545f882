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


# ---------------------------------------------------------------------------------------------- back-to-back spans


def test_back_to_back_llava_images_are_cut_only_between_images():
    """Regression (long profile, kind 'run'): four 2-token images back to back at [4, 12) of a 32-token row,
    max_length=5, overlap=2, prefix 'bos' (1 token), turn starts as boundaries, loss on 17 and 27.

    Window 0 stops at 4 (limit 5 is inside [4, 6)); every later window is BOS + 2 context + 2 new tokens, and
    its limit (start + 2) always falls on the start of the next image, which is a cut, never inside it.
    """
    n, sp = 32, [(4, 6), (6, 8), (8, 10), (10, 12)]
    mask = np.isin(np.arange(n), [17, 27])
    wins = plan(n, sp, max_length=5, overlap=2, prefix_len=1, boundaries=[1, 14, 19, 24, 29], loss_mask=mask)
    assert wins == [(0, 0, 4), (2, 4, 6), (4, 6, 8), (6, 8, 10), (8, 10, 12), (10, 12, 14), (12, 14, 16),
                    (14, 16, 18), (16, 18, 20), (18, 20, 22), (20, 22, 24), (22, 24, 26), (24, 26, 28),
                    (26, 28, 30), (28, 30, 32)]
    assert wins == plan(n, sp, max_length=5, overlap=2, prefix_len=1)  # no boundary nor mask changes a cut here


def test_a_context_that_would_leave_no_room_shrinks_to_what_a_back_to_back_image_needs():
    # window 1 starts on image [3, 5); 2 tokens of context (image [1, 3)) leave room 1, and 4 is inside [3, 5):
    # the context is dropped (the image's first token is not supervised) and the window holds [3, 6)
    # window 2 starts on supervised token 6: its context snaps from 4 (inside [3, 5)) to 5, the token it needs
    assert plan(8, [(1, 3), (3, 5)], max_length=3, overlap=2) == [(0, 0, 3), (3, 3, 6), (5, 6, 8)]


def test_a_supervised_token_after_back_to_back_images_brings_only_the_last_image_as_context():
    # a turn boundary at 6 ends window 1 right after the images; token 6 is supervised and, with no prefix,
    # its window needs the token before it, so [4, 6) whole comes as context, but not [2, 4)
    mask = np.zeros(9, bool)
    mask[6:] = True
    wins = plan(9, [(2, 4), (4, 6)], max_length=4, boundaries=[6], min_fill=0.0, loss_mask=mask)
    assert wins == [(0, 0, 4), (4, 4, 6), (4, 6, 8), (7, 8, 9)]


# ---------------------------------------------------------------------------------------------- exhaustive small cases


def small_layouts(max_n=14):
    """(n, spans) of every small row: 0-4 spans of 1-3 tokens (one length, or two alternating), back to back or
    1-2 tokens apart, after 0-2 leading and before 0-2 trailing text tokens."""
    seen = set()
    for lengths in ((1,), (2,), (3,), (1, 3), (3, 2)):
        for count in range(5):
            for gap in (0, 1, 2):
                for lead in range(3):
                    for tail in range(3):
                        pos, sp = lead, []
                        for i in range(count):
                            size = lengths[i % len(lengths)]
                            sp.append((pos, pos + size))
                            pos += size + gap
                        n = (sp[-1][1] if sp else lead) + tail
                        if 0 < n <= max_n and (n, tuple(sp)) not in seen:
                            seen.add((n, tuple(sp)))
                            yield n, tuple(sp)


def expected_refusal(n, sp, max_length, prefix_len, supervised):
    """The error a row must raise, or None when some windows hold it, from first principles (DESIGN §4, 8)."""
    if n <= max_length:
        return None
    if prefix_len >= max_length:
        return OversizeSpanError if any(e <= prefix_len for _, e in sp) else PrefixError
    if any(s < prefix_len < e for s, e in sp):
        return PrefixError
    for s, e in sp:
        if e <= prefix_len:
            continue  # repeated with the prefix, never in a window's range
        # a later window holds the prefix, the span whole, and, with no prefix, the supervised token after it
        # (its label is predicted from the span's last token, so that token must be in the window)
        need = (prefix_len if s else 0) + (e - s) + (prefix_len == 0 and e < n and bool(supervised[e]))
        if need > max_length:
            return OversizeSpanError
    return None


def check_small_case(n, sp, max_length, overlap, prefix_len, loss_mask, boundaries, min_fill):
    """Invariants 1, 2, 4 and 5 of DESIGN §4 on one plan, or the named error of 8; AssertionError names the case."""
    case = f"n={n} spans={sp} max_length={max_length} overlap={overlap} prefix_len={prefix_len} " \
           f"loss_mask={None if loss_mask is None else loss_mask.astype(int).tolist()} boundaries={boundaries}"
    media = np.zeros(n, bool)
    for s, e in sp:
        media[s:e] = True
    supervised = ~media if loss_mask is None else loss_mask
    refusal = expected_refusal(n, sp, max_length, prefix_len, supervised)
    try:
        wins = plan(n, sp, max_length=max_length, overlap=overlap, prefix_len=prefix_len, loss_mask=loss_mask,
                    boundaries=boundaries, min_fill=min_fill)
    except (OversizeSpanError, PrefixError) as exc:
        assert refusal is not None, f"{case}: refused a row that windows can hold: {exc}"
        assert type(exc) is refusal, f"{case}: {type(exc).__name__} instead of {refusal.__name__}: {exc}"
        if refusal is OversizeSpanError:
            assert exc.span in sp and exc.needed > max_length, f"{case}: {exc}"
        return
    assert refusal is None, f"{case}: planned {wins} but a {refusal.__name__} was due"
    inside = {x for s, e in sp for x in range(s + 1, e)}
    assert [w[1] for w in wins] == [0] + [w[2] for w in wins[:-1]] and wins[-1][2] == n, f"{case}: {wins}"  # inv 4
    for k, (cs, start, end) in enumerate(wins):
        pre = prefix_len if k else 0
        assert pre + end - cs <= max_length, f"{case}: window {k} {wins[k]} holds {pre + end - cs} tokens"  # inv 1
        assert not {cs, start, end} & inside, f"{case}: window {k} {wins[k]} cuts a span"  # inv 2
        assert pre <= cs <= start < end, f"{case}: window {k} {wins[k]}"  # inv 4
        for p in range(max(start, 1), end):  # inv 5: a supervised token never opens a window with nothing before
            assert not supervised[p] or pre + p - cs >= 1, f"{case}: window {k} {wins[k]} opens on supervised {p}"


@pytest.mark.parametrize("max_length", range(2, 8))
def test_every_small_row_is_planned_within_the_invariants(max_length):
    """Exhaustive twin of the property tests: every small layout (back-to-back or spaced spans of 1-3 tokens),
    overlap 0-3, prefix 0-2, loss on all text / alternate text tokens / none, with or without boundaries
    (some of them inside spans)."""
    for n, sp in small_layouts():
        text = np.ones(n, bool)
        for s, e in sp:
            text[s:e] = False
        even = np.arange(n) % 2 == 0
        settings = [(None, None, 0.5), (text & even, None, 0.5), (text & ~even, list(range(1, n, 2)), 0.0),
                    (np.zeros(n, bool), list(range(0, n, 3)), 0.5)]
        for overlap in range(min(4, max_length)):
            for prefix_len in range(3):
                for loss_mask, boundaries, min_fill in settings:
                    check_small_case(n, sp, max_length, overlap, prefix_len, loss_mask, boundaries, min_fill)


# ---------------------------------------------------------------------- plan_batch: many rows in lockstep


def random_rows(rng, n_rows):
    """Rows of random length with random back-to-back or separate spans, loss masks, cut points and prefixes."""
    rows = []
    for _ in range(n_rows):
        n = int(rng.integers(0, 60))
        pairs, pos = [], int(rng.integers(0, 4))
        while pos < n and rng.random() < 0.7:
            length = int(rng.integers(1, 9))
            if pos + length > n:
                break
            pairs.append((pos, pos + length))
            pos += length + (0 if rng.random() < 0.3 else int(rng.integers(1, 8)))
        mask = rng.random(n) < rng.choice([0.0, 0.3, 0.9])
        cuts = np.flatnonzero(rng.random(n) < 0.15).astype(np.int64)
        cuts = cuts[cuts > 0]
        prefix = int(rng.choice([0, 0, 1, 1, 2, 5]))
        rows.append((n, pairs, mask, cuts, prefix))
    return rows


def scalar(row, **kw):
    n, pairs, mask, cuts, prefix = row
    try:
        return [(w.context_start, w.start, w.end)
                for w in plan_windows(n, spans(*pairs), prefix_len=prefix, boundaries=cuts, loss_mask=mask, **kw)]
    except (OversizeSpanError, PrefixError, ConfigError):
        return None


@pytest.mark.parametrize("max_length,overlap", [(4, 0), (6, 2), (8, 0), (12, 3), (16, 5), (30, 0)])
def test_plan_batch_gives_the_scalar_planners_windows_for_every_row_it_vouches_for(max_length, overlap):
    from chunker.plan import plan_batch

    rng = np.random.default_rng(max_length * 31 + overlap)
    rows = random_rows(rng, 600)
    offsets = np.concatenate([[0], np.cumsum([r[0] for r in rows])]).astype(np.int64)
    flat = [(a + int(o), b + int(o)) for r, o in zip(rows, offsets) for a, b in r[1]]
    starts = np.array([a for a, _ in flat], dtype=np.int64)
    ends = np.array([b for _, b in flat], dtype=np.int64)
    bounds = np.concatenate([r[3] + o for r, o in zip(rows, offsets)]).astype(np.int64)
    mask = np.concatenate([r[2] for r in rows]).astype(bool)
    prefix = np.array([r[4] for r in rows], dtype=np.int64)
    row, context, start, end, done = plan_batch(offsets, prefix, starts, ends, bounds, mask,
                                                max_length=max_length, overlap=overlap)
    vouched = 0
    for r, data in enumerate(rows):
        want = scalar(data, max_length=max_length, overlap=overlap)
        if want is None:
            assert not done[r], f"row {r}: the scalar planner raises but plan_batch planned it"
            continue
        assert done[r], f"row {r}: the scalar planner plans it but plan_batch left it"  # rows < LOCKSTEP_WINDOWS
        vouched += 1
        o = int(offsets[r])
        got = [(c - o, s - o, e - o) for c, s, e in zip(context[row == r].tolist(), start[row == r].tolist(),
                                                        end[row == r].tolist())]
        assert got == want, f"row {r}: {data}"
    assert vouched >= 0.3 * len(rows)  # not a vacuous pass: most rows are cut (n up to 60) and compared
    assert not np.isin(row, np.flatnonzero(~done)).any()
