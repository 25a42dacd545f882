"""WindowSplitter options beyond the core invariants (which live in test_properties.py)."""

from __future__ import annotations

import numpy as np

import chunker


def test_drop_unsupervised_leaves_out_windows_without_loss_and_counts_them():
    """A window holding only a prompt and its image trains nothing: dropped on request, counted, never silent."""
    import datasets

    spec = chunker.ImageSpanSpec(family="custom", kind="bracket", image_token_id=7, open_ids=(5,), close_ids=(6,),
                                 instruction_ids=(8,), response_ids=(9,), bos_id=1)
    ids = [1, 8, 20, 21, 22, 23, 5, 7, 7, 7, 6, 24, 9, 30, 31, 32]
    row = {"input_ids": ids, "images": ["a"]}
    keep = chunker.WindowSplitter(spec=spec, max_length=8)
    kept = keep.split_example(row, index=0)
    assert [bool((w["labels"][1:] != -100).any()) for w in kept] == [False, False, True]
    drop = chunker.WindowSplitter(spec=spec, max_length=8, drop_unsupervised=True)
    rows = drop.split_example(row, index=0)
    assert len(rows) == 1 and rows[0]["window_index"] == 0 and rows[0]["num_windows"] == 1
    np.testing.assert_array_equal(rows[0]["input_ids"], kept[-1]["input_ids"])
    ds = datasets.Dataset.from_list([row, row])
    out = ds.map(drop, batched=True, with_indices=True, remove_columns=ds.column_names)
    stats = chunker.SplitStats.from_windows(out)
    assert len(out) == 2 and stats.unsupervised_windows == 4 and stats.windows == 2 and out["dropped_windows"] == [2, 2]
