"""Offline real processors and tiny real models of the families added for issue 9: Gemma 4, LLaVA-NeXT-Video, and
Janus and Gemma 3n, whose grammars no adapter writes (they are learned from the processor).

Unlike `families_a` / `families_b`, every processor of `FAMILIES_C` carries the checkpoint's REAL chat template,
vendored byte-exact in `tests/data/chat_templates/` (provenance in its `SOURCES.md`), read from the installed source
tree when present; a builder whose template is not there needs `chat_template=`. The `LEARNED` families have no
vendored template: they are tested on pre-tokenized rows, which need none.
"""

from __future__ import annotations

from ._templates import chat_template_option, vendored_template
from ._tiny import HIDDEN, seeded_model, text_config, vision_config

FAMILIES_C = ("gemma4", "llava_next_video")
LEARNED = ("janus", "gemma3n")
TEMPLATE_FILES = {"gemma4": "google--gemma-4-E2B-it.jinja", "llava_next_video": "llava-hf--LLaVA-NeXT-Video-7B-hf.jinja"}

# google/gemma-4-*: the tokenizer's named special tokens (its tokenizer_config.json), in a fixed order.
GEMMA4_NAMED = {
    "image_token": "<|image|>",
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "audio_token": "<|audio|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
    "sot_token": "<|turn>",
    "eot_token": "<turn|>",
    "soc_token": "<|channel>",
    "eoc_token": "<channel|>",
    "think_token": "<|think|>",
}
GEMMA4_SPECIALS = ("<mask>", *GEMMA4_NAMED.values(), "<|video|>")  # after Gemma's `<pad> <eos> <bos> <unk>`
# Geometry: patches of 4x4 pixels pooled 3x3, at most 70 soft tokens per image (the smallest budget the image
# processor accepts; the checkpoints use 16x16 patches and 280).
GEMMA4_PATCH, GEMMA4_POOL, GEMMA4_SOFT_TOKENS = 4, 3, 70


def _check_family(family: str) -> None:
    if family not in FAMILIES_C + LEARNED:
        raise ValueError(f"unknown family {family!r}: choose one of {FAMILIES_C + LEARNED}")


def template(family: str) -> str:
    """The vendored real chat template of `family`'s checkpoint (`_templates.vendored_template`)."""
    return vendored_template(TEMPLATE_FILES[family])


def build_processor(family: str, **options):
    """A real processor of `family`, built offline at a small image size, with its checkpoint's real template.

    Args:
        family: one of `FAMILIES_C`.
        **options: `chat_template` overrides the vendored one; `video=True` (Gemma 4, LLaVA-NeXT-Video) builds the
            real processor class with its real video processor, which needs torchvision.

    Returns:
        A fresh processor. By default Gemma 4's and LLaVA-NeXT-Video's are image-only subclasses of the real classes
        (their video processors need torchvision); Gemma 4's audio feature extractor is the real one.

    Raises:
        ValueError: an unknown family or option.

    Example:
        >>> p = build_processor("gemma4")
        >>> type(p).__mro__[1].__name__, p.image_token, p.boi_token
        ('Gemma4Processor', '<|image|>', '<|image>')
    """
    _check_family(family)
    video = bool(options.pop("video", False))
    if video and family not in FAMILIES_C:
        raise ValueError(f"video=True: {family!r} has no video processor here (only {FAMILIES_C} do)")
    chat_template = chat_template_option(family, options)
    if family in LEARNED:
        return _BUILDERS[family](chat_template)
    return _BUILDERS[family](chat_template or template(family), video=video)


def _gemma4(chat_template, video=False):
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    from ._image_only import image_only
    from ._no_torchvision import processor_class
    from ._tokenizer import gemma_tokenizer

    tokenizer = gemma_tokenizer(GEMMA4_SPECIALS, named=GEMMA4_NAMED, mask_token="<mask>")
    image_processor = Gemma4ImageProcessorPil(patch_size=GEMMA4_PATCH, pooling_kernel_size=GEMMA4_POOL,
                                              max_soft_tokens=GEMMA4_SOFT_TOKENS)
    cls = processor_class("gemma4", "Gemma4Processor")
    return (cls if video else image_only(cls))(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=_gemma4_video_processor() if video else None,
        chat_template=chat_template,
        image_seq_length=GEMMA4_SOFT_TOKENS,
    )


def _gemma4_video_processor():
    """The real `Gemma4VideoProcessor` (torchvision) at the image processor's geometry; frames are given, not sampled."""
    from transformers.models.gemma4.video_processing_gemma4 import Gemma4VideoProcessor

    return Gemma4VideoProcessor(patch_size=GEMMA4_PATCH, pooling_kernel_size=GEMMA4_POOL,
                                max_soft_tokens=GEMMA4_SOFT_TOKENS, do_sample_frames=False)


def _llava_next_video(chat_template, video=False):
    from transformers.models.llava_next_video.processing_llava_next_video import LlavaNextVideoProcessor

    from ._image_only import image_only
    from ._tokenizer import llama_tokenizer
    from .families_a import LLAVA_IMAGE, LLAVA_PATCH, llava_next_image_processor

    # lmms-lab/LLaVA-NeXT-Video-7B on vicuna: the conversion adds <video> and <image> as special tokens
    tokenizer = llama_tokenizer(("<video>", "<image>"), named={"image_token": "<image>", "video_token": "<video>"})
    video_processor = None
    if video:
        from transformers.models.llava_next_video.video_processing_llava_next_video import (
            LlavaNextVideoVideoProcessor,
        )

        video_processor = LlavaNextVideoVideoProcessor(size={"shortest_edge": LLAVA_IMAGE},
                                                       crop_size={"height": LLAVA_IMAGE, "width": LLAVA_IMAGE})
    return (LlavaNextVideoProcessor if video else image_only(LlavaNextVideoProcessor))(
        video_processor=video_processor, image_processor=llava_next_image_processor(), tokenizer=tokenizer,
        chat_template=chat_template, patch_size=LLAVA_PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


# deepseek-community/Janus-Pro-1B: the tokenizer's named image tokens (its extra_special_tokens)
JANUS_NAMED = {"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>", "eoi_token": "<end_of_image>"}
JANUS_IMAGE, JANUS_PATCH = 32, 8  # (32/8)^2 = 16 image tokens per image (the checkpoint: 384/16 -> 576)


def _janus(chat_template):
    from transformers import JanusProcessor
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    from .families_f import deepseek_tokenizer

    tokenizer = deepseek_tokenizer(JANUS_NAMED)
    image_processor = JanusImageProcessorPil(size={"height": JANUS_IMAGE, "width": JANUS_IMAGE})
    return JanusProcessor(image_processor, tokenizer, chat_template=chat_template,
                          num_image_tokens=(JANUS_IMAGE // JANUS_PATCH) ** 2)


# google/gemma-3n-*: the tokenizer's named image and audio tokens
GEMMA3N_NAMED = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                 "audio_token": "<audio_soft_token>", "boa_token": "<start_of_audio>", "eoa_token": "<end_of_audio>"}


def _gemma3n(chat_template):
    from transformers import Gemma3nProcessor
    from transformers.models.gemma3n.feature_extraction_gemma3n import Gemma3nAudioFeatureExtractor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    from ._tokenizer import gemma_tokenizer

    tokenizer = gemma_tokenizer(("<start_of_turn>", "<end_of_turn>", *GEMMA3N_NAMED.values()), named=GEMMA3N_NAMED,
                                add_bos_token=True)
    return Gemma3nProcessor(Gemma3nAudioFeatureExtractor(), SiglipImageProcessorPil(size={"height": 32, "width": 32}),
                            tokenizer, chat_template=chat_template, image_seq_length=16, audio_seq_length=8)


_BUILDERS = {"gemma4": _gemma4, "llava_next_video": _llava_next_video, "janus": _janus, "gemma3n": _gemma3n}


def build_model(family: str, processor, seed: int = 0):
    """The family's real `*ForConditionalGeneration` with a tiny random config matching `processor`.

    Args:
        family: one of `FAMILIES_C`.
        processor: from `build_processor(family)`.
        seed: the weights are drawn under this seed (the global RNG is restored after).

    Returns:
        The model in training mode, float32, on CPU; parameters the init leaves constant get small noise.

    Example:
        >>> p = build_processor("gemma4")
        >>> type(build_model("gemma4", p)).__name__
        'Gemma4ForConditionalGeneration'
    """
    import transformers

    _check_family(family)
    tok = processor.tokenizer
    if family == "gemma3n":
        raise ValueError("Gemma3nForConditionalGeneration's vision tower is a timm model (MobileNetV5): no tiny "
                         "config is built here")
    if family == "janus":
        config = transformers.JanusConfig(
            text_config=text_config(tok, model_type="llama"),
            vision_config={"hidden_size": HIDDEN, "num_hidden_layers": 2, "num_attention_heads": 2,
                           "image_size": JANUS_IMAGE, "patch_size": JANUS_PATCH, "projection_dim": HIDDEN,
                           "num_image_tokens": processor.num_image_tokens, "mlp_ratio": 2.0, "depth": 1},
            # the image-generation VQ-VAE is built but unused by understanding; smallest shape GroupNorm(32) allows
            vq_config={"embed_dim": 8, "num_embeddings": 32, "latent_channels": 32, "base_channels": 32,
                       "channel_multiplier": [1, 1], "num_res_blocks": 1, "num_patches": 4, "projection_dim": HIDDEN,
                       "image_token_embed_dim": HIDDEN, "num_hidden_layers": 1},
            image_token_id=tok.image_token_id,
        )
        return seeded_model(transformers.JanusForConditionalGeneration, config, seed)
    if family == "llava_next_video":
        from .families_a import LLAVA_IMAGE, LLAVA_NEXT_PINPOINTS, LLAVA_PATCH

        config = transformers.LlavaNextVideoConfig(
            text_config=text_config(tok, model_type="llama"),
            vision_config=vision_config(LLAVA_IMAGE, LLAVA_PATCH, model_type="clip_vision_model",
                                        projection_dim=HIDDEN),
            image_token_index=tok.image_token_id, video_token_index=tok.video_token_id,
            vision_feature_select_strategy="default", vision_feature_layer=-2,
            image_grid_pinpoints=LLAVA_NEXT_PINPOINTS, image_seq_length=(LLAVA_IMAGE // LLAVA_PATCH) ** 2,
        )
        return seeded_model(transformers.LlavaNextVideoForConditionalGeneration, config, seed, jitter_constants=True)
    return seeded_model(transformers.Gemma4ForConditionalGeneration, gemma4_config(processor), seed,
                        jitter_constants=True)


def gemma4_config(processor, audio_config=None):
    """A tiny `Gemma4Config` matching Gemma 4's `processor`: text and vision; an audio tower when `audio_config`."""
    import transformers

    tok = processor.tokenizer
    text = text_config(tok, model_type="gemma4_text", sliding_window=64, layer_types=["sliding_attention",
                       "full_attention"], vocab_size_per_layer_input=len(tok), hidden_size_per_layer_input=8)
    vision = {"model_type": "gemma4_vision", "hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16, "patch_size": GEMMA4_PATCH,
              "pooling_kernel_size": GEMMA4_POOL, "position_embedding_size": 64}
    return transformers.Gemma4Config(
        text_config=text, vision_config=vision, audio_config=audio_config,
        boi_token_id=tok.boi_token_id, eoi_token_id=tok.eoi_token_id, image_token_id=tok.image_token_id,
        video_token_id=processor.video_token_id, boa_token_id=tok.boa_token_id,
        eoa_token_index=tok.eoa_token_id, audio_token_id=tok.audio_token_id,
    )
