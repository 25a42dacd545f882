"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL: `<|vision_start|> <|image_pad|>×(t·h·w/merge²) <|vision_end|>`, videos too."""

from __future__ import annotations

import numpy as np

from ..spans import VIDEO
from ._base import FamilyAdapter, register


class _Qwen(FamilyAdapter):
    kind = "bracket"
    image = "<|image_pad|>"
    video = "<|video_pad|>"
    open = ("<|vision_start|>",)
    close = ("<|vision_end|>",)
    type_ids_column = "mm_token_type_ids"
    pixel_rules = (("pixel_values", "grid", 0), ("pixel_values_videos", "grid", 0))
    count_rule = "grid"
    sizes_recipe = "grid"

    def extra(self):
        return {**super().extra(), "token_rule": "grid", "merge_size": self.merge_size}

    @property
    def merge_size(self) -> int:
        if self.processor is None:  # a pre-tokenized split with a spec alone: the spec carries it
            return int(self.spec.extra.get("merge_size", 2))
        return int(getattr(self.processor.image_processor, "merge_size", 2))

    def expected_item_tokens(self, tensors, stream):
        key = "video_grid_thw" if stream == VIDEO else "image_grid_thw"
        if key not in tensors:
            return None
        grid = np.asarray(tensors[key]).reshape(-1, 3).prod(-1)
        return (grid // (self.merge_size ** 2)).astype(np.int64)

    def item_tokens(self, tensors, tiles=None):
        if "image_grid_thw" not in tensors:
            return super().item_tokens(tensors, tiles)
        return self._grid_tokens(tensors["image_grid_thw"]), False

    def video_item_tokens(self, tensors):
        import torch

        grid = tensors.get("video_grid_thw")
        return torch.zeros(0, dtype=torch.int64) if grid is None else self._grid_tokens(grid)

    def _grid_tokens(self, grid):
        import torch

        return torch.as_tensor(grid).reshape(-1, 3).to(torch.int64).prod(-1) // (self.merge_size ** 2)

    def size_inputs(self, expander, sizes):
        ip = self.processor.image_processor
        # replace_image_token reads only the grid's product (patches), which is all this needs to hold
        patches = [int(ip.get_number_of_image_patches(h, w, dict(expander.settings))) for h, w in sizes]
        return {"image_grid_thw": np.array([[1, 1, q] for q in patches])}, {}


@register
class Qwen2VL(_Qwen):
    name = "qwen2_vl"
    classes = ("Qwen2VLProcessor",)


@register
class Qwen25VL(_Qwen):
    name = "qwen2_5_vl"
    classes = ("Qwen2_5_VLProcessor",)


@register
class Qwen3VL(_Qwen):
    name = "qwen3_vl"
    classes = ("Qwen3VLProcessor", "Qwen3VLMoeProcessor")
