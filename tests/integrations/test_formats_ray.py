"""The Ray stage splits rows in LLaMA-Factory format exactly as `Dataset.map(splitter)` does."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from chunker import SplitStats, WindowSplitter
from chunker.integrations.ray import from_huggingface, split_dataset
from chunker.sources import load_rows
from chunker.testing.families_b import build_processor

DEMO = Path(__file__).parent.parent / "data" / "formats" / "mllm_demo.json"


def test_ray_split_of_llama_factory_rows_equals_dataset_map(tmp_path):
    """mllm_demo.json as published plus one row with 2 <image> placeholders but 1 path: every window column is
    equal to Dataset.map's, and the bad row is the same counted ledger row in both."""
    shutil.copy(DEMO, tmp_path / "mllm_demo.json")
    (tmp_path / "mllm_demo_data").mkdir()
    for k, size in enumerate(((56, 84), (84, 56), (56, 56)), 1):
        Image.new("RGB", size, (70 * k, 90, 200)).save(tmp_path / "mllm_demo_data" / f"{k}.jpg")
    text = (tmp_path / "mllm_demo.json").read_text()
    (tmp_path / "mllm_demo.json").write_text(text.replace('"<image>Who is he?"', '"<image><image>Who is he?"'))
    rows = load_rows(str(tmp_path / "mllm_demo.json"))
    processor = build_processor("qwen2_vl")
    splitter = WindowSplitter(processor, max_length=40, overlap=4, on_error="skip")
    expected = rows.map(splitter, batched=True, with_indices=True, remove_columns=rows.column_names)
    expected = [{k: (np.asarray(v).tolist() if k != "images" else v) for k, v in r.items()}
                for r in expected.with_format("arrow")[:].to_pylist()]
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        got = split_dataset(from_huggingface(rows), splitter, batch_size=2).take_all()
    finally:
        ray.shutdown()
    got = sorted(({k: (np.asarray(v).tolist() if k != "images" else v) for k, v in r.items()} for r in got),
                 key=lambda r: (r["source_index"], r["window_index"]))
    assert len(expected) > len(rows)
    assert got == sorted(expected, key=lambda r: (r["source_index"], r["window_index"]))
    stats = SplitStats.from_windows(got)
    assert (stats.rows, dict(stats.skipped)) == (6, {"ImageCountError": 1})
