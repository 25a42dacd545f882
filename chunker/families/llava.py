"""LLaVA 1.5 (`<image>×N` runs), LLaVA-NeXT, LLaVA-NeXT-Video and LLaVA-OneVision (runs whose length follows each
image's size)."""

from __future__ import annotations

import numpy as np

from ..spans import VIDEO, merge_spans, split_runs
from ._base import FamilyAdapter, register, zeros
from .sizes import patch_shape


@register
class Llava(FamilyAdapter):
    name = "llava"
    classes = ("LlavaProcessor",)
    kind = "run"
    image = "attr:image_token"
    tokens_per_image = "sizes"
    bos = True
    count_rule = "fixed"
    sizes_recipe = "fixed_shape"

    def check_sizes(self, expander, refuse):
        expander.patch_shape = patch_shape(self.processor.image_processor, expander.settings) or refuse(
            f"{type(self.processor.image_processor).__name__} has no fixed output shape (no center crop and no "
            "height/width size)"
        )

    def size_inputs(self, expander, sizes):
        return {"pixel_values": zeros((len(sizes), 3, *expander.patch_shape))}, {}


@register
class LlavaNext(FamilyAdapter):
    """Back-to-back images form one run of `<image>`; each image's own count (from its size) tells where it ends."""

    name = "llava_next"
    classes = ("LlavaNextProcessor", "Granite4VisionProcessor")
    kind = "run"
    image = "attr:image_token"
    bos = True
    count_rule = "sizes"
    sizes_recipe = "anyres"

    def items(self, spans, tensors, images, *, row=None):
        if not len(spans) or self.processor is None:  # counts come from the processor; without it, runs stay whole
            return spans
        if "image_sizes" in tensors:
            sizes = np.asarray(tensors["image_sizes"]).reshape(-1, 2).tolist()
        elif images:
            from .sizes import image_hw

            sizes = [image_hw(im, row=row) for im in images]
        else:
            return spans
        pixel = tensors["pixel_values"].shape[-2:] if "pixel_values" in tensors else None
        return split_runs(spans, self.item_counts(sizes, pixel), row=row)

    def item_tokens(self, tensors, tiles=None):
        import torch

        if "image_sizes" not in tensors or self.processor is None:
            return super().item_tokens(tensors, tiles)
        sizes = [tuple(int(v) for v in s) for s in torch.as_tensor(tensors["image_sizes"]).reshape(-1, 2).tolist()]
        data = self.processor._get_num_multimodal_tokens(image_sizes=sizes)
        counts = getattr(data, "num_image_tokens", None)
        return torch.tensor(counts if counts is not None else data["num_image_tokens"], dtype=torch.int64), False

    def item_counts(self, image_sizes, pixel_size=None) -> list[int]:
        """Placeholder tokens of each image, from (height, width) sizes, as the processor counts them."""
        processor = self.processor
        default = getattr(processor, "vision_feature_select_strategy", "default") == "default"
        if pixel_size is None:
            size = processor.image_processor.size
            edge = size.get("shortest_edge") or min(size["height"], size["width"])
            pixel_size = (edge, edge)
        height, width = pixel_size
        return [processor._get_number_of_features(int(h), int(w), height, width) - int(default)
                for h, w in image_sizes]

    def size_inputs(self, expander, sizes):
        image_sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        inputs = {"image_sizes": image_sizes, "pixel_values": zeros((1, 1, 3, *expander.patch_shape)),
                  "batch_num_images": [len(sizes)]}
        return inputs, {"image_sizes": image_sizes}

    def check_sizes(self, expander, refuse):
        size = expander.settings.get("size") or self.processor.image_processor.size
        edge = size.get("shortest_edge") or min(size["height"], size["width"])
        expander.patch_shape = patch_shape(self.processor.image_processor, expander.settings, square=True) or refuse(
            f"{type(self.processor.image_processor).__name__} has no fixed output shape"
        )
        if expander.patch_shape != (edge, edge):
            refuse(f"its patches ({expander.patch_shape}) are not its size ({edge}x{edge})")


@register
class LlavaOnevision(LlavaNext):
    """As LLaVA-NeXT, but every image of a multi-image row gets the same fixed count (`num_image_tokens + 1`)."""

    name = "llava_onevision"
    classes = ("LlavaOnevisionProcessor",)
    video = "attr:video_token"
    bos = False

    def item_counts(self, image_sizes, pixel_size=None):
        if len(image_sizes) > 1:
            default = getattr(self.processor, "vision_feature_select_strategy", "default") == "default"
            return [self.processor.num_image_tokens + 1 - int(default)] * len(image_sizes)
        return super().item_counts(image_sizes, pixel_size)


@register
class LlavaNextVideo(LlavaNext):
    """As LLaVA-NeXT for images (its own processor class, not a subclass); a video is one `<video>` run of
    frames × patches / 4 tokens (the model pools each frame's patch grid 2x2), read off its `pixel_values_videos`
    (videos, frames, 3, height, width), one row per video."""

    name = "llava_next_video"
    classes = ("LlavaNextVideoProcessor",)
    video = "attr:video_token"

    def items(self, spans, tensors, images, *, row=None):
        video = spans.kinds == VIDEO
        if not video.any():
            return super().items(spans, tensors, images, row=row)
        return merge_spans(super().items(spans.take(~video), tensors, images, row=row), spans.take(video))

    def expected_item_tokens(self, tensors, stream):
        if stream != VIDEO or "pixel_values_videos" not in tensors or self.processor is None:
            return None
        return self._video_tokens(np.shape(tensors["pixel_values_videos"]))

    def video_item_tokens(self, tensors):
        import torch

        if "pixel_values_videos" not in tensors or self.processor is None:
            return super().video_item_tokens(tensors)
        return torch.as_tensor(self._video_tokens(tuple(tensors["pixel_values_videos"].shape)))

    def _video_tokens(self, shape) -> np.ndarray:
        """Tokens of each video of a `pixel_values_videos` of `shape`, as `replace_video_token` counts them (none for an
        empty tensor: a window without videos, e.g. read back from Arrow)."""
        if len(shape) < 5 or not shape[0]:
            return np.zeros(0, dtype=np.int64)
        patch = int(self.processor.patch_size)
        per_frame = (int(shape[-2]) // patch) * (int(shape[-1]) // patch) // 4
        return np.full(int(shape[0]), int(shape[1]) * per_frame, dtype=np.int64)
