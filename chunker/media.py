"""Media items of a row: decoding images and audio, counting rows of media tensors per item, slicing them per window."""

from __future__ import annotations

import io
import os

import numpy as np

from .errors import ImageCountError, ImageDecodeError, ImageTokenCountError, PixelMismatchError
from .spans import AUDIO, IMAGE, VIDEO, Spans

# Which media stream each known tensor belongs to, and how many leading rows one item owns:
# "one" a row per item, "grid" prod(grid_thw) rows, "crops" 1 + num_crops rows, "tiles" count/tokens_per_tile rows,
# "frames" num_frames_per_video rows.
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
    # audio (Gemma 4, Gemma 3n): one padded row of log-mel frames and one frame mask row per audio item
    "input_features": AUDIO,
    "input_features_mask": AUDIO,
}
_NOUNS = {IMAGE: "media", VIDEO: "media", AUDIO: "audio"}
# the frame mask of an audio item's features: Gemma 4 / 3n, Qwen-Omni (`feature_attention_mask`)
AUDIO_MASKS = ("input_features_mask", "feature_attention_mask")
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


def load_audio(value, sampling_rate: int | None = None, *, row=None) -> np.ndarray:
    """A 1-D float32 waveform from an array or list of samples, a `{"array", "sampling_rate"}` dict (what
    `datasets.Audio` decodes to), or a PCM WAV file given as a path, bytes or a `{"bytes", "path"}` dict.

    Args:
        value: the audio as a row gives it.
        sampling_rate: the rate the feature extractor expects; audio at another rate is refused, never resampled.
        row: the row's name for errors.

    Raises:
        ImageDecodeError: the audio cannot be read, is not 1-D (mono), is empty, or has another sampling rate.

    Example:
        >>> load_audio({"array": [0.0, 0.5, -0.5], "sampling_rate": 16000}, 16000).tolist()
        [0.0, 0.5, -0.5]
    """
    rate = None
    try:
        if isinstance(value, dict) and value.get("array") is not None:
            value, rate = value["array"], value.get("sampling_rate")
        elif isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray, str, os.PathLike)):
            value, rate = _read_wav(value)
        wave = np.asarray(value, dtype=np.float32)
    except (OSError, TypeError, ValueError, EOFError) as exc:
        raise ImageDecodeError(
            f"cannot decode audio {repr(value)[:80]}: {exc}. Give a mono waveform (array of samples, or "
            "{'array', 'sampling_rate'}) or a PCM WAV file, or pass on_error='skip'", row=row,
        ) from exc
    if wave.ndim != 1 or not wave.size:
        raise ImageDecodeError(
            f"audio of shape {wave.shape} is not a non-empty mono waveform: give one 1-D array of samples per audio "
            "item (average the channels of a stereo recording)", row=row,
        )
    if rate is not None and sampling_rate is not None and int(rate) != int(sampling_rate):
        raise ImageDecodeError(
            f"audio sampled at {rate} Hz but the feature extractor expects {sampling_rate} Hz: resample it before "
            "splitting (chunker never resamples)", row=row,
        )
    return wave


def _read_wav(source):
    """(float32 samples in [-1, 1], sampling rate) of a PCM WAV file (path or bytes), mono or averaged."""
    import wave

    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    with wave.open(handle, "rb") as f:
        width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
        raw = f.readframes(f.getnframes())
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}.get(width)
    if dtype is None:
        raise ValueError(f"{8 * width}-bit WAV samples are not supported (8, 16 or 32-bit PCM are)")
    samples = np.frombuffer(raw, dtype=dtype).astype(np.float32)
    samples = (samples - 128) / 128 if width == 1 else samples / float(np.iinfo(dtype).max)
    return samples.reshape(-1, channels).mean(1), rate


def audio_item_tokens(spec, tensors: dict) -> np.ndarray | None:
    """Placeholder tokens each audio item needs, from its features by the family's rule (`spec.extra["audio_count"]`),
    or None when the tensors or the rule do not say.

    Rules (data on the spec, read off the processor when its adapter is built):
        {"rule": "halve", "times": n}: the frame mask (`input_features_mask`) halved n times as the processor's
            `replace_audio_token` does it (Gemma 4: `mask[::2][:t_out]` twice, the encoder's two stride-2 convs),
            its valid frames counted.
        {"rule": "fixed", "tokens": n}: n per item, whatever its length (Gemma 3n's `audio_seq_length`).
        {"rule": "sizes", "key": k}: the feature extractor's own per-item counts `tensors[k]` (Phi-4-multimodal's
            `audio_embed_sizes`).
        {"rule": "conv", "layers": [[kernel, stride, padding], ...], "chunk": c}: the valid frames of the frame mask
            (`input_features_mask`, or `feature_attention_mask`) through each layer's output-length formula
            (Qwen2.5-Omni: conv then pooling); with "chunk", every whole chunk of c frames and the rest separately
            (Qwen3-Omni's chunked encoder).

    Example:
        >>> spec = type("S", (), {"extra": {"audio_count": {"rule": "halve", "times": 2}}})()
        >>> mask = np.array([[1] * 19 + [0] * 31, [1] * 9 + [0] * 41])   # 19 and 9 valid frames
        >>> audio_item_tokens(spec, {"input_features_mask": mask}).tolist()
        [5, 3]
        >>> spec.extra["audio_count"] = {"rule": "conv", "layers": [[3, 2, 1], [2, 2, 0]]}   # Qwen2.5-Omni
        >>> audio_item_tokens(spec, {"feature_attention_mask": mask}).tolist()
        [5, 2]
    """
    rule = spec.extra.get("audio_count")
    if rule is None:
        return None
    if rule["rule"] == "sizes":
        sizes = tensors.get(rule["key"])
        return None if sizes is None else np.asarray(sizes, dtype=np.int64).reshape(-1)
    if rule["rule"] == "fixed":
        n = _audio_items(tensors)
        return None if n is None else np.full(n, int(rule["tokens"]), dtype=np.int64)
    mask = next((tensors[k] for k in AUDIO_MASKS if tensors.get(k) is not None), None)
    if mask is None:
        return None
    mask = np.asarray(mask).astype(bool)
    mask = mask.reshape(-1, mask.shape[-1]) if mask.ndim else mask.reshape(0, 0)
    if rule["rule"] == "conv":
        frames = mask.sum(1).astype(np.int64)
        chunk = int(rule.get("chunk") or 0)
        whole, rest = (frames // chunk, frames % chunk) if chunk else (0, frames)
        return _conv_length(rest, rule["layers"]) + whole * (_conv_length(np.int64(chunk), rule["layers"]) if chunk else 0)
    for _ in range(int(rule["times"])):
        t = mask.shape[1]
        mask = mask[:, ::2][:, : (t + 2 - 3) // 2 + 1]
    return mask.sum(1).astype(np.int64)


def _conv_length(frames, layers):
    """Output length of `frames` through layers of (kernel, stride, padding), as torch's Conv1d / AvgPool1d give it."""
    for kernel, stride, padding in layers:
        frames = (frames + 2 * padding - kernel) // stride + 1
    return frames


def _audio_items(tensors: dict) -> int | None:
    for key in (*AUDIO_MASKS, "input_features"):
        if tensors.get(key) is not None:
            return int(np.asarray(tensors[key]).shape[0])
    return None


def rows_per_item(key: str, rule: str, tensors: dict, counts: np.ndarray, spec, *, row=None) -> np.ndarray:
    """How many leading rows of `tensors[key]` each media item of its stream owns."""
    n = len(counts)
    if key in PER_ITEM_KEYS or rule == "one":
        return np.ones(n, dtype=np.int64)
    if rule == "grid":
        grid = np.asarray(tensors["video_grid_thw" if TENSOR_STREAMS[key] == VIDEO else "image_grid_thw"])
        return grid.reshape(-1, 3).prod(-1).astype(np.int64)
    if rule == "frames":  # one row per frame, the frames of all videos along one axis (Gemma 4)
        frames = tensors.get("num_frames_per_video")
        return np.ones(n, dtype=np.int64) if frames is None else np.asarray(frames, dtype=np.int64).reshape(-1)
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
            kind = {IMAGE: "images", VIDEO: "videos", AUDIO: "audio items"}[stream]
            raise ImageCountError(
                f"{key} describes {have} {kind} but the text holds {len(counts)} {kind[:-1]} spans: give exactly one "
                f"entry per {kind[:-1]}, in order",
                row=row,
            )
        if int(per.sum()) != have:
            made = ("the audio features were made for other audio" if stream == AUDIO else
                    "the pixels were made for other images")
            raise PixelMismatchError(
                f"{key} has {have} rows along axis {axis} but the {len(counts)} {_NOUNS[stream]} spans need "
                f"{int(per.sum())} ({per.tolist()} per item): {made} or another processor",
                row=row,
            )
        plan[key] = (axis, np.concatenate([[0], np.cumsum(per)]))
    return plan


def take_items(tensors: dict, plan: dict, image_items: np.ndarray, video_items: np.ndarray,
               audio_items: np.ndarray | None = None) -> dict:
    """The rows of every planned tensor that belong to the chosen items (image, video and audio indices, in order)."""
    none = np.zeros(0, np.int64)
    chosen = {IMAGE: image_items, VIDEO: video_items, AUDIO: none if audio_items is None else audio_items}
    out = {}
    for key, (axis, offsets) in plan.items():
        items = chosen[TENSOR_STREAMS[key]]
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
            adapter's `expected_item_tokens`), or None where not derivable. AUDIO comes from the features by the
            spec's rule (`audio_item_tokens`) when not given.
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
    expected = dict(expected or {})
    if expected.get(AUDIO) is None and spec.audio_token_id is not None:
        expected[AUDIO] = audio_item_tokens(spec, tensors)
    for stream in (IMAGE, VIDEO, AUDIO):
        want = expected.get(stream)
        if want is None:
            continue
        have = spans.counts[spans.kinds == stream]
        noun, media = ("audio", "audio features") if stream == AUDIO else ("image", "pixel metadata")
        if len(want) != len(have):
            raise ImageCountError(
                f"the text holds {len(have)} {noun} spans but the {media} describe {len(want)} items: give one "
                f"{noun} item per placeholder, in order",
                row=row,
            )
        bad = np.flatnonzero(want != have)
        if len(bad):
            k = int(bad[0])
            idx = np.flatnonzero(spans.kinds == stream)[k]
            raise ImageTokenCountError(
                f"media span [{int(spans.starts[idx])}, {int(spans.ends[idx])}) holds {int(have[k])} placeholder "
                f"tokens but its item needs {int(want[k])} ({noun} {k}, from its {media}): the text and the media "
                f"come from different processor settings; tokenize and process each {noun} with the same processor",
                row=row,
            )
