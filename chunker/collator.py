"""WindowCollator: window rows to the padded tensors a model's forward takes, with per-row image-token checks."""

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
from .ops import (
    check_alignment,
    count_image_tokens,
    expected_tokens_per_row,
    image_counts_per_row,
    media_items_per_row,
    segment_sum,
)
from .spans import VIDEO

POLICIES = ("raise", "drop")
# Keys a model's forward takes beside the text; anything else the image processor returns is bookkeeping.
MODEL_MEDIA_KEYS = (
    "pixel_values", "pixel_attention_mask", "image_grid_thw", "image_sizes", "pixel_values_videos",
    "video_grid_thw", "second_per_grid_ts",
)
# How a family's placeholder count per media item follows from the media metadata (data, not branches):
# "fixed" tokens_per_image per pixel block, "grid" t*h*w/merge^2, "tiles" tokens_per_tile per tile/patch,
# "sizes" the processor's own count from the original image size, "patch_grid" (h/P)*(w/P) of the resized size.
COUNT_RULES = {
    "gemma3": "fixed", "paligemma": "fixed", "llava": "fixed",
    "qwen2_vl": "grid", "qwen2_5_vl": "grid", "qwen3_vl": "grid",
    "idefics3": "tiles", "internvl": "tiles",
    "llava_next": "sizes", "llava_onevision": "sizes",
    "pixtral": "patch_grid",
}


@dataclass
class CollateStats:
    """What a collator did: batches and rows seen, rows dropped by reason, with examples."""

    batches: int = 0
    rows: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: list = field(default_factory=list)

    @property
    def dropped_rows(self) -> int:
        return sum(self.dropped.values())

    def as_dict(self) -> dict:
        return {"batches": self.batches, "rows": self.rows, "dropped": dict(self.dropped), "examples": self.examples}


@dataclass
class _Row:
    """One parsed window row."""

    ids: torch.Tensor
    labels: torch.Tensor
    attention: torch.Tensor
    type_ids: torch.Tensor | None
    images: list | None
    tensors: dict
    name: str
    source_index: int | None
    window_index: int | None


class WindowCollator:
    """Collate window rows into the dict of tensors the model's forward accepts, checking every row.

    A drop-in `data_collator` for `transformers.Trainer`, TRL's `SFTTrainer` and Unsloth. Rows come
    from `WindowSplitter` (through `Dataset.map`, `IterableDataset.map`, or built by hand): `input_ids`,
    `labels`, `attention_mask`, the family's type-id column, and the window's media as `images` (PIL
    images, paths, bytes or `{"bytes", "path"}` dicts, as the Arrow Image feature gives them) or as pixel
    tensors already sliced per window (`pixel_values`, `image_grid_thw`, ...). Images are processed by the
    processor's own image processor with the processor's own image settings, the ones that produced
    the token counts. Rows are right-padded; padding gets label -100 and attention 0.

    Before returning, every row's placeholder tokens and media items are compared with what its media
    need (vectorized, one host sync per batch). The model's own check in transformers 5.x sums over the
    batch; this one catches images that went to the wrong row.

    Args:
        processor: the model's transformers processor (tokenizer, image processor, family grammar).
        spec: an `ImageSpanSpec`; detected from `processor` when None.
        pad_to_multiple_of: round the padded length up to a multiple of this.
        on_mismatch: "raise" (default) an `ImageTokenMismatchError` naming every bad row, or "drop" the
            bad rows with exactly their media, count them in `stats` and warn once. Rows whose images
            cannot be decoded or that lack the images their text holds follow the same policy.
        max_length: refuse rows longer than this (a `RowFormatError`); the collator never truncates.
        pad_token_id: the padding id; the tokenizer's pad (or eos) id when None.
        images_kwargs: image-processor settings overriding the processor's defaults; pass the same ones
            the rows were tokenized with.
        check: False skips the per-row check (not recommended).

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
    ):
        if on_mismatch not in POLICIES:
            raise ConfigError(f"on_mismatch={on_mismatch!r} must be one of {POLICIES}")
        if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
            raise ConfigError(f"pad_to_multiple_of={pad_to_multiple_of!r} must be a positive integer (e.g. 8) or None")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ConfigError(f"max_length={max_length!r} must be a positive integer or None")
        if processor is None and spec is None:
            raise ConfigError("pass the model's processor (or a spec, for rows that carry pixel tensors)")
        if spec is None:
            from .families import spec_from_processor

            spec = spec_from_processor(processor)
        self.processor = processor
        self.spec = spec
        self.pad_to_multiple_of = pad_to_multiple_of
        self.on_mismatch = on_mismatch
        self.max_length = max_length
        self.check = check
        tok = getattr(processor, "tokenizer", processor)
        if pad_token_id is None and tok is not None:
            pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.pad_token_id = int(pad_token_id or 0)
        self.vocab_size = len(tok) if tok is not None and hasattr(tok, "__len__") else None
        self.images_kwargs = _image_kwargs(processor, images_kwargs or {})
        self.rule = COUNT_RULES.get(spec.family) or _fallback_rule(spec)
        self.stats = CollateStats()
        self._warned = False
        names = getattr(processor, "model_input_names", None) or ()
        self._keys = tuple(k for k in MODEL_MEDIA_KEYS if not names or k in names or k == "pixel_values")

    # ------------------------------------------------------------------ public API

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
            ImageTokenMismatchError: rows whose tokens do not match their media (on_mismatch="raise").
            ImageDecodeError, ImageCountError: a row's images cannot be read or are missing ("raise").
            RowFormatError, InvalidTokenError: a row that is not a window row of this processor's family.
        """
        rows = _as_row_list(rows)
        if not rows:
            raise EmptyBatchError("the collator got an empty batch: give at least one window row")
        self.stats.batches += 1
        self.stats.rows += len(rows)
        parsed, media, dropped = [], [], []
        for i, row in enumerate(rows):
            p = self._parse(row, i)
            try:
                m = self._media(p)
            except (ImageDecodeError, ImageCountError) as exc:
                if self.on_mismatch == "raise":
                    raise
                dropped.append((p, type(exc).__name__, str(exc)))
                continue
            parsed.append(p)
            media.append(m)
        batch, bad = self._assemble(parsed, media)
        if bad:
            dropped += [(parsed[i], "ImageTokenMismatchError", why) for i, why in bad]
            keep = [i for i in range(len(parsed)) if i not in {b for b, _ in bad}]
            parsed, media = [parsed[i] for i in keep], [media[i] for i in keep]
            batch, _ = self._assemble(parsed, media) if parsed else (None, None)
        if dropped:
            self._record_drops(dropped)
        if batch is None:
            raise EmptyBatchError(
                f"every one of the {len(rows)} rows of the batch was dropped ({dict(Counter(r for _, r, _ in dropped))}); "
                "see collator.stats.examples for why"
            )
        return batch

    # ------------------------------------------------------------------ rows

    def _parse(self, row: dict, i: int) -> _Row:
        if not isinstance(row, dict):
            raise RowFormatError(f"a window row must be a dict of columns, got {type(row).__name__}", row=i)
        src, win = row.get("source_index"), row.get("window_index")
        name = f"{i} (source_index {src}, window_index {win})" if src is not None else str(i)
        if row.get("input_ids") is None:
            raise RowFormatError(
                f"the row has no input_ids (columns {sorted(row)}): map the dataset with WindowSplitter first", row=name
            )
        ids = _as_ids(row["input_ids"], self.vocab_size, name)
        n = ids.shape[0]
        if n == 0:
            raise RowFormatError("input_ids is empty: drop the row before collating", row=name)
        if self.max_length is not None and n > self.max_length:
            raise RowFormatError(
                f"the row holds {n} tokens, more than max_length={self.max_length}: the collator never truncates; "
                f"split rows with WindowSplitter(max_length={self.max_length})",
                row=name,
            )
        labels = _column(row, "labels", n, name)
        if labels is None:
            labels = ids.masked_fill(torch.isin(ids, torch.tensor(self.spec.structural_ids or (-1,))), IGNORE)
        attention = _column(row, "attention_mask", n, name)
        attention = torch.ones(n, dtype=torch.int64) if attention is None else attention
        column = self.spec.type_ids_column
        if column != "mm_token_type_ids" and row.get("mm_token_type_ids") is not None:
            raise RowFormatError(
                f"the row has a 'mm_token_type_ids' column but this collator's processor is of the {self.spec.family} "
                f"family (which uses {column!r}): the rows were made with another model's processor; collate them "
                "with that processor",
                row=name,
            )
        type_ids = None
        if column is not None:
            type_ids = _column(row, column, n, name)
            if type_ids is None:
                type_ids = (ids == self.spec.image_token_id).to(torch.int64)
                if self.spec.video_token_id is not None:
                    type_ids[ids == self.spec.video_token_id] = 2
        tensors = {k: _as_tensor(row[k]) for k in TENSOR_STREAMS if row.get(k) is not None}
        images = row.get("images")
        images = list(images) if images is not None else None
        return _Row(ids, labels, attention, type_ids, images, tensors, name, src, win)

    def _media(self, p: _Row) -> dict:
        """The row's media as tensors (its own, or made from its images), plus per-row unit counts."""
        if p.tensors:
            return _row_units(p.tensors, self.spec, self.rule, self.processor, n_images=_len(p.images))
        if p.images:
            return {"images": [load_image(im, row=p.name) for im in p.images], "n_images": len(p.images)}
        if p.images is None and self.check and bool(torch.isin(p.ids, torch.tensor(self.spec.media_ids)).any()):
            raise ImageCountError(
                "the text holds image tokens but the row has no 'images' and no pixel tensors: keep the "
                "'images' column when mapping (do not remove it) or pass keep_pixels=True to the splitter",
                row=p.name,
            )
        return {"n_images": 0}

    # ------------------------------------------------------------------ batch

    def _assemble(self, parsed: list[_Row], media: list[dict]):
        if not parsed:
            return None, []
        ids = _pad([p.ids for p in parsed], self.pad_token_id, self.pad_to_multiple_of)
        batch = {
            "input_ids": ids,
            "attention_mask": _pad([p.attention for p in parsed], 0, self.pad_to_multiple_of),
            "labels": _pad([p.labels for p in parsed], IGNORE, self.pad_to_multiple_of),
        }
        if self.spec.type_ids_column:
            batch[self.spec.type_ids_column] = _pad([p.type_ids for p in parsed], 0, self.pad_to_multiple_of)
        media = self._process_images(parsed, media)
        tensors, units = _merge_media(media, self.spec)
        bad = []
        if self.check:
            bad = self._check(batch["input_ids"], units, tensors, parsed)
        for key in self._keys:
            if key in tensors:
                batch[key] = tensors[key]
        return batch, bad

    def _process_images(self, parsed, media) -> list[dict]:
        """Run the image processor once over every image of the batch, then give each row its slice."""
        todo = [k for k, m in enumerate(media) if "images" in m]
        if not todo:
            return media
        if self.processor is None:
            raise ConfigError("rows with images need the processor to make pixel values: pass WindowCollator(processor)")
        nested = [media[k]["images"] for k in todo]
        try:
            out = _run_image_processor(self.processor, nested, self.images_kwargs)
        except ChunkerError:
            raise
        except (ValueError, TypeError, OSError) as exc:
            raise ImageDecodeError(
                f"the image processor refused the images of rows {[parsed[k].name for k in todo]}: {exc}"
            ) from exc
        pieces = _split_rows(out, [len(n) for n in nested], self.spec)
        media = list(media)
        for k, piece in zip(todo, pieces):
            media[k] = _row_units(piece, self.spec, self.rule, self.processor, n_images=media[k]["n_images"])
        return media

    def _check(self, input_ids, units, tensors, parsed) -> list:
        spec = self.spec
        seen = list(image_counts_per_row(input_ids, spec))
        expected = [units["tokens"], units["items"]]
        names = ["image tokens", "image items"]
        if spec.video_token_id is not None:
            seen += [count_image_tokens(input_ids, spec.video_token_id), media_items_per_row(input_ids, spec, video=True)]
            expected += [units["video_tokens"], units["video_items"]]
            names += ["video tokens", "video items"]
        result = check_alignment(seen, expected, names)
        if result.ok:
            return []
        bad = [(r, f"row {parsed[r].name}: {result.describe(r)}") for r in result.bad_rows]
        if self.on_mismatch == "raise":
            hint = ""
            if len(bad) == len(parsed) and not int(result.seen[0].sum()):
                hint = (f" No row holds a single {spec.family} image token: the rows were probably made with "
                        "another model's processor; collate them with that processor.")
            raise ImageTokenMismatchError(
                f"{len(bad)} of {len(parsed)} rows have image tokens that do not match their media: "
                + "; ".join(why for _, why in bad)
                + ". The rows were truncated, edited, or given another row's images; re-split them with "
                "WindowSplitter, or pass on_mismatch='drop' to skip such rows." + hint,
                bad_rows=[{"row": r, "source_index": parsed[r].source_index, "window_index": parsed[r].window_index,
                           **{n: (int(result.seen[k, r]), int(result.expected[k, r])) for k, n in enumerate(names)}}
                          for r, _ in bad],
            )
        return bad

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


# ---------------------------------------------------------------------- helpers


def _as_row_list(rows) -> list:
    if isinstance(rows, dict):
        cols = list(rows)
        n = len(rows[cols[0]]) if cols else 0
        return [{c: rows[c][i] for c in cols} for i in range(n)]
    return list(rows)


def _len(x) -> int | None:
    return None if x is None else len(x)


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


def _run_image_processor(processor, nested: list, kwargs: dict) -> dict:
    """Pixel tensors for nested per-row images, made the way the processor's own __call__ makes them."""
    runner = getattr(processor, "_process_images", None)
    if runner is not None:
        out = runner(nested, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
    else:
        out = processor.image_processor(nested, **kwargs)
    return {k: v if isinstance(v, torch.Tensor) else _as_tensor(v) for k, v in dict(out).items()
            if k in TENSOR_STREAMS}


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


def _row_units(tensors: dict, spec, rule: str, processor, n_images=None) -> dict:
    """The row's media tensors, its media items, and per unit (pixel block, tile, image) the tokens it needs."""
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
    units = {"tensors": t, "items": _image_items(t, rule, n_images), "unit_tokens": _image_unit_tokens(t, rule, spec, processor)}
    grid = t.get("video_grid_thw")
    merge = int(spec.extra.get("merge_size", 2))
    grid = grid.reshape(-1, 3).to(torch.int64) if grid is not None else torch.zeros((0, 3), dtype=torch.int64)
    units["video_items"] = int(grid.shape[0])
    units["video_unit_tokens"] = grid.prod(-1) // (merge * merge)
    return units


def _image_items(t, rule, n_images) -> int:
    """Media items the text must hold: pixel blocks for "fixed" families, images otherwise."""
    if "pixel_values" not in t and "image_grid_thw" not in t:
        return 0
    if rule == "fixed":
        return int(t["pixel_values"].shape[0])
    for key in ("image_grid_thw", "image_sizes", "num_patches", "num_crops"):
        if key in t:
            return int(t[key].shape[0]) if t[key].dim() else 1
    return n_images if n_images is not None else int(t["pixel_values"].shape[0])


def _image_unit_tokens(t, rule, spec, processor) -> torch.Tensor:
    """Placeholder tokens each media unit of the row needs, from its metadata (a 1-D int64 tensor)."""
    if "pixel_values" not in t and "image_grid_thw" not in t:
        return torch.zeros(0, dtype=torch.int64)
    if rule == "fixed" and spec.tokens_per_image:
        return torch.full((int(t["pixel_values"].shape[0]),), int(spec.tokens_per_image), dtype=torch.int64)
    if rule == "grid" and "image_grid_thw" in t:
        merge = int(spec.extra.get("merge_size", 2))
        return t["image_grid_thw"].reshape(-1, 3).to(torch.int64).prod(-1) // (merge * merge)
    if rule == "tiles" and spec.tokens_per_tile:
        return torch.full((int(t["pixel_values"].shape[0]),), int(spec.tokens_per_tile), dtype=torch.int64)
    if rule == "sizes" and "image_sizes" in t and processor is not None:
        sizes = [tuple(int(v) for v in s) for s in t["image_sizes"].reshape(-1, 2).tolist()]
        data = processor._get_num_multimodal_tokens(image_sizes=sizes)
        counts = getattr(data, "num_image_tokens", None)
        return torch.tensor(counts if counts is not None else data["num_image_tokens"], dtype=torch.int64)
    if rule == "patch_grid" and "image_sizes" in t and processor is not None:
        step = int(processor.patch_size) * int(getattr(processor, "spatial_merge_size", 1) or 1)
        hw = t["image_sizes"].reshape(-1, 2).to(torch.int64)
        return (hw[:, 0] // step) * (hw[:, 1] // step)
    raise PixelMismatchError(
        f"cannot tell how many image tokens the media of a {spec.family} row need (rule {rule!r}, keys {sorted(t)}): "
        "pass the images, or the pixel tensors with their metadata (grid_thw, image_sizes), or check=False"
    )


def _fallback_rule(spec) -> str:
    if spec.extra.get("token_rule") == "grid":
        return "grid"
    if spec.tokens_per_tile:
        return "tiles"
    return "fixed"


def _merge_media(media: list[dict], spec):
    """Concatenate the rows' media tensors in row order (per-row pixel axis for Idefics3) and their counts."""
    units = {k: torch.tensor([m.get(k, 0) for m in media], dtype=torch.int64) for k in ("items", "video_items")}
    for stream in ("", "video_"):
        per_unit = [m.get(stream + "unit_tokens", torch.zeros(0, dtype=torch.int64)) for m in media]
        units[stream + "tokens"] = expected_tokens_per_row(
            torch.tensor([len(u) for u in per_unit], dtype=torch.int64), tokens_per_item=torch.cat(per_unit)
        )
    per_row = [m.get("tensors", {}) for m in media]
    keys = [k for k in dict.fromkeys(k for t in per_row for k in t) if k in TENSOR_STREAMS]
    out = {}
    for key in keys:
        parts = [t[key] for t in per_row if key in t and t[key].shape[0]]
        if not parts:
            continue
        if spec.extra.get("batch_axis_pixels") and key in ("pixel_values", "pixel_attention_mask"):
            out[key] = _stack_padded([t.get(key) for t in per_row], parts[0])
        else:
            out[key] = _cat_padded(parts)
    return out, units


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

