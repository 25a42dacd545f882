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

    def position_ids(self, batch, starts, model=None):
        """`(4, B, L)`: text positions restarting at every window (the mask's source), then the 3-D rope positions
        of each window as if it were alone: from the model's own `get_rope_index` run on the windows as rows when
        `model` is given, else from the image grids and the merge size (images only)."""
        import torch

        from ..errors import ConfigError
        from ..ops import mrope_image_positions, segment_positions

        text = segment_positions(starts)
        if model is not None:
            rope = _rope_per_window(batch, starts, model)
        elif "video_grid_thw" in batch:
            raise ConfigError(
                "packed Qwen-VL rows with videos need the model's own rope rule: pass WindowCollator(processor, "
                "model=model)"
            )
        else:
            rope = mrope_image_positions(batch["mm_token_type_ids"], starts, batch.get("image_grid_thw", ()),
                                         self.merge_size)
        return torch.cat([text[None], rope.to(text.dtype)], 0)

    def size_inputs(self, expander, sizes):
        ip = self.processor.image_processor
        # replace_image_token reads only the grid's product (patches), which is all this needs to hold
        patches = [int(ip.get_number_of_image_patches(h, w, dict(expander.settings))) for h, w in sizes]
        return {"image_grid_thw": np.array([[1, 1, q] for q in patches])}, {}


def _rope_per_window(batch, starts, model):
    """The model's `get_rope_index` on the packed windows laid out as rows of their own, put back in place."""
    import torch

    rope_index = _rope_index_of(model)
    (rows, types), mask, (seg, local) = _windows_as_rows(starts, batch["input_ids"], batch["mm_token_type_ids"])
    extra = {k: batch[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in batch}
    rope, _ = rope_index(rows, mm_token_type_ids=types, attention_mask=mask.to(torch.int64), **extra)
    return rope[:, seg, local].reshape(3, *starts.shape)


def _windows_as_rows(starts, *columns):
    """`(B, L)` columns of packed windows laid out one window per row (zero-padded): (the columns so laid out, the
    rows' mask, (row, position) of every packed token to put per-row results back)."""
    import torch

    b, n = starts.shape
    seg = starts.reshape(-1).cumsum(0) - 1
    pos = torch.arange(b * n, device=starts.device)
    local = pos - torch.where(starts.reshape(-1), pos, 0).cummax(0).values
    lengths = torch.bincount(seg)
    laid = []
    for column in columns:
        rows = torch.zeros((len(lengths), int(lengths.max())), dtype=columns[0].dtype, device=starts.device)
        rows[seg, local] = column.reshape(-1).to(rows.dtype)
        laid.append(rows)
    mask = torch.arange(laid[0].shape[1], device=starts.device) < lengths[:, None]
    return laid, mask, (seg, local)


def _rope_index_of(model):
    """The `get_rope_index` of the model, its inner model, or a wrapper's (PEFT, Unsloth) base model."""
    owner, rope_index = model, None
    for _ in range(6):
        rope_index = getattr(owner, "get_rope_index", None)
        if rope_index is not None or getattr(owner, "model", None) is None:
            break
        owner = owner.model
    if rope_index is None:
        from ..errors import ConfigError

        raise ConfigError(f"model= ({type(model).__name__}) has no get_rope_index: pass the Qwen-VL model, or no model")
    return rope_index


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
