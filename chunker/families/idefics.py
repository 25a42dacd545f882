"""Idefics3 / SmolVLM: tile groups `<fake_token_around_image><row_r_col_c><image>×S` closed by a global-image block."""

from __future__ import annotations

from ._base import FamilyAdapter, register


@register
class Idefics3(FamilyAdapter):
    name = "idefics3"
    classes = ("Idefics3Processor", "SmolVLMProcessor")
    kind = "tiles"
    image = "<image>"
    open = ("<fake_token_around_image>",)
    global_ = "<global-img>"
    tokens_per_tile = "processor:image_seq_len"
    bos = True
    pixel_rules = (("pixel_values", "tiles", 0), ("pixel_attention_mask", "tiles", 0))
    batch_axis_pixels = True
    count_rule = "tiles"
    sizes_recipe = "row_col"

    def tile_ids(self):
        vocab = self.processor.tokenizer.get_vocab()
        return tuple(sorted(i for t, i in vocab.items() if t.startswith("<row_") and "_col_" in t))

    def row_tensors(self, tensors, images, processor_kwargs):
        # the processor stacks pixels per text row (B, T, 3, H, W); the splitter slices one row's tiles
        return {k: v[0] if k in ("pixel_values", "pixel_attention_mask") else v for k, v in tensors.items()}

    def size_inputs(self, expander, sizes):
        ip = self.processor.image_processor
        grid = [ip.get_number_of_image_patches(h, w, dict(expander.settings)) for h, w in sizes]
        return {"rows": [[g[1] for g in grid]], "cols": [[g[2] for g in grid]]}, {}
