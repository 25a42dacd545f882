"""Token counts from image sizes alone: the processor's own `replace_image_token` fed a stand-in of the image
processor's output that the family adapter computes from each image's (height, width)."""

from __future__ import annotations

import io
import os

from ..errors import ConfigError, ImageCountError, ImageDecodeError


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


def size_expander(processor, adapter, processor_kwargs: dict | None = None) -> SizeExpander:
    """Expand a rendered chat text's image placeholders from image sizes alone, as the processor would.

    The processor's own `replace_image_token` makes each image's expansion from a minimal stand-in for the
    image processor's output (the family adapter's `size_inputs`: Qwen grid patches, Gemma 3 crops, LLaVA
    pixel shape, LLaVA-NeXT/OneVision original size and patch shape, Pixtral resized size, Idefics3/SmolVLM
    tile rows and columns, InternVL tiles), each computed from the image processor's own size rules on the
    image's (height, width); its `get_text_with_replacements` puts them into the text. Tokenizing that text
    with the tokenizer alone gives the same `input_ids` as calling the processor on the pixels.

    Args:
        processor: the model's transformers processor (transformers 5 API: `replace_image_token`).
        adapter: its family adapter (`chunker.families.adapter_for`).
        processor_kwargs: the keywords the splitter passes to the processor call (e.g. `do_pan_and_scan`).

    Returns:
        A picklable `SizeExpander`: `expander(text, images, base_dir=None, row=None) -> (text, replaced, tensors)`.

    Raises:
        ConfigError: the family's expansion cannot be computed exactly from sizes (PaliGemma, LLaVA without a
            fixed output shape...); the message names the family and says to use "pixels".

    Example:
        >>> from chunker.testing import build_processor                          # doctest: +SKIP
        >>> p = build_processor("qwen2_vl")                                       # doctest: +SKIP
        >>> expand = size_expander(p, adapter_for(p))                             # doctest: +SKIP
    """
    return SizeExpander(processor, adapter, processor_kwargs)


class SizeExpander:
    """See `size_expander`: holds the processor and its adapter; a call expands one row's text."""

    def __init__(self, processor, adapter, processor_kwargs: dict | None = None):
        family = adapter.name

        def refuse(why: str):
            raise ConfigError(
                f"image_tokens_from='sizes' cannot give the {family} family's exact token counts: {why}. "
                "Use image_tokens_from='pixels'"
            )

        if adapter.sizes_recipe is None:
            refuse(adapter.sizes_refused)
        if not callable(getattr(processor, "get_text_with_replacements", None)):
            refuse(f"{type(processor).__name__} has no get_text_with_replacements (transformers older than 5)")
        self.processor = processor
        self.adapter = adapter
        self.processor_kwargs = dict(processor_kwargs or {})
        self.settings = image_settings(processor, processor_kwargs)
        self.token = processor.image_token
        adapter.check_sizes(self, refuse)

    def __call__(self, text: str, images, base_dir=None, row=None) -> tuple[str, list, dict]:
        """Expand `text`'s image placeholders for `images` (PIL images, paths, bytes or {"bytes","path"} dicts,
        read up to their header only).

        Returns:
            (expanded text, the replacement offsets `get_text_with_replacements` reports, tensors the splitter
            needs: `num_crops` under Gemma 3 pan-and-scan, `image_sizes` for LLaVA-NeXT/OneVision; else empty).

        Raises:
            ImageCountError: the text holds another number of placeholders than there are images.
            ImageDecodeError: an image header cannot be read, or the image is empty.
        """
        sizes = [image_hw(im, base_dir, row=row) for im in images]
        found = text.count(self.token)
        if found != len(sizes):
            raise ImageCountError(
                f"the rendered text holds {found} image placeholders ({self.token!r}) but the row has {len(sizes)} "
                "images: give exactly one image per {'type': 'image'} item, in order",
                row=row,
            )
        if not sizes:
            return text, [], {}
        inputs, tensors = self.adapter.size_inputs(self, sizes)
        replacements = [self.processor.replace_image_token(inputs, image_idx=i) for i in range(len(sizes))]
        (expanded,), offsets = self.processor.get_text_with_replacements([text], images_replacements=replacements)
        return expanded, offsets[0] if offsets else [], tensors


def image_hw(value, base_dir=None, *, row=None) -> tuple[int, int]:
    """(height, width) of an image given as a PIL image, path, bytes or {"bytes","path"} dict, from its header.

    Raises:
        ImageDecodeError: the header cannot be read, or the image has no pixels.
    """
    from PIL import Image

    if isinstance(value, Image.Image):
        height, width = value.size[1], value.size[0]
    else:
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
                f"cannot read image {repr(value)[:80]}: {exc}. Fix or remove the image, or pass on_error='skip'",
                row=row,
            ) from exc
    if min(height, width) < 1:
        raise ImageDecodeError(
            f"an image of {width}x{height} pixels has nothing to encode: fix or drop it, or pass on_error='skip'",
            row=row,
        )
    return height, width


def patch_shape(image_processor, settings: dict, square: bool = False):
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
