"""Families whose grammar is one already written, with a token, a count or a tensor of their own: DeepSeek-VL (a fixed
`<image_placeholder>` run), DeepSeek-VL-Hybrid (the same, plus high-resolution pixels), Video-LLaVA (LLaVA's runs from
its legacy `pixel_values_images`), LightOnOCR (Pixtral's patch grid as a plain run), Qianfan-OCR (InternVL's bracket
behind another text placeholder) and Emu3 (a bracket whose head holds the image's size as text).

Each is proven on its real processor by the grammar probe (`chunker.families.probe`) and by `tests/test_family_more.py`.
"""

from __future__ import annotations

import numpy as np

from ..spans import IMAGE, split_runs
from ._base import FamilyAdapter, register
from .internvl import InternVL


@register
class DeepseekVL(FamilyAdapter):
    """`<image_placeholder>×num_image_tokens` without brackets; back-to-back images are cut by the fixed count."""

    name = "deepseek_vl"
    classes = ("DeepseekVLProcessor",)
    kind = "run"
    image = "attr:image_token"
    tokens_per_image = "processor:num_image_tokens"
    bos = True
    sizes_refused = "its image processor pads every image to a square; the size path is not proven for it"


@register
class DeepseekVLHybrid(DeepseekVL):
    """As DeepSeek-VL; every image also has one row of `high_res_pixel_values` (the SAM encoder's input)."""

    name = "deepseek_vl_hybrid"
    classes = ("DeepseekVLHybridProcessor",)
    tensor_streams = (("high_res_pixel_values", IMAGE),)


@register
class VideoLlava(FamilyAdapter):
    """LLaVA's fixed `<image>` runs, the pixels in `pixel_values_images` (the processor's legacy key, which the model
    takes). A video's `<video>` run is kept out of every cut: its tokens may only lie inside a media span, so a row with
    a video is refused by name (`SpanError`); videos need the torchvision video processor, which is not proven here."""

    name = "video_llava"
    classes = ("VideoLlavaProcessor",)
    kind = "run"
    image = "attr:image_token"
    body = ("attr:video_token",)
    tokens_per_image = "crop"
    bos = True
    tensor_streams = (("pixel_values_images", IMAGE),)

    def number(self, ref):
        if ref != "crop":
            return super().number(ref)
        p = self.processor
        crop = p.image_processor.crop_size
        side = (crop["height"] // p.patch_size) * (crop["width"] // p.patch_size)
        return side + p.num_additional_image_tokens - int(p.vision_feature_select_strategy == "default")

    def model_inputs(self, batch, media):
        """The processor's `model_input_names` list `pixel_values` only, but its legacy output (the default) is
        `pixel_values_images`, which the model takes too."""
        out = super().model_inputs(batch, media)
        tensors = media.tensors()
        if "pixel_values_images" in tensors:
            out["pixel_values_images"] = tensors["pixel_values_images"]
        return out

    def item_tokens(self, tensors, tiles=None):
        import torch

        pixels = tensors.get("pixel_values_images", tensors.get("pixel_values"))
        if pixels is None:
            return super().item_tokens(tensors, tiles)
        return torch.full((int(pixels.shape[0]),), int(self.spec.tokens_per_image), dtype=torch.int64), False


@register
class LightOnOcr(FamilyAdapter):
    """A plain `image_token` run per image of `(h // step) · (w // step)` tokens, `(h, w)` its resized size in
    `image_sizes` and `step` the patch size times the merge size (Pixtral's grid without its row breaks); back-to-back
    images form one run, cut by those counts."""

    name = "lighton_ocr"
    classes = ("LightOnOcrProcessor",)
    kind = "run"
    image = "attr:image_token"
    count_rule = "patch_grid"

    def _counts(self, sizes):
        step = int(self.processor.patch_size) * int(self.processor.spatial_merge_size)
        hw = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        return (hw[:, 0] // step) * (hw[:, 1] // step)

    def expected_item_tokens(self, tensors, stream):
        if stream != IMAGE or "image_sizes" not in tensors or self.processor is None:
            return None
        return self._counts(tensors["image_sizes"])

    def items(self, spans, tensors, images, *, row=None):
        counts = self.expected_item_tokens(tensors, IMAGE)
        if not len(spans) or counts is None:
            return spans
        return split_runs(spans, counts, row=row)

    def item_tokens(self, tensors, tiles=None):
        import torch

        if "image_sizes" not in tensors or self.processor is None:
            return super().item_tokens(tensors, tiles)
        return torch.as_tensor(self._counts(torch.as_tensor(tensors["image_sizes"]).cpu().numpy())), False


@register
class QianfanOCR(InternVL):
    """InternVL's `<img> <IMG_CONTEXT>×(S·patches) </img>`; its chat template writes `image_placeholder_token`
    (`<image>`) for an image, which the processor expands (InternVL's writes the context token itself). The grammar
    probe renders that placeholder; conversation rows also need the encoder to count it (it counts `image_token`), so
    this family is proven on pre-tokenized rows."""

    name = "qianfan_ocr"
    classes = ("QianfanOCRProcessor",)


@register
class Emu3(FamilyAdapter):
    """`<|image start|> H*W <|image token|> <image>×H·(W+1) <|extra_201|> <|image end|>`: a bracket from the start to
    the end token (the size text and the wrapper token inside it), `(H, W)` the resized size in `image_sizes` over the
    VQ downsampling (8)."""

    name = "emu3"
    classes = ("Emu3Processor",)
    kind = "bracket"
    image = "attr:image_token"
    open = ("attr:boi_token",)
    close = ("attr:eoi_token",)
    bos = True
    count_rule = "sizes"

    def _counts(self, sizes):
        ratio = int(getattr(self.processor, "downsample_ratio", 8))
        hw = np.asarray(sizes, dtype=np.int64).reshape(-1, 2) // ratio
        return hw[:, 0] * (hw[:, 1] + 1)

    def expected_item_tokens(self, tensors, stream):
        if stream != IMAGE or "image_sizes" not in tensors or self.processor is None:
            return None
        return self._counts(tensors["image_sizes"])

    def item_tokens(self, tensors, tiles=None):
        import torch

        if "image_sizes" not in tensors or self.processor is None:
            return super().item_tokens(tensors, tiles)
        return torch.as_tensor(self._counts(torch.as_tensor(tensors["image_sizes"]).cpu().numpy())), False
