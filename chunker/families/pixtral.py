"""Pixtral / Mistral 3: rows `[IMG]×W [IMG_BREAK]`, the last break being `[IMG_END]`."""

from __future__ import annotations

import sys

from ._base import FamilyAdapter, register, zeros


@register
class Pixtral(FamilyAdapter):
    name = "pixtral"
    classes = ("PixtralProcessor", "Mistral3Processor")
    kind = "terminated_run"
    image = "[IMG]"
    body = ("[IMG_BREAK]",)
    end = "[IMG_END]"
    bos = True
    count_rule = "patch_grid"
    sizes_recipe = "resized"

    def item_tokens(self, tensors, tiles=None):
        import torch

        if "image_sizes" not in tensors or self.processor is None:
            return super().item_tokens(tensors, tiles)
        step = int(self.processor.patch_size) * int(getattr(self.processor, "spatial_merge_size", 1) or 1)
        hw = torch.as_tensor(tensors["image_sizes"]).reshape(-1, 2).to(torch.int64)
        return (hw[:, 0] // step) * (hw[:, 1] // step), False

    def check_sizes(self, expander, refuse):
        ip = self.processor.image_processor
        if not expander.settings.get("do_resize", getattr(ip, "do_resize", True)):
            refuse("its image processor does not resize")

    def size_inputs(self, expander, sizes):
        p, ip = self.processor, self.processor.image_processor
        resize = getattr(sys.modules[type(ip).__module__], "get_resize_output_image_size", None)
        if resize is None:
            from transformers.models.pixtral.image_processing_pil_pixtral import get_resize_output_image_size

            resize = get_resize_output_image_size
        size = expander.settings.get("size") or ip.size
        edge = (size["longest_edge"],) * 2 if size.get("longest_edge") else (size["height"], size["width"])
        patch = p.patch_size * p.spatial_merge_size
        resized = [resize(zeros((h, w, 3)), size=edge, patch_size=(patch, patch), input_data_format="channels_last")
                   for h, w in sizes]
        return {"image_sizes": resized}, {}
