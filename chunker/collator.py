"""Window rows to the padded tensors a model's forward takes, with every media item checked against its span.

`WindowCollator` is a thin composition of small public functions that users can call on their own:

    rows = parse_rows(window_rows, spec)                       # validated rows (ids, labels, media)
    media = make_media(processor, rows, spec)                  # pixels the processor's way + per-item counts
    batch = pad_batch(rows, pad_token_id, type_ids_column=spec.type_ids_column)
    check_batch(batch, media, spec, rows=rows)                 # every span vs its own item, one host sync
    batch.update(adapter.model_inputs(batch, media))           # the media the forward takes (Mllama: its masks)
    batch = pack_positions(batch, [r.segments for r in rows], adapter)   # packed rows (`pack_windows`) only

A packed row (`chunker.pack_windows`) is one batch row whose windows train as if each were alone:

    input_ids      [a a a a b b b c c c PAD]      segment_lengths [4 3 3]
    position_ids   [0 1 2 3 0 1 2 0 1 2 0  ]      restart per window (Qwen-VL: + 3-D rope per window)
    labels         [- a a a - b b - c c -  ]      a window's first label is never a target of the previous window
    attention_mask  (none)                        transformers builds the block-diagonal mask from position_ids

How many placeholder tokens each media item needs is the family adapter's `item_tokens` hook
(`chunker.families`); nothing here branches on the family.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import (
    ChunkerError,
    ConfigError,
    EmptyBatchError,
    ImageCountError,
    ImageDecodeError,
    ImageTokenMismatchError,
    InvalidTokenError,
    PixelMismatchError,
    RowFormatError,
)
from .labels import IGNORE
from .media import PER_ITEM_KEYS, TENSOR_STREAMS, load_image
from .ops import ItemCheck, check_item_counts, item_token_counts, segment_starts, segment_sum
from .spans import AUDIO, IMAGE, VIDEO

POLICIES = ("raise", "drop")
# Keys a model's forward takes beside the text; anything else the image processor returns is bookkeeping.
MODEL_MEDIA_KEYS = (
    "pixel_values", "pixel_attention_mask", "image_grid_thw", "image_sizes", "pixel_values_videos",
    "video_grid_thw", "second_per_grid_ts", "input_features", "input_features_mask",
)


@dataclass
class CollateStats:
    """What a collator did: batches and rows seen, rows dropped by reason, with examples, and the ledger rows of
    input rows the splitter skipped (`skipped_upstream`), which it never collates."""

    batches: int = 0
    rows: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: list = field(default_factory=list)
    skipped_upstream: int = 0

    @property
    def dropped_rows(self) -> int:
        return sum(self.dropped.values())

    def as_dict(self) -> dict:
        return {"batches": self.batches, "rows": self.rows, "dropped": dict(self.dropped), "examples": self.examples,
                "skipped_upstream": self.skipped_upstream}


@dataclass
class WindowRow:
    """One validated window row, as `parse_rows` gives it.

    Attributes:
        ids, labels, attention: `(L,)` int64 tensors.
        type_ids: the family's type-id column `(L,)`, or None when the family has none.
        images: the row's images as given (PIL images, paths, bytes, dicts), or None.
        tensors: media tensors the row carries already sliced (`pixel_values`, `image_grid_thw`, ...).
        name: "3 (source_index 7, window_index 1)", for messages.
        source_index, window_index: where the window came from, when the row says (per window, packed rows).
        segments: `(k,)` int64 token counts of the windows of a packed row (`segment_lengths`), else None.
        audios: the row's audio items as given (waveforms, `{"array", "sampling_rate"}`, WAV paths or bytes), or None.
    """

    ids: torch.Tensor
    labels: torch.Tensor
    attention: torch.Tensor
    type_ids: torch.Tensor | None
    images: list | None
    tensors: dict
    name: str
    source_index: int | list | None = None
    window_index: int | list | None = None
    segments: torch.Tensor | None = None
    audios: list | None = None


@dataclass
class RowMedia:
    """One row's media as tensors, and the placeholder tokens each of its media items needs, in order.

    Attributes:
        tensors: pixels and companions of the row (`pixel_values`, `image_grid_thw`, ...).
        image_tokens, video_tokens: `(n,)` int64, tokens each image (or pixel block) / video needs.
        audio_tokens: `(n,)` int64, tokens each audio item needs (from its features, the spec's audio rule).
        merged: `image_tokens` are per unit (a tile) finer than a span: the check compares spans with sums.
        error: why the row has no media (`ImageDecodeError`, `ImageCountError`), under `errors="keep"`.
    """

    tensors: dict = field(default_factory=dict)
    image_tokens: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    video_tokens: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    merged: bool = False
    audio_tokens: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    error: ChunkerError | None = None


@dataclass
class BatchMedia:
    """The media of a batch, row by row, as `make_media` gives them.

    Attributes:
        rows: one RowMedia per batch row, in order.
        spec: the family grammar (how the pixels of rows are joined).
    """

    rows: list
    spec: object

    @property
    def failed(self) -> list:
        """(row index, error) of every row whose media could not be made (under `errors="keep"`)."""
        return [(i, m.error) for i, m in enumerate(self.rows) if m.error is not None]

    @property
    def merged(self) -> bool:
        return any(m.merged for m in self.rows)

    def select(self, keep) -> BatchMedia:
        """The media of rows `keep` (indices), in that order."""
        return BatchMedia([self.rows[i] for i in keep], self.spec)

    def expected(self) -> tuple:
        """Per stream (image, video): `(counts, per_row)`, the tokens each item needs, rows after rows."""
        out = []
        for stream in ("image_tokens", "video_tokens"):
            parts = [getattr(m, stream) for m in self.rows]
            counts = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
            out.append((counts, torch.tensor([len(p) for p in parts], dtype=torch.int64)))
        return tuple(out)

    def tensors(self) -> dict:
        """Every media tensor of the batch, rows joined in order (Idefics3: per-row pixel axis, zero-padded)."""
        per_row = [m.tensors for m in self.rows]
        keys = [k for k in dict.fromkeys(k for t in per_row for k in t) if k in TENSOR_STREAMS]
        out = {}
        for key in keys:
            parts = [t[key] for t in per_row if key in t and t[key].shape[0]]
            if not parts:
                continue
            if self.spec.extra.get("batch_axis_pixels") and key in ("pixel_values", "pixel_attention_mask"):
                out[key] = _stack_padded([t.get(key) for t in per_row], parts[0])
            else:
                out[key] = _cat_padded(parts)
        return out

    def model_inputs(self, processor=None) -> dict:
        """The media tensors the model's forward takes (those in the processor's `model_input_names`)."""
        names = getattr(processor, "model_input_names", None) or ()
        tensors = self.tensors()
        return {k: tensors[k] for k in model_media_keys()
                if k in tensors and (not names or k in names or k == "pixel_values")}


def model_media_keys() -> tuple:
    """The media tensors a model's forward may take: the common ones and those a family adapter declares as its
    own (`FamilyAdapter.tensor_streams`, e.g. Gemma 4's `image_position_ids`)."""
    from .families import ADAPTERS

    own = (k for cls in ADAPTERS for k, _ in cls.tensor_streams)
    return MODEL_MEDIA_KEYS + tuple(dict.fromkeys(k for k in own if k not in MODEL_MEDIA_KEYS))


def parse_rows(rows, spec, *, vocab_size: int | None = None, max_length: int | None = None) -> list[WindowRow]:
    """Validate window rows and read their columns as tensors.

    Args:
        rows: window rows (dicts of lists, numpy arrays or tensors), or one dict of columns.
        spec: the family grammar (`ImageSpanSpec.from_processor(processor)`).
        vocab_size: refuse token ids outside `[0, vocab_size)` (e.g. `len(processor.tokenizer)`).
        max_length: refuse rows longer than this; nothing is truncated.

    Returns:
        One WindowRow per row. Labels default to the ids with media tokens ignored; attention to ones;
        the family's type ids to 1 on image and 2 on video placeholders.

    Raises:
        RowFormatError: a row without input_ids, an empty or too long row, columns of another length, or
            a type-id column of another family.
        InvalidTokenError: ids that are not integers or lie outside the vocabulary.

    Example:
        >>> from chunker import ImageSpanSpec
        >>> spec = ImageSpanSpec(family="custom", kind="bracket", image_token_id=7, open_ids=(5,), close_ids=(6,))
        >>> row = parse_rows([{"input_ids": [1, 5, 7, 6, 2], "source_index": 3, "window_index": 0}], spec)[0]
        >>> row.labels.tolist(), row.name
        ([1, -100, -100, -100, 2], '0 (source_index 3, window_index 0)')
    """
    return [_parse_row(row, i, spec, vocab_size, max_length) for i, row in enumerate(_as_row_list(rows))]


def make_media(processor, rows: list[WindowRow], spec=None, *, images_kwargs: dict | None = None,
               errors: str = "raise", check: bool = True, adapter=None) -> BatchMedia:
    """Each row's media tensors (its own, or made from its images) and the tokens each of its items needs.

    All images of the batch go through the processor's own image path in one call, with the processor's
    image settings (its defaults merged with `images_kwargs`, as its `__call__` merges them), then each
    row gets its slice. Per-item counts come from the family adapter's `item_tokens` hook.

    Args:
        processor: the model's processor (needed for rows with images; None for rows with pixel tensors).
        rows: `parse_rows` output.
        spec: the family grammar; detected from `processor` when None.
        images_kwargs: image-processor settings overriding the processor's; the ones the rows were made with.
        errors: "raise" the first row's `ImageDecodeError`/`ImageCountError`, or "keep" it in
            `RowMedia.error` (that row gets no media) to let the caller drop the row.
        check: refuse rows whose text holds media tokens but that carry neither images nor pixel tensors.
        adapter: the family adapter (`chunker.families.adapter_for`); found from `processor` or `spec` when None.

    Returns:
        BatchMedia, one RowMedia per row.

    Raises:
        ImageDecodeError: an image cannot be decoded, or the processor refuses the batch's images.
        ImageCountError: a row's text holds media tokens but the row has no `images` column.
        PixelMismatchError: pixel tensors whose per-item counts the family's rule cannot tell.
        ConfigError: rows with images and no processor.

    Example:
        >>> from chunker import ImageSpanSpec
        >>> spec = ImageSpanSpec(family="custom", kind="bracket", image_token_id=7, open_ids=(5,), close_ids=(6,),
        ...                      tokens_per_image=2)
        >>> rows = parse_rows([{"input_ids": [5, 7, 7, 6, 5, 7, 7, 6], "pixel_values": torch.zeros(2, 3, 4, 4)},
        ...                    {"input_ids": [5, 7, 7, 6], "pixel_values": torch.zeros(1, 3, 4, 4)}], spec)
        >>> [t.tolist() for t in make_media(None, rows, spec).expected()[0]]   # tokens per image; images per row
        [[2, 2, 2], [2, 1]]

    With a real processor, rows carry `images` and the processor makes the pixels:
    `make_media(processor, parse_rows(windows, spec), spec)`.
    """
    if errors not in ("raise", "keep"):
        raise ConfigError(f"errors={errors!r} must be 'raise' or 'keep'")
    if adapter is None:
        adapter = _adapter(processor, spec)
    spec = spec if spec is not None else adapter.spec
    out, decoded = [], {}  # decoded: row index -> its images, processed together below
    for k, row in enumerate(rows):
        try:
            if row.tensors and not (row.images and all(TENSOR_STREAMS.get(key) == AUDIO for key in row.tensors)):
                out.append(_row_media(row.tensors, spec, adapter))
            elif row.images:  # pixels from the images (a row's audio tensors are kept beside them)
                decoded[k] = [load_image(im, row=row.name) for im in row.images]
                out.append(None)
            elif check and row.images is None and bool(torch.isin(row.ids, torch.tensor(spec.media_ids)).any()):
                raise ImageCountError(
                    "the text holds image tokens but the row has no 'images' and no pixel tensors: keep the "
                    "'images' column when mapping (do not remove it) or pass keep_pixels=True to the splitter",
                    row=row.name,
                )
            else:
                out.append(RowMedia())
        except (ImageDecodeError, ImageCountError) as exc:
            if errors == "raise":
                raise
            out.append(RowMedia(error=exc))
    if decoded:
        if processor is None:
            raise ConfigError("rows with images need the processor to make pixel values: pass WindowCollator(processor)")
        nested = list(decoded.values())
        try:
            made, tiles = _run_image_processor(processor, nested, _image_kwargs(processor, images_kwargs or {}))
        except ChunkerError:
            raise
        except (ValueError, TypeError, OSError) as exc:
            raise ImageDecodeError(
                f"the image processor refused the images of rows {[rows[k].name for k in decoded]}: {exc}"
            ) from exc
        pieces = _split_rows(adapter.image_outputs(made, [len(n) for n in nested]), [len(n) for n in nested], spec)
        for j, (k, piece) in enumerate(zip(decoded, pieces)):
            audio_own = {key: v for key, v in rows[k].tensors.items() if TENSOR_STREAMS.get(key) == AUDIO}
            out[k] = _row_media({**piece, **audio_own}, spec, adapter, tiles=None if tiles is None else tiles[j])
    if spec.audio_token_id is not None:
        _audio_media(processor, rows, spec, out, errors, check)
    return BatchMedia(out, spec)


def pad_batch(rows: list[WindowRow], pad_token_id: int, *, pad_to_multiple_of: int | None = None,
              type_ids_column: str | None = None) -> dict:
    """Right-pad the rows' columns into `(B, L)` int64 tensors.

    Args:
        rows: `parse_rows` output.
        pad_token_id: the id of padding positions.
        pad_to_multiple_of: round L up to a multiple of this.
        type_ids_column: the family's type-id column to pad too (0 on padding), or None.

    Returns:
        dict with `input_ids`, `attention_mask` (0 on padding), `labels` (-100 on padding) and the
        type-id column when given.

    Example:
        >>> from chunker import ImageSpanSpec
        >>> spec = ImageSpanSpec(family="custom", kind="bracket", image_token_id=7, open_ids=(5,), close_ids=(6,))
        >>> batch = pad_batch(parse_rows([{"input_ids": [1, 2, 3]}, {"input_ids": [4]}], spec), 0, pad_to_multiple_of=4)
        >>> batch["input_ids"].tolist(), batch["labels"][1].tolist()
        ([[1, 2, 3, 0], [4, 0, 0, 0]], [4, -100, -100, -100])
    """
    batch = {
        "input_ids": _pad([r.ids for r in rows], pad_token_id, pad_to_multiple_of),
        "attention_mask": _pad([r.attention for r in rows], 0, pad_to_multiple_of),
        "labels": _pad([r.labels for r in rows], IGNORE, pad_to_multiple_of),
    }
    if type_ids_column:
        batch[type_ids_column] = _pad([r.type_ids for r in rows], 0, pad_to_multiple_of)
    return batch


def check_batch(batch, media: BatchMedia, spec, *, rows: list[WindowRow] | None = None,
                raise_error: bool = True) -> ItemCheck:
    """Check every media span of every row against its own item's expected count, in order (one host sync).

    The k-th image span of row b must hold the tokens the k-th image of row b needs (and videos alike),
    and every row as many spans as media items. Images in another row, two images of a row in the wrong
    order, a cut span, or a span without media all fail; the model's own check sees batch totals only.

    Args:
        batch: `pad_batch` output, or its padded `(B, L)` input_ids (any device).
        media: `make_media` output for the same rows.
        spec: the family grammar.
        rows: the parsed rows, to name them (source_index, window_index) in the error.
        raise_error: raise on a mismatch; False returns the result for the caller to act on.

    Returns:
        ItemCheck: `bad_rows`, `bad_items` (row, stream, item, seen, expected), per-row totals.

    Raises:
        ImageTokenMismatchError: some row's spans do not match its media (`raise_error`); its `bad_rows`
            lists a dict per bad row with `source_index`, `window_index`, totals and the bad `items`.

    Example:
        >>> from chunker import ImageSpanSpec
        >>> spec = ImageSpanSpec(family="custom", kind="bracket", image_token_id=7, open_ids=(5,), close_ids=(6,))
        >>> rows = parse_rows([{"input_ids": [1, 5, 7, 6, 5, 7, 7, 6], "source_index": 4, "window_index": 2}], spec)
        >>> swapped = BatchMedia([RowMedia(image_tokens=torch.tensor([2, 1]))], spec)
        >>> check_batch(pad_batch(rows, 0), swapped, spec, rows=rows)
        Traceback (most recent call last):
        ...
        chunker.errors.ImageTokenMismatchError: 1 of 1 rows have media spans that do not match their own media: row 0 (source_index 4, window_index 2): image 0: 1 tokens (its media need 2); image 1: 2 tokens (its media need 1). ...
    """
    input_ids = batch["input_ids"] if isinstance(batch, dict) else batch
    image, video = media.expected()
    most = int((image[1] + video[1]).max()) if len(media.rows) else 0
    seen = item_token_counts(input_ids, spec, max_items=most + 1)
    has_video = spec.video_token_id is not None or len(video[0])
    result = check_item_counts(seen, image, video if has_video else None, merged=seen.merged or media.merged)
    if spec.audio_token_id is not None:
        result = check_audio_items(input_ids, media, spec, result)
    if result.ok or not raise_error:
        return result
    raise _mismatch_error(result, rows, spec)


def _mismatch_error(result: ItemCheck, rows, spec) -> ImageTokenMismatchError:
    """The error naming every bad row of `result` (source_index, window_index) and its bad items."""
    names = [r.name for r in rows] if rows else [str(i) for i in range(len(result.tokens["image"][0]))]
    streams = ("image", "video") if spec.video_token_id is not None else ("image",)
    why = [f"row {names[r]}: {result.describe(r)}" for r in result.bad_rows]
    hint = ""
    audio_seen = int(np.asarray(result.tokens["audio"][0]).sum()) if "audio" in result.tokens else 0
    if len(result.bad_rows) == len(names) and not int(result.tokens["image"][0].sum()) and not audio_seen:
        hint = (f" No row holds a single {spec.family} image token: the rows were probably made with "
                "another model's processor; collate them with that processor.")
    details = []
    for r in result.bad_rows:
        entry = {"row": r, "source_index": rows[r].source_index if rows else None,
                 "window_index": rows[r].window_index if rows else None}
        for s in streams:
            entry[f"{s} tokens"] = (int(result.tokens[s][0][r]), int(result.tokens[s][1][r]))
            entry[f"{s} items"] = (int(result.items[s][0][r]), int(result.items[s][1][r]))
        entry["items"] = [b._asdict() for b in result.items_of(r)]
        details.append(entry)
    return ImageTokenMismatchError(
        f"{len(why)} of {len(names)} rows have media spans that do not match their own media: " + "; ".join(why)
        + ". The rows were truncated, edited, or given another row's images or their images in another order; "
        "re-split them with WindowSplitter, or pass on_mismatch='drop' to skip such rows." + hint,
        bad_rows=details,
    )


def pack_positions(batch: dict, segments: list, adapter, *, model=None, padding_free: bool = False) -> dict:
    """Turn a padded batch whose rows hold several windows into one that trains each window as if it were alone.

    Positions restart at every window (the family adapter's `position_ids` hook: Qwen-VL gets `(4, B, L)`, the
    text positions then the 3-D rope of each window); `attention_mask` is left out, so transformers builds a
    block-diagonal causal mask from the positions (verified for sdpa and eager; flash-attention's varlen path
    derives its sequence boundaries from the same positions, not verified here); the label at each window's first token is set to -100, so the last token of a window is
    never trained to predict the next window's first token (a window alone never trains that label either: the
    model shifts labels inside its loss). With `padding_free` the rows are laid end to end in one row
    `(1, N)` without padding (the layout TRL's `padding_free=True` uses).

    Args:
        batch: `pad_batch` output (with the media tensors added).
        segments: per row, the token counts of its windows (`WindowRow.segments`), or None for a row that is
            one window.
        adapter: the family adapter (`chunker.families.adapter_for(processor)`).
        model: given to the adapter's `position_ids` hook (Qwen-VL: its own `get_rope_index`).
        padding_free: lay all rows end to end in one row.

    Returns:
        The batch with `position_ids`, edited `labels`, no `attention_mask`, and `use_cache=False`. A batch of
        one-window rows without `padding_free` is returned unchanged (positions come from the attention mask).

    Example:
        >>> from chunker import ImageSpanSpec
        >>> from chunker.families import adapter_for_spec
        >>> spec = ImageSpanSpec(family="custom", kind="bracket", image_token_id=7, open_ids=(5,), close_ids=(6,))
        >>> rows = parse_rows([{"input_ids": [1, 2, 3, 4, 8, 9], "segment_lengths": [4, 2]}, {"input_ids": [3, 4]}], spec)
        >>> batch = pack_positions(pad_batch(rows, 0), [r.segments for r in rows], adapter_for_spec(spec))
        >>> batch["position_ids"].tolist(), batch["labels"].tolist(), "attention_mask" in batch
        ([[0, 1, 2, 3, 0, 1], [0, 1, 0, 1, 2, 3]], [[-100, 2, 3, 4, -100, 9], [-100, 4, -100, -100, -100, -100]], False)
    """
    if not padding_free and all(s is None for s in segments):
        return batch
    batch = dict(batch)
    ids = batch["input_ids"]
    mask = batch.pop("attention_mask")
    lengths = mask.sum(1) if mask is not None else torch.full((ids.shape[0],), ids.shape[1])
    segments = [torch.as_tensor([int(n)]) if s is None else s for s, n in zip(segments, lengths.tolist())]
    if padding_free:
        real = mask.bool()
        for key in ("input_ids", "labels", adapter.spec.type_ids_column):
            if key in batch:
                batch[key] = batch[key][real][None]
        if adapter.spec.extra.get("batch_axis_pixels"):  # per-row pixel axis (B, T, ...): all-zero tiles are padding
            for key in ("pixel_values", "pixel_attention_mask"):
                if key in batch:
                    batch[key] = batch[key].reshape(1, -1, *batch[key].shape[2:])
        segments = [torch.cat(segments)]
    starts = segment_starts(segments, batch["input_ids"].shape[1]).to(batch["input_ids"].device)
    batch["labels"] = batch["labels"].masked_fill(starts, IGNORE)
    batch["position_ids"] = adapter.position_ids(batch, starts, model)
    batch["use_cache"] = False  # transformers reads packed positions only without a cache (as TRL's trainer sets)
    return batch


class WindowCollator:
    """Collate window rows into the dict of tensors the model's forward accepts, checking every media item.

    A drop-in `data_collator` for `transformers.Trainer`, TRL's `SFTTrainer` and Unsloth. Rows come
    from `WindowSplitter` (through `Dataset.map`, `IterableDataset.map`, or built by hand): `input_ids`,
    `labels`, `attention_mask`, the family's type-id column, and the window's media as `images` (PIL
    images, paths, bytes or `{"bytes", "path"}` dicts, as the Arrow Image feature gives them) or as pixel
    tensors already sliced per window (`pixel_values`, `image_grid_thw`, ...). Images are processed by the
    processor's own image processor with the processor's own image settings, the ones that produced
    the token counts. Rows are right-padded; padding gets label -100 and attention 0.

    It composes `parse_rows` -> `make_media` -> `pad_batch` -> `check_batch`. Before returning, every
    media span of every row is compared with its own item's expected count, in order (vectorized, one
    host sync per batch): the model's own check in transformers 5.x sums over the batch, this one catches
    images in the wrong row and a row's images in the wrong order.

    Args:
        processor: the model's transformers processor (tokenizer, image processor, family grammar).
        spec: an `ImageSpanSpec`; detected from `processor` when None.
        pad_to_multiple_of: round the padded length up to a multiple of this.
        on_mismatch: "raise" (default) an `ImageTokenMismatchError` naming every bad row and item, or
            "drop" the bad rows with exactly their media, count them in `stats` and warn once. Rows whose
            images cannot be decoded or that lack the images their text holds follow the same policy.
        max_length: refuse rows longer than this (a `RowFormatError`); the collator never truncates.
        pad_token_id: the padding id; the tokenizer's pad (or eos) id when None.
        images_kwargs: image-processor settings overriding the processor's defaults; pass the same ones
            the rows were tokenized with.
        check: False skips the per-item check (not recommended).
        model: the model being trained, for families whose packed positions its own function computes (Qwen-VL's
            `get_rope_index`); without it they come from the image grids (images only).
        padding_free: lay the batch's rows end to end in one row without padding (see `pack_positions`).

    Packed rows (`chunker.pack_windows`, a `segment_lengths` column) get per-window positions and no attention
    mask (`pack_positions`), so each window trains as it would alone; one-window rows are collated as before.

    Raises:
        ConfigError: an unknown policy or a bad `pad_to_multiple_of`.
        UnsupportedProcessorError: no family matches the processor and no spec was passed.

    Example:
        >>> collator = WindowCollator(processor, pad_to_multiple_of=8)                 # doctest: +SKIP
        >>> batch = collator([windows[0], windows[1]])                                  # doctest: +SKIP
        >>> sorted(batch)                                                               # doctest: +SKIP
        ['attention_mask', 'input_ids', 'labels', 'pixel_values', 'token_type_ids']
    """

    def __init__(
        self,
        processor=None,
        *,
        spec=None,
        pad_to_multiple_of: int | None = None,
        on_mismatch: str = "raise",
        max_length: int | None = None,
        pad_token_id: int | None = None,
        images_kwargs: dict | None = None,
        check: bool = True,
        model=None,
        padding_free: bool = False,
    ):
        if on_mismatch not in POLICIES:
            raise ConfigError(f"on_mismatch={on_mismatch!r} must be one of {POLICIES}")
        if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
            raise ConfigError(f"pad_to_multiple_of={pad_to_multiple_of!r} must be a positive integer (e.g. 8) or None")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ConfigError(f"max_length={max_length!r} must be a positive integer or None")
        if processor is None and spec is None:
            raise ConfigError("pass the model's processor (or a spec, for rows that carry pixel tensors)")
        self.adapter = _adapter(processor, spec)
        if spec is None:
            from .families.probe import check_grammar

            check_grammar(self.adapter, images_kwargs)
        self.processor = processor
        self.spec = self.adapter.spec
        self.pad_to_multiple_of = pad_to_multiple_of
        self.on_mismatch = on_mismatch
        self.max_length = max_length
        self.check = check
        tok = getattr(processor, "tokenizer", processor)
        if pad_token_id is None and tok is not None:
            pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.pad_token_id = int(pad_token_id or 0)
        self.vocab_size = len(tok) if tok is not None and hasattr(tok, "__len__") else None
        self.images_kwargs = dict(images_kwargs or {})
        self.model = model
        self.padding_free = bool(padding_free)
        self.stats = CollateStats()
        self._warned = False

    def __call__(self, rows) -> dict:
        """Collate a list of window rows (or a dict of columns) into a dict of tensors.

        Args:
            rows: window rows (dicts); values may be lists, numpy arrays or tensors.

        Returns:
            dict with `input_ids`, `attention_mask`, `labels` (B, L) int64, the family's type-id column,
            and the media tensors of the family (`pixel_values`, `image_grid_thw`, `image_sizes`,
            `pixel_attention_mask`, ...) when any row holds media.

        Raises:
            EmptyBatchError: no rows, or every row was dropped.
            ImageTokenMismatchError: rows whose spans do not match their media (on_mismatch="raise").
            ImageDecodeError, ImageCountError: a row's images cannot be read or are missing ("raise").
            RowFormatError, InvalidTokenError: a row that is not a window row of this processor's family.
        """
        rows = _as_row_list(rows)
        if not rows:
            raise EmptyBatchError("the collator got an empty batch: give at least one window row")
        self.stats.batches += 1
        self.stats.rows += len(rows)
        ledger = [r for r in rows if isinstance(r, dict) and r.get("num_windows") == 0]
        if ledger:  # a skipped input row's ledger row (WindowSplitter on_error="skip"): counted, never trained
            self.stats.skipped_upstream += len(ledger)
            rows = [r for r in rows if not (isinstance(r, dict) and r.get("num_windows") == 0)]
            if not rows:
                raise EmptyBatchError(
                    f"the batch holds only ledger rows of {len(ledger)} skipped input rows (num_windows 0): remove them "
                    "before training with chunker.drop_skipped(windows)"
                )
        drop = self.on_mismatch == "drop"
        parsed = parse_rows(rows, self.spec, vocab_size=self.vocab_size, max_length=self.max_length)
        media = make_media(self.processor, parsed, self.spec, images_kwargs=self.images_kwargs,
                           errors="keep" if drop else "raise", check=self.check, adapter=self.adapter)
        dropped = [(parsed[i], type(e).__name__, str(e)) for i, e in media.failed]
        keep = [i for i, m in enumerate(media.rows) if m.error is None]
        batch = pad_batch([parsed[i] for i in keep], self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of,
                          type_ids_column=self.spec.type_ids_column) if keep else None
        if keep and self.check:
            result = check_batch(batch, media.select(keep), self.spec, rows=[parsed[i] for i in keep],
                                 raise_error=not drop)
            if not result.ok:
                dropped += [(parsed[keep[r]], "ImageTokenMismatchError", f"row {parsed[keep[r]].name}: {result.describe(r)}")
                            for r in result.bad_rows]
                keep = [i for r, i in enumerate(keep) if r not in set(result.bad_rows)]
                batch = pad_batch([parsed[i] for i in keep], self.pad_token_id,
                                  pad_to_multiple_of=self.pad_to_multiple_of,
                                  type_ids_column=self.spec.type_ids_column) if keep else None
        if dropped:
            self._record_drops(dropped)
        if batch is None:
            raise EmptyBatchError(
                f"every one of the {len(rows)} rows of the batch was dropped ({dict(Counter(r for _, r, _ in dropped))}); "
                "see collator.stats.examples for why"
            )
        batch.update(self.adapter.model_inputs(batch, media.select(keep)))
        return pack_positions(batch, [parsed[i].segments for i in keep], self.adapter, model=self.model,
                              padding_free=self.padding_free)

    def _record_drops(self, dropped) -> None:
        for p, reason, why in dropped:
            self.stats.dropped[reason] += 1
            if len(self.stats.examples) < 20:
                self.stats.examples.append({"source_index": p.source_index, "window_index": p.window_index,
                                            "reason": why})
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"WindowCollator dropped {len(dropped)} row(s) whose media do not match their text "
                f"(first: {dropped[0][2]}); see collator.stats for every drop. This warning is shown once.",
                stacklevel=3,
            )


# ---------------------------------------------------------------------- rows and padding


def _parse_row(row, i: int, spec, vocab_size, max_length) -> WindowRow:
    if not isinstance(row, dict):
        raise RowFormatError(f"a window row must be a dict of columns, got {type(row).__name__}", row=i)
    src, win = row.get("source_index"), row.get("window_index")
    name = f"{i} (source_index {src}, window_index {win})" if src is not None else str(i)
    if row.get("input_ids") is None:
        raise RowFormatError(
            f"the row has no input_ids (columns {sorted(row)}): map the dataset with WindowSplitter first", row=name
        )
    ids = _as_ids(row["input_ids"], vocab_size, name)
    n = ids.shape[0]
    if n == 0:
        raise RowFormatError("input_ids is empty: drop the row before collating", row=name)
    if max_length is not None and n > max_length:
        raise RowFormatError(
            f"the row holds {n} tokens, more than max_length={max_length}: the collator never truncates; "
            f"split rows with WindowSplitter(max_length={max_length})",
            row=name,
        )
    labels = _column(row, "labels", n, name)
    if labels is None:
        labels = ids.masked_fill(torch.isin(ids, torch.tensor(spec.structural_ids or (-1,))), IGNORE)
    attention = _column(row, "attention_mask", n, name)
    attention = torch.ones(n, dtype=torch.int64) if attention is None else attention
    column = spec.type_ids_column
    if column != "mm_token_type_ids" and row.get("mm_token_type_ids") is not None:
        raise RowFormatError(
            f"the row has a 'mm_token_type_ids' column but this collator's processor is of the {spec.family} "
            f"family (which uses {column!r}): the rows were made with another model's processor; collate them "
            "with that processor",
            row=name,
        )
    type_ids = None
    if column is not None:
        type_ids = _column(row, column, n, name)
        if type_ids is None:
            type_ids = (ids == spec.image_token_id).to(torch.int64)
            if spec.video_token_id is not None:
                type_ids[ids == spec.video_token_id] = 2
            if spec.audio_token_id is not None:
                type_ids[ids == spec.audio_token_id] = 3
    tensors = {k: _as_tensor(row[k]) for k in TENSOR_STREAMS if row.get(k) is not None}
    images = row.get("images")
    images = list(images) if images is not None else None
    audios = row.get("audios")
    audios = list(audios) if audios is not None else None
    segments = row.get("segment_lengths")
    if segments is not None:
        segments = _as_tensor(segments).to(torch.int64).reshape(-1)
        if int(segments.sum()) != n or bool((segments < 1).any()):
            raise RowFormatError(
                f"segment_lengths {segments.tolist()} do not add up to the row's {n} tokens in windows of at least one "
                "token: the packed row was edited; pack the windows again with chunker.pack_windows",
                row=name,
            )
    return WindowRow(ids, labels, attention, type_ids, images, tensors, name, src, win, segments, audios)


def _as_row_list(rows) -> list:
    if isinstance(rows, dict):
        cols = list(rows)
        n = len(rows[cols[0]]) if cols else 0
        return [{c: rows[c][i] for c in cols} for i in range(n)]
    return list(rows)


def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    arr = np.asarray(value)
    if arr.dtype == object:
        arr = np.stack([np.asarray(v) for v in value]) if len(value) else np.zeros(0)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _as_ids(value, vocab_size, name) -> torch.Tensor:
    try:
        ids = _as_tensor(value)
    except (ValueError, TypeError) as exc:
        raise InvalidTokenError(f"input_ids cannot be read as integers: {exc}", row=name) from exc
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise RowFormatError(f"input_ids must be a flat list of token ids, got shape {tuple(ids.shape)}", row=name)
    if ids.numel() and (ids.dtype.is_floating_point or ids.dtype == torch.bool):
        raise InvalidTokenError(
            f"input_ids holds values of dtype {ids.dtype}: token ids must be integers; tokenize the text first", row=name
        )
    ids = ids.to(torch.int64)
    if ids.numel() and (int(ids.min()) < 0 or (vocab_size is not None and int(ids.max()) >= vocab_size)):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise InvalidTokenError(
            f"token id {bad} is outside the vocabulary [0, {vocab_size}): the row was tokenized by another model's "
            "tokenizer; collate it with that model's processor",
            row=name,
        )
    return ids


def _column(row, key, n, name):
    value = row.get(key)
    if value is None:
        return None
    t = _as_tensor(value).to(torch.int64).reshape(-1)
    if t.shape[0] != n:
        raise RowFormatError(f"{key} has {t.shape[0]} entries but input_ids has {n}: give one per token", row=name)
    return t


def _pad(seqs, value, multiple) -> torch.Tensor:
    out = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=value)
    if multiple and out.shape[1] % multiple:
        out = torch.nn.functional.pad(out, (0, multiple - out.shape[1] % multiple), value=value)
    return out


# ---------------------------------------------------------------------- pixels


def _image_kwargs(processor, user: dict) -> dict:
    """The processor's own image settings (its `_defaults` merged with the user's), as its __call__ uses them."""
    if processor is None:
        return dict(user)
    try:
        merged = processor._merge_kwargs(
            processor.valid_processor_kwargs,
            tokenizer_init_kwargs=getattr(getattr(processor, "tokenizer", None), "init_kwargs", {}),
            images_kwargs=dict(user),
        )
        kwargs = dict(merged["images_kwargs"])
    except (AttributeError, TypeError, KeyError):
        kwargs = dict(user)
    kwargs["return_tensors"] = "pt"
    return kwargs


def _run_image_processor(processor, nested: list, kwargs: dict):
    """Pixel tensors for nested per-row images, made the way the processor's own __call__ makes them, and the
    tiles of each image per row when the processor reports them (else None)."""
    runner = getattr(processor, "_process_images", None)
    out = None
    if runner is not None:
        try:
            out = runner(nested, **kwargs)
        except NotImplementedError:  # a processor with its own __call__ (Idefics2): its image processor alone
            out = None
        out = out[0] if isinstance(out, tuple) else out
    if out is None:
        out = processor.image_processor(nested, **kwargs)
    out = dict(out)
    tensors = {k: v if isinstance(v, torch.Tensor) else _as_tensor(v) for k, v in out.items() if k in TENSOR_STREAMS}
    return tensors, _tiles_per_image(out)


def _items_rows(tensors: dict, key: str, n_items: int) -> torch.Tensor:
    """Leading rows of tensor `key` owned by each of `n_items` items."""
    if key in PER_ITEM_KEYS:
        return torch.ones(n_items, dtype=torch.int64)
    grid = "video_grid_thw" if TENSOR_STREAMS.get(key) == VIDEO else "image_grid_thw"
    if grid in tensors:
        return tensors[grid].reshape(-1, 3).prod(-1).to(torch.int64)
    if "num_crops" in tensors:
        return 1 + tensors["num_crops"].reshape(-1).to(torch.int64)
    if "num_patches" in tensors:
        return tensors["num_patches"].reshape(-1).to(torch.int64)
    return torch.ones(n_items, dtype=torch.int64)


def _split_rows(out: dict, images_per_row: list[int], spec) -> list[dict]:
    """Per-row slices of one image-processor output over several rows' images."""
    pieces = [{} for _ in images_per_row]
    n_items = sum(images_per_row)
    for key, value in out.items():
        if spec.extra.get("batch_axis_pixels") and key in ("pixel_values", "pixel_attention_mask"):
            for r in range(len(images_per_row)):
                pieces[r][key] = value[r]
            continue
        per = _items_rows(out, key, n_items)
        per_row = segment_sum(per, torch.tensor(images_per_row))
        if int(per_row.sum()) != value.shape[0]:
            raise PixelMismatchError(
                f"the image processor gave {value.shape[0]} rows of {key} for {n_items} images, not {int(per_row.sum())}"
            )
        for r, chunk in enumerate(torch.split(value, per_row.tolist(), dim=0)):
            pieces[r][key] = chunk
    return pieces


def _cat_padded(parts: list) -> torch.Tensor:
    """Concatenate along dim 0, zero-padding trailing dims to the largest (patches, height, width)."""
    shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
    padded = [_pad_to(p, shape) for p in parts]
    return torch.cat(padded, 0)


def _stack_padded(parts: list, like: torch.Tensor) -> torch.Tensor:
    """(B, T_max, ...) with each row's tiles first and zeros after (rows without images are all zeros)."""
    present = [p for p in parts if p is not None]
    t_max = max(p.shape[0] for p in present)
    trail = [max(p.shape[d] for p in present) for d in range(1, like.dim())]
    out = torch.zeros((len(parts), t_max, *trail), dtype=like.dtype)
    for r, p in enumerate(parts):
        if p is not None and p.shape[0]:
            out[r, : p.shape[0]] = _pad_to(p, trail)
    return out


def _pad_to(t: torch.Tensor, trail: list) -> torch.Tensor:
    if list(t.shape[1:]) == trail:
        return t
    pad = []
    for d in reversed(range(1, t.dim())):
        pad += [0, trail[d - 1] - t.shape[d]]
    return torch.nn.functional.pad(t, pad)


# ====================================================================== media per row


def _adapter(processor, spec):
    """The family adapter of the processor (or of the spec's family, for rows that carry pixel tensors)."""
    from .families import adapter_for, adapter_for_spec

    if spec is None:
        return adapter_for(processor)
    return adapter_for_spec(spec, processor)


def _row_media(tensors: dict, spec, adapter, tiles=None) -> RowMedia:
    """The row's media tensors and, per media item, the placeholder tokens it needs (the adapter's rule)."""
    t = dict(tensors)
    if spec.extra.get("batch_axis_pixels") and "pixel_values" in t:
        pv = t["pixel_values"]
        if pv.dim() == 5 and pv.shape[0] == 1:
            pv = t["pixel_values"] = pv[0]
            if "pixel_attention_mask" in t and t["pixel_attention_mask"].dim() == 4:
                t["pixel_attention_mask"] = t["pixel_attention_mask"][0]
        real = (pv != 0).flatten(1).any(1)
        t["pixel_values"] = pv[real]
        if "pixel_attention_mask" in t:
            t["pixel_attention_mask"] = t["pixel_attention_mask"][real]
    if "image_grid_thw" in t or any("pixel_values" in k and TENSOR_STREAMS.get(k) == IMAGE for k in t):
        image, merged = adapter.item_tokens(t, tiles)  # any image pixels (`pixel_values_images`, `image_pixel_values`)
    else:
        image, merged = torch.zeros(0, dtype=torch.int64), False
    return RowMedia(t, image, adapter.video_item_tokens(t), merged)


def _tiles_per_image(out: dict):
    """Idefics3/SmolVLM: tiles of each image per row from the processor's `rows`/`cols` (a split image has
    rows*cols tiles and a global one; an unsplit image only the global one), or None."""
    if "rows" not in out or "cols" not in out:
        return None
    return [[r * c + 1 if r * c else 1 for r, c in zip(rows, cols)] for rows, cols in zip(out["rows"], out["cols"])]


# ====================================================================== audio items (Gemma 4, Gemma 3n)


def _audio_media(processor, rows: list[WindowRow], spec, out: list, errors: str, check: bool) -> None:
    """Give each row's RowMedia its audio features and the tokens each audio item needs (in place).

    A row's own `input_features` / frame mask are kept as they are; rows with `audios` get theirs from the
    processor's feature extractor, all of the batch's audio in one call with the family's extractor settings
    (`spec.extra["audio_features"]`: Qwen-Omni's padding and mask name), each row taking its own rows.
    """
    from .media import AUDIO_MASKS, audio_item_tokens, load_audio

    keys = tuple(dict.fromkeys(("input_features", *AUDIO_MASKS, *(k for k, s in TENSOR_STREAMS.items() if s == AUDIO))))
    features = ("input_features", *AUDIO_MASKS, "audio_input_features")
    waves = {}
    audio = torch.tensor(spec.audio_ids)
    for k, row in enumerate(rows):
        if out[k].error is not None or any(key in row.tensors for key in features):
            continue  # the row's own features (a row with only `audio_embed_sizes` gets features from its audio)
        try:
            if row.audios:
                rate = getattr(_feature_extractor(processor), "sampling_rate", None)
                waves[k] = [load_audio(a, rate, row=row.name) for a in row.audios]
            elif check and row.audios is None and bool(torch.isin(row.ids, audio).any()):
                raise ImageCountError(
                    "the text holds audio tokens but the row has no 'audios' and no input_features: keep the 'audios' "
                    "column when mapping (do not remove it) or pass keep_pixels=True to the splitter",
                    row=row.name,
                )
        except (ImageDecodeError, ImageCountError) as exc:
            if errors == "raise":
                raise
            out[k] = RowMedia(error=exc)
    if waves:
        extractor = _feature_extractor(processor)
        if extractor is None:
            raise ConfigError("rows with audio need the processor's feature extractor: pass WindowCollator(processor)")
        flat = [w for ws in waves.values() for w in ws]
        try:
            how = spec.extra.get("audio_features", {})
            made = extractor(flat, sampling_rate=extractor.sampling_rate, return_tensors="pt", **how.get("kwargs", {}))
            made = {how.get("rename", {}).get(key, key): value for key, value in made.items()}
        except (ValueError, TypeError) as exc:
            raise ImageDecodeError(
                f"the feature extractor refused the audio of rows {[rows[k].name for k in waves]}: {exc}"
            ) from exc
        first = 0
        for k, ws in waves.items():
            own = {key: made[key][first:first + len(ws)] for key in keys if key in made}
            first += len(ws)
            out[k].tensors = {**out[k].tensors, **own}
    for m in out:
        if m.error is None and any(key in m.tensors for key in keys):
            counts = audio_item_tokens(spec, {k: v.cpu() for k, v in m.tensors.items() if k in keys})
            if counts is None:
                raise PixelMismatchError(
                    f"cannot tell how many audio tokens the audio features of a {spec.family} row need: its spec has "
                    "no audio rule (spec.extra['audio_count']); build the spec from the processor"
                )
            m.audio_tokens = torch.as_tensor(counts, dtype=torch.int64)


def _feature_extractor(processor):
    """The processor's audio feature extractor (`feature_extractor`; Phi-4-multimodal's is its `audio_processor`)."""
    return getattr(processor, "feature_extractor", None) or getattr(processor, "audio_processor", None)


def check_audio_items(input_ids, media: BatchMedia, spec, result: ItemCheck) -> ItemCheck:
    """`result` with every row's audio spans checked against its own audio items, in order (one host sync).

    The k-th audio span of row b (`audio_open_ids ... audio_close_ids`) must hold the tokens the k-th audio item of
    row b needs, and every row as many audio spans as audio items; audio tokens after a row's last audio span are a
    span cut at the end.

    Example:
        >>> from chunker import ImageSpanSpec
        >>> from chunker.ops import check_item_counts, item_token_counts
        >>> spec = ImageSpanSpec(family="custom", kind="bracket", image_token_id=7, open_ids=(5,), close_ids=(6,),
        ...                      audio_token_id=9, audio_open_ids=(3,), audio_close_ids=(4,))
        >>> ids = torch.tensor([[3, 9, 9, 4, 1, 3, 9, 4]])
        >>> media = BatchMedia([RowMedia(audio_tokens=torch.tensor([2, 2]))], spec)
        >>> empty = (torch.zeros(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
        >>> check = check_audio_items(ids, media, spec, check_item_counts(item_token_counts(ids, spec), empty))
        >>> check.bad_rows, check.describe(0)
        ([0], 'audio 1: 1 tokens (its media need 2)')
    """
    from .ops import BadItem

    ids = input_ids if input_ids.dim() == 2 else input_ids[None]
    want = [m.audio_tokens for m in media.rows]
    per_row = torch.tensor([len(w) for w in want], dtype=torch.int64)
    if not spec.audio_close_ids:
        return _check_audio_runs((ids == spec.audio_token_id).cpu().numpy(), want, per_row, result)
    k = int(per_row.max()) + 1 if len(want) else 1
    close = torch.isin(ids, torch.tensor(spec.audio_close_ids, device=ids.device)).to(torch.int64)
    item = (close.cumsum(1) - close).clamp_(max=k)  # the audio item each position belongs to (k: past the listed)
    counts = torch.zeros((ids.shape[0], k + 1), dtype=torch.int64, device=ids.device)
    counts.scatter_add_(1, item, (ids == spec.audio_token_id).to(torch.int64))
    host = torch.cat([counts, close.sum(1, keepdim=True)], 1).cpu().numpy()
    counts, n_seen = host[:, :-1], host[:, -1]
    bad, seen_tokens, want_tokens = [], np.zeros(len(want), np.int64), np.zeros(len(want), np.int64)
    for r, w in enumerate(want):
        w = w.tolist()
        seen_tokens[r], want_tokens[r] = int(counts[r].sum()), int(sum(w))
        spans = int(n_seen[r])
        for j in range(max(spans, len(w))):
            seen = int(counts[r, j]) if j < spans and j < k else None
            expected = w[j] if j < len(w) else None
            if seen != expected:
                bad.append(BadItem(r, "audio", j, seen, expected))
        tail = int(counts[r, min(spans, k)]) if spans < k else 0
        if tail:
            bad.append(BadItem(r, "audio", None, tail, 0))
    items = sorted(result.bad_items + bad, key=lambda x: (x.row, ("image", "video", "audio").index(x.stream),
                                                           x.item is None, x.item or 0))
    return ItemCheck(sorted(set(result.bad_rows) | {b.row for b in bad}), items,
                     {**result.tokens, "audio": (seen_tokens, want_tokens)},
                     {**result.items, "audio": (n_seen, per_row.numpy())})


def _check_audio_runs(audio: np.ndarray, want: list, per_row, result: ItemCheck) -> ItemCheck:
    """`check_audio_items` for bare audio runs (Phi-4-multimodal): back-to-back items share a run, so each run must
    start and end where items of the row start and end, and the runs must cover all its items (`audio`: `(B, L)` bool,
    the audio placeholders)."""
    from .ops import BadItem

    bad, n_seen = [], np.zeros(len(want), np.int64)
    seen_tokens, want_tokens = audio.sum(1).astype(np.int64), np.zeros(len(want), np.int64)
    for r, w in enumerate(want):
        w = np.asarray(w.tolist(), dtype=np.int64)
        pos = np.flatnonzero(audio[r])
        runs = np.diff(np.concatenate([[0], np.flatnonzero(np.diff(pos) != 1) + 1, [len(pos)]])) if len(pos) else pos
        n_seen[r], want_tokens[r] = len(runs), int(w.sum())
        item_ends, run_ends = np.cumsum(w), np.cumsum(runs)
        for n, end in zip(runs.tolist(), run_ends.tolist()):
            j = int(np.searchsorted(item_ends, end - n, side="right"))  # the item the run starts in
            if j >= len(w):
                bad.append(BadItem(r, "audio", j, n, None))
            elif end - n != item_ends[j] - w[j] or end not in item_ends:
                bad.append(BadItem(r, "audio", j, n, int(w[j]), len(runs) != len(w)))
        covered = int(run_ends[-1]) if len(runs) else 0
        j = int(np.searchsorted(item_ends, covered, side="right"))
        if covered < int(want_tokens[r]) and not any(b.row == r and b.item == j for b in bad):
            bad.append(BadItem(r, "audio", j, None, int(w[j])))
    items = sorted(result.bad_items + bad, key=lambda x: (x.row, ("image", "video", "audio").index(x.stream),
                                                           x.item is None, x.item or 0))
    return ItemCheck(sorted(set(result.bad_rows) | {b.row for b in bad}), items,
                     {**result.tokens, "audio": (seen_tokens, want_tokens)},
                     {**result.items, "audio": (n_seen, per_row.numpy())})
