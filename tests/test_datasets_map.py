"""`Dataset.map` with num_proc=2 gives the windows split_example gives, and skipped rows stay countable."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

import chunker
from chunker.sources import load_processor
from chunker.testing.demo import make_conversations

COLUMNS = ("input_ids", "labels", "attention_mask", "mm_token_type_ids", "source_index", "window_index", "num_windows")


@pytest.fixture(scope="module")
def processor():
    return load_processor("demo")


def expected_windows(splitter, rows):
    out = []
    for i, row in enumerate(rows):
        out += splitter.split_example(row, index=i)
    return out


def assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        for key in COLUMNS:
            np.testing.assert_array_equal(np.asarray(g[key]), np.asarray(w[key]), err_msg=key)
        assert [im.size for im in g["images"]] == [im.size for im in w["images"]]


def test_num_proc_2_map_of_conversations_equals_split_example(processor):
    rows = make_conversations(6, seed=3)
    splitter = chunker.WindowSplitter(processor, max_length=256, overlap=32)
    ds = datasets.Dataset.from_list(rows)
    got = ds.map(splitter, batched=True, batch_size=2, with_indices=True, num_proc=2, remove_columns=ds.column_names)
    assert_same(list(got), expected_windows(splitter, rows))
    stats = chunker.SplitStats.from_windows(got)
    assert stats.rows == 6 and stats.windows == len(got) > 6 and not stats.skipped


def test_num_proc_2_map_of_pretokenized_rows_equals_split_example(processor):
    rows = make_conversations(6, seed=4)
    whole = chunker.WindowSplitter(processor, max_length=1 << 20)
    tokenized = [whole.split_example(r, index=i)[0] for i, r in enumerate(rows)]
    pre = [{"input_ids": t["input_ids"].tolist(), "labels": t["labels"].tolist(), "images": r["images"]}
           for t, r in zip(tokenized, rows)]
    splitter = chunker.WindowSplitter(processor, max_length=200, overlap=16)
    ds = datasets.Dataset.from_list(pre)
    got = ds.map(splitter, batched=True, batch_size=2, with_indices=True, num_proc=2, remove_columns=ds.column_names)
    want = expected_windows(splitter, [dict(p) for p in ds])
    assert len(got) == len(want) > len(pre)
    for g, w in zip(got, want):
        for key in ("input_ids", "labels", "attention_mask", "source_index", "window_index", "num_windows"):
            np.testing.assert_array_equal(np.asarray(g[key]), np.asarray(w[key]), err_msg=key)


def test_skipped_rows_are_counted_across_processes(processor):
    rows = make_conversations(6, seed=5)
    rows[1] = {**rows[1], "images": rows[1]["images"][:-1]}          # one image short
    rows[4] = {**rows[4], "messages": []}                             # empty conversation
    splitter = chunker.WindowSplitter(processor, max_length=256, on_error="skip")
    ds = datasets.Dataset.from_list(rows)
    got = ds.map(splitter, batched=True, batch_size=2, with_indices=True, num_proc=2, remove_columns=ds.column_names)
    stats = chunker.SplitStats.from_windows(got)
    assert stats.rows == 6
    assert dict(stats.skipped) == {"ImageCountError": 1, "EmptyConversationError": 1}
    assert sorted(e["row"] for e in stats.examples) == [1, 4]
    kept = chunker.drop_skipped(got)
    assert sorted(set(kept["source_index"])) == [0, 2, 3, 5] and len(kept) == len(got) - 2
    ledger = got.filter(lambda n: n == 0, input_columns="num_windows")
    assert sorted(ledger["source_index"]) == [1, 4] and all(len(ids) == 0 for ids in ledger["input_ids"])


def test_the_map_is_pure_same_fingerprint_and_a_cache_hit_keeps_the_accounting(processor, tmp_path):
    """Two identically configured splitters hash alike, calling one does not change its hash, a second identical
    map reuses the cache file, and the skips counted from the cached output are the first run's."""
    from datasets.fingerprint import Hasher

    rows = make_conversations(4, seed=6)
    rows[2] = {**rows[2], "messages": []}
    a = chunker.WindowSplitter(processor, max_length=256, on_error="skip")
    b = chunker.WindowSplitter(processor, max_length=256, on_error="skip")
    other = chunker.WindowSplitter(processor, max_length=257, on_error="skip")
    assert Hasher.hash(a) == Hasher.hash(b) != Hasher.hash(other)
    ds = datasets.Dataset.from_list(rows).flatten_indices(cache_file_name=str(tmp_path / "rows.arrow"))
    kw = {"batched": True, "with_indices": True, "remove_columns": ds.column_names}
    before = Hasher.hash(a)
    first = ds.map(a, **kw)
    assert Hasher.hash(a) == before
    second = ds.map(b, **kw)
    assert first.cache_files and second.cache_files[0]["filename"] == first.cache_files[0]["filename"]
    assert chunker.SplitStats.from_windows(second) == chunker.SplitStats.from_windows(first)
    assert chunker.SplitStats.from_windows(second).skipped == {"EmptyConversationError": 1}
    third = ds.map(other, **kw)
    assert third.cache_files[0]["filename"] != first.cache_files[0]["filename"]


def test_the_same_rows_without_skip_raise_naming_the_row(processor):
    rows = make_conversations(3, seed=5)
    rows[1] = {**rows[1], "images": rows[1]["images"][:-1]}
    splitter = chunker.WindowSplitter(processor, max_length=256)
    with pytest.raises(chunker.ImageCountError, match="row 1"):
        splitter.split_example(rows[1], index=1)
    assert splitter.split_example(rows[0], index=0)


def test_a_forked_worker_runs_torch_on_one_thread():
    """`Dataset.map(num_proc=2)` forks workers; with torch's OpenMP pool used in the parent (the grammar probe of a
    torchvision image processor), a worker's first parallel kernel waited forever for the pool's missing threads.
    Workers forked after chunker is imported run torch on one thread (as torch's DataLoader workers do); the parent
    keeps its own setting. The num_proc=2 maps above are the end-to-end check (they hung on torch 2.14.1 +
    torchvision without it)."""
    import os

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.ones(1 << 16).add_(1)  # a parallel kernel in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its thread count and leave without running pytest's teardown
        os.write(write, str(torch.get_num_threads()).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = int(os.read(read, 16))
    assert child == 1 and torch.get_num_threads() == 2
    torch.set_num_threads(before)
