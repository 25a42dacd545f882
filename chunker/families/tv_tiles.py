"""Tile grammars of processors whose image processor has only a torchvision backend.

- Command A Vision (`Cohere2VisionProcessor`): `<|START_OF_IMG|> (<|IMG_PATCH|>×p² <|IMG_LINE_BREAK|>)×tiles
  <|END_OF_IMG|>`, one pixel row per tile (a thumbnail last when the image has more than one tile); `p` is the image
  processor's `patch_size` (merged patches per tile side), so an image owns `count / p²` pixel rows, read off its span.
- Llama 4 (`Llama4Processor`): `<|image_start|> [(<|patch|>×n, tiles of a row split by <|tile_x_separator|>, rows
  ended by <|tile_y_separator|>)] <|image|> <|patch|>×n <|image_end|>`: an image of more than one tile has its tiles,
  then a global tile; one pixel row per tile (the global one last). `<|patch|>` is the placeholder the model fills,
  `n = (tile / patch_size)² / downsample_ratio`; the image processor's `aspect_ratios` (tile rows, columns) say each
  image's pixel rows in the collator. Its pixels are bfloat16 (`process` turns them into float32 numpy arrays).
"""

from __future__ import annotations

from ..spans import IMAGE
from ._base import register
from .tiles import _Tiled


@register
class Cohere2Vision(_Tiled):
    name = "cohere2_vision"
    classes = ("Cohere2VisionProcessor",)
    image = "attr:image_token"
    open = ("attr:boi_token",)
    close = ("attr:eoi_token",)
    body = ("attr:img_line_break_token",)  # ends every tile: only inside an image's span
    tokens_per_tile = "patches_per_tile"
    bos = True
    sizes_refused = "its tile count is not derived from sizes here yet"

    def number(self, ref):
        if ref == "patches_per_tile":  # `replace_image_token`'s rule: patch_size² image tokens per tile
            return int(self.processor.patch_size) ** 2
        return super().number(ref)


@register
class Llama4(_Tiled):
    name = "llama4"
    classes = ("Llama4Processor",)
    image = "attr:img_patch_token"
    open = ("attr:start_of_img_token",)
    close = ("attr:end_of_img_token",)
    body = ("attr:fake_image_token", "attr:tile_token", "attr:tile_global_token")  # only inside an image's span
    tokens_per_tile = "patches_per_tile"
    tensor_streams = (("aspect_ratios", IMAGE),)  # (tile rows, columns) per image: read by `image_outputs`, never passed on
    bos = True
    sizes_refused = "its tile count is not derived from sizes here yet"

    def number(self, ref):
        if ref == "patches_per_tile":  # `replace_image_token`'s rule on the image processor's tile size
            size = self.processor.image_processor.size
            side = size["height"] if isinstance(size, dict) else size.height
            return (side // int(self.processor.patch_size)) ** 2 // int(self.processor.downsample_ratio)
        return super().number(ref)

    def process(self, processor, **kwargs):
        import torch

        out = processor(**{**kwargs, "return_tensors": "pt"})
        as_array = lambda v: (v.float() if v.dtype == torch.bfloat16 else v).numpy()
        return {k: as_array(v) if isinstance(v, torch.Tensor) else v for k, v in out.items()}

    def image_outputs(self, out, images_per_row):
        # an image of r x c tiles owns r*c pixel rows and, when r*c > 1, a global tile after them
        # (`Llama4ImageProcessor._preprocess`, `Llama4Processor._prompt_split_image`)
        import torch

        out = dict(out)
        ratios = out.pop("aspect_ratios", None)
        if ratios is not None:
            tiles = torch.as_tensor(ratios).reshape(-1, 2).prod(-1).to(torch.int64)
            out["num_patches"] = torch.where(tiles > 1, tiles + 1, tiles)
        return out
