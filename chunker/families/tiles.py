"""Tile grammars: an image is a global view and (large images) tiles of it, each tile a fixed run of placeholders.

- Aya Vision: `<|START_OF_IMG|> (TILE_k <|IMG_PATCH|>×S)… TILE_GLOBAL <|IMG_PATCH|>×S <|END_OF_IMG|>`, one pixel row
  per tile (the global view last); `S = (img_size / patch_size)²`.
- Ovis2: `<IMG_START> <IMG_ATOM>×S <IMG_GRID> (<IMG_ATOM>×S, cells split by <IMG_COL> / <IMG_ROW>) <IMG_END>`, one
  pixel row per view (the global view first; a 1×1 grid has no cells).
- Aria: `<fim_prefix> <|img|>×(crops·S) <fim_suffix>` (the brackets come from the template), one pixel row and one
  `pixel_mask` row per crop; `S = size_conversion[max_image_size]`.
- Idefics2: `<fake_token_around_image> <image>×S <fake_token_around_image>` per image (and per crop, when image
  splitting is on); back-to-back blocks share the fake token between them, so a block is a bracketless run of `S`
  placeholders and an image is `1 + crops` consecutive runs. The fake tokens are plain text embeddings to the model,
  outside the spans: a window may end between a run and its closing fake token (counts and pixels stay whole).
"""

from __future__ import annotations

import numpy as np

from ..errors import ImageCountError
from ..spans import IMAGE, group_spans
from ._base import FamilyAdapter, register
from .sizes import image_settings


class _Tiled(FamilyAdapter):
    """A bracket of `tokens_per_tile`-token tiles with one pixel row per tile (InternVL's rule, other tokens)."""

    kind = "bracket"
    pixel_rules = (("pixel_values", "tiles", 0),)
    count_rule = "tiles"

    def item_tokens(self, tensors, tiles=None):
        import torch

        if "num_patches" in tensors:  # tiles of each image, from the image processor (the collator's check)
            per = int(self.spec.tokens_per_tile)
            return torch.as_tensor(tensors["num_patches"]).reshape(-1).to(torch.int64) * per, False
        return super().item_tokens(tensors, tiles)


@register
class AyaVision(_Tiled):
    name = "aya_vision"
    classes = ("AyaVisionProcessor",)
    image = "attr:img_patch_token"
    open = ("attr:start_of_img_token",)
    close = ("attr:end_of_img_token",)
    tokens_per_tile = "patches_per_tile"
    bos = True
    sizes_refused = "its tile count is not derived from sizes here yet"

    def number(self, ref):
        if ref == "patches_per_tile":  # `replace_image_token`'s rule: (img_size // patch_size)² per tile
            return (int(self.processor.img_size) // int(self.processor.patch_size)) ** 2
        return super().number(ref)


@register
class Ovis2(_Tiled):
    name = "ovis2"
    classes = ("Ovis2Processor",)
    image = "<IMG_ATOM>"
    open = ("<IMG_START>",)
    close = ("<IMG_END>",)
    tokens_per_tile = "processor:image_seq_length"
    tensor_streams = (("grids", IMAGE),)  # (rows, cols) per image: read by `image_outputs`, never passed on
    sizes_recipe = "grids"

    def image_outputs(self, out, images_per_row):
        # the image processor says each image's grid (rows, cols); a grid of more than one cell adds its cells after
        # the global view (`replace_image_token`), so the image owns 1 + rows*cols pixel rows, else 1
        import torch

        out = dict(out)
        grids = out.pop("grids", None)
        if grids is not None:
            cells = torch.as_tensor(grids).reshape(-1, 2).prod(-1).to(torch.int64)
            out["num_patches"] = torch.where(cells > 1, cells + 1, torch.ones_like(cells))
        return out

    def size_inputs(self, expander, sizes):
        # each image's (rows, cols) by the image processor's own grid rule (`crop_image_to_patches`), from its size
        from transformers.models.ovis2 import image_processing_pil_ovis2 as rule

        ip = self.processor.image_processor
        get = lambda key: expander.settings.get(key, getattr(ip, key))
        tile = get("size")
        height, width = (tile["height"], tile["width"]) if isinstance(tile, dict) else (tile.height, tile.width)
        grids = []
        for h, w in sizes:
            if not get("crop_to_patches") or get("max_patches") <= 1:
                grids.append((1, 1))
            elif get("use_covering_area_grid"):
                cols, rows = rule.get_min_tile_covering_grid((h, w), target_patch_size=height,
                                                             max_image_tiles=get("max_patches"))
                grids.append((rows, cols))
            else:
                cols, rows = rule.get_optimal_tiled_canvas((h, w), (height, width), get("min_patches"),
                                                           get("max_patches"))
                grids.append((rows, cols))
        return {"grids": np.asarray(grids, dtype=np.int64).reshape(-1, 2)}, {}


@register
class Aria(_Tiled):
    name = "aria"
    classes = ("AriaProcessor",)
    image = "attr:image_token"
    open = ("<fim_prefix>",)
    close = ("<fim_suffix>",)
    tokens_per_tile = "crop_tokens"
    pixel_rules = (("pixel_values", "tiles", 0), ("pixel_mask", "tiles", 0))
    tensor_streams = (("pixel_mask", IMAGE),)  # which pixels of each crop are the image's (the model masks patches)
    sizes_refused = "its crop count is not derived from sizes here yet"

    def number(self, ref):
        if ref == "crop_tokens":  # `replace_image_token`: size_conversion[crop side] tokens per crop
            ip = self.processor.image_processor
            side = image_settings(self.processor).get("max_image_size", getattr(ip, "max_image_size", None))
            return int(self.processor.size_conversion[int(side)])
        return super().number(ref)

    def image_outputs(self, out, images_per_row):
        # Aria's `num_crops` is one number for the whole call, the crops of every image (its `replace_image_token`
        # gives each image that many crops' tokens); Gemma 3's counts per image those beside the image
        import torch

        out = dict(out)
        crops = out.pop("num_crops", None)
        if crops is not None:
            crops = torch.as_tensor(crops).reshape(-1).to(torch.int64)
            out["num_patches"] = crops.expand(sum(images_per_row)) if crops.numel() == 1 else crops
        return out


@register
class Idefics2(FamilyAdapter):
    name = "idefics2"
    classes = ("Idefics2Processor",)
    kind = "run"
    image = "attr:image_token"
    tokens_per_image = "processor:image_seq_len"
    tokens_per_tile = "processor:image_seq_len"  # one pixel row per block: an image owns count / S rows
    bos = True
    group_crops = True
    pixel_rules = (("pixel_values", "tiles", 0), ("pixel_attention_mask", "tiles", 0))
    batch_axis_pixels = True
    count_rule = "fixed"
    sizes_refused = "its processor rewrites the text itself (a space after a closing fake token)"
    CROPS = 4  # `Idefics2ImageProcessor.split_image`: four quarters before the whole image

    def extra(self):
        out = super().extra()
        out["crops_per_image"] = self.CROPS if self._splits({}) else 0
        return out

    def _splits(self, processor_kwargs) -> bool:
        if self.processor is None:
            return False
        default = getattr(self.processor.image_processor, "do_image_splitting", False)
        return bool(image_settings(self.processor, processor_kwargs).get("do_image_splitting", default))

    def row_tensors(self, tensors, images, processor_kwargs):
        # pixels come per text row (B, T, 3, H, W); the crops of each image are said by `num_crops`
        out = {k: v[0] if k in ("pixel_values", "pixel_attention_mask") else v for k, v in tensors.items()}
        if images:
            crops = self.CROPS if self._splits(processor_kwargs) else 0
            out["num_crops"] = np.full(len(images), crops, dtype=np.int64)
        return out

    def items(self, spans, tensors, images, *, row=None):
        if "num_crops" in tensors:
            return group_spans(spans, 1 + np.asarray(tensors["num_crops"]).reshape(-1))
        crops = int(self.spec.extra.get("crops_per_image", 0))
        if not crops or not len(spans):
            return spans
        if len(spans) % (1 + crops):
            raise ImageCountError(
                f"the row holds {len(spans)} image blocks, not whole images of {1 + crops} blocks (the processor splits "
                "every image into 4 crops and the whole image): tokenize the whole conversation with this processor "
                "and its settings",
                row=row,
            )
        return group_spans(spans, np.full(len(spans) // (1 + crops), 1 + crops))
