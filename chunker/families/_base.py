"""The family adapter: everything one model family needs beyond the generic grammar, in one object.

A family is a subclass of `FamilyAdapter` that declares its tokens and span shape as class attributes and
overrides a hook where it differs (transformers' way: `_get_num_multimodal_tokens`, `replace_image_token`).
The splitter, the sizes expander and the collator ask the adapter; nothing else branches on the family.
Adding a family is one subclass, registered with `@register`, and one line in the shared contract test.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, PixelMismatchError, UnsupportedProcessorError
from ..spec import ImageSpanSpec

ADAPTERS: list[type[FamilyAdapter]] = []


def register(cls):
    """Class decorator: make `cls` one of the families `adapter_for` detects, and its media tensors known
    (`cls.tensor_streams` joins `chunker.media.TENSOR_STREAMS`, which every stage reads)."""
    from ..media import TENSOR_STREAMS

    TENSOR_STREAMS.update(dict(cls.tensor_streams))
    ADAPTERS.append(cls)
    return cls


class FamilyAdapter:
    """One model family: its grammar (as an `ImageSpanSpec`), its media tensors and its count rules.

    Class attributes (data) name tokens as strings; "attr:NAME" reads `tokenizer.NAME` (or `processor.NAME`).

    Attributes:
        name: the family name, e.g. "gemma3".
        classes: processor class names that belong to the family (matched along the class's MRO).
        kind: the span shape (`ImageSpanSpec.kind`).
        image, video, open, close, body, end, global_: token references of the grammar.
        tokens_per_image, tokens_per_tile: "processor:ATTR" or "sizes" (asked from the processor) or None.
        type_ids_column: the row column of media type ids ("token_type_ids", "mm_token_type_ids") or None.
        bos: windows after the first repeat the tokenizer's BOS when the row starts with it.
        prefix_media: media live only in a leading prefix that every window repeats (PaliGemma).
        pixel_rules: (tensor key, rule, axis) triples: how many leading rows of the tensor each item owns.
        tensor_streams: (tensor key, stream) pairs: media tensors of the family beyond the common ones and their
            stream (IMAGE, VIDEO); one row per item unless `pixel_rules` says otherwise (Gemma 4's `image_position_ids`).
        count_rule: how the collator derives each item's placeholder count from its media metadata.
        sizes_recipe: how the sizes expander stands in for the image processor's output (None: refused,
            `sizes_refused` says why).

    Args:
        processor: the family's processor.
    """

    name = ""
    classes: tuple[str, ...] = ()
    kind = "bracket"
    image: str | None = None
    video: str | None = None
    open: tuple[str, ...] = ()
    close: tuple[str, ...] = ()
    body: tuple[str, ...] = ()
    end: str | None = None
    global_: str | None = None
    tile_tokens = False
    tokens_per_image: str | None = None
    tokens_per_tile: str | None = None
    type_ids_column: str | None = None
    bos = False
    prefix_media = False
    group_crops = False
    batch_axis_pixels = False
    pixel_rules: tuple = ()
    tensor_streams: tuple = ()
    count_rule = "fixed"
    sizes_recipe: str | None = None
    sizes_refused = "no size recipe is known for it"

    def __init__(self, processor, spec: ImageSpanSpec | None = None):
        self.processor = processor
        self.spec = spec if spec is not None else self.build_spec()

    @classmethod
    def custom(cls, processor, spec: ImageSpanSpec) -> FamilyAdapter:
        """A hook-less adapter for a hand-made spec: the processor tokenizes, the spec is the whole grammar."""
        adapter = cls(processor, spec)
        adapter.name = spec.family
        return adapter

    @classmethod
    def rank(cls, processor) -> int | None:
        """How close the family's class is to `processor`'s own class in its MRO (0: the class itself)."""
        names = [c.__name__ for c in type(processor).__mro__]
        found = [names.index(c) for c in cls.classes if c in names]
        return min(found) if found else None

    # ------------------------------------------------------------------ grammar

    def build_spec(self) -> ImageSpanSpec:
        """The family grammar with ids read from the processor's tokenizer."""
        processor = self.processor
        tok = getattr(processor, "tokenizer", None)
        if tok is None:
            raise UnsupportedProcessorError(
                f"{type(processor).__name__} has no tokenizer: pass the model's processor, not its image processor"
            )
        token = lambda ref: token_id(processor, ref, self.name)
        optional = lambda ref: None if ref is None else token(ref)
        return ImageSpanSpec(
            family=self.name,
            kind=self.kind,
            image_token_id=token(self.image),
            video_token_id=optional(self.video),
            open_ids=tuple(token(t) for t in self.open),
            close_ids=tuple(token(t) for t in self.close),
            body_ids=tuple(token(t) for t in self.body),
            end_id=optional(self.end),
            tile_ids=self.tile_ids(),
            global_id=optional(self.global_),
            tokens_per_image=self.number(self.tokens_per_image),
            tokens_per_tile=self.number(self.tokens_per_tile),
            type_ids_column=self.type_ids_column,
            bos_id=tok.bos_token_id if self.bos else None,
            prefix_media=self.prefix_media,
            group_crops=self.group_crops,
            extra=self.extra(),
        )

    def tile_ids(self) -> tuple[int, ...]:
        return ()

    def extra(self) -> dict:
        """Family data the transformers edge reads from the spec (pixel slicing rules)."""
        out = {"pixel_rules": {key: (rule, axis) for key, rule, axis in self.pixel_rules}}
        if self.batch_axis_pixels:
            out["batch_axis_pixels"] = True
        return out

    def number(self, ref):
        if ref is None:
            return None
        if ref == "sizes":
            counter = getattr(self.processor, "_get_num_multimodal_tokens", None)
            if counter is None:
                return None
            data = counter(image_sizes=[(336, 336)])
            tokens = getattr(data, "num_image_tokens", None) or data.get("num_image_tokens")
            return int(tokens[0]) if tokens else None
        return int(getattr(self.processor, ref.split(":", 1)[1]))

    # ------------------------------------------------------------------ hooks

    def row_tensors(self, tensors: dict, images: list, processor_kwargs: dict) -> dict:
        """The processor's media tensors of one row as the splitter keeps them (a hook: add or reshape)."""
        return tensors

    def process(self, processor, **kwargs):
        """`processor`'s output for one call (`kwargs` ask `return_tensors="np"`), its tensors numpy arrays (a hook:
        Llama 4's image processor makes bfloat16 pixels, which numpy cannot hold). The processor is passed in: an
        adapter rebuilt from a spec may have none."""
        return processor(**kwargs)

    def items(self, spans, tensors: dict, images, *, row=None):
        """The media items of a row from its spans (a hook: group crops, cut back-to-back runs)."""
        return spans

    def expected_item_tokens(self, tensors: dict, stream: int):
        """Placeholder tokens each item of `stream` needs according to its metadata, or None (a hook)."""
        return

    def item_tokens(self, tensors: dict, tiles=None):
        """Placeholder tokens each image item of a window needs, from its media tensors (the collator's check).

        Args:
            tensors: the window's media tensors (torch), e.g. pixel_values, image_grid_thw, image_sizes.
            tiles: per image, the tiles the processor made of it (Idefics3), when known.

        Returns:
            (1-D int64 tensor of counts, whether each entry is one tile of an image rather than a whole image).

        Raises:
            PixelMismatchError: the tensors do not say how many tokens their items need.
        """
        import torch

        per_image, per_tile = self.spec.tokens_per_image, self.spec.tokens_per_tile
        if per_image and "pixel_values" in tensors:  # a fixed count per pixel block (a Gemma 3 crop is one)
            return torch.full((int(tensors["pixel_values"].shape[0]),), int(per_image), dtype=torch.int64), False
        if per_tile and "pixel_values" in tensors:
            if tiles is not None:
                return torch.as_tensor(tiles, dtype=torch.int64).reshape(-1) * int(per_tile), False
            # pixel rows without per-image tile counts: each tile is a unit, a span must hold whole ones
            return torch.full((int(tensors["pixel_values"].shape[0]),), int(per_tile), dtype=torch.int64), True
        raise PixelMismatchError(
            f"cannot tell how many image tokens the media of a {self.name} row need (keys {sorted(tensors)}): pass "
            "the images, or the pixel tensors with their metadata (grid_thw, image_sizes), or check=False"
        )

    def position_ids(self, batch: dict, starts, model=None):
        """`position_ids` of a packed batch: positions restart at every window (a hook: Qwen-VL's 3-D rope).

        transformers builds a block-diagonal causal mask from these when `attention_mask` is None, so no token
        attends across windows.

        Args:
            batch: the collated batch (`input_ids`, the type-id column, media tensors), `(B, L)` rows.
            starts: `(B, L)` bool, True where a window (or a row's padding) starts (`chunker.ops.segment_starts`).
            model: the model, for families whose positions its own function computes; else None.

        Returns:
            The tensor the model's forward takes as `position_ids`: `(B, L)` int64 here.
        """
        from ..ops import segment_positions

        return segment_positions(starts)

    def video_item_tokens(self, tensors: dict):
        """Placeholder tokens each video item of a window needs (1-D int64 tensor; none by default)."""
        import torch

        return torch.zeros(0, dtype=torch.int64)

    def image_outputs(self, out: dict, images_per_row: list) -> dict:
        """The image processor's tensors for several rows' images, one entry per image (or pixel block) along axis 0
        (a hook: Mllama's image processor puts rows first and pads images per row).

        Args:
            out: the image processor's tensors for the nested images of a batch's rows.
            images_per_row: how many images each of those rows holds.
        """
        return out

    def model_inputs(self, batch: dict, media) -> dict:
        """The media tensors the model's forward takes for a collated batch (a hook: Mllama's per-row image axis and
        its `cross_attention_mask`, built from the batch's own tokens).

        Args:
            batch: the padded batch (`input_ids`, `attention_mask`, `labels`, the type-id column), `(B, L)` rows.
            media: the batch's `chunker.collator.BatchMedia`, one entry per batch row.

        Returns:
            dict of tensors to add to the batch.
        """
        return media.model_inputs(self.processor)

    def check_sizes(self, expander, refuse) -> None:
        """Refuse (call `refuse(why)`) when the sizes recipe cannot be exact with these settings (a hook)."""

    def size_inputs(self, expander, sizes):
        """The stand-in for the image processor's output that `replace_image_token` reads (a hook)."""
        raise ConfigError(f"unknown sizes recipe {self.sizes_recipe!r} of the {self.name} family")


def token_id(processor, ref: str, family: str) -> int:
    """The id of a grammar token given as text, or as "attr:NAME" of the tokenizer / processor."""
    tok = processor.tokenizer
    if ref.startswith("attr:"):
        text = getattr(tok, ref[5:], None) or getattr(processor, ref[5:], None)
    else:
        text = ref
    if not text:
        raise UnsupportedProcessorError(f"{type(processor).__name__}: its tokenizer has no {ref[5:]}")
    tid = tok.convert_tokens_to_ids(text)
    if tid is None or (tok.unk_token_id is not None and tid == tok.unk_token_id):
        raise UnsupportedProcessorError(
            f"{type(processor).__name__}: token {text!r} of the {family} grammar is not in its vocabulary"
        )
    return int(tid)


def adapter_for_spec(spec: ImageSpanSpec, processor=None) -> FamilyAdapter:
    """The adapter of the family a spec names (its hooks, with the spec as grammar), or a hook-less one for a
    hand-made spec; `processor` may be None for pre-tokenized rows."""
    if "learned" in spec.extra:
        from .learned import Learned

        return Learned(processor, spec)
    cls = next((c for c in ADAPTERS if c.name == spec.family), None)
    if cls is None:
        return FamilyAdapter.custom(processor, spec)
    return cls(processor, spec)


def adapter_for(processor) -> FamilyAdapter:
    """The family adapter of `processor`: a written family detected from its class hierarchy, else one learned from
    the processor's output when its grammar is a plain bracket (`chunker.families.learned`).

    Raises:
        UnsupportedProcessorError: a class refused for a known reason (`chunker.families.refused`), or no written
            family matches and none can be learned; the message names the class, why, and how to pass a spec.
    """
    # the most specific family wins: a subclass of a family's processor (LLaVA-OneVision's of LLaVA-NeXT's) is its own
    ranked = [(r, cls) for cls in ADAPTERS if (r := cls.rank(processor)) is not None]
    if ranked:
        return min(ranked, key=lambda rc: rc[0])[1](processor)
    from .learned import learn
    from .refused import refusal

    why = refusal(processor)
    if why:
        raise UnsupportedProcessorError(
            f"processor class {type(processor).__name__} is not supported: {why}. Supported are "
            f"{sorted(c.name for c in ADAPTERS)} and processors whose grammar is a plain bracket (learned). Pass "
            "spec=chunker.ImageSpanSpec(family='custom', kind=..., image_token_id=..., ...) describing how its images "
            "appear in input_ids if you know better"
        )
    return learn(processor)


def zeros(shape):
    """A read-only all-zero array of `shape` that allocates one element (a zero-stride view)."""
    return np.broadcast_to(np.zeros((), np.uint8), shape)
