"""Splitting as a Ray Data stage, for datasets that outgrow one machine.

`split_dataset(ray_ds, splitter)` runs the same `WindowSplitter` inside `map_batches`. Each batch goes back to
Arrow through the `datasets` library's own encoder, so the output columns (ids, labels, type ids, images as
{"bytes", "path"} structs, pixel tensors) are those `Dataset.map(splitter)` writes, row for row.
"""

from __future__ import annotations

from functools import partial

from ..errors import ConfigError

INDEX_COLUMN = "row_index"


def from_huggingface(hf_ds, *, index_column: str = INDEX_COLUMN):
    """A Ray dataset of a `datasets.Dataset`'s Arrow rows plus a column of row positions 0..n-1.

    Ray batches carry no global row position; the column gives every window its `source_index`, as
    `Dataset.map(..., with_indices=True)` does. Images stay in their Arrow form ({"bytes", "path"}).

    Args:
        hf_ds: a `datasets.Dataset` (e.g. from `chunker.sources.load_rows`).
        index_column: name of the position column to add.

    Returns:
        `ray.data.Dataset`.

    Example:
        >>> import datasets
        >>> rds = from_huggingface(datasets.Dataset.from_dict({"a": [5, 7]}))    # doctest: +SKIP
        >>> rds.take_all()                                                       # doctest: +SKIP
        [{'a': 5, 'row_index': 0}, {'a': 7, 'row_index': 1}]
    """
    import pyarrow as pa
    import ray.data

    table = hf_ds.with_format("arrow")[:]
    table = table.append_column(index_column, pa.array(range(len(hf_ds)), type=pa.int64()))
    return ray.data.from_arrow(table)


def split_dataset(ds, splitter, *, index_column: str = INDEX_COLUMN, batch_size: int = 64, **map_batches_kwargs):
    """Split every row of a Ray dataset into window rows (a lazy `map_batches` stage).

    Args:
        ds: a `ray.data.Dataset` of conversational or pre-tokenized rows (the columns `WindowSplitter`
            accepts) with a column of global row positions (see `from_huggingface`).
        splitter: the `WindowSplitter` to run; it is pickled to each worker.
        index_column: the row-position column; its values become `source_index` and name rows in errors.
        batch_size: rows per batch handed to the splitter.
        **map_batches_kwargs: passed to `ray.data.Dataset.map_batches` (num_cpus, concurrency, ...).

    Returns:
        `ray.data.Dataset` of window rows: input_ids, labels, attention_mask, the type-id column, images,
        source_index, window_index, num_windows, skip_reason: the columns and values `Dataset.map(splitter)`
        makes, ledger rows of skipped rows included.

    Raises:
        ConfigError: `index_column` is not a column of `ds`.

    Notes:
        A row skipped under on_error/on_oversize="skip" leaves its ledger row (`num_windows` 0) in the output,
        so the counts travel with the data on any number of workers and nodes (`SplitStats.from_windows`).

    Example:
        >>> from chunker.sources import load_rows                                  # doctest: +SKIP
        >>> rds = from_huggingface(load_rows("rows.jsonl"))                        # doctest: +SKIP
        >>> windows = split_dataset(rds, WindowSplitter(processor, max_length=2048))  # doctest: +SKIP
        >>> windows.write_parquet("/data/windows")                                 # doctest: +SKIP
    """
    columns = ds.columns()
    if index_column not in columns:
        raise ConfigError(
            f"index_column={index_column!r} is not a column of the dataset (columns: {columns}): build the dataset "
            "with chunker.integrations.ray.from_huggingface(hf_ds), or add a column of row positions and name it"
        )
    fn = partial(_split_batch, splitter=splitter, index_column=index_column)
    return ds.map_batches(fn, batch_format="pyarrow", batch_size=batch_size, zero_copy_batch=False,
                          **map_batches_kwargs)


def _split_batch(table, *, splitter, index_column):
    """One Ray batch (an Arrow table) through the splitter, back to Arrow the way `datasets` writes it."""
    import datasets
    import pyarrow as pa

    batch = table.to_pydict()
    indices = batch.pop(index_column)
    if "messages" in batch and "arrow.json" in str(table.schema.field("messages").type):
        batch["messages"] = [_decode_json_items(m) for m in batch["messages"]]
    out = splitter(batch, indices)
    if isinstance(out, pa.Table):
        return out
    if not out or not len(next(iter(out.values()))):
        return pa.table({})
    return datasets.Dataset.from_dict(out).data.table


def _decode_json_items(messages):
    """Content items stored with the Arrow JSON extension type (how `datasets` keeps mixed-key items) as dicts."""
    import json

    if not messages:
        return messages
    return [
        {**m, "content": [json.loads(c) if isinstance(c, str) else c for c in m["content"]]}
        if isinstance(m.get("content"), list) else m
        for m in messages
    ]
