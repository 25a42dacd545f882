"""Streaming: `IterableDataset.map(splitter, batched=True)` gives the windows `Dataset.map` and `split_example` give,
and they flow through `WindowCollator` into a real model."""

from __future__ import annotations

import numpy as np
import pytest

from chunker import WindowCollator, WindowSplitter
from chunker.media import load_image
from chunker.sources import load_rows
from chunker.testing.demo import make_conversations, write_jsonl
from chunker.testing.families_b import build_model, build_processor

KEYS = ("input_ids", "labels", "attention_mask", "mm_token_type_ids", "source_index", "window_index", "num_windows")
MAX_LENGTH, OVERLAP = 160, 24


@pytest.fixture(scope="module")
def processor():
    return build_processor("qwen2_vl")


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Five long conversations written as TRL JSONL with relative image paths, loaded as a user would."""
    folder = tmp_path_factory.mktemp("stream")
    write_jsonl(make_conversations(5, seed=11, sizes=((56, 56), (84, 56), (112, 112))), folder)
    return load_rows(str(folder / "data.jsonl"))


def _plain(row) -> dict:
    out = {k: np.asarray(row[k]).tolist() for k in KEYS}
    out["images"] = [np.asarray(load_image(im)).tobytes() for im in row["images"]]  # PIL, path or bytes alike
    return out


def test_iterable_map_gives_the_windows_of_dataset_map_and_split_example(rows, processor):
    """Windows from a 3-shard IterableDataset equal, row for row (ids, labels, type ids, indices, image pixels),
    those of Dataset.map and of split_example on each row."""
    splitter = WindowSplitter(processor, max_length=MAX_LENGTH, overlap=OVERLAP)
    mapped = rows.map(splitter, batched=True, with_indices=True, remove_columns=rows.column_names)
    stream = rows.to_iterable_dataset(num_shards=3).map(
        splitter, batched=True, batch_size=2, with_indices=True, remove_columns=rows.column_names
    )
    streamed = [_plain(w) for w in stream]
    by_example = [_plain(w) for i in range(len(rows)) for w in splitter.split_example(rows[i], index=i)]
    assert len(mapped) > len(rows)
    assert streamed == [_plain(w) for w in mapped] == by_example
    assert max(len(w["input_ids"]) for w in streamed) <= MAX_LENGTH


def test_streamed_windows_train_a_real_model_through_the_collator(rows, processor):
    """A torch DataLoader over the streamed windows, collated by WindowCollator, runs forward and backward on a
    tiny Qwen2-VL: finite losses, and every image of every window reaches the model (pixel rows match grids)."""
    import torch

    splitter = WindowSplitter(processor, max_length=MAX_LENGTH, overlap=OVERLAP)
    stream = rows.to_iterable_dataset(num_shards=2).map(
        splitter, batched=True, with_indices=True, remove_columns=rows.column_names
    )
    loader = torch.utils.data.DataLoader(stream, batch_size=3, collate_fn=WindowCollator(processor))
    model = build_model("qwen2_vl", processor)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses, images = [], 0
    for step, batch in enumerate(loader):
        if step == 3:
            break
        assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(-1).sum())
        images += len(batch["image_grid_thw"])
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert images > 0
