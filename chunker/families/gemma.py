"""Gemma 3 (bracketed soft tokens, pan-and-scan crops grouped with their image), PaliGemma (image prefix) and Gemma 4
(bracketed soft tokens counted from each image's size; audio spans `<|audio> <|audio|>×k <audio|>`, k from the frame
mask)."""

from __future__ import annotations

import sys

import numpy as np

from ..spans import IMAGE, group_spans
from ._base import FamilyAdapter, register
from .sizes import image_settings


@register
class Gemma3(FamilyAdapter):
    name = "gemma3"
    classes = ("Gemma3Processor",)
    kind = "bracket"
    image = "attr:image_token"
    open = ("attr:boi_token",)
    close = ("attr:eoi_token",)
    tokens_per_image = "processor:image_seq_length"
    type_ids_column = "token_type_ids"
    bos = True
    group_crops = True
    pixel_rules = (("pixel_values", "crops", 0),)
    count_rule = "fixed"
    sizes_recipe = "crops"

    def row_tensors(self, tensors, images, processor_kwargs):
        # the processor drops num_crops from its output; the splitter needs it to keep an image with its crops
        if images and "num_crops" not in tensors:
            crops = self.crops_per_image([im.size[::-1] for im in images], processor_kwargs)
            if crops is not None:
                tensors = {**tensors, "num_crops": np.asarray(crops, dtype=np.int64)}
        return tensors

    def items(self, spans, tensors, images, *, row=None):
        if "num_crops" in tensors:
            return group_spans(spans, 1 + np.asarray(tensors["num_crops"]).reshape(-1))
        return spans

    def position_ids(self, batch, starts, model=None):
        """Positions restarting at every window; refused where transformers would mask a packed row's images wrong.

        Gemma 3 lets an image's tokens attend to each other both ways (a block overlay from `token_type_ids`).
        transformers releases whose `masking_utils` has `remap_positions_for_packed_sequence` (5.24, not 5.17) pass
        that overlay, in the sliding-window layers, through the per-window positions, so it reads the image blocks
        at the wrong places for every window after a row's first (measured: logits 0.45 off). Such a batch is
        refused rather than trained wrong.
        """
        from transformers import masking_utils

        from ..errors import ConfigError

        positions = super().position_ids(batch, starts, model)
        image = batch.get("token_type_ids")
        if image is not None and hasattr(masking_utils, "remap_positions_for_packed_sequence"):
            index = _raw_index(positions)
            if bool(((image == 1) & (positions != index)).any()):
                import transformers

                raise ConfigError(
                    f"transformers {transformers.__version__} builds Gemma 3's sliding-window masks of packed rows "
                    "with the image-block overlay at the wrong positions for images in a row's second or later "
                    "window, which would train on wrong attention: collate Gemma 3 windows unpacked (no "
                    "pack_windows, padding_free=False), or use transformers 5.17, where packed rows train exactly"
                )
        return positions

    def crops_per_image(self, sizes, processor_kwargs):
        """Pan-and-scan crops of each (height, width) image, from the image processor's own crop rule; None when off.

        The crops are counted by running the image processor's crop rule (`pan_and_scan` of the PIL backend,
        `pan_and_scan_batched` of the torch one) on a zero-stride array of each image's size: views only.
        """
        settings = image_settings(self.processor, processor_kwargs)
        if not settings.get("do_pan_and_scan"):
            return None
        keys = ("pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops", "pan_and_scan_min_ratio_to_activate")
        ip = self.processor.image_processor
        args = {k: settings.get(k, getattr(ip, k, None)) for k in keys}
        crops = []
        for height, width in sizes:
            if hasattr(ip, "pan_and_scan"):
                found = ip.pan_and_scan(np.broadcast_to(np.zeros((), np.uint8), (1, height, width)), **args)
            else:
                import torch

                found = ip.pan_and_scan_batched(torch.zeros(()).expand(1, 1, height, width), **args)
            crops.append(len(found))
        return crops

    def size_inputs(self, expander, sizes):
        crops = self.crops_per_image(sizes, expander.processor_kwargs)
        tensors = {} if crops is None else {"num_crops": np.asarray(crops, dtype=np.int64)}
        return {"num_crops": crops or [0] * len(sizes)}, tensors


def _raw_index(positions):
    """`(B, L)` raw indices 0..L-1 of a batch of positions."""
    import torch

    return torch.arange(positions.shape[-1], device=positions.device).expand_as(positions)


@register
class PaliGemma(FamilyAdapter):
    name = "paligemma"
    classes = ("PaliGemmaProcessor",)
    kind = "run"
    image = "attr:image_token"
    tokens_per_image = "processor:image_seq_length"
    bos = True
    prefix_media = True
    count_rule = "fixed"
    sizes_refused = "its processor rewrites the text itself (images first, BOS after them)"


@register
class Gemma4(FamilyAdapter):
    """Gemma 4: `<|image> <|image|>×N <image|>` with N from each image's size (aspect-preserving resize to at most
    `max_soft_tokens` pooled patches); one padded pixel row and one `image_position_ids` row per image, whose
    non-padding patches (not (-1, -1)) say N.

    Audio: `<|audio> <|audio|>×k <audio|>`, one span per audio item, with one padded `input_features` row (log-mel
    frames) and one `input_features_mask` row per item; k is the mask halved twice as `replace_audio_token` does
    (the encoder's two stride-2 convolutions), so the features of an item alone or padded beside longer ones need
    the same k. A processor without audio tokens keeps its audio ids out of every cut (refused by name)."""

    name = "gemma4"
    classes = ("Gemma4Processor",)
    kind = "bracket"
    image = "attr:image_token"
    open = ("attr:boi_token",)
    close = ("attr:eoi_token",)
    type_ids_column = "mm_token_type_ids"
    tensor_streams = (("image_position_ids", IMAGE),)
    bos = True
    count_rule = "sizes"
    sizes_recipe = "soft_tokens"

    def build_spec(self):
        from dataclasses import replace

        from .audio import audio_grammar
        from .learned import guarded_ids

        spec = super().build_spec()
        audio = audio_grammar(self.processor)
        if audio is None:
            return replace(spec, body_ids=guarded_ids(self.processor))  # audio it cannot describe: never cut
        return replace(spec, **audio, extra={**spec.extra, "audio_count": {"rule": "halve", "times": 2}})

    def items(self, spans, tensors, images, *, row=None):
        """The spans as they are; an image bracket holding no image token is refused by name: a video frame
        (`mm:ss <|image> <|video|>×n <image|>`, one per frame; Gemma 4 video is not split yet) or an edited row."""
        from ..errors import SpanError

        empty = np.flatnonzero((spans.kinds == IMAGE) & (spans.counts == 0))
        if len(empty):
            k = int(empty[0])
            raise SpanError(
                f"the image bracket at [{int(spans.starts[k])}, {int(spans.ends[k])}) holds no image token (seen "
                f"{len(empty)} such brackets; expected {self.processor.image_token if self.processor else 'image'} "
                "tokens): a Gemma 4 video frame, whose video is not split yet, or an edited row. Pass the row "
                "without its video", row=row,
            )
        return spans

    def expected_item_tokens(self, tensors, stream):
        if stream != IMAGE or "image_position_ids" not in tensors:
            return None
        real = (np.asarray(tensors["image_position_ids"]) != -1).all(-1).sum(-1)
        return (real // self.pooled_patches).astype(np.int64)

    def item_tokens(self, tensors, tiles=None):
        import torch

        if "image_position_ids" not in tensors:
            return super().item_tokens(tensors, tiles)
        real = (torch.as_tensor(tensors["image_position_ids"]) != -1).all(-1).sum(-1)
        return (real // self.pooled_patches).to(torch.int64), False

    @property
    def pooled_patches(self) -> int:
        """Patches per soft token (the pooling kernel's area)."""
        return int(self.processor.image_processor.pooling_kernel_size) ** 2

    def size_inputs(self, expander, sizes):
        ip = self.processor.image_processor
        resize = sys.modules[type(ip).__module__].get_aspect_ratio_preserving_size
        patch, pool, budget = (int(expander.settings.get(k) or getattr(ip, k))
                               for k in ("patch_size", "pooling_kernel_size", "max_soft_tokens"))
        counts = []
        for height, width in sizes:
            h, w = resize(height=height, width=width, patch_size=patch, max_patches=budget * pool**2,
                          pooling_kernel_size=pool)
            counts.append((h // patch) * (w // patch) // pool**2)
        return {"num_soft_tokens_per_image": counts}, {}
