"""Gemma 3 (bracketed soft tokens, pan-and-scan crops grouped with their image) and PaliGemma (image prefix)."""

from __future__ import annotations

import numpy as np

from ..spans import group_spans
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
