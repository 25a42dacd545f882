"""Offline Qwen2.5-Omni (and Qwen3-Omni-MoE) processors and tiny thinkers: images, videos and audio in one family.

Each processor is the real class (`Qwen2_5OmniProcessor`, `Qwen3OmniMoeProcessor`) with its real parts at a small
size: the Qwen2-VL image and video processors (torchvision backends: these builders need torchvision), the real
`WhisperFeatureExtractor` (128 mel bins, as the checkpoints; 4-second windows instead of 300 so features stay small),
a tiny in-process BPE tokenizer carrying the checkpoints' special tokens, and Qwen/Qwen2.5-Omni-7B's real chat
template (vendored, `tests/data/chat_templates/SOURCES.md`). Each model is the real thinker class
(`Qwen2_5OmniThinkerForConditionalGeneration`, `Qwen3OmniMoeThinkerForConditionalGeneration`) with a tiny random
config whose vision and audio towers match the processor.
"""

from __future__ import annotations

from ._tiny import HIDDEN, seeded_model, text_config

OMNI_FAMILIES = ("qwen2_5_omni", "qwen3_omni_moe")
# after ChatML's `<|endoftext|> <|im_start|> <|im_end|>` (`_tokenizer.chatml_tokenizer`): the checkpoints' media tokens
OMNI_SPECIALS = ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|vision_bos|>", "<|vision_eos|>", "<|vision_pad|>",
                 "<|IMAGE|>", "<|VIDEO|>")
# the names the processors read off the tokenizer (`Qwen2_5OmniProcessor.__init__`)
OMNI_NAMED = {"image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>", "video_token": "<|VIDEO|>",
              "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
              "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}
TEMPLATE = "Qwen--Qwen2.5-Omni-7B.jinja"
CHUNK_SECONDS = 4  # the feature extractor's window: audio up to 4 s (64,000 samples), 400 frames
PATCH = {"qwen2_5_omni": 14, "qwen3_omni_moe": 16}


def build_processor(family: str = "qwen2_5_omni", chat_template: str | None = None):
    """The real Omni processor, built offline: images of 4 to 64 merged tokens, videos of 4 to 16 per frame pair.

    Args:
        family: one of `OMNI_FAMILIES`.
        chat_template: a template instead of Qwen2.5-Omni-7B's.

    Example:
        >>> p = build_processor()                                                       # doctest: +SKIP
        >>> p.image_token, p.audio_token, type(p.feature_extractor).__name__             # doctest: +SKIP
        ('<|IMAGE|>', '<|AUDIO|>', 'WhisperFeatureExtractor')
    """
    import transformers
    from transformers import WhisperFeatureExtractor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from ._templates import vendored_template
    from ._tokenizer import chatml_tokenizer

    _check(family)
    patch = PATCH[family]
    unit = (2 * patch) ** 2
    geometry = {"patch_size": patch, "temporal_patch_size": 2, "merge_size": 2}
    image = Qwen2VLImageProcessor(min_pixels=4 * unit, max_pixels=64 * unit, **geometry)
    video = Qwen2VLVideoProcessor(min_pixels=4 * unit, max_pixels=16 * unit, **geometry)
    audio = WhisperFeatureExtractor(feature_size=128, chunk_length=CHUNK_SECONDS, return_attention_mask=True)
    cls = transformers.Qwen2_5OmniProcessor if family == "qwen2_5_omni" else transformers.Qwen3OmniMoeProcessor
    return cls(image_processor=image, video_processor=video, feature_extractor=audio,
               tokenizer=chatml_tokenizer(OMNI_SPECIALS, named=OMNI_NAMED),
               chat_template=chat_template or vendored_template(TEMPLATE))


def build_model(family: str, processor, seed: int = 0):
    """The real thinker with a tiny random config matching `processor` (vision and audio towers included).

    Args:
        family: one of `OMNI_FAMILIES`.
        processor: from `build_processor(family)`.
        seed: the weights are drawn under this seed (the global RNG is restored after).

    Returns:
        The thinker in training mode, float32, on CPU.

    Example:
        >>> model = build_model("qwen2_5_omni", build_processor())                      # doctest: +SKIP
        >>> type(model).__name__, type(model.model.audio_tower).__name__                # doctest: +SKIP
        ('Qwen2_5OmniThinkerForConditionalGeneration', 'Qwen2_5OmniAudioEncoder')
    """
    import transformers

    _check(family)
    tok = processor.tokenizer
    ids = {"audio_token_id": processor.audio_token_id, "image_token_id": processor.image_token_id,
           "video_token_id": processor.video_token_id,
           "vision_start_token_id": tok.convert_tokens_to_ids("<|vision_bos|>"),
           "vision_end_token_id": tok.convert_tokens_to_ids("<|vision_eos|>"),
           "audio_start_token_id": tok.convert_tokens_to_ids("<|audio_bos|>"),
           "audio_end_token_id": tok.convert_tokens_to_ids("<|audio_eos|>")}
    ip = processor.image_processor
    vision = {"depth": 2, "hidden_size": HIDDEN, "out_hidden_size": HIDDEN, "intermediate_size": 64, "num_heads": 2,
              "patch_size": ip.patch_size, "temporal_patch_size": ip.temporal_patch_size, "spatial_merge_size": 2}
    audio = {"d_model": HIDDEN, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
             "num_mel_bins": 128, "output_dim": HIDDEN, "max_source_positions": 1500}
    mrope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
    if family == "qwen2_5_omni":
        vision.update(window_size=2 * ip.patch_size * 2, fullatt_block_indexes=[1])
        config = transformers.Qwen2_5OmniThinkerConfig(
            text_config=text_config(tok, rope_parameters=mrope), vision_config=vision, audio_config=audio, **ids)
        return seeded_model(transformers.Qwen2_5OmniThinkerForConditionalGeneration, config, seed)
    vision.update(num_position_embeddings=64, deepstack_visual_indexes=[0])
    audio.update(downsample_hidden_size=8, n_window=50, n_window_infer=100, conv_chunksize=50)
    text = text_config(tok, rope_parameters={**mrope, "mrope_interleaved": True}, num_experts=4,
                       num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
    config = transformers.Qwen3OmniMoeThinkerConfig(text_config=text, vision_config=vision, audio_config=audio, **ids)
    return seeded_model(transformers.Qwen3OmniMoeThinkerForConditionalGeneration, config, seed)


def _check(family: str) -> None:
    if family not in OMNI_FAMILIES:
        raise ValueError(f"unknown Omni family {family!r}: choose one of {OMNI_FAMILIES}")
