"""Media items of a row: decoding images, counting rows of pixel tensors per item, slicing them per window."""

from __future__ import annotations

import io
import os

import numpy as np

from .errors import ImageCountError, ImageDecodeError, ImageTokenCountError, PixelMismatchError
from .spans import IMAGE, VIDEO, Spans

# Which media stream each known tensor belongs to, and how many leading rows one item owns:
# "one" a row per item, "grid" prod(grid_thw) rows, "crops" 1 + num_crops rows, "tiles" count/tokens_per_tile rows.
TENSOR_STREAMS = {
    "pixel_values": IMAGE,
    "pixel_attention_mask": IMAGE,
    "image_grid_thw": IMAGE,
    "image_sizes": IMAGE,
    "num_crops": IMAGE,
    "num_patches": IMAGE,
    "pixel_values_videos": VIDEO,
    "video_grid_thw": VIDEO,
    "second_per_grid_ts": VIDEO,
}
PER_ITEM_KEYS = ("image_grid_thw", "image_sizes", "num_crops", "num_patches", "video_grid_thw", "second_per_grid_ts")


def load_image(value, base_dir=None, *, row=None):
    """A PIL RGB image from a PIL image, a path (relative to `base_dir`), bytes, or a {"bytes", "path"} dict.

    Raises:
        ImageDecodeError: the value cannot be read or decoded; the message names it and the row.
    """
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    try:
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            img = Image.open(io.BytesIO(value))
        elif isinstance(value, (str, os.PathLike)):
            path = os.fspath(value)
            if base_dir and not os.path.isabs(path):
                path = os.path.join(base_dir, path)
            img = Image.open(path)
        else:
            raise TypeError(f"an image must be a PIL image, a path, bytes or a dict, not {type(value).__name__}")
        img.load()
    except (OSError, TypeError, ValueError) as exc:
        shown = repr(value)[:80]
        raise ImageDecodeError(
            f"cannot decode image {shown}: {exc}. Fix or remove the image, or pass on_error='skip'", row=row
        ) from exc
    return img.convert("RGB") if img.mode != "RGB" else img


def rows_per_item(key: str, rule: str, tensors: dict, counts: np.ndarray, spec, *, row=None) -> np.ndarray:
    """How many leading rows of `tensors[key]` each media item of its stream owns."""
    n = len(counts)
    if key in PER_ITEM_KEYS or rule == "one":
        return np.ones(n, dtype=np.int64)
    if rule == "grid":
        grid = np.asarray(tensors["video_grid_thw" if TENSOR_STREAMS[key] == VIDEO else "image_grid_thw"])
        return grid.reshape(-1, 3).prod(-1).astype(np.int64)
    if rule == "crops":
        if "num_crops" not in tensors:
            return np.ones(n, dtype=np.int64)
        return 1 + np.asarray(tensors["num_crops"], dtype=np.int64).reshape(-1)
    if rule == "tiles":
        per = spec.tokens_per_tile
        if not per or (counts % per).any():
            raise ImageTokenCountError(
                f"image spans hold {counts.tolist()} tokens, not whole tiles of {per} tokens: the row was made by "
                "another processor; tokenize with this processor",
                row=row,
            )
        return counts // per
    raise PixelMismatchError(f"unknown pixel slicing rule {rule!r} for {key}", row=row)


def slice_plan(spec, tensors: dict, spans: Spans, *, row=None) -> dict:
    """Per tensor key: (axis, offsets) where item k owns rows offsets[k]:offsets[k+1]; checks the totals.

    Raises:
        ImageCountError: more or fewer media items in the tensors than spans in the text.
        PixelMismatchError: tensors whose row counts disagree with the spans.
    """
    rules = spec.extra.get("pixel_rules", {})
    plan = {}
    for key, value in tensors.items():
        if key not in TENSOR_STREAMS:
            continue
        stream = TENSOR_STREAMS[key]
        counts = spans.counts[spans.kinds == stream]
        rule, axis = rules.get(key, ("one", 0))
        arr = np.asarray(value)
        if key in PER_ITEM_KEYS:
            arr = arr.reshape(-1, *arr.shape[1:]) if arr.ndim else arr.reshape(-1)
        per = rows_per_item(key, rule, tensors, counts, spec, row=row)
        have = arr.shape[axis] if arr.ndim > axis else 0
        if key in PER_ITEM_KEYS and have != len(counts):
            kind = "images" if stream == IMAGE else "videos"
            raise ImageCountError(
                f"{key} describes {have} {kind} but the text holds {len(counts)} {kind[:-1]} spans: give exactly one "
                f"entry per {kind[:-1]}, in order",
                row=row,
            )
        if int(per.sum()) != have:
            raise PixelMismatchError(
                f"{key} has {have} rows along axis {axis} but the {len(counts)} media spans need {int(per.sum())} "
                f"({per.tolist()} per item): the pixels were made for other images or another processor",
                row=row,
            )
        plan[key] = (axis, np.concatenate([[0], np.cumsum(per)]))
    return plan


def take_items(tensors: dict, plan: dict, image_items: np.ndarray, video_items: np.ndarray) -> dict:
    """The rows of every planned tensor that belong to the chosen items (image and video indices, in order)."""
    out = {}
    for key, (axis, offsets) in plan.items():
        items = video_items if TENSOR_STREAMS[key] == VIDEO else image_items
        arr = np.asarray(tensors[key])
        if arr.ndim == 0:
            arr = arr.reshape(1)
        idx = np.concatenate([np.arange(offsets[k], offsets[k + 1]) for k in items]) if len(items) else np.zeros(0, int)
        out[key] = np.take(arr, idx.astype(np.int64), axis=axis)
    return out


def check_counts(spec, tensors: dict, spans: Spans, *, row=None, expected=None) -> None:
    """Raise `ImageTokenCountError` when a span holds another number of tokens than its item needs.

    Args:
        expected: per stream (IMAGE, VIDEO), the tokens each item needs from its metadata (the family
            adapter's `expected_item_tokens`), or None where not derivable.
    """
    per = spec.tokens_per_image
    if per:
        image_counts = spans.counts[spans.kinds == IMAGE]
        bad = np.flatnonzero(image_counts % per if spec.group_crops else image_counts != per)
        if len(bad):
            idx = np.flatnonzero(spans.kinds == IMAGE)[int(bad[0])]
            raise ImageTokenCountError(
                f"image span [{int(spans.starts[idx])}, {int(spans.ends[idx])}) holds {int(spans.counts[idx])} "
                f"image tokens but this family uses {per} per image: the row was made by another processor or "
                "edited by hand; tokenize with this processor",
                row=row,
            )
    for stream in (IMAGE, VIDEO):
        want = (expected or {}).get(stream)
        if want is None:
            continue
        have = spans.counts[spans.kinds == stream]
        if len(want) != len(have):
            raise ImageCountError(
                f"the text holds {len(have)} media spans but the pixel metadata describes {len(want)} items: give "
                "one image per placeholder, in order",
                row=row,
            )
        bad = np.flatnonzero(want != have)
        if len(bad):
            k = int(bad[0])
            idx = np.flatnonzero(spans.kinds == stream)[k]
            raise ImageTokenCountError(
                f"media span [{int(spans.starts[idx])}, {int(spans.ends[idx])}) holds {int(have[k])} placeholder "
                f"tokens but its item needs {int(want[k])}: the text and pixels come from different processor "
                "settings; tokenize and process images with the same processor",
                row=row,
            )
