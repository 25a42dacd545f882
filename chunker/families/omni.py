"""Qwen2.5-Omni and Qwen3-Omni-MoE (the thinker's input): images and videos as in Qwen2-VL, with the Omni tokens
`<|vision_bos|> <|IMAGE|>×(t·h·w/merge²) <|vision_eos|>` (`<|VIDEO|>` for a video), and audio items
`<|audio_bos|> <|AUDIO|>×k <|audio_eos|>`, one span per audio item.

k comes from the item's valid frames (its `feature_attention_mask` row) by the processor's own rule, stored as data
in the spec (`spec.extra["audio_count"]`, read by `chunker.media.audio_item_tokens`): Qwen2.5-Omni's encoder halves
the frames with a stride-2 convolution and a stride-2 pooling; Qwen3-Omni's encodes them in chunks of `2·n_window`
frames, each chunk through three stride-2 convolutions. The collator makes a window's features with the processor's
own feature-extractor settings (`spec.extra["audio_features"]`).

The thinker computes its 3-D rope positions from `input_ids` and the grids itself (no type-id column), per row; a
window row therefore needs only its own grids and its own audio rows, in order. Audio taken from a video
(`load_audio_from_video`: its tokens interleave with the frames' inside the video's bracket) is refused by name by the
span finder (an audio span inside a video span).
"""

from __future__ import annotations

from ..spans import AUDIO, VIDEO
from ._base import register
from .qwen import _Qwen

# Qwen2.5-Omni: `_get_feat_extract_output_lengths` = conv(k3, s2, p1) then avg-pool(k2, s2)
QWEN2_5_OMNI_AUDIO = {"rule": "conv", "layers": [[3, 2, 1], [2, 2, 0]]}


class _Omni(_Qwen):
    image = "attr:image_token"
    video = "attr:video_token"
    open = ("attr:vision_bos_token",)
    close = ("attr:vision_eos_token",)
    type_ids_column = None  # the thinker reads positions off input_ids, and its forward takes no type ids
    tensor_streams = (("feature_attention_mask", AUDIO), ("video_second_per_grid", VIDEO))
    audio_extractor_kwargs: tuple = ()  # (name, value) pairs the processor passes its feature extractor

    def build_spec(self):
        from dataclasses import replace

        from ._base import token_id

        spec = super().build_spec()
        token = lambda ref: token_id(self.processor, ref, self.name)
        audio = {"audio_token_id": token("attr:audio_token"), "audio_open_ids": (token("attr:audio_bos_token"),),
                 "audio_close_ids": (token("attr:audio_eos_token"),)}
        extra = {**spec.extra, "audio_count": self.audio_rule(),
                 "audio_features": {"kwargs": {"return_attention_mask": True, **dict(self.audio_extractor_kwargs)},
                                    "rename": {"attention_mask": "feature_attention_mask"}}}
        return replace(spec, **audio, extra=extra)

    def audio_rule(self) -> dict:
        """The processor's count of audio tokens from an item's valid frames, as data."""
        return dict(QWEN2_5_OMNI_AUDIO)

    def position_ids(self, batch, starts, model=None):
        """`(4, B, L)` for packed rows: text positions restarting at every window, then each window's 3-D rope as
        the thinker's own `get_rope_index` gives it for that window alone (`model` is needed: its rope rule reads
        the audio lengths and the video timing)."""
        import torch

        from ..errors import ConfigError
        from ..ops import segment_positions

        if model is None:
            raise ConfigError(
                f"packed {self.name} rows need the thinker's own rope rule: pass WindowCollator(processor, model=model)"
            )
        text = segment_positions(starts)
        return torch.cat([text[None], _omni_rope_per_window(batch, starts, model).to(text.dtype)], 0)


def _omni_rope_per_window(batch, starts, model):
    """The thinker's `get_rope_index` on the packed windows laid out as rows of their own, put back in place."""
    import torch

    from .qwen import _rope_index_of, _windows_as_rows

    rope_index = _rope_index_of(model)
    (rows,), mask, (seg, local) = _windows_as_rows(starts, batch["input_ids"])
    frames = batch.get("feature_attention_mask")
    rope, _ = rope_index(rows, batch.get("image_grid_thw"), batch.get("video_grid_thw"), mask.to(torch.int64),
                         False, None if frames is None else frames.sum(-1), batch.get("video_second_per_grid"))
    return rope[:, seg, local].reshape(3, *starts.shape)


@register
class Qwen25Omni(_Omni):
    name = "qwen2_5_omni"
    classes = ("Qwen2_5OmniProcessor",)
    audio_extractor_kwargs = (("padding", "max_length"),)  # what Qwen2_5OmniProcessor._process_audio passes


@register
class Qwen3Omni(_Omni):
    name = "qwen3_omni_moe"
    classes = ("Qwen3OmniMoeProcessor",)
    audio_extractor_kwargs = (("padding", True), ("truncation", False))  # Qwen3OmniMoeProcessor.audio_kwargs

    def audio_rule(self):
        # `_get_feat_extract_output_lengths(L, n_window)`: chunks of 2·n_window frames, three conv(k3, s2, p1) each
        window = int(getattr(self.processor, "n_window", 50)) if self.processor is not None else 50
        return {"rule": "conv", "layers": [[3, 2, 1]] * 3, "chunk": 2 * window}
