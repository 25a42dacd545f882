"""The Arrow path of the splitter: pre-tokenized batches in, window rows out, as offsets arithmetic on flat arrays.

`WindowSplitter.__call__` sends every batch here first. A batch that arrives as Arrow (a `pyarrow.Table`,
the lazy batch `Dataset.map` passes for unformatted datasets, or a dict of Arrow arrays) and holds
pre-tokenized rows without pixel tensors is split without turning tokens into Python objects:

- the batch's `input_ids` (and labels / assistant mask) are one flat numpy view with row offsets;
- each row is analysed by the splitter's own `analyse` stage (spans, items, loss mask, prefix, plan) on
  zero-copy views, so the windows, errors and skips are those of `split_example` by construction;
- the windows of the whole batch are gathered at once: one concatenation over the flat tokens builds
  `input_ids`, `labels`, `attention_mask` and the type-id column; images are taken by item offsets;
  a skipped row leaves its ledger row as `split_example`'s caller does.

Anything else (conversational rows, pixel tensors, Python lists) returns None and takes the row path.
"""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np

from .errors import ChunkerError
from .labels import IGNORE
from .media import TENSOR_STREAMS
from .splitter import MASK_COLUMNS

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
        >>> out = split_arrow_batch(s, t, indices=[0])
        >>> out.column("input_ids").to_pylist()  # the 2nd window repeats the image as context before label 2
        [[1, 5, 7, 6], [5, 7, 6, 2], [2, 3]]
        >>> out.column("images").to_pylist(), out.column("labels").to_pylist()[1]
        ([['cat.png'], ['cat.png'], []], [-100, -100, -100, 2])
    """
    table = _as_table(batch)
    if table is None or splitter.drop_unsupervised or not _eligible(table):
        return None
    indices = splitter.row_indices({}, indices, table.num_rows) if indices is not None else _table_indices(
        splitter, table)
    cols = _flat_columns(table)
    # planned a chunk of rows at a time (working memory stays small whatever the batch size), assembled at once:
    # one table of one chunk per column, which `datasets` writes without combining chunks (a copy of everything)
    plans = [(a, _plan_rows(splitter, _chunk_columns(cols, a, b), indices[a:b])) for a, b in _chunks(table)]
    return _assemble(splitter, table, cols, plans, indices)


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
    if "input_ids" not in names or names & set(TENSOR_STREAMS) or "audios" in names:  # audio: the row path
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
    arr = _one_array(col)
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.slice(offsets[0], offsets[-1] - offsets[0])
    return values.to_numpy(zero_copy_only=False), offsets - offsets[0]


def _one_array(col):
    """A list column as one Arrow array: its only chunk as is (no copy), else the chunks combined."""
    if not hasattr(col, "combine_chunks"):
        return col
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _chunk_columns(cols, a: int, b: int):
    """Rows a:b of the flat columns: zero-copy views, offsets from 0."""
    out = {}
    for name, (flat, offsets) in cols.items():
        lo, hi = int(offsets[a]), int(offsets[b])
        out[name] = (flat[lo:hi] if name not in ITEM_COLUMNS else flat.slice(lo, hi - lo), offsets[a:b + 1] - lo)
    return out


def _flat_columns(table):
    cols = {}
    for name in ("input_ids", "labels", *MASK_COLUMNS):
        if name in table.column_names:
            cols[name] = _flat(table.column(name))
    for name in ITEM_COLUMNS:
        if name in table.column_names:
            arr = _one_array(table.column(name))
            offsets = arr.offsets.to_numpy().astype(np.int64)
            cols[name] = (arr.values.slice(offsets[0], offsets[-1] - offsets[0]), offsets - offsets[0])
    return cols


# ---------------------------------------------------------------------- per-row analysis (the splitter's own stage)


def _table_indices(splitter, table):
    names = [n for n in ("source_index", "id") if n in table.column_names]
    batch = {n: table.column(n).to_numpy() for n in names}
    return splitter.row_indices(batch, None, table.num_rows)


def _row_values(cols, name, i):
    if name not in cols:
        return None
    flat, offsets = cols[name]
    return flat[int(offsets[i]):int(offsets[i + 1])]


def _plan_rows(splitter, cols, indices):
    """The batch's windows (`splitter.analyse_columns`, on zero-copy views): arrays for the rows the batch pass
    vouches for, a `RowPlan` or the skip error for the others."""
    from .splitter import TokenBatch

    flat, offsets = cols["input_ids"]
    mask_col = next((c for c in MASK_COLUMNS if c in cols), None)
    # ids are checked once for the batch; a batch with a bad id checks row by row, which names the row
    checked = np.issubdtype(flat.dtype, np.integer) and (not len(flat) or (
        int(flat.min()) >= 0 and (splitter.vocab_size is None or int(flat.max()) < splitter.vocab_size)))
    items = {name: np.diff(cols[name][1]) for name in ITEM_COLUMNS if name in cols}
    batch = TokenBatch(flat, offsets, cols.get("labels"), cols.get(mask_col), items.get("images"),
                       items.get("videos"), checked)
    return splitter.analyse_columns(batch, indices)


# ---------------------------------------------------------------------- whole-batch assembly


def _assemble(splitter, table, cols, plans, indices):
    """Build every window of the batch at once: one concatenation of row views per output column.

    Args:
        cols: the batch's flat columns (`_flat_columns`).
        plans: (first row, `BatchWindows`) per chunk of rows, in order.

    A skipped row (its plan is the error) becomes its ledger row: no tokens, window_index -1, num_windows 0.
    """
    import pyarrow as pa

    ids_parts, label_parts, lengths, src, k, nwin, reasons = [], [], [], [], [], [], []
    picks = {name: [] for name in ITEM_COLUMNS if name in cols}  # per output row, its items (flat indices)
    ignore = np.full(splitter.max_length + 1, IGNORE, dtype=np.int64)
    item_base = {name: cols[name][1].tolist() for name in picks}
    none = np.zeros(0, dtype=np.int64)
    wide = False
    for a, plan in plans:
        ids, labels, offsets = plan.ids, plan.labels, plan.offsets.tolist()
        n = len(offsets) - 1
        first = np.searchsorted(plan.row, np.arange(n + 1), side="left").tolist()
        geometry, head = plan.geometry.tolist(), plan.head.tolist()
        item_at = np.r_[0, np.cumsum(plan.item_counts)].tolist()
        items = plan.items + item_base["images"][a] if "images" in picks else None
        wide = wide or (ids.dtype.itemsize > 4 and len(plan.row) and int(ids.max()) >= 2**31)
        if not plan.planned:  # every row of the chunk took the batch pass: its windows in one sweep
            row = plan.row
            starts = np.asarray(plan.offsets)[row]
            for (c, s, e), h, off in zip(geometry, head, starts.tolist()):
                ids_parts += [ids[off:off + h], ids[c:e]]
                label_parts += [ignore[:h + s - c], labels[s:e]]
            g = plan.geometry
            lengths += (plan.head + g[:, 2] - g[:, 0]).tolist()
            if "images" in picks:
                picks["images"] += [items[x:y] for x, y in pairwise(item_at)]
            for name, out in picks.items():
                if name != "images":
                    out += [none] * len(row)
            first_np = np.asarray(first)
            src += np.asarray(indices[a:a + n])[row].tolist() if len(row) else []
            k += (np.arange(len(row)) - first_np[row]).tolist()
            nwin += np.diff(first_np)[row].tolist()
            reasons += [None] * len(row)
            continue
        for i in range(n):
            p = plan.planned.get(i)
            if p is None:  # windows of the batch pass
                wa, wb, off = first[i], first[i + 1], offsets[i]
                for j in range(wa, wb):
                    (c, s, e), h = geometry[j], head[j]
                    ids_parts += [ids[off:off + h], ids[c:e]]
                    label_parts += [ignore[:h + s - c], labels[s:e]]
                    lengths.append(h + e - c)
                    for name, out in picks.items():
                        out.append(items[item_at[j]:item_at[j + 1]] if name == "images" else none)
                src += [indices[a + i]] * (wb - wa)
                k += range(wb - wa)
                nwin += [wb - wa] * (wb - wa)
                reasons += [None] * (wb - wa)
            elif isinstance(p, ChunkerError):
                lengths.append(0)
                src.append(indices[a + i])
                k.append(-1)
                nwin.append(0)
                reasons.append(f"{type(p).__name__}: {p}")
                for out in picks.values():
                    out.append(None)
            else:
                w = len(p.geometry)
                for j, (context, start, end) in enumerate(p.geometry.tolist()):
                    h = p.prefix_len if j else 0
                    ids_parts += [p.ids[:h], p.ids[context:end]]
                    label_parts += [ignore[:h + start - context], p.labels[start:end]]
                    lengths.append(h + end - context)
                for name, out in picks.items():
                    chosen = p.image_items if name == "images" else p.video_items
                    out += [c + item_base[name][a + i] for c in chosen]
                src += [indices[a + i]] * w
                k += range(w)
                nwin += [w] * w
                reasons += [None] * w
                wide = wide or (p.ids.dtype.itemsize > 4 and len(p.ids) and p.ids.max() >= 2**31)
    cat = lambda parts, dtype=np.int64: np.concatenate(parts, dtype=dtype) if parts else np.zeros(0, dtype)
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
    for name, chosen in picks.items():
        columns[name] = _take_items(cols[name][0], chosen)
    columns["source_index"] = pa.array(np.asarray(src, dtype=np.int64))
    columns["window_index"] = pa.array(np.asarray(k, dtype=np.int64))
    columns["num_windows"] = pa.array(np.asarray(nwin, dtype=np.int64))
    columns["skip_reason"] = pa.array(reasons, type=pa.string())
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


def _take_items(values, chosen):
    """Per output row, its items taken from the batch's flat item array (None: a ledger row, whose media are null,
    as the row path writes them)."""
    import pyarrow as pa

    ledger = [c is None for c in chosen]
    parts = [c for c in chosen if c is not None]
    take = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    counts = [0 if c is None else len(c) for c in chosen]
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values.take(pa.array(take)), mask=pa.array(ledger, pa.bool_()))


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
