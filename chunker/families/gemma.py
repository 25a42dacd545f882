"""Gemma 3 (bracketed soft tokens, pan-and-scan crops grouped with their image), PaliGemma (image prefix) and Gemma 4
(bracketed soft tokens counted from each image's size; audio spans `<|audio> <|audio|>×k <audio|>`, k from the frame
mask; a video's timestamped frames as one item)."""

from __future__ import annotations

import sys

import numpy as np

from ..spans import IMAGE, VIDEO, first_overlap, group_spans, merge_spans
from ._base import FamilyAdapter, register, token_id
from .sizes import image_settings


@register
class Gemma3(FamilyAdapter):
    name = "gemma3"
    classes = ("Gemma3Processor",)
    kind = "bracket"
    image = "attr:image_token"
    open = ("attr:boi_token",)
    close = ("attr:eoi_token",)
    tokens_per_image = "processor:image_seq_length"
    type_ids_column = "token_type_ids"
    bos = True
    group_crops = True
    pixel_rules = (("pixel_values", "crops", 0),)
    count_rule = "fixed"
    sizes_recipe = "crops"

    def row_tensors(self, tensors, images, processor_kwargs):
        # the processor drops num_crops from its output; the splitter needs it to keep an image with its crops
        if images and "num_crops" not in tensors:
            crops = self.crops_per_image([im.size[::-1] for im in images], processor_kwargs)
            if crops is not None:
                tensors = {**tensors, "num_crops": np.asarray(crops, dtype=np.int64)}
        return tensors

    def items(self, spans, tensors, images, *, row=None):
        if "num_crops" in tensors:
            return group_spans(spans, 1 + np.asarray(tensors["num_crops"]).reshape(-1))
        return spans

    def position_ids(self, batch, starts, model=None):
        """Positions restarting at every window; refused where transformers would mask a packed row's images wrong.

        Gemma 3 lets an image's tokens attend to each other both ways (a block overlay from `token_type_ids`).
        transformers releases whose `masking_utils` has `remap_positions_for_packed_sequence` (5.24, not 5.17) pass
        that overlay, in the sliding-window layers, through the per-window positions, so it reads the image blocks
        at the wrong places for every window after a row's first (measured: logits 0.45 off). Such a batch is
        refused rather than trained wrong.
        """
        from transformers import masking_utils

        from ..errors import ConfigError

        positions = super().position_ids(batch, starts, model)
        image = batch.get("token_type_ids")
        if image is not None and hasattr(masking_utils, "remap_positions_for_packed_sequence"):
            index = _raw_index(positions)
            if bool(((image == 1) & (positions != index)).any()):
                import transformers

                raise ConfigError(
                    f"transformers {transformers.__version__} builds Gemma 3's sliding-window masks of packed rows "
                    "with the image-block overlay at the wrong positions for images in a row's second or later "
                    "window, which would train on wrong attention: collate Gemma 3 windows unpacked (no "
                    "pack_windows, padding_free=False), or use transformers 5.17, where packed rows train exactly"
                )
        return positions

    def crops_per_image(self, sizes, processor_kwargs):
        """Pan-and-scan crops of each (height, width) image, from the image processor's own crop rule; None when off.

        The crops are counted by running the image processor's crop rule (`pan_and_scan` of the PIL backend,
        `pan_and_scan_batched` of the torch one) on a zero-stride array of each image's size: views only.
        """
        settings = image_settings(self.processor, processor_kwargs)
        if not settings.get("do_pan_and_scan"):
            return None
        keys = ("pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops", "pan_and_scan_min_ratio_to_activate")
        ip = self.processor.image_processor
        args = {k: settings.get(k, getattr(ip, k, None)) for k in keys}
        crops = []
        for height, width in sizes:
            if hasattr(ip, "pan_and_scan"):
                found = ip.pan_and_scan(np.broadcast_to(np.zeros((), np.uint8), (1, height, width)), **args)
            else:
                import torch

                found = ip.pan_and_scan_batched(torch.zeros(()).expand(1, 1, height, width), **args)
            crops.append(len(found))
        return crops

    def size_inputs(self, expander, sizes):
        crops = self.crops_per_image(sizes, expander.processor_kwargs)
        tensors = {} if crops is None else {"num_crops": np.asarray(crops, dtype=np.int64)}
        return {"num_crops": crops or [0] * len(sizes)}, tensors


def _raw_index(positions):
    """`(B, L)` raw indices 0..L-1 of a batch of positions."""
    import torch

    return torch.arange(positions.shape[-1], device=positions.device).expand_as(positions)


@register
class PaliGemma(FamilyAdapter):
    name = "paligemma"
    classes = ("PaliGemmaProcessor",)
    kind = "run"
    image = "attr:image_token"
    tokens_per_image = "processor:image_seq_length"
    bos = True
    prefix_media = True
    count_rule = "fixed"
    sizes_refused = "its processor rewrites the text itself (images first, BOS after them)"


@register
class Gemma4(FamilyAdapter):
    """Gemma 4: `<|image> <|image|>×N <image|>` with N from each image's size (aspect-preserving resize to at most
    `max_soft_tokens` pooled patches); one padded pixel row and one `image_position_ids` row per image, whose
    non-padding patches (not (-1, -1)) say N.

    Audio: `<|audio> <|audio|>×k <audio|>`, one span per audio item, with one padded `input_features` row (log-mel
    frames) and one `input_features_mask` row per item; k is the mask halved twice as `replace_audio_token` does
    (the encoder's two stride-2 convolutions), so the features of an item alone or padded beside longer ones need
    the same k. A processor without audio tokens keeps its audio ids out of every cut (refused by name).

    Video (a processor with its video processor): each frame is `mm:ss <|image> <|video|>×n <image|>`, the frames of a
    video joined by spaces; one video is ONE item, from its first frame's `<|image>` to its last frame's `<image|>`
    (the timestamps between its frames inside), its frames told apart by `num_frames_per_video`. Its tensors hold one
    row per frame (`pixel_values_videos`, `video_position_ids`: frames of all videos along one axis, transformers
    5.24) or one row per video (frames stacked, 5.17), and n per frame is its non-padding patches over the pooling
    area. The collator checks every frame span against its own frame's patches, so a video is checked frame by frame
    (its frames are separate brackets in the text; a bad item is named by its frame's index among the row's frames).
    Without a video processor the frames' brackets hold no image token and are refused by name."""

    name = "gemma4"
    classes = ("Gemma4Processor",)
    kind = "bracket"
    image = "attr:image_token"
    open = ("attr:boi_token",)
    close = ("attr:eoi_token",)
    type_ids_column = "mm_token_type_ids"
    tensor_streams = (("image_position_ids", IMAGE), ("video_position_ids", VIDEO), ("num_frames_per_video", VIDEO))
    pixel_rules = (("pixel_values_videos", "frames", 0), ("video_position_ids", "frames", 0))
    bos = True
    count_rule = "sizes"
    sizes_recipe = "soft_tokens"

    def build_spec(self):
        from dataclasses import replace

        from .audio import audio_grammar
        from .learned import guarded_ids

        spec = super().build_spec()
        if getattr(self.processor, "video_processor", None) is not None:
            spec = replace(spec, video_token_id=token_id(self.processor, "attr:video_token", self.name))
        audio = audio_grammar(self.processor)
        if audio is None:
            return replace(spec, body_ids=guarded_ids(self.processor))  # audio it cannot describe: never cut
        return replace(spec, **audio, extra={**spec.extra, "audio_count": {"rule": "halve", "times": 2}})

    def items(self, spans, tensors, images, *, row=None):
        """The spans, each video's frame brackets grouped into one item (`frames_per_video`); an image bracket holding
        no image token is refused by name: a video frame of a processor without a video processor (its `<|video|>` is
        no placeholder of the grammar), or an edited row.

        Raises:
            SpanError: such a bracket; video frames without the tensors that say which frames make a video; frames
                grouped around another media span.
            ImageCountError: the text holds another number of frames than the video tensors.
        """
        from ..errors import ImageCountError, SpanError

        empty = np.flatnonzero((spans.kinds == IMAGE) & (spans.counts == 0))
        if len(empty):
            k = int(empty[0])
            why = ("its video processor is missing (Gemma 4's needs torchvision): build the processor with it"
                   if self.spec.video_token_id is None else "the row was edited")
            raise SpanError(
                f"the image bracket at [{int(spans.starts[k])}, {int(spans.ends[k])}) holds no image token (seen "
                f"{len(empty)} such brackets; expected {self.processor.image_token if self.processor else 'image'} "
                f"tokens): a Gemma 4 video frame that this processor cannot split ({why}), or an edited row. Pass "
                "the row without its video", row=row,
            )
        video = spans.kinds == VIDEO
        if not video.any():
            return spans
        frames = self.frames_per_video(tensors)
        n_frames = int(video.sum())
        if frames is None:
            raise SpanError(
                f"the row holds {n_frames} Gemma 4 video frames but no num_frames_per_video (nor pixel_values_videos) "
                "to tell which frames make one video: give the video processor's tensors with the row "
                "(pixel_values_videos, video_position_ids, num_frames_per_video)", row=row,
            )
        if int(frames.sum()) != n_frames or (frames < 1).any():
            raise ImageCountError(
                f"the text holds {n_frames} video frames but the video tensors describe videos of {frames.tolist()} "
                "frames: give the tensors the processor made for this row's videos, in order", row=row,
            )
        merged = merge_spans(spans.take(~video), group_spans(spans.take(video), frames))
        k = first_overlap(merged)
        if k is not None:
            raise SpanError(
                f"media spans [{int(merged.starts[k])}, {int(merged.ends[k])}) and [{int(merged.starts[k + 1])}, "
                f"{int(merged.ends[k + 1])}) overlap: another media item lies between the frames of one video "
                f"(num_frames_per_video {frames.tolist()}); give the tensors the processor made for this row", row=row,
            )
        return merged

    @staticmethod
    def frames_per_video(tensors) -> np.ndarray | None:
        """Frames of each video: `num_frames_per_video` (transformers 5.24), else the frame axis of the stacked
        `pixel_values_videos` (num_videos, num_frames, ...) of 5.17; None when the tensors do not say."""
        if tensors.get("num_frames_per_video") is not None:
            return np.asarray(tensors["num_frames_per_video"], dtype=np.int64).reshape(-1)
        pixels = tensors.get("pixel_values_videos")
        if pixels is not None and np.ndim(pixels) == 4:
            return np.full(np.shape(pixels)[0], np.shape(pixels)[1], dtype=np.int64)
        return None

    def expected_item_tokens(self, tensors, stream):
        key = "video_position_ids" if stream == VIDEO else "image_position_ids"
        if stream not in (IMAGE, VIDEO) or key not in tensors:
            return None
        positions = np.asarray(tensors[key])
        if stream == IMAGE:
            return _soft_tokens(positions, self.pooled_patches)
        per_frame = _soft_tokens(positions, self.video_pooled_patches)
        if positions.ndim == 4:  # 5.17: (videos, frames, patches, 2)
            return per_frame.reshape(positions.shape[:2]).sum(-1)
        frames = self.frames_per_video(tensors)
        if frames is None or int(frames.sum()) != len(per_frame):
            return None  # the frame grouping is checked with the spans (`items`)
        total, ends = np.r_[0, np.cumsum(per_frame)], np.cumsum(frames)
        return (total[ends] - total[ends - frames]).astype(np.int64)

    def video_item_tokens(self, tensors):
        """Placeholder tokens of each video FRAME of a window, in order (each frame is its own bracket in the text)."""
        import torch

        positions = tensors.get("video_position_ids")
        return _soft_tokens(torch.as_tensor(() if positions is None else positions), self.video_pooled_patches)

    @property
    def video_pooled_patches(self) -> int:
        """Patches per soft token of a video frame (the video processor's pooling kernel's area)."""
        vp = getattr(self.processor, "video_processor", None)
        return int(vp.pooling_kernel_size) ** 2 if vp is not None else self.pooled_patches

    def item_tokens(self, tensors, tiles=None):
        import torch

        if "image_position_ids" not in tensors:
            return super().item_tokens(tensors, tiles)
        return _soft_tokens(torch.as_tensor(tensors["image_position_ids"]), self.pooled_patches), False

    @property
    def pooled_patches(self) -> int:
        """Patches per soft token (the pooling kernel's area)."""
        return int(self.processor.image_processor.pooling_kernel_size) ** 2

    def size_inputs(self, expander, sizes):
        ip = self.processor.image_processor
        resize = sys.modules[type(ip).__module__].get_aspect_ratio_preserving_size
        patch, pool, budget = (int(expander.settings.get(k) or getattr(ip, k))
                               for k in ("patch_size", "pooling_kernel_size", "max_soft_tokens"))
        counts = []
        for height, width in sizes:
            h, w = resize(height=height, width=width, patch_size=patch, max_patches=budget * pool**2,
                          pooling_kernel_size=pool)
            counts.append((h // patch) * (w // patch) // pool**2)
        return {"num_soft_tokens_per_image": counts}, {}


def _soft_tokens(positions, pooled: int):
    """Soft tokens of each image or frame from its position-id rows `(..., patches, 2)`: non-padding patches (not
    (-1, -1)) over the pooling area; none for an empty tensor (a window without such items, e.g. read back from Arrow).
    A torch tensor gives a torch tensor on its device, anything else a numpy array."""
    if not hasattr(positions, "numel"):  # not a torch tensor (numpy arrays have `device` too)
        positions = np.asarray(positions)
        if positions.size == 0:
            return np.zeros(0, dtype=np.int64)
        return ((positions != -1).all(-1).sum(-1).reshape(-1) // pooled).astype(np.int64)
    import torch

    if positions.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=positions.device)
    return ((positions != -1).all(-1).sum(-1).reshape(-1) // pooled).to(torch.int64)
