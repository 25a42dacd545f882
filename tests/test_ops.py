"""chunker.ops: per-item counts agree with the numpy span finder, the check with a plain per-row reference.

The references are `chunker.spans.find_image_spans` run row by row (a separate numpy implementation) and
Python lists compared item by item; hypothesis draws well-formed rows of every grammar kind.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chunker import ImageSpanSpec, find_image_spans
from chunker.ops import BadItem, check_item_counts, count_image_tokens, item_token_counts, segment_sum

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
PAD, IMG, VID, OPEN, CLOSE, BREAK, END, FAKE, GLOBAL, ROWCOL = 0, 20, 21, 22, 23, 24, 25, 26, 27, 30
PER_IMAGE, PER_TILE = 4, 3

SPECS = {
    "bracket": ImageSpanSpec(family="custom", kind="bracket", image_token_id=IMG, video_token_id=VID,
                             open_ids=(OPEN,), close_ids=(CLOSE,)),
    "run_fixed": ImageSpanSpec(family="custom", kind="run", image_token_id=IMG, tokens_per_image=PER_IMAGE),
    "run_free": ImageSpanSpec(family="custom", kind="run", image_token_id=IMG),
    "terminated_run": ImageSpanSpec(family="custom", kind="terminated_run", image_token_id=IMG,
                                    body_ids=(BREAK,), end_id=END),
    "tiles": ImageSpanSpec(family="custom", kind="tiles", image_token_id=IMG, open_ids=(FAKE,), global_id=GLOBAL,
                           tile_ids=(ROWCOL,), tokens_per_tile=PER_TILE),
}
TEXT = st.lists(st.integers(100, 140), max_size=3)


@st.composite
def media_item(draw, kind):
    """The tokens of one well-formed media item of `kind`."""
    if kind == "bracket":
        shape = draw(st.sampled_from(["image", "video", "qwen3_video"]))
        if shape == "qwen3_video":  # frame groups `<t seconds><open><video>x n<close>` inside an outer pair
            groups = draw(st.lists(st.tuples(TEXT, st.integers(1, 4)), min_size=1, max_size=3))
            return [OPEN] + [t for stamp, n in groups for t in [*stamp, OPEN, *[VID] * n, CLOSE]] + [CLOSE]
        return [OPEN] + [IMG if shape == "image" else VID] * draw(st.integers(1, 6)) + [CLOSE]
    if kind == "run_fixed":
        return [IMG] * PER_IMAGE
    if kind == "run_free":
        return [IMG] * draw(st.integers(1, 6))
    if kind == "terminated_run":
        rows, cols = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        toks = ([IMG] * cols + [BREAK]) * rows
        return toks[:-1] + [END]
    tiles = draw(st.integers(0, 3))
    return [FAKE, ROWCOL, *[IMG] * PER_TILE] * tiles + [FAKE, GLOBAL, *[IMG] * PER_TILE, FAKE]


@st.composite
def batch(draw, kind):
    """Right-padded `(B, L)` ids of rows with 0..4 items each, text (or nothing) between them."""
    rows = []
    for _ in range(draw(st.integers(1, 5))):
        seq = [1]
        for _ in range(draw(st.integers(0, 4))):
            seq += draw(TEXT) + draw(media_item(kind))
        rows.append(seq + draw(TEXT))
    width = max(map(len, rows)) + draw(st.integers(0, 3))
    return torch.tensor([r + [PAD] * (width - len(r)) for r in rows])


FIXED = {
    "bracket": torch.tensor([[1, OPEN, IMG, IMG, CLOSE, 5, OPEN, OPEN, VID, CLOSE, 6, OPEN, VID, CLOSE, CLOSE, 2],
                             [1, OPEN, IMG, CLOSE, 2] + [PAD] * 11]),
    "run_fixed": torch.tensor([[1, *[IMG] * 8, 5, *[IMG] * 4, 2], [1, 2] + [PAD] * 13]),
    "run_free": torch.tensor([[1, *[IMG] * 3, 5, *[IMG] * 2, 2], [1, IMG, 2] + [PAD] * 5]),
    "terminated_run": torch.tensor([[1, IMG, IMG, BREAK, IMG, IMG, END, 5, IMG, END, 2]]),
    "tiles": torch.tensor([[1, FAKE, ROWCOL, IMG, IMG, IMG, FAKE, GLOBAL, IMG, IMG, IMG, FAKE, 5,
                            FAKE, GLOBAL, IMG, IMG, IMG, FAKE, 2]]),
}


def reference_items(ids, spec):
    """Per row: (counts, is_video) of its spans by the numpy finder, on the row without its padding."""
    out = []
    for row in ids.cpu().numpy():
        n = len(row) - int(np.argmax(row[::-1] != PAD))
        spans = find_image_spans(row[:n], spec)
        out.append((spans.counts.tolist(), spans.kinds.astype(bool).tolist()))
    return out


@pytest.mark.parametrize("kind", sorted(SPECS))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_item_counts_equal_the_numpy_span_finder(kind, data):
    """Every item's count (and stream), row-major, equals find_image_spans' spans of the same rows."""
    spec = SPECS[kind]
    ids = data.draw(batch(kind))
    reference = reference_items(ids, spec)
    found = item_token_counts(ids, spec)
    rows, counts, video = found.flat()
    assert counts.tolist() == [c for r in reference for c in r[0]]
    assert video.tolist() == [v for r in reference for v in r[1]]
    assert rows.tolist() == [i for i, r in enumerate(reference) for _ in r[0]]
    assert found.num_items.tolist() == [len(r[0]) for r in reference]
    assert not found.outside.any()
    assert found.image_tokens.tolist() == count_image_tokens(ids, IMG).tolist()
    assert found.merged == (kind == "run_free")
    bound = item_token_counts(ids, spec, max_items=int(found.num_items.max()) + 2)
    assert torch.equal(bound.counts[:, : found.counts.shape[1]], found.counts) and not bound.counts[:, -2:].any()


@pytest.mark.parametrize("kind", sorted(SPECS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_row_cut_anywhere_keeps_every_token_counted(kind, data):
    """Cut rows (what truncation does): listed counts plus what lies after the last item make the row's total."""
    ids = data.draw(batch(kind))
    cut = data.draw(st.integers(1, ids.shape[1]))
    ids = ids[:, :cut]
    found = item_token_counts(ids, SPECS[kind])
    total = count_image_tokens(ids, [IMG, VID])
    assert (found.counts.sum(1) + found.outside.sum(1)).tolist() == total.tolist()


def reference_check(reference, expected):
    """Bad (row, stream, item) of an item-by-item comparison of span counts with expected counts, per stream."""
    bad = set()
    for r, ((counts, kinds), want) in enumerate(zip(reference, expected)):
        for s, stream in enumerate(("image", "video")):
            have = [c for c, v in zip(counts, kinds) if v == bool(s)]
            for k in range(max(len(have), len(want[s]))):
                if k >= len(have) or k >= len(want[s]) or have[k] != want[s][k]:
                    bad.add((r, stream, k))
    return bad


def _streams(reference):
    return [([c for c, v in zip(cs, ks) if not v], [c for c, v in zip(cs, ks) if v]) for cs, ks in reference]


def _flat(expected, s):
    return [c for row in expected for c in row[s]], [len(row[s]) for row in expected]


@pytest.mark.parametrize("kind", ["bracket", "run_fixed", "terminated_run", "tiles"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_check_names_exactly_the_items_a_plain_comparison_finds(kind, data):
    """Expected counts drawn as the truth, then edited (swap, drop, add, change): the check's bad items are
    the plain item-by-item comparison's, and a row is bad exactly when one of its items is."""
    spec = SPECS[kind]
    ids = data.draw(batch(kind))
    reference = reference_items(ids, spec)
    expected = [list(map(list, row)) for row in _streams(reference)]
    for _ in range(data.draw(st.integers(0, 3))):
        r, s = data.draw(st.integers(0, len(expected) - 1)), data.draw(st.integers(0, 1))
        items = expected[r][s]
        edit = data.draw(st.sampled_from(["swap", "drop", "add", "change"]))
        if edit == "swap" and len(items) >= 2:
            i, j = data.draw(st.integers(0, len(items) - 1)), data.draw(st.integers(0, len(items) - 1))
            items[i], items[j] = items[j], items[i]
        elif edit == "drop" and items:
            items.pop(data.draw(st.integers(0, len(items) - 1)))
        elif edit == "add":
            items.insert(data.draw(st.integers(0, len(items))), data.draw(st.integers(1, 8)))
        elif edit == "change" and items:
            items[data.draw(st.integers(0, len(items) - 1))] += data.draw(st.integers(1, 3))
    result = check_item_counts(item_token_counts(ids, spec), _flat(expected, 0), _flat(expected, 1))
    want = reference_check(reference, expected)
    assert {(b.row, b.stream, b.item) for b in result.bad_items} == want
    assert result.bad_rows == sorted({r for r, _, _ in want})
    # listing one slot more than any row's media need (the collator's bound) still finds every bad row
    most = max(len(a) + len(b) for a, b in expected)
    bounded = check_item_counts(item_token_counts(ids, spec, max_items=most + 1), _flat(expected, 0), _flat(expected, 1))
    assert bounded.bad_rows == result.bad_rows
    for b in result.bad_items:
        have = [c for c, v in zip(*reference[b.row]) if v == (b.stream == "video")]
        assert b.seen == (have[b.item] if b.item < len(have) else None)
        mine = expected[b.row][b.stream == "video"]
        assert b.expected == (mine[b.item] if b.item < len(mine) else None)


def test_two_items_swapped_within_a_row_are_both_named_with_their_counts():
    """Equal per-row totals, wrong order: exactly what the model scatters into the wrong spans."""
    spec = SPECS["bracket"]
    ids = torch.tensor([[1, OPEN, *[IMG] * 4, CLOSE, 5, OPEN, *[IMG] * 16, CLOSE, 2],
                        [1, OPEN, IMG, CLOSE, 2] + [PAD] * 22])
    found = item_token_counts(ids, spec, max_items=3)
    assert check_item_counts(found, ([4, 16, 1], [2, 1])).ok  # the working twin: the right order
    result = check_item_counts(found, ([16, 4, 1], [2, 1]))
    assert result.bad_rows == [0]
    assert result.bad_items == [BadItem(0, "image", 0, 4, 16), BadItem(0, "image", 1, 16, 4)]
    assert result.tokens["image"][0].tolist() == result.tokens["image"][1].tolist() == [20, 1]  # totals agree
    assert result.describe(0) == "image 0: 4 tokens (its media need 16); image 1: 16 tokens (its media need 4)"


def test_missing_extra_and_cut_spans_are_named():
    spec = SPECS["bracket"]
    ids = torch.tensor([[1, OPEN, IMG, IMG, CLOSE, 2, PAD, PAD],
                        [1, OPEN, IMG, CLOSE, OPEN, IMG, CLOSE, 2],
                        [1, OPEN, IMG, CLOSE, OPEN, IMG, IMG, IMG]])  # row 2 cut inside its second span
    result = check_item_counts(item_token_counts(ids, spec, max_items=3), ([2, 7, 1, 1, 3], [2, 1, 2]))
    assert result.bad_items == [
        BadItem(0, "image", 1, None, 7),
        BadItem(1, "image", 1, 1, None),
        BadItem(2, "image", 1, None, 3),
        BadItem(2, "image", None, 3, 0),
    ]
    assert "image 1: no span in the text (its media need 7 tokens)" in result.describe(0)
    assert "image 1: a span of 1 tokens with no media" in result.describe(1)
    assert "3 image tokens after the last image span" in result.describe(2)


def test_image_and_video_streams_are_compared_apart():
    """Qwen: an image and a video of the same count in swapped streams are caught; each stream keeps its order."""
    spec = SPECS["bracket"]
    ids = torch.tensor([[1, OPEN, VID, VID, CLOSE, OPEN, IMG, IMG, IMG, CLOSE, OPEN, OPEN, VID, CLOSE, CLOSE]])
    found = item_token_counts(ids, spec, max_items=4)
    assert found.counts[0, :3].tolist() == [2, 3, 1] and found.video[0, :3].tolist() == [True, False, True]
    assert check_item_counts(found, ([3], [1]), ([2, 1], [2])).ok
    result = check_item_counts(found, ([3], [1]), ([1, 2], [2]))
    assert [(b.stream, b.item) for b in result.bad_items] == [("video", 0), ("video", 1)]
    assert check_item_counts(found, ([3], [1])).bad_items == [BadItem(0, "video", 0, 2, None),
                                                              BadItem(0, "video", 1, 1, None)]


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_merged_runs_pass_exactly_when_they_end_on_item_boundaries(data):
    """Bracketless runs of varying length (LLaVA-NeXT): a run may hold back-to-back images; it passes when
    the row's runs are cut exactly at the ends of its images (a plain cumulative-sum reference)."""
    spec = SPECS["run_free"]
    items = data.draw(st.lists(st.lists(st.integers(1, 5), max_size=4), min_size=1, max_size=4))
    rows, truth = [], []
    for sizes in items:  # images of one row, some back to back
        seq, runs = [1], []
        for n in sizes:
            joined = runs and data.draw(st.booleans())
            seq += [IMG] * n if joined else [7, IMG] + [IMG] * (n - 1)
            runs[-1:] = [runs[-1] + n] if joined else runs[-1:] + [n]
        rows.append(seq + [2])
        truth.append(runs)
    width = max(map(len, rows))
    ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
    expected = [list(s) for s in items]
    if data.draw(st.booleans()):
        r = data.draw(st.integers(0, len(expected) - 1))
        if expected[r]:
            expected[r][data.draw(st.integers(0, len(expected[r]) - 1))] += data.draw(st.sampled_from([-1, 1, 2]))
            expected[r] = [max(e, 1) for e in expected[r]]
    found = item_token_counts(ids, spec, max_items=max(map(len, expected)) + 1)
    result = check_item_counts(found, ([c for e in expected for c in e], [len(e) for e in expected]))
    assert found.merged
    assert all(b.run == (len(truth[b.row]) != len(expected[b.row])) for b in result.bad_items)
    for r, (runs, want) in enumerate(zip(truth, expected)):
        run_ends, item_ends = set(np.cumsum(runs).tolist()), set(np.cumsum(want).tolist())
        ok = run_ends <= item_ends and sum(runs) == sum(want)
        assert (r not in result.bad_rows) == ok, (runs, want, result.items_of(r))


def test_runs_one_image_each_are_compared_item_by_item_and_back_to_back_runs_as_sums():
    """LLaVA-NeXT: images apart in the text are checked one by one (a swap names both); back-to-back images
    form one run, checked against their sum (a swap inside it cannot be seen in the text: the limit)."""
    spec = SPECS["run_free"]
    apart = torch.tensor([[1, *[IMG] * 3, 5, *[IMG] * 5, 2]])
    found = item_token_counts(apart, spec, max_items=3)
    assert check_item_counts(found, ([3, 5], [2])).ok
    assert check_item_counts(found, ([5, 3], [2])).bad_items == [BadItem(0, "image", 0, 3, 5),
                                                                  BadItem(0, "image", 1, 5, 3)]
    together = torch.tensor([[1, *[IMG] * 8, 2]])
    found = item_token_counts(together, spec, max_items=3)
    assert check_item_counts(found, ([3, 5], [2])).ok and check_item_counts(found, ([5, 3], [2])).ok
    result = check_item_counts(found, ([3, 4], [2]))
    assert result.bad_items == [BadItem(0, "image", 0, 8, 7, run=True)]
    assert "a run of 8 tokens that does not end where one of them ends" in result.describe(0)


@pytest.mark.parametrize("device", DEVICES)
def test_same_results_on_every_device(device):
    spec = SPECS["bracket"]
    ids = torch.tensor([[1, OPEN, IMG, IMG, CLOSE, OPEN, OPEN, VID, CLOSE, CLOSE, 2], [1, OPEN, IMG, CLOSE] + [PAD] * 7])
    found = item_token_counts(ids.to(device), spec, max_items=3)
    assert found.counts.device.type == device
    assert found.counts.tolist() == [[2, 1, 0], [1, 0, 0]] and found.num_items.tolist() == [2, 1]
    result = check_item_counts(found, (torch.tensor([2, 2], device=device), [1, 1]), ([1], [1, 0]))
    assert result.bad_items == [BadItem(1, "image", 0, 1, 2)]


def test_empty_rows_and_no_items():
    spec = SPECS["bracket"]
    found = item_token_counts(torch.zeros((2, 0), dtype=torch.int64), spec)
    assert found.counts.shape == (2, 0) and found.num_items.tolist() == [0, 0]
    found = item_token_counts(torch.tensor([[1, 2, 3]]), spec)
    assert found.counts.shape == (1, 0) and check_item_counts(found, ([], [0])).ok
    assert not check_item_counts(found, ([4], [1])).ok


def test_count_image_tokens_accepts_one_row_and_no_ids():
    assert count_image_tokens(torch.tensor([IMG, 1, IMG]), IMG).tolist() == [2]
    assert count_image_tokens(torch.tensor([[IMG, 1]]), []).tolist() == [0]


def test_segment_sum_empty_segments_and_no_values():
    assert segment_sum(torch.tensor([1, 2, 3, 4]), torch.tensor([0, 4, 0])).tolist() == [0, 10, 0]
    assert segment_sum(torch.zeros(0, dtype=torch.int64), torch.tensor([0, 0])).tolist() == [0, 0]


def test_expected_counts_of_another_batch_size_are_refused():
    found = item_token_counts(torch.tensor([[1, OPEN, IMG, CLOSE]]), SPECS["bracket"])
    with pytest.raises(ValueError, match="describe 2 rows"):
        check_item_counts(found, ([1], [1, 0]))
    with pytest.raises(ValueError, match="2 expected counts for 1 items"):
        check_item_counts(found, ([1, 2], [1]))
    assert check_item_counts(found, ([1], [1])).ok


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("kind", sorted(SPECS))
def test_cuda_count_and_check_make_one_host_sync(kind):
    """Counting every item and checking it against its media syncs with the host exactly once on CUDA."""
    spec = SPECS[kind]
    ids = FIXED[kind].cuda()
    reference = reference_items(ids, spec)
    expected = _streams(reference)
    image = (torch.tensor(_flat(expected, 0)[0], device="cuda"), torch.tensor(_flat(expected, 0)[1], device="cuda"))
    video = (torch.tensor(_flat(expected, 1)[0], device="cuda"), torch.tensor(_flat(expected, 1)[1], device="cuda"))
    most = max(len(a) + len(b) for a, b in expected) + 1
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = check_item_counts(item_token_counts(ids, spec, max_items=most), image, video)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert result.ok
    assert len(syncs) == 1, [str(w.message) for w in syncs]
