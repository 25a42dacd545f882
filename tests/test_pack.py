"""pack_windows on real datasets (literal rows in, literal packed rows out) and the collator's packed layout."""

from __future__ import annotations

from functools import cache

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import chunker
import chunker.pack
from chunker import ConfigError, RowFormatError, pack_windows
from chunker.collator import WindowCollator
from chunker.pack import plan_bins
from chunker.testing import build_model, build_processor

INT = datasets.Value("int64")


def _windows(**extra):
    cols = {"input_ids": [[1, 2, 3, 4], [5, 6, 7], [8, 9], [], [10, 11, 12, 13, 14]],
            "labels": [[-100, 2, 3, 4], [-100, 6, 7], [-100, 9], [], [-100, 11, 12, 13, 14]],
            "source_index": [0, 1, 1, 2, 3], "window_index": [0, 0, 1, -1, 0], "num_windows": [1, 2, 2, 0, 1]}
    cols.update(extra)
    return datasets.Dataset.from_dict(cols)


def test_bfd_packs_whole_windows_and_keeps_their_identity():
    packed = pack_windows(_windows(), max_length=7)
    assert packed.to_list() == [
        {"input_ids": [10, 11, 12, 13, 14, 8, 9], "labels": [-100, 11, 12, 13, 14, -100, 9],
         "source_index": [3, 1], "window_index": [0, 1], "num_windows": [1, 2], "segment_lengths": [5, 2]},
        {"input_ids": [1, 2, 3, 4, 5, 6, 7], "labels": [-100, 2, 3, 4, -100, 6, 7],
         "source_index": [0, 1], "window_index": [0, 0], "num_windows": [1, 2], "segment_lengths": [4, 3]},
    ]  # the ledger row (no tokens) is left out


def test_sequential_keeps_the_order():
    packed = pack_windows(_windows(), max_length=7, strategy="sequential")
    assert packed["segment_lengths"] == [[4, 3], [2, 5]]
    assert packed["window_index"] == [[0, 0], [1, 0]]


def test_plan_bins_never_overfills_and_uses_every_window_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=500)
    for strategy in ("bfd", "sequential"):
        bins = plan_bins(lengths, 128, strategy)
        assert sorted(np.concatenate(bins).tolist()) == list(range(500))
        assert max(int(lengths[b].sum()) for b in bins) <= 128
    # best fit decreasing needs at most 11/9 OPT + 1 rows; OPT >= total / max_length
    assert len(plan_bins(lengths, 128)) <= 11 / 9 * int(np.ceil(lengths.sum() / 128)) + 1


def test_images_and_pixel_tensors_are_joined_in_window_order(tmp_path):
    paths = []
    for k in range(3):
        path = tmp_path / f"{k}.png"
        Image.new("RGB", (4 + k, 4), (k, k, k)).save(path)
        paths.append(str(path))
    ds = datasets.Dataset.from_dict(
        {"input_ids": [[1, 2], [3, 4, 5], [6]], "source_index": [0, 1, 2], "window_index": [0, 0, 0],
         "images": [[paths[0]], [], [paths[1], paths[2]]],
         "pixel_values": [[[0.0, 0.5]], [], [[1.0, 1.5], [2.0, 2.5]]]},
        features=datasets.Features({"input_ids": datasets.List(datasets.Value("int32")), "source_index": INT,
                                    "window_index": INT, "images": datasets.List(datasets.Image()),
                                    "pixel_values": datasets.List(datasets.List(datasets.Value("float32")))}))
    packed = pack_windows(ds, max_length=6, strategy="sequential")
    assert packed.features["images"] == ds.features["images"]
    row = packed[0]
    assert row["input_ids"] == [1, 2, 3, 4, 5, 6] and row["segment_lengths"] == [2, 3, 1]
    assert [im.size for im in row["images"]] == [(4, 4), (5, 4), (6, 4)]
    assert row["pixel_values"] == [[0.0, 0.5], [1.0, 1.5], [2.0, 2.5]]


def test_streaming_packs_within_a_bounded_buffer():
    stream = _windows().to_iterable_dataset()
    packed = list(pack_windows(stream, max_length=7, batch_size=3))
    # buffer 1: windows of 4, 3, 2 tokens; buffer 2: the ledger row and the window of 5
    assert [r["segment_lengths"] for r in packed] == [[4, 3], [2], [5]]
    assert [r["source_index"] for r in packed] == [[0, 1], [1], [3]]


def test_a_window_longer_than_max_length_is_refused_by_name():
    with pytest.raises(RowFormatError, match=r"source_index 3, window_index 0\): the window holds 5 tokens, more than "
                                             r"max_length=4"):
        pack_windows(_windows(), max_length=4)
    with pytest.raises(ConfigError, match="strategy='ffd' must be one of"):
        pack_windows(_windows(), max_length=7, strategy="ffd")
    with pytest.raises(RowFormatError, match="packed already"):
        pack_windows(pack_windows(_windows(), max_length=7), max_length=7)
    with pytest.raises(ConfigError, match="takes a datasets.Dataset"):
        pack_windows([{"input_ids": [1]}], max_length=7)


@cache
def _qwen(family):
    processor = build_processor(family)
    rng = np.random.default_rng(2)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(56, 84), (64, 32), (40, 96)]]
    messages = []
    for _ in images:
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it"}]})
        messages.append({"role": "assistant", "content": "a cat on a mat, " * 3})
    windows = chunker.WindowSplitter(processor, max_length=64).split_example({"messages": messages, "images": images},
                                                                           index=0)
    return processor, windows


def _pack_rows(windows, max_length):
    packed = pack_windows(datasets.Dataset.from_list([{k: v for k, v in w.items() if k != "images"} for w in windows]),
                          max_length=max_length, strategy="sequential").to_list()
    for row in packed:
        row["images"] = [im for k in row["window_index"] for im in windows[k]["images"]]
    return packed


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_rope_from_the_grids_equals_the_models_own_per_window(family):
    """Without model=, the 3-D positions come from the image grids; they equal the model's own get_rope_index on
    each window alone (the reference), and so do the ones made with model=."""
    processor, windows = _qwen(family)
    model = build_model(family, processor)
    rows = _pack_rows(windows, 200)
    assert len(rows[0]["segment_lengths"]) >= 2
    for collator in (WindowCollator(processor), WindowCollator(processor, model=model)):
        batch = collator(rows)
        assert batch["position_ids"].shape == (4, *batch["input_ids"].shape)
        for r, row in enumerate(rows):
            off = 0
            for k, n in zip(row["window_index"], row["segment_lengths"]):
                alone = collator([windows[k]])
                ref, _ = model.model.get_rope_index(alone["input_ids"], alone["mm_token_type_ids"],
                                                    image_grid_thw=alone.get("image_grid_thw"))
                assert torch.equal(batch["position_ids"][1:, r, off:off + n], ref[:, 0, :n]), (r, k)
                assert torch.equal(batch["position_ids"][0, r, off:off + n], torch.arange(n))
                off += n


def test_packed_labels_positions_and_padding_free_layout():
    processor, windows = _qwen("qwen2_vl")
    rows = _pack_rows(windows, 200)
    batch = WindowCollator(processor)(rows)
    starts = [0]
    for n in rows[0]["segment_lengths"][:-1]:
        starts.append(starts[-1] + n)
    assert (batch["labels"][0, starts] == -100).all()
    assert batch["use_cache"] is False and "attention_mask" not in batch
    flat = WindowCollator(processor, padding_free=True)(rows + [windows[0]])
    total = sum(len(r["input_ids"]) for r in rows) + len(windows[0]["input_ids"])
    assert flat["input_ids"].shape == (1, total) and flat["position_ids"].shape == (4, 1, total)
    # the unpacked row (one window) still collates as before: no positions, an attention mask
    plain = WindowCollator(processor)([windows[0], windows[1]])
    assert "position_ids" not in plain and "attention_mask" in plain


def test_a_packed_row_whose_segments_do_not_add_up_is_refused():
    processor, windows = _qwen("qwen2_vl")
    row = dict(_pack_rows(windows, 200)[0])
    row["segment_lengths"] = [row["segment_lengths"][0], 1]
    with pytest.raises(RowFormatError, match="segment_lengths .* do not add up to the row's"):
        WindowCollator(processor)([row])


def test_pack_rows_packs_row_dicts_like_pack_windows():
    """The in-memory twin (Unsloth's pack=True): arrays joined, scalars per window, the same bins."""
    rows = [{"input_ids": np.array([1, 2, 3, 4]), "source_index": 0, "window_index": 0, "images": ["a"]},
            {"input_ids": np.array([5, 6, 7]), "source_index": 1, "window_index": 0, "images": []},
            {"input_ids": np.array([8, 9]), "source_index": 1, "window_index": 1, "images": ["b", "c"]}]
    packed = chunker.pack.pack_rows(rows, max_length=6)
    assert [r["input_ids"].tolist() for r in packed] == [[1, 2, 3, 4, 8, 9], [5, 6, 7]]
    assert [r["images"] for r in packed] == [["a", "b", "c"], []]
    assert [(r["source_index"], r["window_index"], r["segment_lengths"]) for r in packed] == [
        ([0, 1], [0, 1], [4, 2]), ([1], [0], [3])]
    with pytest.raises(RowFormatError, match=r"source_index 0, window_index 0\): the window holds 4 tokens"):
        chunker.pack.pack_rows(rows, max_length=3)
    with pytest.raises(RowFormatError, match="packed already"):
        chunker.pack.pack_rows(packed, max_length=12)
