"""chunker.ops: vectorized per-row counts agree with a per-row reference, on CPU and (when present) CUDA."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from chunker import ImageSpanSpec, find_image_spans
from chunker.ops import (
    check_alignment,
    count_image_tokens,
    expected_tokens_per_row,
    media_items_per_row,
    segment_sum,
)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
PAD, IMG, VID, OPEN, CLOSE, BREAK, END, FAKE, GLOBAL, ROWCOL = 0, 20, 21, 22, 23, 24, 25, 26, 27, 30

SPECS = {
    "bracket": ImageSpanSpec(family="custom", kind="bracket", image_token_id=IMG, video_token_id=VID,
                             open_ids=(OPEN,), close_ids=(CLOSE,)),
    "run_fixed": ImageSpanSpec(family="custom", kind="run", image_token_id=IMG, tokens_per_image=4),
    "run_free": ImageSpanSpec(family="custom", kind="run", image_token_id=IMG),
    "terminated_run": ImageSpanSpec(family="custom", kind="terminated_run", image_token_id=IMG,
                                    body_ids=(BREAK,), end_id=END),
    "tiles": ImageSpanSpec(family="custom", kind="tiles", image_token_id=IMG, open_ids=(FAKE,), global_id=GLOBAL,
                           tile_ids=(ROWCOL,), tokens_per_tile=3),
}


def _item(kind, rng, video=False):
    """Tokens of one media item of `kind` and its placeholder count."""
    if kind == "bracket":
        n = int(rng.integers(1, 6))
        return [OPEN] + [VID if video else IMG] * n + [CLOSE], n
    if kind == "run_fixed":
        return [IMG] * 4, 4
    if kind == "run_free":
        n = int(rng.integers(1, 6))
        return [IMG] * n, n
    if kind == "terminated_run":
        rows, cols = int(rng.integers(1, 3)), int(rng.integers(1, 4))
        toks = ([IMG] * cols + [BREAK]) * rows
        return toks[:-1] + [END], rows * cols
    tiles = int(rng.integers(0, 3))
    toks = [FAKE, ROWCOL, IMG, IMG, IMG] * tiles + [FAKE, GLOBAL, IMG, IMG, IMG, FAKE]
    return toks, 3 * (tiles + 1)


def _batch(kind, rng, rows=6, video=False):
    """A right-padded batch; per row the reference counts of image tokens and items, and video alike."""
    seqs, tokens, items, vtokens, vitems = [], [], [], [], []
    for r in range(rows):
        seq, t, k, vt, vk = [1], 0, 0, 0, 0
        for _ in range(int(rng.integers(0, 4)) if r else 0):
            seq += [100 + int(x) for x in rng.integers(0, 50, int(rng.integers(1, 4)))]
            is_video = video and bool(rng.integers(0, 2))
            toks, n = _item(kind, rng, video=is_video)
            seq += toks
            if is_video:
                vt, vk = vt + n, vk + 1
            else:
                t, k = t + n, k + 1
        seq += [2]
        seqs.append(seq)
        tokens.append(t), items.append(k), vtokens.append(vt), vitems.append(vk)
    width = max(map(len, seqs))
    ids = torch.tensor([s + [PAD] * (width - len(s)) for s in seqs])
    return ids, tokens, items, vtokens, vitems


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", sorted(SPECS))
def test_counts_per_row_equal_the_reference_and_find_image_spans(kind, device):
    """count_image_tokens and media_items_per_row give, per row, the counts the generator emitted."""
    rng = np.random.default_rng(len(kind))
    spec = SPECS[kind]
    for _ in range(5):
        ids, tokens, items, _, _ = _batch(kind, rng)
        ids = ids.to(device)
        assert count_image_tokens(ids, IMG).tolist() == tokens
        got = media_items_per_row(ids, spec)
        assert got.device.type == device
        assert got.tolist() == items
        spans = [len(find_image_spans(row.cpu().numpy(), spec)) for row in ids]
        assert got.tolist() == spans


@pytest.mark.parametrize("device", DEVICES)
def test_bracket_items_are_counted_per_stream(device):
    """Image and video spans of one bracket family are counted apart (Qwen: same brackets, two placeholders)."""
    rng = np.random.default_rng(3)
    ids, tokens, items, vtokens, vitems = _batch("bracket", rng, rows=8, video=True)
    ids = ids.to(device)
    spec = SPECS["bracket"]
    assert media_items_per_row(ids, spec).tolist() == items
    assert media_items_per_row(ids, spec, video=True).tolist() == vitems
    assert count_image_tokens(ids, [IMG, VID]).tolist() == [a + b for a, b in zip(tokens, vtokens)]
    assert sum(vitems) > 0 and sum(items) > 0


def test_nested_bracket_item_counts_once():
    """A Qwen3-VL-style video (frame groups nested in an outer pair) is one item, not one per frame."""
    spec = SPECS["bracket"]
    ids = torch.tensor([[1, OPEN, OPEN, VID, VID, CLOSE, 5, OPEN, VID, CLOSE, CLOSE, OPEN, IMG, CLOSE, 2]])
    assert media_items_per_row(ids, spec, video=True).tolist() == [1]
    assert media_items_per_row(ids, spec).tolist() == [1]


def test_count_image_tokens_accepts_one_row_and_no_ids():
    assert count_image_tokens(torch.tensor([IMG, 1, IMG]), IMG).tolist() == [2]
    assert count_image_tokens(torch.tensor([[IMG, 1]]), []).tolist() == [0]


@pytest.mark.parametrize("device", DEVICES)
def test_expected_tokens_per_row_grid_uses_each_rows_items(device):
    """grid_thw prefix sums: row r gets the sum over exactly its own items (rows with none get 0)."""
    rng = np.random.default_rng(1)
    items = torch.tensor([2, 0, 3, 1], device=device)
    grid = torch.tensor(rng.integers(1, 5, (6, 3)) * np.array([1, 2, 2]), device=device)
    got = expected_tokens_per_row(items, grid_thw=grid, merge_size=2)
    per = (grid.prod(-1) // 4).tolist()
    reference, k = [], 0
    for n in items.tolist():
        reference.append(sum(per[k:k + n]))
        k += n
    assert got.tolist() == reference
    assert got.device.type == device


@pytest.mark.parametrize("device", DEVICES)
def test_expected_tokens_per_row_fixed_tiles_and_tensor(device):
    items = torch.tensor([1, 0, 2], device=device)
    assert expected_tokens_per_row(items, tokens_per_item=256).tolist() == [256, 0, 512]
    tiles = torch.tensor([5, 1, 2], device=device)
    assert expected_tokens_per_row(items, tiles_per_item=tiles, tokens_per_tile=9).tolist() == [45, 0, 27]
    per = torch.tensor([7, 8, 9], device=device)
    assert expected_tokens_per_row(items, tokens_per_item=per).tolist() == [7, 0, 17]


def test_expected_tokens_per_row_needs_exactly_one_source():
    """Raises with no source or two sources; the twin above passes with one."""
    with pytest.raises(ValueError, match="exactly one"):
        expected_tokens_per_row(torch.tensor([1]))
    with pytest.raises(ValueError, match="exactly one"):
        expected_tokens_per_row(torch.tensor([1]), tokens_per_item=4, grid_thw=torch.ones(1, 3))
    with pytest.raises(ValueError, match="tokens_per_tile"):
        expected_tokens_per_row(torch.tensor([1]), tiles_per_item=torch.tensor([2]))


def test_segment_sum_empty_segments_and_no_values():
    assert segment_sum(torch.tensor([1, 2, 3, 4]), torch.tensor([0, 4, 0])).tolist() == [0, 10, 0]
    assert segment_sum(torch.zeros(0, dtype=torch.int64), torch.tensor([0, 0])).tolist() == [0, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_check_alignment_names_the_bad_rows_with_counts(device):
    seen = [torch.tensor([256, 512, 0, 256], device=device), torch.tensor([1, 2, 0, 1], device=device)]
    expected = [torch.tensor([256, 256, 0, 512], device=device), torch.tensor([1, 1, 0, 2], device=device)]
    a = check_alignment(seen, expected, names=["image tokens", "image items"])
    assert a.bad_rows == [1, 3] and not a.ok
    assert a.describe(1) == "image tokens 512 (expected 256), image items 2 (expected 1)"
    good = check_alignment(seen, seen)
    assert good.ok and good.bad_rows == []


def test_check_alignment_refuses_unpaired_counts():
    with pytest.raises(ValueError, match="as many expected"):
        check_alignment([torch.tensor([1])], [])
    assert check_alignment([torch.tensor([1])], [torch.tensor([1])]).ok


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_check_makes_one_host_sync():
    """The whole check (count, items, expected, compare) syncs with the host exactly once on CUDA."""
    spec = SPECS["bracket"]
    ids, tokens, items, _, _ = _batch("bracket", np.random.default_rng(0), rows=16)
    ids = ids.cuda()
    expected = [torch.tensor(tokens, device="cuda"), torch.tensor(items, device="cuda")]
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = check_alignment([count_image_tokens(ids, IMG), media_items_per_row(ids, spec)], expected)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert result.ok
    assert len(syncs) == 1, [str(w.message) for w in syncs]
