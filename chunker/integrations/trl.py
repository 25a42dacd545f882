"""TRL: what `SFTTrainer` needs to train on window rows (see the README's TRL recipe).

The windows come from `ds.map(splitter, batched=True, with_indices=True, remove_columns=ds.column_names)`
and `chunker.WindowCollator` is the `data_collator`; `SFTConfig(remove_unused_columns=False,
dataset_kwargs={"skip_prepare_dataset": True}, max_length=None)` keeps TRL from re-tokenizing or truncating them.
One trap sits in `datasets`: when the images of a map's output column are a new column (images were
inline in the messages, Unsloth layout) and every window of the first batch is text-only, Arrow types
the column as a list of nulls and the first batch with an image fails with "Couldn't cast array of type
struct<path: null, bytes: binary> to null". `window_features` gives `map` the right types up front.
"""

from __future__ import annotations

MEDIA_COLUMNS = ("images",)


def window_features(ds, splitter, *, probe: int = 8):
    """The `datasets.Features` of `ds.map(splitter, ...)`'s output, with `images` typed as a list of images.

    Pass it as `features=` to `Dataset.map` so the window dataset's `images` column has the Image type
    from the first batch on, whatever that batch holds.

    Args:
        ds: the `datasets.Dataset` the splitter will map.
        splitter: the `WindowSplitter`.
        probe: how many leading rows to split in memory (not part of any map's output) to learn the
            other columns' types.

    Returns:
        `datasets.Features` for the window rows.

    Raises:
        ChunkerError: the first `probe` rows all fail to split (the error of the last one).

    Example:
        >>> features = window_features(ds, splitter)                                     # doctest: +SKIP
        >>> windows = ds.map(splitter, batched=True, with_indices=True,                   # doctest: +SKIP
        ...                  remove_columns=ds.column_names, features=features)
        >>> windows.features["images"]                                                  # doctest: +SKIP
        List(Image(mode=None, decode=True))
    """
    import datasets

    from ..errors import ChunkerError

    rows, error = [], None
    for i in range(min(probe, len(ds))):
        try:
            rows.extend(splitter.split_example(ds[i], index=i))
        except ChunkerError as exc:
            error = exc
    if not rows:
        if error is not None:
            raise error
        raise ValueError("the dataset is empty: there are no rows to learn the window columns from")
    features = datasets.Dataset.from_list(rows).features
    for column in MEDIA_COLUMNS:
        if column in features:
            features[column] = datasets.List(datasets.Image())
    return features
