"""Family grammar records built from a transformers processor: the edge where transformers knowledge lives.

Each family is one record of data (token strings, turn markers, slicing rules); `spec_from_processor`
detects the family from the processor's class and fills the ids from its tokenizer.
"""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np

from .errors import ConfigError, UnsupportedProcessorError
from .spec import ImageSpanSpec

QWEN_TURNS = {"instruction": "<|im_start|>user\n", "response": "<|im_start|>assistant\n"}
QWEN = {
    "kind": "bracket",
    "image": "<|image_pad|>",
    "video": "<|video_pad|>",
    "open": ("<|vision_start|>",),
    "close": ("<|vision_end|>",),
    "type_ids_column": "mm_token_type_ids",
    "turns": QWEN_TURNS,
    "token_rule": "grid",
    "pixel_rules": {"pixel_values": ("grid", 0), "pixel_values_videos": ("grid", 0)},
    "sizes": "grid",
}

# class-name fragment -> grammar record. Token fields name tokens (strings); "attr:" reads a tokenizer attribute.
# "sizes" names how `size_expander` rebuilds the processor's image inputs from image sizes alone (no pixels);
# "sizes_refused" says why a family cannot (image_tokens_from="pixels" only).
FAMILIES = {
    "gemma3": {
        "classes": ("Gemma3Processor",),
        "kind": "bracket",
        "image": "attr:image_token",
        "open": ("attr:boi_token",),
        "close": ("attr:eoi_token",),
        "tokens_per_image": "processor:image_seq_length",
        "type_ids_column": "token_type_ids",
        "bos": True,
        "turns": {"instruction": "<start_of_turn>user\n", "response": "<start_of_turn>model\n"},
        "group_crops": True,
        "pixel_rules": {"pixel_values": ("crops", 0)},
        "sizes": "crops",
    },
    "paligemma": {
        "classes": ("PaliGemmaProcessor",),
        "kind": "run",
        "image": "attr:image_token",
        "tokens_per_image": "processor:image_seq_length",
        "type_ids_column": None,
        "bos": True,
        "prefix_media": True,
        "turns": {"instruction": "", "response": "\n"},
        "sizes_refused": "its processor rewrites the text itself (images first, BOS after them)",
    },
    "qwen3_vl": {**QWEN, "classes": ("Qwen3VLProcessor", "Qwen3VLMoeProcessor")},
    "qwen2_5_vl": {**QWEN, "classes": ("Qwen2_5_VLProcessor",)},
    "qwen2_vl": {**QWEN, "classes": ("Qwen2VLProcessor",)},
    "llava_onevision": {
        "classes": ("LlavaOnevisionProcessor",),
        "kind": "run",
        "run_counts": "llava_onevision",
        "image": "attr:image_token",
        "video": "attr:video_token",
        # its template renders "<|im_start|>assistant \n" for answers but "assistant\n" as generation prompt
        "turns": {"instruction": "<|im_start|>user", "response": "<|im_start|>assistant"},
        "sizes": "anyres",
    },
    "llava_next": {
        "classes": ("LlavaNextProcessor",),
        "kind": "run",
        "run_counts": "llava_next",
        "image": "attr:image_token",
        "bos": True,
        "turns": {"instruction": "[INST]", "response": "[/INST]"},
        "sizes": "anyres",
    },
    "llava": {
        "classes": ("LlavaProcessor",),
        "kind": "run",
        "image": "attr:image_token",
        "tokens_per_image": "sizes",
        "bos": True,
        "turns": {"instruction": "USER:", "response": "ASSISTANT:"},
        "sizes": "fixed_shape",
    },
    "idefics3": {
        "classes": ("Idefics3Processor", "SmolVLMProcessor"),
        "kind": "tiles",
        "image": "<image>",
        "open": ("<fake_token_around_image>",),
        "global": "<global-img>",
        "tiles": "row_col",
        "tokens_per_tile": "processor:image_seq_len",
        "bos": True,
        "turns": {"instruction": "User:", "response": "Assistant:"},
        "pixel_rules": {"pixel_values": ("tiles", 0), "pixel_attention_mask": ("tiles", 0)},
        "batch_axis_pixels": True,
        "sizes": "row_col",
    },
    "internvl": {
        "classes": ("InternVLProcessor",),
        "kind": "bracket",
        "image": "attr:context_image_token",
        "open": ("attr:start_image_token",),
        "close": ("attr:end_image_token",),
        "tokens_per_tile": "processor:image_seq_length",
        "turns": QWEN_TURNS,
        "pixel_rules": {"pixel_values": ("tiles", 0)},
        "sizes": "patches",
    },
    "pixtral": {
        "classes": ("PixtralProcessor", "Mistral3Processor"),
        "kind": "terminated_run",
        "image": "[IMG]",
        "body": ("[IMG_BREAK]",),
        "end": "[IMG_END]",
        "bos": True,
        "turns": {"instruction": "[INST]", "response": "[/INST]"},
        "sizes": "resized",
    },
}


def detect_family(processor) -> str:
    """The family name whose processor class appears in `processor`'s class hierarchy.

    Raises:
        UnsupportedProcessorError: none does; the message names the class and how to pass a spec.
    """
    names = [c.__name__ for c in type(processor).__mro__]
    for family, record in FAMILIES.items():
        if any(cls in names for cls in record["classes"]):
            return family
    raise UnsupportedProcessorError(
        f"no family grammar for processor class {type(processor).__name__}: supported are "
        f"{sorted(FAMILIES)}. Pass spec=chunker.ImageSpanSpec(family='custom', kind=..., image_token_id=..., ...) "
        "describing how its images appear in input_ids"
    )


def spec_from_processor(processor, **overrides) -> ImageSpanSpec:
    """Build the `ImageSpanSpec` of `processor`'s family (see `ImageSpanSpec.from_processor`)."""
    family = detect_family(processor)
    record = FAMILIES[family]
    tok = getattr(processor, "tokenizer", None)
    if tok is None:
        raise UnsupportedProcessorError(
            f"{type(processor).__name__} has no tokenizer: pass the model's processor, not its image processor"
        )

    def token(ref):
        text = getattr(tok, ref[5:], None) or getattr(processor, ref[5:], None) if ref.startswith("attr:") else ref
        if not text:
            raise UnsupportedProcessorError(f"{type(processor).__name__}: its tokenizer has no {ref[5:]}")
        tid = tok.convert_tokens_to_ids(text)
        if tid is None or (tok.unk_token_id is not None and tid == tok.unk_token_id):
            raise UnsupportedProcessorError(
                f"{type(processor).__name__}: token {text!r} of the {family} grammar is not in its vocabulary"
            )
        return int(tid)

    def number(ref):
        if ref is None:
            return None
        if ref == "sizes":
            return _fixed_tokens(processor)
        return int(getattr(processor, ref.split(":", 1)[1]))

    turns = record.get("turns", {})
    bos_id = tok.bos_token_id if record.get("bos") else None
    extra = {k: record[k] for k in ("pixel_rules", "token_rule", "batch_axis_pixels", "run_counts") if k in record}
    if record.get("token_rule") == "grid":
        extra["merge_size"] = int(getattr(processor.image_processor, "merge_size", 2))
    tile_ids = ()
    if record.get("tiles") == "row_col":
        vocab = tok.get_vocab()
        tile_ids = tuple(sorted(i for t, i in vocab.items() if t.startswith("<row_") and "_col_" in t))
    spec = ImageSpanSpec(
        family=family,
        kind=record["kind"],
        image_token_id=token(record["image"]),
        video_token_id=_optional(token, record.get("video")),
        open_ids=tuple(token(t) for t in record.get("open", ())),
        close_ids=tuple(token(t) for t in record.get("close", ())),
        body_ids=tuple(token(t) for t in record.get("body", ())),
        end_id=_optional(token, record.get("end")),
        tile_ids=tile_ids,
        global_id=_optional(token, record.get("global")),
        tokens_per_image=number(record.get("tokens_per_image")),
        tokens_per_tile=number(record.get("tokens_per_tile")),
        type_ids_column=record.get("type_ids_column"),
        bos_id=bos_id,
        instruction_ids=_encode(tok, turns.get("instruction", "")),
        response_ids=_encode(tok, turns.get("response", "")),
        prefix_media=bool(record.get("prefix_media")),
        group_crops=bool(record.get("group_crops")),
        extra=extra,
    )
    return apply_overrides(spec, tok, overrides)


def apply_overrides(spec: ImageSpanSpec, tok, overrides: dict) -> ImageSpanSpec:
    """Replace fields; `instruction_part` / `response_part` text is tokenized like Unsloth does."""
    overrides = dict(overrides)
    for part, name in (("instruction_part", "instruction_ids"), ("response_part", "response_ids")):
        if part in overrides:
            value = overrides.pop(part)
            overrides[name] = _encode(tok, value) if isinstance(value, str) else tuple(value)
    known = {f.name for f in fields(ImageSpanSpec)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown spec fields {unknown}: valid are {sorted(known)}")
    return replace(spec, **overrides) if overrides else spec


def _optional(fn, value):
    return None if value is None else fn(value)


def _encode(tok, text: str) -> tuple[int, ...]:
    return tuple(tok(text, add_special_tokens=False)["input_ids"]) if text else ()


def _fixed_tokens(processor):
    counter = getattr(processor, "_get_num_multimodal_tokens", None)
    if counter is None:
        return None
    data = counter(image_sizes=[(336, 336)])
    tokens = getattr(data, "num_image_tokens", None) or data.get("num_image_tokens")
    return int(tokens[0]) if tokens else None


def run_item_counts(processor, spec: ImageSpanSpec, image_sizes, pixel_size=None):
    """Placeholder tokens of each image of a bracketless family, from (height, width) sizes; None if unknown.

    LLaVA-NeXT counts from each image's size; LLaVA-OneVision gives every image of a multi-image row
    the same fixed count (`num_image_tokens + 1`), and a lone image its size-based count.
    """
    rule = spec.extra.get("run_counts")
    if rule is None or processor is None or not len(image_sizes):
        return None
    default = getattr(processor, "vision_feature_select_strategy", "default") == "default"
    if rule == "llava_onevision" and len(image_sizes) > 1:
        return [processor.num_image_tokens + 1 - int(default)] * len(image_sizes)
    if pixel_size is None:
        size = processor.image_processor.size
        edge = size.get("shortest_edge") or min(size["height"], size["width"])
        pixel_size = (edge, edge)
    height, width = pixel_size
    return [
        processor._get_number_of_features(int(h), int(w), height, width) - int(default) for h, w in image_sizes
    ]


def image_settings(processor, processor_kwargs: dict | None = None) -> dict:
    """The image keywords a processor call would use: its defaults, then `processor_kwargs`.

    The processor's image defaults outrank its image processor's own settings: a class attribute
    (transformers 5.24) or its ProcessorKwargs `_defaults` (5.17), as `ProcessorMixin._merge_kwargs` reads them.
    """
    kwargs = dict(processor_kwargs or {})
    defaults = dict(getattr(processor, "images_kwargs", None) or {})
    kwargs_cls = getattr(processor, "valid_processor_kwargs", None)
    defaults.update(getattr(kwargs_cls, "_defaults", {}).get("images_kwargs", {}))
    return {**defaults, **kwargs.pop("images_kwargs", {}), **kwargs}


def crops_per_image(processor, spec: ImageSpanSpec, images, processor_kwargs: dict):
    """Pan-and-scan crops of each image (Gemma 3), from the image processor's own crop rule; None when off.

    The processor drops `num_crops` from its output, so the crops are counted by running the image
    processor's own crop rule (`pan_and_scan` of the PIL backend, `pan_and_scan_batched` of the torch
    one) on a zero-stride array of each image's size: views only, no pixels.
    """
    settings = image_settings(processor, processor_kwargs)
    if not spec.group_crops or not settings.get("do_pan_and_scan"):
        return None
    keys = ("pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops", "pan_and_scan_min_ratio_to_activate")
    ip = processor.image_processor
    args = {k: settings.get(k, getattr(ip, k, None)) for k in keys}
    crops = []
    for image in images:
        width, height = image.size
        if hasattr(ip, "pan_and_scan"):
            found = ip.pan_and_scan(np.broadcast_to(np.zeros((), np.uint8), (1, height, width)), **args)
        else:
            import torch

            found = ip.pan_and_scan_batched(torch.zeros(()).expand(1, 1, height, width), **args)
        crops.append(len(found))
    return crops


def size_expander(processor, spec: ImageSpanSpec, processor_kwargs: dict | None = None) -> SizeExpander:
    """Expand a rendered chat text's image placeholders from image sizes alone, as the processor would.

    The processor's own `replace_image_token` makes each image's expansion from a minimal stand-in for the
    image processor's output (per the family record's "sizes" recipe: Qwen grid patches, Gemma 3 crops,
    LLaVA pixel shape, LLaVA-NeXT/OneVision original size and patch shape, Pixtral resized size,
    Idefics3/SmolVLM tile rows and columns, InternVL tiles), each computed from the image processor's own
    size rules (`get_number_of_image_patches`, `pan_and_scan`, `get_resize_output_image_size`) on the
    image's (height, width); its `get_text_with_replacements` puts them into the text. Tokenizing that text
    with the tokenizer alone gives the same `input_ids` as calling the processor on the pixels.

    Args:
        processor: the model's transformers processor (transformers 5 API: `replace_image_token`).
        spec: the splitter's `ImageSpanSpec` (its family picks the recipe).
        processor_kwargs: the keywords the splitter passes to the processor call (e.g. `do_pan_and_scan`).

    Returns:
        A picklable `SizeExpander`: `expander(text, images, base_dir=None, row=None) -> (text, tensors)`.

    Raises:
        ConfigError: the family's expansion cannot be computed exactly from sizes (PaliGemma, a custom spec,
            LLaVA without a fixed output shape...); the message names the family and says to use "pixels".

    Example:
        >>> from chunker.testing import build_processor                          # doctest: +SKIP
        >>> p = build_processor("qwen2_vl")                                       # doctest: +SKIP
        >>> expand = size_expander(p, spec_from_processor(p))                     # doctest: +SKIP
    """
    return SizeExpander(processor, spec, processor_kwargs)


class SizeExpander:
    """See `size_expander`: holds the processor and the family recipe; calls expand one row's text."""

    def __init__(self, processor, spec: ImageSpanSpec, processor_kwargs: dict | None = None):
        family = spec.family
        record = FAMILIES.get(family, {})

        def refuse(why: str):
            raise ConfigError(
                f"image_tokens_from='sizes' cannot give the {family} family's exact token counts: {why}. "
                "Use image_tokens_from='pixels'"
            )

        if processor is None:
            refuse("it needs the model's processor")
        if detect_family(processor) != family:
            refuse(f"the spec's family differs from the processor's ({detect_family(processor)})")
        recipe = record.get("sizes")
        if recipe is None:
            refuse(record.get("sizes_refused", "no size recipe is known for it"))
        if not callable(getattr(processor, "get_text_with_replacements", None)):
            refuse(f"{type(processor).__name__} has no get_text_with_replacements (transformers older than 5)")
        self.settings = image_settings(processor, processor_kwargs)
        self.processor = processor
        self.spec = spec
        self.family = family
        self.recipe = recipe
        self.processor_kwargs = dict(processor_kwargs or {})
        self.token = processor.image_token
        ip = processor.image_processor
        if recipe in ("fixed_shape", "anyres"):
            self.patch_shape = _patch_shape(ip, self.settings, square=recipe == "anyres") or refuse(
                f"{type(ip).__name__} has no fixed output shape (no center crop and no height/width size)"
            )
            if recipe == "anyres":
                size = self.settings.get("size") or ip.size
                edge = size.get("shortest_edge") or min(size["height"], size["width"])
                if self.patch_shape != (edge, edge):
                    refuse(f"its patches ({self.patch_shape}) are not its size ({edge}x{edge})")
        if recipe == "resized":
            if not self.settings.get("do_resize", getattr(ip, "do_resize", True)):
                refuse("its image processor does not resize")
            import sys

            resize = getattr(sys.modules[type(ip).__module__], "get_resize_output_image_size", None)
            if resize is None:
                from transformers.models.pixtral.image_processing_pil_pixtral import get_resize_output_image_size

                resize = get_resize_output_image_size
            self._resize = resize

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_resize", None)
        return state

    def __setstate__(self, state):
        self.__init__(state["processor"], state["spec"], state["processor_kwargs"])

    def image_inputs(self, sizes: list[tuple[int, int]]) -> tuple[dict, dict]:
        """The stand-in for the image processor's output that `replace_image_token` reads, and the tensors
        the splitter needs for grouping (Gemma 3 pan-and-scan `num_crops`), from (height, width) sizes."""
        import numpy as np

        p, ip, settings, n = self.processor, self.processor.image_processor, self.settings, len(sizes)
        if self.recipe == "grid":
            # replace_image_token reads only the grid's product (patches), which is all this needs to hold
            patches = [int(ip.get_number_of_image_patches(h, w, dict(settings))) for h, w in sizes]
            return {"image_grid_thw": np.array([[1, 1, q] for q in patches])}, {}
        if self.recipe == "crops":
            from types import SimpleNamespace

            crops = crops_per_image(p, self.spec, [SimpleNamespace(size=(w, h)) for h, w in sizes],
                                    self.processor_kwargs)
            tensors = {} if crops is None else {"num_crops": np.asarray(crops, dtype=np.int64)}
            return {"num_crops": crops or [0] * n}, tensors
        if self.recipe == "fixed_shape":
            return {"pixel_values": _zeros((n, 3, *self.patch_shape))}, {}
        if self.recipe == "anyres":
            image_sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
            inputs = {"image_sizes": image_sizes, "pixel_values": _zeros((1, 1, 3, *self.patch_shape)),
                      "batch_num_images": [n]}
            return inputs, {"image_sizes": image_sizes}
        if self.recipe == "resized":
            size = settings.get("size") or ip.size
            edge = (size["longest_edge"],) * 2 if size.get("longest_edge") else (size["height"], size["width"])
            patch = p.patch_size * p.spatial_merge_size
            resized = [self._resize(_zeros((h, w, 3)), size=edge, patch_size=(patch, patch),
                                    input_data_format="channels_last") for h, w in sizes]
            return {"image_sizes": resized}, {}
        if self.recipe == "row_col":
            grid = [ip.get_number_of_image_patches(h, w, dict(settings)) for h, w in sizes]
            return {"rows": [[g[1] for g in grid]], "cols": [[g[2] for g in grid]]}, {}
        if self.recipe == "patches":
            return {"num_patches": [int(ip.get_number_of_image_patches(h, w, dict(settings))) for h, w in sizes]}, {}
        raise ConfigError(f"unknown sizes recipe {self.recipe!r} of the {self.family} family")

    def __call__(self, text: str, images, base_dir=None, row=None) -> tuple[str, dict]:
        """Expand `text`'s image placeholders for `images` (PIL images, paths, bytes or {"bytes","path"} dicts,
        read up to their header only).

        Returns:
            (expanded text, tensors for the splitter: `num_crops` under Gemma 3 pan-and-scan, `image_sizes`
            for LLaVA-NeXT/OneVision; else empty).

        Raises:
            ImageCountError: the text holds another number of placeholders than there are images.
            ImageDecodeError: an image header cannot be read.
        """
        from .errors import ImageCountError

        sizes = [image_hw(im, base_dir, row=row) for im in images]
        found = text.count(self.token)
        if found != len(sizes):
            raise ImageCountError(
                f"the rendered text holds {found} image placeholders ({self.token!r}) but the row has {len(sizes)} "
                "images: give exactly one image per {'type': 'image'} item, in order",
                row=row,
            )
        if not sizes:
            return text, {}
        inputs, tensors = self.image_inputs(sizes)
        replacements = [self.processor.replace_image_token(inputs, image_idx=i) for i in range(len(sizes))]
        (expanded,), _ = self.processor.get_text_with_replacements([text], images_replacements=replacements)
        return expanded, tensors


def image_hw(value, base_dir=None, *, row=None) -> tuple[int, int]:
    """(height, width) of an image given as a PIL image, path, bytes or {"bytes","path"} dict, from its header.

    Raises:
        ImageDecodeError: the header cannot be read.
    """
    import io
    import os

    from PIL import Image

    from .errors import ImageDecodeError

    if isinstance(value, Image.Image):
        return value.size[1], value.size[0]
    try:
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            source = io.BytesIO(value)
        elif isinstance(value, (str, os.PathLike)):
            source = os.fspath(value)
            if base_dir and not os.path.isabs(source):
                source = os.path.join(base_dir, source)
        else:
            raise TypeError(f"an image must be a PIL image, a path, bytes or a dict, not {type(value).__name__}")
        with Image.open(source) as img:
            width, height = img.size
    except (OSError, TypeError, ValueError) as exc:
        raise ImageDecodeError(
            f"cannot read image {repr(value)[:80]}: {exc}. Fix or remove the image, or pass on_error='skip'", row=row
        ) from exc
    return height, width


def _zeros(shape):
    """A read-only all-zero array of `shape` that allocates one element (a zero-stride view)."""
    import numpy as np

    return np.broadcast_to(np.zeros((), np.uint8), shape)


def _patch_shape(image_processor, settings: dict, square: bool = False):
    """(height, width) of every image (LLaVA) or square tile (LLaVA-NeXT, `square`) the image processor
    outputs: the center crop, else the fixed resize size, else (tiles only) the shortest edge; None if none."""
    crop = settings.get("crop_size") or getattr(image_processor, "crop_size", None)
    if settings.get("do_center_crop", getattr(image_processor, "do_center_crop", False)) and crop:
        return int(crop["height"]), int(crop["width"])
    size = settings.get("size") or getattr(image_processor, "size", None) or {}
    if size.get("height") and size.get("width"):
        return int(size["height"]), int(size["width"])
    if square and size.get("shortest_edge"):
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    return None
