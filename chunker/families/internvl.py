"""InternVL: `<img> <IMG_CONTEXT>×(S·patches) </img>`, pixel rows per patch."""

from __future__ import annotations

from ._base import FamilyAdapter, register


@register
class InternVL(FamilyAdapter):
    name = "internvl"
    classes = ("InternVLProcessor",)
    kind = "bracket"
    image = "attr:context_image_token"
    open = ("attr:start_image_token",)
    close = ("attr:end_image_token",)
    tokens_per_tile = "processor:image_seq_length"
    pixel_rules = (("pixel_values", "tiles", 0),)
    count_rule = "tiles"
    sizes_recipe = "patches"

    def item_tokens(self, tensors, tiles=None):
        import torch

        if "num_patches" in tensors:
            return torch.as_tensor(tensors["num_patches"]).reshape(-1).to(torch.int64) * int(self.spec.tokens_per_tile), False
        return super().item_tokens(tensors, tiles)

    def size_inputs(self, expander, sizes):
        ip = self.processor.image_processor
        return {"num_patches": [int(ip.get_number_of_image_patches(h, w, dict(expander.settings)))
                                for h, w in sizes]}, {}
