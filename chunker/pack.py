"""Pack window rows into rows of at most `max_length` tokens: whole windows, never split again.

A packed row is the windows' columns laid end to end, with each window's boundaries and identity kept as data:

    window rows                        packed row (max_length 10)
    ids  [a a a a]   source 0, win 1   input_ids        [a a a a b b b c c c]
    ids  [b b b]     source 4, win 0   segment_lengths  [4 3 3]
    ids  [c c c]     source 2, win 2   source_index     [0 4 2]      window_index [1 0 2]
                                       images           a's images, then b's, then c's (pixel tensors: rows joined)

`WindowCollator` turns a packed row into one batch row whose positions restart at every window, whose attention
never crosses a window boundary and whose first token of a window is never a target of the previous one, so a
packed batch trains exactly like its windows one by one (`tests/test_pack_models.py`).

The packing is arithmetic on Arrow offsets (TRL's `pack_dataset` style): the bins are chosen from the lengths
alone, one `take` reorders the windows, and every column gets new list offsets; no token becomes a Python object.
"""

from __future__ import annotations

import bisect
import itertools

import numpy as np

from .errors import ConfigError, RowFormatError

STRATEGIES = ("bfd", "sequential")
SEGMENTS = "segment_lengths"


def plan_bins(lengths, max_length: int, strategy: str = "bfd") -> list[np.ndarray]:
    """Which windows go together: lists of window indices whose lengths sum to at most `max_length`.

    Args:
        lengths: tokens of each window (each in `[1, max_length]`).
        max_length: the most tokens of a packed row.
        strategy: "bfd" (best fit decreasing: each window, longest first, into the fullest row it fits)
            or "sequential" (windows in order, a new row when the next one does not fit; keeps the order).

    Returns:
        One int64 array of window indices per packed row, in packing order.

    Example:
        >>> [b.tolist() for b in plan_bins([4, 3, 8, 2, 3], 10)]
        [[2, 3], [0, 1, 4]]
        >>> [b.tolist() for b in plan_bins([4, 3, 8, 2, 3], 10, "sequential")]
        [[0, 1], [2, 3], [4]]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if strategy == "sequential":
        starts, used = [0], 0
        for i, n in enumerate(lengths.tolist()):
            if used + n > max_length:
                starts.append(i)
                used = 0
            used += n
        bounds = starts + [len(lengths)]
        return [np.arange(a, b, dtype=np.int64) for a, b in itertools.pairwise(bounds) if b > a]
    order = np.argsort(-lengths, kind="stable")
    spaces, owners, bins = [], [], []  # spaces sorted ascending; owners[k] is the bin with spaces[k] left
    for i in order.tolist():
        n = int(lengths[i])
        k = bisect.bisect_left(spaces, n)
        if k == len(spaces):
            bins.append([i])
            b, left = len(bins) - 1, max_length - n
        else:
            b, left = owners.pop(k), spaces.pop(k) - n
            bins[b].append(i)
        if left > 0:
            k = bisect.bisect_left(spaces, left)
            spaces.insert(k, left)
            owners.insert(k, b)
    return [np.asarray(b, dtype=np.int64) for b in bins]


def pack_table(table, max_length: int, strategy: str = "bfd"):
    """Pack the window rows of one `pyarrow.Table` (see `pack_windows`); ledger rows (no tokens) are left out.

    Args:
        table: window rows (`input_ids` and any other columns).
        max_length: the most tokens of a packed row.
        strategy: see `plan_bins`.

    Returns:
        A `pyarrow.Table` of packed rows: list columns joined (a list of lists, such as `pixel_values`, along its
        first axis), scalar columns as per-segment lists, and `segment_lengths` (int32).

    Raises:
        RowFormatError: a window longer than `max_length`, or a table that is already packed.
        ConfigError: an unknown strategy.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy={strategy!r} must be one of {STRATEGIES}")
    if SEGMENTS in table.column_names:
        raise RowFormatError(f"the rows are packed already (they have a {SEGMENTS!r} column): pack window rows once")
    if "input_ids" not in table.column_names:
        raise RowFormatError(f"window rows need input_ids (columns {table.column_names}): split with WindowSplitter first")
    table = table.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(table["input_ids"]), 0).to_numpy(zero_copy_only=False)
    over = np.flatnonzero(lengths > max_length)
    if len(over):
        i = int(over[0])
        raise RowFormatError(
            f"the window holds {int(lengths[i])} tokens, more than max_length={max_length} ({len(over)} windows do): "
            f"packing never splits a window; pack with max_length >= the splitter's max_length",
            row=_name(table, i),
        )
    kept = np.flatnonzero(lengths > 0)
    bins = plan_bins(lengths[kept], max_length, strategy)
    take = kept[np.concatenate(bins)] if bins else kept[:0]
    counts = np.fromiter((len(b) for b in bins), dtype=np.int64, count=len(bins))
    row_offsets = np.concatenate([[0], np.cumsum(counts)])
    taken = table.take(pa.array(take, type=pa.int64())).combine_chunks()
    names, columns = [], []
    for name in taken.column_names:
        col = taken[name].chunk(0) if taken[name].num_chunks else pa.array([], type=taken[name].type)
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            inner = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
            offsets = np.concatenate([[0], np.cumsum(inner)])[row_offsets]
            col = type(col).from_arrays(pa.array(offsets.astype(col.offsets.type.to_pandas_dtype())), col.flatten())
        else:
            col = pa.ListArray.from_arrays(pa.array(row_offsets.astype(np.int32)), col)
        names.append(name)
        columns.append(col)
    seg = pa.ListArray.from_arrays(pa.array(row_offsets.astype(np.int32)), pa.array(lengths[take].astype(np.int32)))
    return pa.Table.from_arrays(columns + [seg], names=names + [SEGMENTS])


def pack_rows(rows: list, max_length: int, strategy: str = "bfd") -> list[dict]:
    """Pack window rows given as dicts (a batch's windows, e.g. from `split_example`): the in-memory twin of
    `pack_windows`, with the same layout (lists and arrays joined along their first axis, scalars as per-segment
    lists, `segment_lengths`).

    Args:
        rows: window rows (dicts of lists, numpy arrays or tensors); rows without tokens are left out.
        max_length: the most tokens of a packed row.
        strategy: see `plan_bins`.

    Returns:
        The packed rows, as dicts.

    Raises:
        RowFormatError: a window longer than `max_length`, or rows that are packed already.

    Example:
        >>> [r["input_ids"] for r in pack_rows([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}, {"input_ids": [6]}], 4)]
        [[1, 2, 3, 6], [4, 5]]
    """
    rows = [r for r in rows if r.get("input_ids") is not None and len(r["input_ids"])]
    lengths = np.asarray([len(r["input_ids"]) for r in rows], dtype=np.int64)
    for i, r in enumerate(rows):
        if SEGMENTS in r:
            raise RowFormatError(f"the row is packed already (it has {SEGMENTS!r}): pack window rows once", row=i)
        if lengths[i] > max_length:
            raise RowFormatError(
                f"the window holds {int(lengths[i])} tokens, more than max_length={max_length}: packing never splits "
                "a window; pack with max_length >= the splitter's max_length",
                row=f"{i} (source_index {r.get('source_index')}, window_index {r.get('window_index')})",
            )
    out = []
    for members in plan_bins(lengths, max_length, strategy):
        group = [rows[i] for i in members.tolist()]
        packed = {}
        for key in dict.fromkeys(k for r in group for k in r):
            values = [r.get(key) for r in group]
            if all(v is None or np.isscalar(v) for v in values):
                packed[key] = values
            else:
                packed[key] = _join([v for v in values if v is not None])
        packed[SEGMENTS] = lengths[members].tolist()
        out.append(packed)
    return out


def _join(values):
    """Lists joined; arrays and tensors concatenated along their first axis (empty ones left out)."""
    if all(isinstance(v, (list, tuple)) for v in values):
        return [x for v in values for x in v]
    if any(type(v).__module__.startswith("torch") for v in values):
        import torch

        parts = [torch.as_tensor(v) for v in values if len(v)]
        return torch.cat(parts) if parts else torch.as_tensor(values[0])
    parts = [np.asarray(v) for v in values if len(v)]
    return np.concatenate(parts) if parts else np.asarray(values[0])


class WindowPacker:
    """A pure, picklable `map` function over Arrow batches of window rows: `pack_table` with fixed settings."""

    def __init__(self, max_length: int, strategy: str = "bfd"):
        self.max_length = max_length
        self.strategy = strategy

    def __call__(self, batch):
        return pack_table(batch, self.max_length, self.strategy)


def packed_features(features):
    """The `datasets.Features` of packed rows made from window rows of `features`."""
    import datasets

    listed = getattr(datasets, "List", None) or datasets.Sequence
    kinds = tuple(k for k in (getattr(datasets, n, None) for n in ("List", "LargeList", "Sequence"))
                  if isinstance(k, type))
    out = {}
    for name, feature in features.items():
        out[name] = feature if isinstance(feature, (list, *kinds)) else listed(feature)
    out[SEGMENTS] = listed(datasets.Value("int32"))
    return datasets.Features(out)


def pack_windows(ds, max_length: int, strategy: str = "bfd", *, batch_size: int = 1000, num_proc: int | None = None):
    """Pack window rows into rows of at most `max_length` tokens, each holding whole windows.

    Windows are never split: a packed row is whole windows laid end to end, with `segment_lengths` (tokens of
    each window), per-segment `source_index` / `window_index` / `num_windows` (every scalar column becomes a
    list, one entry per window), the windows' `images` in order, and their pixel tensors joined along the first
    axis when the windows carry them. Ledger rows of skipped input rows (no tokens) are left out. Collate packed
    rows with `WindowCollator`: positions restart at every window and no token attends across windows.

    Windows are binned per batch of `batch_size` windows (a `Dataset.map`, so the result is cached and can run
    with `num_proc`); an `IterableDataset` is packed the same way, holding one batch (the buffer) at a time.

    Args:
        ds: a `datasets.Dataset` or `datasets.IterableDataset` of window rows (`WindowSplitter` output).
        max_length: the most tokens of a packed row (at least the splitter's `max_length`).
        strategy: "bfd" (best fit decreasing, fewest rows) or "sequential" (windows in order).
        batch_size: windows binned together; for an `IterableDataset`, the buffer.
        num_proc: processes for `Dataset.map`.

    Returns:
        A dataset of the same kind, of packed rows.

    Raises:
        RowFormatError: a window longer than `max_length`, rows without `input_ids`, or rows packed already.
        ConfigError: an unknown strategy, a bad `max_length` or `batch_size`, or `ds` is not a dataset.

    Example:
        >>> import datasets
        >>> windows = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3, 4], [5, 6, 7], [8, 9]],
        ...                                       "source_index": [0, 1, 1], "window_index": [0, 0, 1]})
        >>> packed = pack_windows(windows, max_length=6)
        >>> packed[0]["input_ids"], packed[0]["segment_lengths"], packed[0]["source_index"]
        ([1, 2, 3, 4, 8, 9], [4, 2], [0, 1])
        >>> packed[1]["input_ids"], packed[1]["window_index"]
        ([5, 6, 7], [0])
    """
    import datasets

    if not isinstance(max_length, (int, np.integer)) or max_length < 1:
        raise ConfigError(f"max_length={max_length!r} must be a positive integer")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer")
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy={strategy!r} must be one of {STRATEGIES}")
    packer = WindowPacker(int(max_length), strategy)
    if isinstance(ds, datasets.IterableDataset):
        features = packed_features(ds.features) if ds.features is not None else None
        out = ds.with_format("arrow").map(packer, batched=True, batch_size=batch_size, features=features)
        return out.with_format(None)
    if not isinstance(ds, datasets.Dataset):
        raise ConfigError(f"pack_windows takes a datasets.Dataset or IterableDataset of window rows, got {type(ds).__name__}")
    fmt = ds.format
    out = ds.with_format("arrow").map(packer, batched=True, batch_size=batch_size, num_proc=num_proc,
                                      remove_columns=ds.column_names, features=packed_features(ds.features),
                                      desc="Packing windows")
    return out.with_format(fmt["type"], columns=None, output_all_columns=fmt["output_all_columns"],
                           **fmt["format_kwargs"])


def _name(table, i: int) -> str:
    names = table.column_names
    src = table["source_index"][i].as_py() if "source_index" in names else None
    win = table["window_index"][i].as_py() if "window_index" in names else None
    return f"{i} (source_index {src}, window_index {win})" if src is not None else str(i)
