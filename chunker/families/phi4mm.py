"""Phi-4-multimodal (`Phi4MultimodalProcessor`): images and audio as bare placeholder runs, `<|image|>×n` and
`<|audio|>×k`, with no brackets.

The processor replaces each `<|image|>` of the text with `num_img_tokens` copies of itself and each `<|audio|>` with
`audio_embed_sizes` copies, so back-to-back items (the checkpoint's template writes a message's items with nothing
between them) form one run, cut by each item's own count as LLaVA-NeXT's runs are:

- an image needs `256 + 1 + Σ mask + Σ mask[:, 0] + 16` tokens (the processor's rule, its 16x16 global block hard-coded),
  the mask being the image's HD crops' `image_attention_mask` downsampled 2x2 and laid out as the crop grid
  (`image_sizes` / crop size crops);
- an audio item needs its `audio_embed_sizes` entry (its frames / the compression rate, rounded up).

Each item owns one row of `image_pixel_values` (its global image and HD crops, zero crops after), `image_sizes`,
`image_attention_mask`, and of `audio_input_features`, `audio_embed_sizes`, `audio_attention_mask` (the feature
extractor returns the mask only for two or more audio items).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..spans import AUDIO, IMAGE, Spans, split_runs
from ._base import FamilyAdapter, register, token_id

# the tokens of an image beside its HD crops, as `Phi4MultimodalImageProcessor` counts them: the global block
# (16 rows of 16 + a row separator) and the separator between sub-images and global image
_GLOBAL_TOKENS = 256 + 16 + 1


@register
class Phi4Multimodal(FamilyAdapter):
    name = "phi4_multimodal"
    classes = ("Phi4MultimodalProcessor",)
    kind = "run"
    image = "attr:image_token"
    tensor_streams = (("image_pixel_values", IMAGE), ("image_attention_mask", IMAGE),
                      ("audio_input_features", AUDIO), ("audio_embed_sizes", AUDIO), ("audio_attention_mask", AUDIO))
    count_rule = "sizes"
    sizes_refused = "its image counts come from each image's HD crop mask, which only its image processor computes"

    def build_spec(self):
        spec = super().build_spec()
        audio = token_id(self.processor, "attr:audio_token", self.name)
        return replace(spec, audio_token_id=audio,
                       extra={**spec.extra, "audio_count": {"rule": "sizes", "key": "audio_embed_sizes"}})

    def items(self, spans, tensors, images, *, row=None):
        """Image and audio runs cut into items by each item's own count (a run left whole when the row's media do not
        say: the splitter's count checks then name the row)."""
        if not len(spans):
            return spans
        parts = []
        for stream, counts in ((IMAGE, self._image_counts(tensors, images)),
                               (AUDIO, tensors.get("audio_embed_sizes"))):
            own = spans.take(spans.kinds == stream)
            if len(own) and counts is not None:
                own = split_runs(own, np.asarray(counts, dtype=np.int64).reshape(-1), row=row)
            parts.append(own)
        merged = Spans(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("starts", "ends", "kinds", "counts")))
        return merged.take(np.argsort(merged.starts, kind="stable"))

    def expected_item_tokens(self, tensors, stream):
        if stream != IMAGE or "image_attention_mask" not in tensors or "image_sizes" not in tensors:
            return None
        return image_tokens(tensors["image_sizes"], tensors["image_attention_mask"], self.crop_size)

    def item_tokens(self, tensors, tiles=None):
        import torch

        if "image_attention_mask" not in tensors or "image_sizes" not in tensors:
            return super().item_tokens(tensors, tiles)
        counts = image_tokens(tensors["image_sizes"].cpu().numpy(), tensors["image_attention_mask"].cpu().numpy(),
                              self.crop_size)
        return torch.as_tensor(counts, dtype=torch.int64), False

    def model_inputs(self, batch, media):
        """The batch's media tensors; `audio_attention_mask` rebuilt for every audio item when some rows carry
        features without it (a window or batch of one audio item: the feature extractor leaves it out)."""
        import torch

        out = media.model_inputs(self.processor)
        feats = out.get("audio_input_features")
        mask = out.get("audio_attention_mask")
        if feats is None or (mask is not None and mask.shape[0] == feats.shape[0]):
            return out
        parts = []
        for m in media.rows:
            f = m.tensors.get("audio_input_features")
            if f is None or not f.shape[0]:
                continue
            own = m.tensors.get("audio_attention_mask")
            own = torch.ones(f.shape[:2], dtype=torch.bool) if own is None else own.to(torch.bool)
            parts.append(torch.nn.functional.pad(own, (0, feats.shape[1] - own.shape[1])))
        out["audio_attention_mask"] = torch.cat(parts).to(feats.device)
        return out

    @property
    def crop_size(self) -> int:
        """Pixels per side of an HD crop (the image processor's square size)."""
        if self.processor is None:
            return 448
        size = self.processor.image_processor.size
        return int(size["height"] if isinstance(size, dict) else size.height)

    def _image_counts(self, tensors, images):
        counts = self.expected_item_tokens(tensors, IMAGE)
        if counts is None and images and self.processor is not None:
            from .sizes import image_hw

            made = self.processor.image_processor([_blank(image_hw(im)) for im in images], return_tensors="np")
            counts = np.asarray(made["num_img_tokens"], dtype=np.int64)
        return counts


def image_tokens(image_sizes, image_attention_mask, crop_size: int) -> np.ndarray:
    """Placeholder tokens of each image from its `image_sizes` (the resized height and width) and its crops'
    `image_attention_mask`, by `Phi4MultimodalImageProcessor`'s own rule.

    Example:
        >>> mask = np.ones((1, 3, 32, 32))                  # a global image and two 448x448 crops, nothing padded
        >>> image_tokens(np.array([[448, 896]]), mask, 448).tolist()   # 273 + 16 rows of 32 + 16
        [801]
    """
    sizes = np.asarray(image_sizes, dtype=np.int64).reshape(-1, 2)
    mask = np.asarray(image_attention_mask)
    out = []
    for (height, width), crops in zip(sizes.tolist(), mask):
        rows, cols = height // crop_size, width // crop_size
        sub = crops[1:1 + rows * cols, 0::2, 0::2]
        half = sub.shape[-1]
        grid = sub.reshape(rows, cols, half, half).transpose(0, 2, 1, 3).reshape(rows * half, cols * half)
        out.append(_GLOBAL_TOKENS + int(grid.sum()) + int(grid[:, 0].sum()))
    return np.asarray(out, dtype=np.int64)


def _blank(hw):
    """A black RGB image of (height, width): the crop mask and the count depend on an image's size only."""
    from PIL import Image

    height, width = hw
    return Image.new("RGB", (int(width), int(height)))
