"""PaddleOCR-VL: `<|IMAGE_PLACEHOLDER|>×(t·h·w/merge²)` runs without brackets, counts from `image_grid_thw`.

The checkpoint's template writes its `image_token` variable for an image, and the processor hands the tokenizer's
named tokens to the template, so the `<|IMAGE_START|>…<|IMAGE_END|>` default never renders: back-to-back images form
one run, cut by each image's grid (as LLaVA-NeXT's runs are cut by sizes). Everything else is Qwen-VL's:
`mm_token_type_ids`, flattened pixel rows per grid, 3-D rope positions from the model's `get_rope_index`.
"""

from __future__ import annotations

from ..spans import IMAGE, split_runs
from ._base import register
from .qwen import _Qwen


@register
class PaddleOCRVL(_Qwen):
    name = "paddleocr_vl"
    classes = ("PaddleOCRVLProcessor",)
    kind = "run"
    image = "attr:image_token"
    video = None
    open = ()
    close = ()
    pixel_rules = (("pixel_values", "grid", 0),)

    def size_inputs(self, expander, sizes):
        # the runs are cut by the grids' products, so the split from sizes keeps them (Qwen's need not: brackets cut)
        inputs, _ = super().size_inputs(expander, sizes)
        return inputs, {"image_grid_thw": inputs["image_grid_thw"]}

    def items(self, spans, tensors, images, *, row=None):
        counts = self.expected_item_tokens(tensors, IMAGE)
        if not len(spans) or counts is None:
            return spans
        return split_runs(spans, counts, row=row)
