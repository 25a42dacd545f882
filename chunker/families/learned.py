"""Adapters learned from the processor: a plain bracket grammar read off what the processor makes of a probe.

Many chat VLM processors expand each image placeholder into `open image×N close`, N fixed, or following the
image's size through a tensor the processor returns (`image_grid_thw`) or its own `_get_num_multimodal_tokens`.
For such a processor no code is needed: `learn` runs it on the grammar probe (three images of different sizes, rendered by its own chat
template), reads the bracket ids, the count rule and the pixel rows off its output, and returns an adapter
whose rules live in its spec (`spec.extra["learned"]`), so a pre-tokenized split or a collator rebuilt from
the spec alone keeps them. Anything the probe cannot tie down (image tokens interleaved with other tokens,
counts no tensor explains, a tensor no window slicing is known for) is refused by name, never guessed.
"""

from __future__ import annotations

import weakref

import numpy as np

from ..errors import UnsupportedProcessorError
from ..spans import VIDEO
from ..spec import ImageSpanSpec
from ._base import FamilyAdapter

# Outputs of a processor call that are text, not media: never sliced per window.
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
# Named audio tokens: split when `chunker.families.audio.learn_audio` learns their grammar, else kept out of every
# window cut (see `guarded_ids`).
GUARDED = ("audio_token", "boa_token", "eoa_token", "audio_bos_token", "audio_eos_token")
_LEARNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Attributes under which a processor (or its tokenizer) names the tokens that start and end an image span: when the
# processor writes them, the learned bracket must be them (Emu3's `<|image start|> H*W <|image token|> <image>×N
# <|extra_201|> <|image end|>` would otherwise be learned as its inner pair, leaving the size text outside the span)
DECLARED = {"start": ("image_start_token", "boi_token", "start_image_token"),
            "end": ("image_end_token", "eoi_token", "end_image_token")}


class Learned(FamilyAdapter):
    """A family adapter learned by `learn`; its count rule is `spec.extra["learned"]`: "fixed", "grid" (from
    `image_grid_thw`) or "sizes" (the processor's `_get_num_multimodal_tokens` on each image's size)."""

    def __init__(self, processor, spec: ImageSpanSpec):
        super().__init__(processor, spec)
        self.name = spec.family
        self.count_rule = spec.extra["learned"]

    @property
    def merge_size(self) -> int:
        return int(self.spec.extra.get("merge_size", 1))

    def expected_item_tokens(self, tensors, stream):
        key = "video_grid_thw" if stream == VIDEO else "image_grid_thw"
        if self.count_rule != "grid" or key not in tensors:
            return None
        return (np.asarray(tensors[key]).reshape(-1, 3).prod(-1) // self.merge_size**2).astype(np.int64)

    def item_tokens(self, tensors, tiles=None):
        import torch

        if self.count_rule == "grid" and "image_grid_thw" in tensors:
            grid = torch.as_tensor(tensors["image_grid_thw"]).reshape(-1, 3).to(torch.int64)
            return grid.prod(-1) // self.merge_size**2, False
        if self.count_rule == "sizes" and "image_sizes" in tensors and self.processor is not None:
            sizes = torch.as_tensor(tensors["image_sizes"]).reshape(-1, 2).tolist()
            return torch.tensor(_size_counts(self.processor, sizes), dtype=torch.int64), False
        return super().item_tokens(tensors, tiles)

    def video_item_tokens(self, tensors):
        import torch

        grid = tensors.get("video_grid_thw")
        if self.count_rule != "grid" or grid is None:
            return torch.zeros(0, dtype=torch.int64)
        return torch.as_tensor(grid).reshape(-1, 3).to(torch.int64).prod(-1) // self.merge_size**2


def learn(processor) -> Learned:
    """The adapter of `processor` learned from its output on the grammar probe, when its grammar is a plain bracket.

    Args:
        processor: a transformers processor with an `image_token` and a tokenizer.

    Returns:
        A fresh `Learned` adapter (its learned spec is remembered per processor object), as `adapter_for` gives a
        fresh written adapter: a caller that changes its adapter's spec changes no one else's.

    Raises:
        UnsupportedProcessorError: the grammar is not a plain bracket with counts the probe can tie to a tensor, or
            the processor returns a tensor no window slicing is known for; the message says which.

    Example:
        >>> from chunker.testing import build_processor
        >>> learn(build_processor("qwen2_vl")).spec.extra["learned"]
        'grid'
    """
    try:
        return Learned(processor, _LEARNED[processor])
    except (KeyError, TypeError):
        pass
    spec = _learn_spec(processor)
    try:
        _LEARNED[processor] = spec
    except TypeError:
        pass
    return Learned(processor, spec)


def _size_counts(processor, sizes) -> list[int] | None:
    """Placeholder tokens of images of (height, width) `sizes` by the processor's own `_get_num_multimodal_tokens`."""
    counter = getattr(processor, "_get_num_multimodal_tokens", None)
    try:
        data = counter(image_sizes=[list(s) for s in sizes]) if counter else None
    except Exception:  # noqa: BLE001  (a counter that cannot count these sizes explains nothing)
        return None
    tokens = None if data is None else (getattr(data, "num_image_tokens", None) or data.get("num_image_tokens"))
    return [int(t) for t in tokens] if tokens is not None else None


def guarded_ids(processor) -> tuple[int, ...]:
    """Ids of the processor's audio tokens (`GUARDED`), for a spec's `body_ids`.

    Used where no audio grammar is known (`learn_audio` found none): these ids may then only appear inside a span, so
    a row holding them is refused by the span finder (a stray media token, `SpanError`) instead of cut through its
    audio.
    """
    tok = processor.tokenizer
    names = (getattr(processor, n, None) or getattr(tok, n, None) for n in GUARDED)
    ids = {tok.convert_tokens_to_ids(t) for t in names if isinstance(t, str) and t}
    return tuple(sorted(i for i in ids if i is not None and i != tok.unk_token_id))


def _declared(processor, names) -> dict[str, int]:
    """Token text -> id of the image-edge tokens `processor` (or its tokenizer) names under `names`."""
    tok = processor.tokenizer
    texts = {getattr(processor, n, None) or getattr(tok, n, None) for n in names}
    ids = {t: tok.convert_tokens_to_ids(t) for t in texts if isinstance(t, str) and t}
    return {t: int(i) for t, i in ids.items() if i is not None and i != tok.unk_token_id}


def family_name(processor) -> str:
    """The learned family's name: the processor class's name without "Processor", in lower case."""
    names = [c.__name__ for c in type(processor).__mro__ if c.__name__.endswith("Processor")]
    return (names[0] if names else type(processor).__name__).removesuffix("Processor").lower()


def _refuse(processor, why: str):
    raise UnsupportedProcessorError(
        f"no family grammar for processor class {type(processor).__name__}, and none can be learned from it: {why}. "
        "Pass spec=chunker.ImageSpanSpec(family='custom', kind=..., image_token_id=..., ...) describing how its "
        "images appear in input_ids"
    )


def _learn_spec(processor) -> ImageSpanSpec:
    from PIL import Image

    from ..media import TENSOR_STREAMS
    from .audio import learn_audio
    from .probe import PROBE_SIZES, _probe_text

    tok = getattr(processor, "tokenizer", None)
    token = getattr(processor, "image_token", None)
    if tok is None or not token:
        _refuse(processor, "it has no tokenizer and image_token to expand")
    images = [Image.new("RGB", (w, h), (40 * k, 90, 160)) for k, (h, w) in enumerate(PROBE_SIZES)]
    try:
        text = _probe_text(processor, token, len(images))
        images = images[: text.count(token)]
        out = processor(text=[text], images=[images], return_tensors="np")
    except Exception as exc:  # noqa: BLE001  (whatever the processor raises, it refused the probe)
        _refuse(processor, f"it refused the probe ({type(exc).__name__}: {exc})")
    if not images:
        _refuse(processor, f"its chat template renders no {token!r} for an image item")
    unknown = sorted(k for k in out if k not in TEXT_KEYS and k not in TENSOR_STREAMS)
    if unknown:
        _refuse(processor, f"its processor returns {unknown}, tensors no window slicing is known for")
    ids = np.asarray(out["input_ids"])[0].astype(np.int64)
    # the placeholder the features replace: the most frequent of the named image ids (the text's image_token may be
    # another: Gemma 3's is its open bracket since 5.15)
    named = {getattr(processor, "image_token_id", None), getattr(tok, "image_token_id", None),
             tok.convert_tokens_to_ids(token)} - {None, tok.unk_token_id}
    image_id = max(sorted(named), key=lambda i: int((ids == i).sum()))
    is_image = ids == image_id
    edges = np.diff(np.concatenate([[0], is_image.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    n = len(images)
    if len(starts) != n:
        _refuse(processor, f"the probe's {n} images gave {len(starts)} runs of {token!r} (image tokens interleaved "
                           "with other tokens: tiles, rows or query tokens), not one bracket each")
    counts = ends - starts
    special = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}) or {})
    before = set(ids[starts - 1].tolist()) if starts.min() > 0 else set()
    after = set(ids[ends].tolist()) if ends.max() < len(ids) else set()
    if not (len(before) == len(after) == 1 and before != after and (before | after) <= special):
        _refuse(processor, f"its runs of {token!r} are not between one special open and one special close token")
    for edge, seen in (("start", before), ("end", after)):
        named = {t: i for t, i in _declared(processor, DECLARED[edge]).items() if i in set(ids.tolist())}
        if named and not set(named.values()) & seen:
            _refuse(processor, f"it names {sorted(named)} as an image's {edge}, but its runs of {token!r} "
                               f"{'open after' if edge == 'start' else 'close with'} "
                               f"{tok.convert_ids_to_tokens(sorted(seen))}: the span holds more than one bracket pair "
                               "(text inside it, as Emu3's size prefix), which no learned bracket can keep whole")
    extra, rules = {}, {}
    grid = out.get("image_grid_thw")
    merge = int(getattr(getattr(processor, "image_processor", None), "merge_size", 1) or 1)
    if len(set(counts.tolist())) == 1 and grid is None:
        extra["learned"] = "fixed"
    elif grid is not None and (np.asarray(grid).reshape(-1, 3).prod(-1) // merge**2 == counts).all():
        extra.update(learned="grid", merge_size=merge)
        rules = {"pixel_values": ("grid", 0), "pixel_values_videos": ("grid", 0)}
    elif _size_counts(processor, PROBE_SIZES[:n]) == counts.tolist():
        extra["learned"] = "sizes"
    else:
        _refuse(processor, f"its image spans hold {counts.tolist()} tokens for images of (height, width) "
                           f"{PROBE_SIZES[:n]}, which no tensor it returns explains")
    pixels = out.get("pixel_values")
    want = int(np.asarray(grid).reshape(-1, 3).prod(-1).sum()) if extra["learned"] == "grid" else n
    if pixels is not None and np.asarray(pixels).shape[0] != want:
        _refuse(processor, f"its pixel_values have {np.asarray(pixels).shape[0]} rows for {n} images, not {want}")
    extra["pixel_rules"] = rules
    # a processor that names mm_token_type_ids among its model's inputs but returns it only when asked (Cosmos3-Edge):
    # its model computes 3-D positions from it and refuses image tensors without it
    names = getattr(processor, "model_input_names", ()) or ()
    column = "mm_token_type_ids" if "mm_token_type_ids" in out or "mm_token_type_ids" in names else None
    if column is None and "token_type_ids" in out and np.asarray(out["token_type_ids"]).any():
        column = "token_type_ids"
    video = getattr(processor, "video_token", None)
    video_id = tok.convert_tokens_to_ids(video) if video else None
    audio, audio_rule = learn_audio(processor) or ({}, None)  # audio whose grammar is learned is split, not guarded
    if audio_rule is not None:
        extra["audio_count"] = audio_rule
    return ImageSpanSpec(
        family=family_name(processor),
        kind="bracket",
        image_token_id=int(image_id),
        video_token_id=None if video_id in (None, tok.unk_token_id) else int(video_id),
        open_ids=(before.pop(),),
        close_ids=(after.pop(),),
        body_ids=tuple(i for i in guarded_ids(processor) if audio_rule is None),
        **audio,
        tokens_per_image=int(counts[0]) if extra["learned"] == "fixed" else None,
        type_ids_column=column,
        bos_id=tok.bos_token_id if tok.bos_token_id is not None and ids[0] == tok.bos_token_id else None,
        extra=extra,
    )
