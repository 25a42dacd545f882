"""The Arrow path (chunker.fast) gives byte-identical windows, errors and stats to the row path (split_example)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from conversations import BOS, CLOSE, IGNORE, IMG, OPEN, conversations
from hypothesis import given
from hypothesis import strategies as st

from chunker import ChunkerError, ImageSpanSpec, SplitStats, WindowSplitter
from chunker.fast import split_arrow_batch

KINDS = ("bracket", "run", "terminated_run", "tiles")


def _batch_rows(convs, with_images=True):
    """Pre-tokenized rows of several conversations, all with the first one's label source and columns."""
    lead = convs[0]
    rows = []
    for c in convs:
        c.train_from, c.with_tensors, c.with_images = lead.train_from, False, with_images
        rows.append(c.row())
    if any("videos" in r for r in rows):
        for r in rows:
            r.setdefault("videos", [])
    return rows


def _row_path(splitter, rows, indices):
    """What the row path gives for the same rows: a list of window dicts with plain-list values."""
    columns = {key: [r[key] for r in rows] for key in rows[0]}
    out = splitter(columns, indices)
    n = len(out["input_ids"])
    return [{k: (v[i].tolist() if hasattr(v[i], "tolist") else v[i]) for k, v in out.items()} for i in range(n)]


def _outcome(fn):
    try:
        return fn(), None
    except ChunkerError as exc:
        return None, (type(exc).__name__, str(exc))


def _settings(lead, data):
    return {
        "spec": lead.spec, "max_length": lead.max_length, "overlap": lead.overlap, "prefix": lead.prefix,
        "on_oversize": data.draw(st.sampled_from(["raise", "skip"])), "on_error": data.draw(st.sampled_from(["raise", "skip"])),
    }


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_arrow_path_windows_errors_and_stats_equal_row_path(kind, data):
    """Invariant 7 across paths: for batches of any grammar, overlap, prefix, label source and skip policy, the
    Arrow path returns the same windows (values, column order), raises the same error, and
    records the same stats (rows, windows, skipped by reason, examples) as the row path."""
    lead = data.draw(conversations(kind=kind))
    others = data.draw(st.lists(conversations(family=lead.family), max_size=4))
    convs = [lead, *others]
    rows = _batch_rows(convs)
    indices = data.draw(st.lists(st.integers(0, 10**6), min_size=len(rows), max_size=len(rows), unique=True))
    settings = _settings(lead, data)
    slow, fast = WindowSplitter(**settings), WindowSplitter(**settings)
    expected, expected_error = _outcome(lambda: _row_path(slow, rows, indices))
    table, error = _outcome(lambda: split_arrow_batch(fast, pa.Table.from_pylist(rows), indices))
    assert error == expected_error
    if expected_error:
        return
    got = table.to_pylist()
    assert [list(w) for w in got] == [list(w) for w in expected]
    assert got == expected
    # the types `datasets` gives the row path's columns when it writes them
    for name, value_type in (("input_ids", pa.int32()), ("labels", pa.int64()), ("attention_mask", pa.int8())):
        assert table.schema.field(name).type == pa.list_(value_type)
    assert SplitStats.from_windows(got) == SplitStats.from_windows(expected)


def _gemma_like(n_rows, seed=0, bad=()):
    """Rows of a small bracket grammar (4 tokens per image); rows in `bad` get an unclosed image."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_rows):
        ids, labels, images = [BOS], [IGNORE], []
        for t in range(int(rng.integers(1, 5))):
            for _ in range(int(rng.integers(0, 3))):
                block = [OPEN, IMG, IMG, IMG, IMG, CLOSE]
                ids += block
                labels += [IGNORE] * len(block)
                images.append(f"r{r}i{len(images)}")
            text = rng.integers(1000, 2000, size=int(rng.integers(3, 40))).tolist()
            answer = rng.integers(1000, 2000, size=int(rng.integers(3, 40))).tolist()
            ids += text + answer
            labels += [IGNORE] * len(text) + answer
        if r in bad:
            ids += [OPEN, IMG]
            labels += [IGNORE, IGNORE]
        rows.append({"input_ids": ids, "labels": labels, "images": images})
    return rows


SPEC = ImageSpanSpec(
    family="custom", kind="bracket", image_token_id=IMG, open_ids=(OPEN,), close_ids=(CLOSE,), tokens_per_image=4,
    type_ids_column="token_type_ids", bos_id=BOS,
)


def test_dataset_map_takes_arrow_path_and_matches_rows():
    """`ds.map(splitter, batched=True, ...)` as the README shows it returns what the row path gives, with the
    skipped rows counted the same; an Arrow-formatted dataset gives the same."""
    datasets = pytest.importorskip("datasets")
    rows = _gemma_like(40, bad=(3, 17))
    ds = datasets.Dataset.from_list(rows)
    fast = WindowSplitter(spec=SPEC, max_length=24, overlap=4, on_error="skip")
    slow = WindowSplitter(spec=SPEC, max_length=24, overlap=4, on_error="skip")
    kw = {"batched": True, "batch_size": 16, "with_indices": True, "remove_columns": ds.column_names}
    got = ds.map(fast, **kw)
    # dict(batch) turns the lazy Arrow batch into Python lists: the row path.
    want = ds.map(lambda b, i: slow(dict(b), i), **kw)
    assert got.to_list() == want.to_list()
    assert got.features == want.features
    assert SplitStats.from_windows(got).skipped == {"SpanError": 2}
    arrow = ds.with_format("arrow").map(fast, **kw)
    assert arrow.to_list() == want.to_list()
    assert isinstance(fast(ds.with_format("arrow")[:8], list(range(8))), pa.Table)


def test_image_feature_survives_the_arrow_path(tmp_path):
    """Images stored as `datasets.Image()` keep their feature and bytes through the Arrow path (no re-encoding)."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    rows = _gemma_like(6, seed=2)
    for r in rows:
        paths = []
        for k, _ in enumerate(r["images"]):
            path = tmp_path / f"{len(paths)}-{k}-{id(r)}.png"
            Image.new("RGB", (4 + k, 3), (k * 40, 10, 10)).save(path)
            paths.append(str(path))
        r["images"] = paths
    features = datasets.Features({
        "input_ids": datasets.List(datasets.Value("int64")), "labels": datasets.List(datasets.Value("int64")),
        "images": datasets.List(datasets.Image()),
    })
    ds = datasets.Dataset.from_list(rows, features=features)
    splitter = WindowSplitter(spec=SPEC, max_length=20)
    out = ds.map(splitter, batched=True, with_indices=True, remove_columns=ds.column_names)
    assert out.features["images"] == datasets.List(datasets.Image())
    for w in out:
        source = ds[w["source_index"]]
        sizes = [im.size for im in source["images"]]
        assert all(im.size in sizes for im in w["images"])
    assert sum(len(w["images"]) for w in out) >= sum(len(r["images"]) for r in rows)


def test_ineligible_batches_take_the_row_path():
    """Python lists, pixel tensors and conversational rows are left to the row path (None), which still accepts
    an Arrow table by turning it into Python lists."""
    rows = _gemma_like(3)
    splitter = WindowSplitter(spec=SPEC, max_length=24)
    assert split_arrow_batch(splitter, {k: [r[k] for r in rows] for k in rows[0]}) is None
    with_pixels = pa.Table.from_pylist([{**r, "pixel_values": [[0.0]] * len(r["images"])} for r in rows])
    assert split_arrow_batch(splitter, with_pixels) is None
    out = splitter(with_pixels, [0, 1, 2])
    assert isinstance(out, dict) and "pixel_values" in out
    assert split_arrow_batch(splitter, pa.table({"messages": [[{"role": "user", "content": "hi"}]]})) is None


def test_without_indices_the_splitter_refuses_by_name_and_reads_an_id_column():
    """Without `with_indices` a map function cannot know where its batch lies (num_proc shards the data): the
    splitter refuses by name on both paths; its twin, a batch with an integer `id` column, takes the ids."""
    from chunker import ConfigError

    rows = _gemma_like(6, seed=5)
    splitter = WindowSplitter(spec=SPEC, max_length=24)
    with pytest.raises(ConfigError, match="with_indices=True"):
        split_arrow_batch(splitter, pa.Table.from_pylist(rows[3:]))
    with pytest.raises(ConfigError, match="with_indices=True"):
        splitter({k: [r[k] for r in rows] for k in rows[0]})
    with_ids = [{**r, "id": 100 + i} for i, r in enumerate(rows)]
    table = split_arrow_batch(splitter, pa.Table.from_pylist(with_ids[3:]))
    assert sorted(set(table.column("source_index").to_pylist())) == [103, 104, 105]


def test_fast_path_raises_the_row_error():
    """Under on_error='raise', an unclosed image in the batch raises the same SpanError as split_example."""
    rows = _gemma_like(5, bad=(2,))
    splitter = WindowSplitter(spec=SPEC, max_length=24)
    with pytest.raises(ChunkerError) as fast:
        split_arrow_batch(splitter, pa.Table.from_pylist(rows), list(range(5)))
    with pytest.raises(ChunkerError) as slow:
        splitter.split_example(rows[2], index=2)
    assert type(fast.value) is type(slow.value) and str(fast.value) == str(slow.value)
    assert "row 2" in str(fast.value)




def test_batch_cut_points_find_nothing_across_two_rows():
    """The whole-batch pass reads turn markers and loss edges over the flat ids of all rows: a marker whose
    tokens run from one row into the next, or an edge between two rows, is no cut point of either row."""
    from chunker.splitter import cut_points

    spec = ImageSpanSpec(family="custom", kind="bracket", image_token_id=7, open_ids=(5,), close_ids=(6,),
                         instruction_ids=(10, 12), response_ids=(11,))
    row0 = np.array([1, 10, 12, 4, 11, 4, 10])   # ends with the first token of an instruction marker
    row1 = np.array([12, 4, 11, 4, 4])            # ... whose second token opens the next row
    mask0 = np.array([0, 0, 0, 0, 0, 1, 1], bool)
    mask1 = np.array([0, 0, 0, 1, 1], bool)     # supervision stops at the row boundary: an edge of neither row
    flat = cut_points(np.concatenate([row0, row1]), np.concatenate([mask0, mask1]), spec, offsets=[0, 7, 12])
    # by hand: row 0 has markers at 1 (10 12) and 4 (11), an edge at 5; row 1 a marker at 2 (11), an edge at 3
    assert flat.tolist() == [1, 4, 5, 7 + 2, 7 + 3]
    assert cut_points(row0, mask0, spec).tolist() == [1, 4, 5]
    assert cut_points(row1, mask1, spec).tolist() == [2, 3]


def test_a_row_that_trains_nothing_in_a_batch_is_skipped_alone():
    """One row of a batch trains nothing: under on_error="skip" it leaves its ledger row and the other rows of
    the batch still take the whole-batch pass; under "raise" its own error names it."""
    spec = ImageSpanSpec(family="custom", kind="bracket", image_token_id=7, open_ids=(5,), close_ids=(6,))
    good = {"input_ids": [1, 5, 7, 6, 2, 3], "labels": [-100, -100, -100, -100, 2, 3], "images": ["a.png"]}
    bad = {"input_ids": [1, 5, 7, 6, 2, 3], "labels": [-100] * 6, "images": ["b.png"]}
    table = pa.Table.from_pylist([good, bad, good])
    out = split_arrow_batch(WindowSplitter(spec=spec, max_length=4, prefix="none", on_error="skip"), table,
                            indices=[0, 1, 2]).to_pylist()
    assert [(r["source_index"], r["num_windows"]) for r in out] == [(0, 3), (0, 3), (0, 3), (1, 0), (2, 3), (2, 3),
                                                                     (2, 3)]
    assert out[3]["skip_reason"].startswith("NoSupervisionError") and out[3]["images"] is None
    assert [r["input_ids"] for r in out[:3]] == [[1, 5, 7, 6], [5, 7, 6, 2], [2, 3]]
    with pytest.raises(ChunkerError, match="row 1: the row would train no token"):
        split_arrow_batch(WindowSplitter(spec=spec, max_length=4, prefix="none"), table, indices=[0, 1, 2])


def test_rows_the_batch_pass_does_not_walk_are_planned_alone_with_the_same_windows(monkeypatch):
    """The batch pass plans all rows in lockstep (`plan_batch`), but leaves a row needing more than
    `LOCKSTEP_WINDOWS` windows, a system-turn prefix, and rows with errors to `analyse_batch`, row by row. A batch
    mixing them gives, per row, the windows written out by hand (each row checked on its own)."""
    import chunker.plan

    monkeypatch.setattr(chunker.plan, "LOCKSTEP_WINDOWS", 2)  # a row of more than 2 windows is walked alone
    spec = ImageSpanSpec(family="custom", kind="bracket", image_token_id=7, open_ids=(5,), close_ids=(6,))
    short = {"input_ids": [1, 5, 7, 6, 2, 3], "labels": [-100, -100, -100, -100, 2, 3], "images": ["a"]}
    ids = [1, 2, 3, 4, 2, 3, 4, 2, 3, 4, 2, 3]
    long = {"input_ids": ids, "labels": [-100, *ids[1:]], "images": []}
    splitter = WindowSplitter(spec=spec, max_length=4, prefix="none")
    out = split_arrow_batch(splitter, pa.Table.from_pylist([short, long, short]), indices=[0, 1, 2]).to_pylist()
    by_row = {i: [r["input_ids"] for r in out if r["source_index"] == i] for i in range(3)}
    # by hand: the 2nd window starts on the supervised token 2, so it brings the token before it as context, and
    # that token ends the image [1, 4), which comes whole; the text row is cut every 4 tokens, each later window
    # starting one token early (its first token trains)
    assert by_row[0] == by_row[2] == [[1, 5, 7, 6], [5, 7, 6, 2], [2, 3]]
    assert by_row[1] == [[1, 2, 3, 4], [4, 2, 3, 4], [4, 2, 3, 4], [4, 2, 3]]
    assert [r["images"] for r in out if r["source_index"] == 0] == [["a"], ["a"], []]
    done = chunker.plan.plan_batch(np.array([0, 6, 18]), np.zeros(2, np.int64), np.array([1]), np.array([4]),
                                   np.zeros(0, np.int64), np.ones(18, bool), max_length=4)[-1]
    assert done.tolist() == [True, False]  # the long row really was left to the row-by-row planner
