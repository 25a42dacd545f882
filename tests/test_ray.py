"""Ray Data: `split_dataset` in Ray local mode makes exactly the windows `Dataset.map(splitter)` makes."""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from chunker import ConfigError, SplitStats, WindowSplitter
from chunker.integrations.ray import from_huggingface, split_dataset
from chunker.sources import load_rows
from chunker.testing.demo import make_conversations, write_jsonl
from chunker.testing.families_b import build_processor

MAX_LENGTH, OVERLAP = 160, 24


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Four good long conversations in TRL JSONL (relative image paths) and, at row 2, one whose image is missing."""
    folder = tmp_path_factory.mktemp("ray")
    convs = make_conversations(5, seed=21, sizes=((56, 56), (84, 56), (112, 112)), images_per_turn=(1, 2))
    write_jsonl(convs, folder)
    (folder / "images" / "data-2-0.png").unlink()
    return load_rows(str(folder / "data.jsonl"))


def _key(row):
    return int(row["source_index"]), int(row["window_index"])


def _plain(row) -> dict:
    return {k: (np.asarray(v).tolist() if k != "images" else v) for k, v in row.items()}


def test_ray_split_equals_dataset_map_row_for_row(local_ray, rows):
    """Every column of every window (ids, labels, type ids, indices, images as stored) is equal to what
    Dataset.map makes, the skipped row leaves the same ledger row in both, and the Ray output counts it."""
    processor = build_processor("qwen2_vl")
    reference = WindowSplitter(processor, max_length=MAX_LENGTH, overlap=OVERLAP, on_error="skip")
    expected = rows.map(reference, batched=True, with_indices=True, remove_columns=rows.column_names)
    expected = [_plain(r) for r in expected.with_format("arrow")[:].to_pylist()]

    splitter = WindowSplitter(processor, max_length=MAX_LENGTH, overlap=OVERLAP, on_error="skip")
    got = split_dataset(from_huggingface(rows), splitter, batch_size=2).take_all()
    got = sorted((_plain(r) for r in got), key=_key)

    assert len(expected) > len(rows)
    assert [r["num_windows"] for r in expected if r["source_index"] == 2] == [0]
    assert [sorted(r) for r in got] == [sorted(r) for r in expected]
    assert got == sorted(expected, key=_key)
    stats = SplitStats.from_windows(got)
    assert (stats.rows, stats.windows, dict(stats.skipped)) == (5, len(got) - 1, {"ImageDecodeError": 1})


def test_ray_split_needs_a_row_index_column(local_ray, rows):
    """Without a row-position column the stage is refused up front (Ray batches carry no global position)."""
    plain = ray.data.from_arrow(rows.with_format("arrow")[:])
    with pytest.raises(ConfigError, match="index_column='row_index' is not a column"):
        split_dataset(plain, WindowSplitter(build_processor("qwen2_vl"), max_length=MAX_LENGTH))
