"""The Arrow path of the splitter: pre-tokenized batches in, window rows out, as offsets arithmetic on flat arrays.

`WindowSplitter.__call__` sends every batch here first. A batch that arrives as Arrow (a `pyarrow.Table`,
the lazy batch `Dataset.map` passes for unformatted datasets, or a dict of Arrow arrays) and holds
pre-tokenized rows without pixel tensors is split without turning tokens into Python objects:

- the batch's `input_ids` (and labels / assistant mask) are one flat numpy view with row offsets;
- each row is analysed with the same core functions as `split_example` (spans, loss mask, plan), on
  zero-copy views, so the windows, errors and skip accounting are the same;
- the windows of the whole batch are gathered at once: one index array over the flat tokens builds
  `input_ids`, `labels`, `attention_mask` and the type-id column; images are taken by item offsets.

Anything else (conversational rows, pixel tensors, Python lists) returns None and takes the row path.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

from .errors import ChunkerError, EmptyConversationError
from .labels import IGNORE, find_marker, labels_from_mask, turn_boundaries
from .media import TENSOR_STREAMS, check_counts
from .plan import plan_windows
from .spans import IMAGE, VIDEO, Spans, find_image_spans

MASK_COLUMNS = ("assistant_masks", "assistant_mask")
ITEM_COLUMNS = ("images", "videos")
# The integer types `datasets` gives these columns when the row path's numpy rows are written
# (datasets.arrow_writer.OptimizedTypedSequence); other token columns stay int64.
NARROW_TYPES = {"input_ids": np.int32, "attention_mask": np.int8, "token_type_ids": np.int8}


def split_arrow_batch(splitter, batch, indices=None):
    """Split an Arrow batch of pre-tokenized rows into window rows, or return None when the row path must do it.

    Args:
        splitter: the `WindowSplitter` whose settings (spec, max_length, overlap, prefix, policies) apply.
        batch: a `pyarrow.Table`, the lazy batch `datasets.Dataset.map` passes (its `.pa_table` is used), or
            a dict whose `input_ids` is a `pyarrow` array.
        indices: the rows' positions in their dataset (`with_indices=True`); counted on from earlier
            batches when None.

    Returns:
        a `pyarrow.Table` of window rows with the columns and values `split_example` gives (input_ids,
        labels, attention_mask, the type-id column, images/videos when the rows have them, source_index,
        window_index, num_windows), or None when the batch is not eligible (not Arrow, conversational
        rows, pixel tensors, null or non-integer tokens, `drop_unsupervised=True`).

    Raises:
        ChunkerError: a row that cannot be split, under on_error/on_oversize="raise" (the same error
            `split_example` raises).

    Example:
        >>> import pyarrow as pa
        >>> from chunker import ImageSpanSpec, WindowSplitter
        >>> spec = ImageSpanSpec(family="custom", kind="bracket", image_token_id=7, open_ids=(5,), close_ids=(6,))
        >>> s = WindowSplitter(spec=spec, max_length=4, prefix="none")
        >>> t = pa.table({"input_ids": [[1, 5, 7, 6, 2, 3]], "labels": [[-100, -100, -100, -100, 2, 3]],
        ...               "images": [["cat.png"]]})
        >>> out = split_arrow_batch(s, t)
        >>> out.column("input_ids").to_pylist()  # the 2nd window repeats the image as context before label 2
        [[1, 5, 7, 6], [5, 7, 6, 2], [2, 3]]
        >>> out.column("images").to_pylist(), out.column("labels").to_pylist()[1]
        ([['cat.png'], ['cat.png'], []], [-100, -100, -100, 2])
    """
    import pyarrow as pa

    table = _as_table(batch)
    if table is None or splitter.drop_unsupervised or not _eligible(table):
        return None
    n = table.num_rows
    if indices is None:
        indices = range(splitter._seen, splitter._seen + n)
    splitter._seen += n
    indices = np.asarray(list(indices) if isinstance(indices, range) else indices, dtype=np.int64).reshape(-1)
    pieces, skipped, examples = [], Counter(), []
    for a, b in _chunks(table):
        cols = _flat_columns(table.slice(a, b - a))
        facts = _batch_facts(splitter, cols)
        plans, chunk_skipped, chunk_examples = _plan_rows(splitter, cols, facts, indices[a:b])
        pieces.append(_assemble(splitter, table, cols, plans, indices[a:b]))
        skipped.update(chunk_skipped)
        examples += chunk_examples
    out = pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
    splitter._record(n, out.num_rows, skipped, examples)
    return out


def as_columns(batch):
    """A dict of columns the row path can read: an Arrow table (or lazy Arrow batch) becomes Python lists.

    A lazy `datasets` batch is read through its own indexing so its features decode (JSON-typed message
    content, images); a raw `pyarrow.Table` has no features to apply.
    """
    import pyarrow as pa

    table = _as_table(batch)
    if isinstance(batch, pa.Table):
        return batch.to_pydict()
    if table is not None and not isinstance(batch, dict):
        names = list(batch.keys())
        return {k: batch[k] for k in names}
    if isinstance(batch, dict) and any(_is_arrow(v) for v in batch.values()):
        return {k: (v.to_pylist() if _is_arrow(v) else v) for k, v in batch.items()}
    return batch


# ---------------------------------------------------------------------- reading the batch


def _is_arrow(value) -> bool:
    import pyarrow as pa

    return isinstance(value, (pa.Array, pa.ChunkedArray))


def _as_table(batch):
    """The batch as a pyarrow Table, or None when it is not Arrow."""
    import pyarrow as pa

    if isinstance(batch, pa.Table):
        return batch
    lazy = getattr(batch, "pa_table", None)
    if isinstance(lazy, pa.Table) and hasattr(batch, "keys_to_format"):
        return lazy
    if isinstance(batch, dict) and batch and _is_arrow(batch.get("input_ids")) and all(
        _is_arrow(v) for v in batch.values()
    ):
        return pa.table(dict(batch))
    return None


def _eligible(table) -> bool:
    import pyarrow as pa

    names = set(table.column_names)
    if "input_ids" not in names or names & set(TENSOR_STREAMS):
        return False
    for name in ("input_ids", "labels", *MASK_COLUMNS):
        if name not in names:
            continue
        col = table.column(name)
        if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
            return False
        value_type = col.type.value_type
        if not (pa.types.is_integer(value_type) or (name != "input_ids" and pa.types.is_boolean(value_type))):
            return False
        if col.null_count or any(chunk.values.null_count for chunk in col.chunks):
            return False
    for name in ITEM_COLUMNS:
        if name in names:
            col = table.column(name)
            if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)) or col.null_count:
                return False
    return True


CHUNK_TOKENS = 1 << 21


def _chunks(table):
    """Row ranges of about CHUNK_TOKENS tokens: working memory stays small whatever the batch size."""
    lengths = pc_lengths(table.column("input_ids"))
    ends = np.searchsorted(np.cumsum(lengths), np.arange(1, 1 + len(lengths)) * CHUNK_TOKENS, side="right")
    bounds = np.unique(np.concatenate([[0], np.clip(ends, 1, len(lengths)), [len(lengths)]]))
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist())) or [(0, 0)]


def pc_lengths(col) -> np.ndarray:
    """Tokens per row of a list column."""
    import pyarrow.compute as pc

    return pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)


def _flat(col):
    """(flat numpy values, row offsets from 0) of a list column."""
    arr = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.slice(offsets[0], offsets[-1] - offsets[0])
    return values.to_numpy(zero_copy_only=False), offsets - offsets[0]


def _flat_columns(table):
    cols = {}
    for name in ("input_ids", "labels", *MASK_COLUMNS):
        if name in table.column_names:
            cols[name] = _flat(table.column(name))
    for name in ITEM_COLUMNS:
        if name in table.column_names:
            arr = table.column(name).combine_chunks()
            offsets = arr.offsets.to_numpy().astype(np.int64)
            cols[name] = (arr.values.slice(offsets[0], offsets[-1] - offsets[0]), offsets - offsets[0])
    return cols


# ---------------------------------------------------------------------- whole-batch facts


def _positions(flat, ids) -> np.ndarray:
    """Sorted positions in `flat` of any of `ids` (one comparison pass per id)."""
    if not ids:
        return np.zeros(0, dtype=np.int64)
    hit = flat == ids[0]
    for i in ids[1:]:
        hit |= flat == i
    return np.flatnonzero(hit)


def _marker_positions(flat, offsets, row_of, marker) -> np.ndarray:
    """Start positions of `marker` (a token sequence) lying wholly inside one row."""
    found = find_marker(flat, marker)
    return found[found + len(marker) <= offsets[row_of(found) + 1]]


def _batch_facts(splitter, cols):
    """What can be found for every row at once: spans, turn boundaries, and the rows the exact path must take.

    A row is marked `exact` when anything about it is irregular (an unbalanced bracket, a stray media token,
    labels that disagree with the ids, a column of another length): those rows go through the same calls as
    `split_example`, which raise the same error or give the same windows.
    """
    spec = splitter.spec
    flat, offsets = cols["input_ids"]
    n_rows = len(offsets) - 1
    row_of = lambda pos: np.searchsorted(offsets, pos, side="right") - 1
    exact = np.zeros(n_rows, dtype=bool)
    exact |= offsets[1:] == offsets[:-1]
    vocab = splitter.vocab_size
    if vocab is None and flat.dtype.itemsize > 4:
        vocab = 2**31  # wider ids go through the exact path, which keeps them int64
    if len(flat) and (flat.min() < 0 or (vocab is not None and flat.max() >= vocab)):
        exact[:] = True
    spans = _find_spans(flat, offsets, row_of, spec, exact)
    for name in ("labels", *MASK_COLUMNS):
        if name in cols and not np.array_equal(cols[name][1], offsets):
            exact[:] = True
    if "labels" in cols and not exact.all():
        labels = cols["labels"][0]
        wrong = np.flatnonzero((labels != flat) & (labels != IGNORE))
        exact[np.unique(row_of(wrong))] = True
    found = [_marker_positions(flat, offsets, row_of, m) for m in (spec.instruction_ids, spec.response_ids)]
    bounds = np.unique(np.concatenate(found))
    instr = found[0]
    return {
        "exact": exact, "spans": spans, "row_of": row_of,
        "bounds": (bounds, np.searchsorted(bounds, offsets)),
        "instr": (instr, np.searchsorted(instr, offsets)),
    }


def _find_spans(flat, offsets, row_of, spec, exact):
    """Spans of every row in flat coordinates, or None where the grammar has no whole-batch finder here.

    Marks rows whose spans are irregular in `exact` (the exact per-row finder then raises its error).
    """
    if spec.kind not in ("bracket", "run") or set(spec.open_ids) & set(spec.close_ids):
        exact[:] = True
        return None
    image = _positions(flat, (spec.image_token_id,))
    video = _positions(flat, (spec.video_token_id,)) if spec.video_token_id is not None else image[:0]
    if spec.kind == "bracket":
        starts, ends = _bracket_spans(flat, offsets, row_of, spec, exact)
    else:
        starts, ends = _run_spans(np.union1d(image, video), offsets, row_of, spec, exact)
    counts = np.searchsorted(image, ends) - np.searchsorted(image, starts)
    videos = np.searchsorted(video, ends) - np.searchsorted(video, starts)
    kinds = (videos > 0).astype(np.int64)
    others = tuple(i for i in spec.structural_ids if i not in (*spec.media_ids, *spec.open_ids, *spec.close_ids))
    structural = np.concatenate([image, video, _positions(flat, others)])
    k = np.searchsorted(starts, structural, side="right") - 1
    stray = (k < 0) | (structural >= ends[np.maximum(k, 0)]) if len(starts) else np.ones(len(structural), bool)
    exact[np.unique(row_of(structural[stray]))] = True
    return starts, ends, kinds, counts + videos


def _bracket_spans(flat, offsets, row_of, spec, exact):
    opens, closes = _positions(flat, spec.open_ids), _positions(flat, spec.close_ids)
    pos = np.concatenate([opens, closes])
    step = np.concatenate([np.ones(len(opens), np.int64), -np.ones(len(closes), np.int64)])
    order = np.argsort(pos, kind="stable")
    pos, step = pos[order], step[order]
    row = row_of(pos)
    per_row = np.bincount(row, weights=step, minlength=len(exact)).astype(np.int64)
    base = np.concatenate([[0], np.cumsum(per_row)])
    depth = np.cumsum(step) - base[row]
    exact[per_row != 0] = True
    exact[np.unique(row[depth < 0])] = True
    keep = ~exact[row]
    pos, step, depth = pos[keep], step[keep], depth[keep]
    starts = pos[(step == 1) & (depth - step == 0)]
    ends = pos[(step == -1) & (depth == 0)] + 1
    return starts, ends


def _run_spans(ph, offsets, row_of, spec, exact):
    first = np.ones(len(ph), dtype=bool)
    first[1:] = ph[1:] != ph[:-1] + 1
    first |= np.isin(ph, offsets[:-1])
    starts = ph[first]
    ends = np.append(ph[np.flatnonzero(first)[1:] - 1], ph[-1:]) + 1 if len(ph) else ph
    per = spec.tokens_per_image
    if per and len(starts):
        lengths = ends - starts
        bad = (lengths % per) != 0
        exact[np.unique(row_of(starts[bad]))] = True
        k = np.where(bad, 0, lengths // per)
        total = int(k.sum())
        ranks = np.arange(total) - np.repeat(np.cumsum(k) - k, k)
        starts = np.repeat(starts, k) + per * ranks
        ends = starts + per
    return starts, ends


# ---------------------------------------------------------------------- per-row analysis (same calls as split_example)


def _plan_rows(splitter, cols, facts, indices):
    """Per row: the windows (prefix_len, plan, labels) and the chosen media items, or the error counted as skipped."""
    _, offsets = cols["input_ids"]
    plans, skipped, examples = [], Counter(), []
    for i in range(len(offsets) - 1):
        row = int(indices[i])
        try:
            plan = _exact_row(splitter, cols, i, row) if facts["exact"][i] else _fast_row(splitter, cols, facts, i, row)
            plans.append(plan)
        except ChunkerError as exc:
            if not splitter._skips(exc):
                raise
            skipped[type(exc).__name__] += 1
            examples.append({"row": row, "reason": str(exc)})
    return plans, skipped, examples


def _row_values(cols, name, i):
    if name not in cols:
        return None
    flat, offsets = cols[name]
    return flat[int(offsets[i]):int(offsets[i + 1])]


def _exact_row(splitter, cols, i, row):
    """The row through the very calls `split_example` makes (irregular rows: they raise its errors)."""
    from .splitter import _as_ids

    ids = _as_ids(_row_values(cols, "input_ids", i), splitter.vocab_size, row)
    if len(ids) == 0:
        raise EmptyConversationError("input_ids is empty: drop the row", row=row)
    spans = find_image_spans(ids, splitter.spec, row=row)
    mask_col = next((c for c in MASK_COLUMNS if c in cols), None)
    parsed = {"labels": _row_values(cols, "labels", i), "assistant_mask": _row_values(cols, mask_col, i)}

    def loss():
        mask = splitter._loss_mask(parsed, ids, spans, row)
        return mask, labels_from_mask(ids, mask)

    bounds = lambda: turn_boundaries(ids, splitter.spec.instruction_ids, splitter.spec.response_ids)
    prefix = lambda: splitter._prefix_len(ids, spans)
    return _finish_row(splitter, cols, i, row, ids, spans, loss, prefix, bounds)


def _fast_row(splitter, cols, facts, i, row):
    """The row from the whole-batch facts: zero-copy views, no pass over its tokens but the loss mask."""
    flat, offsets = cols["input_ids"]
    lo, hi = int(offsets[i]), int(offsets[i + 1])
    ids = flat[lo:hi]
    starts, ends, kinds, counts = facts["spans"]
    a, b = np.searchsorted(starts, [lo, hi])
    spans = Spans(starts[a:b] - lo, ends[a:b] - lo, kinds[a:b], counts[a:b])

    def loss():
        if "labels" in cols:
            labels = _row_values(cols, "labels", i)
            mask = labels != IGNORE
            full = labels
        elif any(c in cols for c in MASK_COLUMNS):
            mask = _row_values(cols, next(c for c in MASK_COLUMNS if c in cols), i).astype(bool)
            full = None
        else:
            mask = splitter._loss_mask({"labels": None, "assistant_mask": None}, ids, spans, row)
            return mask, labels_from_mask(ids, mask)
        media = [(s, e) for s, e in zip(spans.starts.tolist(), spans.ends.tolist()) if mask[s:e].any()]
        if media:
            mask = mask.copy()
            for s, e in media:
                mask[s:e] = False
            full = None
        return mask, (full if full is not None else labels_from_mask(ids, mask))

    def bounds():
        pos, at = facts["bounds"]
        return pos[at[i]:at[i + 1]] - lo

    def prefix():
        spec = splitter.spec
        if (spec.prefix_media and len(spans)) or splitter.prefix != "system" or not spec.instruction_ids:
            return splitter._prefix_len(ids, spans)
        pos, at = facts["instr"]
        first = int(pos[at[i]]) - lo if at[i + 1] > at[i] else -1
        bos = spec.bos_id is not None and ids[0] == spec.bos_id
        n = 1 if bos else 0
        if first > n and not (len(spans) and spans.starts.min() < first):
            n = first
        return n if n < splitter.max_length // 2 else (1 if n and bos else 0)

    return _finish_row(splitter, cols, i, row, ids, spans, loss, prefix, bounds)


def _finish_row(splitter, cols, i, row, ids, spans, loss, prefix, bounds):
    """Media checks, loss mask, prefix and plan of one row, in the order `split_example` does them."""
    from .splitter import check_media_counts

    spec = splitter.spec
    n_items = {name: int(cols[name][1][i + 1] - cols[name][1][i]) for name in ITEM_COLUMNS if name in cols}
    check_media_counts(spans, n_items.get("images"), n_items.get("videos"), False, row)
    check_counts(spec, {}, spans, row=row)
    mask, full_labels = loss()
    prefix_len = prefix()
    wins = plan_windows(
        len(ids), spans, max_length=splitter.max_length, overlap=splitter.overlap, prefix_len=prefix_len,
        boundaries=bounds(), loss_mask=mask, min_fill=splitter.min_fill, row=row,
    )
    geometry = np.array([(w.context_start, w.start, w.end) for w in wins], dtype=np.int64).reshape(-1, 3)
    items = {}
    if n_items:
        in_prefix = spans.ends <= prefix_len
        chosen = (spans.starts[None, :] >= geometry[:, :1]) & (spans.ends[None, :] <= geometry[:, 2:])
        chosen[1:] |= in_prefix[None, :]
        for name, kind in (("images", IMAGE), ("videos", VIDEO)):
            if name in n_items:
                rank = np.flatnonzero(spans.kinds == kind)
                items[name] = [np.flatnonzero(c[rank]) for c in chosen]
    return {"i": i, "ids": ids, "labels": full_labels, "prefix": prefix_len, "geometry": geometry, "items": items}


# ---------------------------------------------------------------------- whole-batch assembly


def _assemble(splitter, table, cols, plans, indices):
    """Build every window of the batch at once: one concatenation of row views per output column."""
    import pyarrow as pa

    ids_parts, label_parts, lengths, src, k, nwin = [], [], [], [], [], []
    ignore = np.full(splitter.max_length + 1, IGNORE, dtype=np.int64)
    for p in plans:
        ids, labels, pre = p["ids"], p["labels"], p["prefix"]
        w = len(p["geometry"])
        for j, (context, start, end) in enumerate(p["geometry"].tolist()):
            head = pre if j else 0
            ids_parts += [ids[:head], ids[context:end]]
            label_parts += [ignore[:head + start - context], labels[start:end]]
            lengths.append(head + end - context)
        src.append(np.full(w, indices[p["i"]], dtype=np.int64))
        k.append(np.arange(w, dtype=np.int64))
        nwin.append(np.full(w, w, dtype=np.int64))
    cat = lambda parts, dtype=np.int64: np.concatenate(parts, dtype=dtype) if parts else np.zeros(0, dtype)
    wide = any(p["ids"].dtype.itemsize > 4 and len(p["ids"]) and p["ids"].max() >= 2**31 for p in plans)
    win_ids = cat(ids_parts, np.int64 if wide else NARROW_TYPES["input_ids"])
    labels = cat(label_parts)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    total = int(offsets[-1])
    large = total >= 2**31
    as_list = (pa.LargeListArray if large else pa.ListArray).from_arrays
    offsets = pa.array(offsets if large else offsets.astype(np.int32))
    columns = {
        "input_ids": as_list(offsets, pa.array(win_ids)),
        "labels": as_list(offsets, pa.array(labels)),
        "attention_mask": as_list(offsets, pa.array(_ones(total, NARROW_TYPES["attention_mask"]))),
    }
    spec = splitter.spec
    if spec.type_ids_column:
        narrow = NARROW_TYPES.get(spec.type_ids_column, np.int64)
        type_ids = win_ids == spec.image_token_id
        type_ids = type_ids.view(np.int8) if narrow == np.int8 else type_ids.astype(narrow)
        if spec.video_token_id is not None:
            type_ids[win_ids == spec.video_token_id] = 2
        columns[spec.type_ids_column] = as_list(offsets, pa.array(type_ids))
    for name in ITEM_COLUMNS:
        if name in cols:
            columns[name] = _take_items(cols[name], plans, name)
    columns["source_index"] = pa.array(cat(src))
    columns["window_index"] = pa.array(cat(k))
    columns["num_windows"] = pa.array(cat(nwin))
    out = pa.table(columns)
    return out.replace_schema_metadata(_item_metadata(table.schema, columns))


_ONES: dict = {}


def _ones(n: int, dtype) -> np.ndarray:
    """A read-only view of n ones, shared between batches (Arrow keeps it alive, nobody writes it)."""
    ones = _ONES.get(np.dtype(dtype))
    if ones is None or len(ones) < n:
        ones = np.ones(max(n, 2 * (0 if ones is None else len(ones))), dtype=dtype)
        ones.flags.writeable = False
        _ONES[np.dtype(dtype)] = ones
    return ones[:n]


def _take_items(col, plans, name):
    """The chosen items of every window, taken from the batch's flat item array by item offsets."""
    import pyarrow as pa

    values, item_offsets = col
    picks, counts = [], []
    for p in plans:
        base = int(item_offsets[p["i"]])
        for chosen in p["items"][name]:
            picks.append(chosen + base)
            counts.append(len(chosen))
    take = np.concatenate(picks).astype(np.int64) if picks else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values.take(pa.array(take)))


def _item_metadata(schema, columns):
    """The input's `datasets` feature records of the item columns (e.g. Image()), so they survive the map."""
    meta = schema.metadata or {}
    raw = meta.get(b"huggingface")
    if not raw:
        return None
    try:
        info = json.loads(raw)
        features = info["info"]["features"]
    except (ValueError, KeyError, TypeError):
        return None
    kept = {name: features[name] for name in ITEM_COLUMNS if name in columns and name in features}
    return {b"huggingface": json.dumps({"info": {"features": kept}}).encode()} if kept else None
