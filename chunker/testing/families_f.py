"""Offline real processors and tiny real models of chat VLM families whose grammar is one chunker already knows (a
written family's, or a plain fixed run or bracket): DeepSeek-VL, DeepSeek-VL-Hybrid, Chameleon, Video-LLaVA, Granite 4
Vision, LightOnOCR, Qianfan-OCR, Emu3, and Granite-Docling (built to show why it is still pending).

A processor carries its checkpoint's REAL chat template when one is vendored in `tests/data/chat_templates/`
(provenance in its `SOURCES.md`, `TEMPLATE_FILES` here); the others are built without one and are tested on
pre-tokenized rows (`tests/test_family_more.py`), which need none.
"""

from __future__ import annotations

from ._templates import chat_template_option, vendored_template
from ._tiny import HIDDEN, seeded_model, text_config, vision_config

# families with a vendored real template: the shared contract runs them (tests/test_families.py)
FAMILIES_F = ("deepseek_vl", "deepseek_vl_hybrid", "lighton_ocr")
# families without one here: pre-tokenized rows only (tests/test_family_more.py); granite_docling is built for the
# inventory's record (its single-tile images have no global block, which the Idefics3 tile grammar needs)
PRETOKENIZED_F = ("chameleon", "video_llava", "granite4_vision", "qianfan_ocr", "emu3", "granite_docling")
TEMPLATE_FILES = {
    "deepseek_vl": "deepseek-community--deepseek-vl-1.3b-chat.jinja",
    "deepseek_vl_hybrid": "deepseek-community--deepseek-vl-1.3b-chat.jinja",
    "lighton_ocr": "lightonai--LightOnOCR-1B-1025.jinja",
}


def _check_family(family: str) -> None:
    if family not in FAMILIES_F + PRETOKENIZED_F:
        raise ValueError(f"unknown family {family!r}: choose one of {FAMILIES_F + PRETOKENIZED_F}")


def template(family: str) -> str:
    """The vendored real chat template of `family`'s checkpoint (`_templates.vendored_template`)."""
    return vendored_template(TEMPLATE_FILES[family])


def build_processor(family: str, **options):
    """A real processor of `family`, built offline at a small image size (with its checkpoint's real template when one
    is vendored).

    Args:
        family: one of `FAMILIES_F` or `PRETOKENIZED_F`.
        **options: `chat_template` overrides the vendored one.

    Returns:
        A fresh processor of the real class (Video-LLaVA's is an image-only subclass: its video processor needs
        torchvision).

    Raises:
        ValueError: an unknown family or option.

    Example:
        >>> p = build_processor("deepseek_vl")
        >>> type(p).__name__, p.image_token, p.num_image_tokens
        ('DeepseekVLProcessor', '<image_placeholder>', 16)
    """
    _check_family(family)
    chat_template = chat_template_option(family, options)
    if chat_template is None and family in TEMPLATE_FILES:
        chat_template = template(family)
    return _BUILDERS[family](chat_template)


DEEPSEEK_IMAGE, DEEPSEEK_PATCH = 32, 8  # (32/8)^2 = 16 image tokens per image (the checkpoints: 384/16 -> 576)
DEEPSEEK_HIGH_RES = 64  # the hybrid's SAM input (the checkpoints: 1024)


def deepseek_tokenizer(named=None):
    """deepseek-community/deepseek-vl-*-chat's LLaMA tokenizer (its BOS / EOS), then the `named` image tokens (default:
    the image placeholder); Janus-Pro's is the same with its own."""
    from ._tokenizer import llama_tokenizer

    named = named or {"image_token": "<image_placeholder>"}
    return llama_tokenizer(tuple(named.values()), named=named, bos_token="<｜begin▁of▁sentence｜>",
                           eos_token="<｜end▁of▁sentence｜>")


def _deepseek_vl(chat_template):
    from transformers import DeepseekVLProcessor
    from transformers.models.deepseek_vl.image_processing_pil_deepseek_vl import DeepseekVLImageProcessorPil

    image_processor = DeepseekVLImageProcessorPil(size={"height": DEEPSEEK_IMAGE, "width": DEEPSEEK_IMAGE})
    return DeepseekVLProcessor(image_processor, deepseek_tokenizer(), chat_template=chat_template,
                               num_image_tokens=(DEEPSEEK_IMAGE // DEEPSEEK_PATCH) ** 2)


def _deepseek_vl_hybrid(chat_template):
    from transformers import DeepseekVLHybridProcessor
    from transformers.models.deepseek_vl_hybrid.image_processing_pil_deepseek_vl_hybrid import (
        DeepseekVLHybridImageProcessorPil,
    )

    image_processor = DeepseekVLHybridImageProcessorPil(
        size={"height": DEEPSEEK_IMAGE, "width": DEEPSEEK_IMAGE},
        high_res_size={"height": DEEPSEEK_HIGH_RES, "width": DEEPSEEK_HIGH_RES})
    return DeepseekVLHybridProcessor(image_processor, deepseek_tokenizer(), chat_template=chat_template,
                                     num_image_tokens=(DEEPSEEK_IMAGE // DEEPSEEK_PATCH) ** 2)


# facebook/chameleon-*: the image placeholder, the image brackets and the separator its processor appends
CHAMELEON_SPECIALS = ("<image>", "<racm3:break>", "<eoss>", "<reserved08706>")  # after LLaMA's (`llama_tokenizer`)
CHAMELEON_IMAGE, CHAMELEON_TOKENS = 32, 16


def _chameleon(chat_template):
    from transformers import ChameleonProcessor
    from transformers.models.chameleon.image_processing_pil_chameleon import ChameleonImageProcessorPil

    from ._tokenizer import llama_tokenizer

    tokenizer = llama_tokenizer(CHAMELEON_SPECIALS, named={"image_token": "<image>", "boi_token": "<racm3:break>",
                                                           "eoi_token": "<eoss>"}, sep_token="<reserved08706>")
    image_processor = ChameleonImageProcessorPil(size={"shortest_edge": CHAMELEON_IMAGE},
                                                 crop_size={"height": CHAMELEON_IMAGE, "width": CHAMELEON_IMAGE})
    processor = ChameleonProcessor(image_processor, tokenizer, image_seq_length=CHAMELEON_TOKENS)
    processor.chat_template = chat_template
    return processor


def _video_llava(chat_template):
    from transformers.models.video_llava.image_processing_video_llava import VideoLlavaImageProcessor
    from transformers.models.video_llava.processing_video_llava import VideoLlavaProcessor

    from ._image_only import image_only
    from ._tokenizer import llama_tokenizer
    from .families_a import LLAVA_IMAGE, LLAVA_PATCH

    # LanguageBind/Video-LLaVA-7B-hf on vicuna: <image> and <video> added as special tokens
    tokenizer = llama_tokenizer(("<image>", "<video>"), named={"image_token": "<image>", "video_token": "<video>"})
    image_processor = VideoLlavaImageProcessor(size={"shortest_edge": LLAVA_IMAGE},
                                               crop_size={"height": LLAVA_IMAGE, "width": LLAVA_IMAGE})
    return image_only(VideoLlavaProcessor)(image_processor=image_processor, video_processor=None, tokenizer=tokenizer,
                                           patch_size=LLAVA_PATCH, vision_feature_select_strategy="default",
                                           num_additional_image_tokens=1, chat_template=chat_template)


def _granite4_vision(chat_template):
    from transformers import Granite4VisionProcessor

    from ._tokenizer import make_tokenizer
    from .families_a import LLAVA_PATCH, llava_next_image_processor

    tokenizer = make_tokenizer(("<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", "<image>", "<pad>"),
                               named={"image_token": "<image>"}, eos_token="<|end_of_text|>", pad_token="<pad>")
    # the Window Q-Former keeps 1 query per 2x2 window of patches (the checkpoints: "1/4"-style rates)
    return Granite4VisionProcessor(image_processor=llava_next_image_processor(), tokenizer=tokenizer,
                                   patch_size=LLAVA_PATCH, vision_feature_select_strategy="full",
                                   downsample_rate=GRANITE4_DOWNSAMPLE, chat_template=chat_template)


GRANITE4_DOWNSAMPLE = "1/2"


# lightonai/LightOnOCR-*: a Qwen3 tokenizer whose named image tokens are Qwen's vision tokens
LIGHTON_NAMED = {"image_token": "<|image_pad|>", "image_break_token": "<|vision_pad|>",
                 "image_end_token": "<|vision_end|>"}
LIGHTON_PATCH, LIGHTON_MERGE, LIGHTON_EDGE = 4, 2, 32


def _lighton_ocr(chat_template):
    from transformers import LightOnOcrProcessor
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    from ._tokenizer import chatml_tokenizer

    tokenizer = chatml_tokenizer(("<|vision_start|>", *LIGHTON_NAMED.values()), named=LIGHTON_NAMED)
    image_processor = PixtralImageProcessorPil(size={"longest_edge": LIGHTON_EDGE},
                                               patch_size={"height": LIGHTON_PATCH, "width": LIGHTON_PATCH})
    return LightOnOcrProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=LIGHTON_PATCH,
                               spatial_merge_size=LIGHTON_MERGE, chat_template=chat_template)


def _qianfan_ocr(chat_template):
    from transformers import QianfanOCRProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    from ._tokenizer import chatml_tokenizer
    from .families_b import INTERNVL_NAMED, INTERNVL_PATCH, INTERNVL_TILE

    tokenizer = chatml_tokenizer(("<img>", "</img>", "<IMG_CONTEXT>", "<image>"),
                                 named={k: v for k, v in INTERNVL_NAMED.items() if "video" not in k})
    image_processor = GotOcr2ImageProcessorPil(size={"height": INTERNVL_TILE, "width": INTERNVL_TILE},
                                               crop_to_patches=True, min_patches=1, max_patches=4)
    return QianfanOCRProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               image_seq_length=(INTERNVL_TILE // INTERNVL_PATCH) ** 2 // 4, chat_template=chat_template)


def _granite_docling(chat_template):
    from transformers import GraniteDoclingProcessor
    from transformers.models.granite_docling.image_processing_pil_granite_docling import (
        GraniteDoclingImageProcessorPil,
    )

    from ._tokenizer import make_tokenizer
    from .families_b import IDEFICS3_SPECIALS, IDEFICS_PATCH, IDEFICS_TILE

    tokenizer = make_tokenizer(IDEFICS3_SPECIALS, bos_token="<|begin_of_text|>", eos_token="<end_of_utterance>",
                               pad_token="<|end_of_text|>")
    image_processor = GraniteDoclingImageProcessorPil(size={"height": IDEFICS_TILE, "width": IDEFICS_TILE},
                                                      max_patches=4)
    return GraniteDoclingProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   image_seq_len=(IDEFICS_TILE // IDEFICS_PATCH) ** 2 // 4, chat_template=chat_template)


# BAAI/Emu3-Chat-hf: the named image tokens of its tokenizer
EMU3_NAMED = {"image_token": "<image>", "boi_token": "<|image start|>", "eoi_token": "<|image end|>",
              "image_wrapper_token": "<|image token|>", "eof_token": "<|extra_201|>"}


def _emu3(chat_template):
    from transformers import Emu3Processor
    from transformers.models.emu3.image_processing_emu3 import Emu3ImageProcessor

    from ._tokenizer import make_tokenizer

    # the conversion script's tokenizer: BOS <|extra_203|>, EOS <|extra_204|>, pad <|endoftext|>
    tokenizer = make_tokenizer(("<|endoftext|>", "<|extra_203|>", "<|extra_204|>", "<|extra_200|>", *EMU3_NAMED.values()),
                               named=EMU3_NAMED, bos_token="<|extra_203|>", eos_token="<|extra_204|>",
                               pad_token="<|endoftext|>")
    image_processor = Emu3ImageProcessor(min_pixels=16 * 16, max_pixels=48 * 48, spatial_factor=8)
    return Emu3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


_BUILDERS = {"deepseek_vl": _deepseek_vl, "deepseek_vl_hybrid": _deepseek_vl_hybrid, "chameleon": _chameleon,
             "video_llava": _video_llava, "granite4_vision": _granite4_vision, "lighton_ocr": _lighton_ocr,
             "qianfan_ocr": _qianfan_ocr, "granite_docling": _granite_docling, "emu3": _emu3}


def build_model(family: str, processor, seed: int = 0):
    """The family's real `*ForConditionalGeneration` with a tiny random config matching `processor`.

    Args:
        family: one of `MODEL_FAMILIES`.
        processor: from `build_processor(family)`.
        seed: the weights are drawn under this seed (the global RNG is restored after).

    Returns:
        The model in training mode, float32, on CPU.

    Raises:
        ValueError: no tiny config of the family is built here (`NO_MODEL` says why).

    Example:
        >>> type(build_model("deepseek_vl", build_processor("deepseek_vl"))).__name__
        'DeepseekVLForConditionalGeneration'
    """
    import transformers

    _check_family(family)
    if family not in MODEL_FAMILIES:
        raise ValueError(f"no tiny model of {family!r} is built here: {NO_MODEL.get(family, 'not tried')}")
    tok = processor.tokenizer
    siglip = vision_config(DEEPSEEK_IMAGE, DEEPSEEK_PATCH, model_type="siglip_vision_model")
    if family == "deepseek_vl":
        config = transformers.DeepseekVLConfig(text_config=text_config(tok, model_type="llama"), vision_config=siglip,
                                               image_token_id=processor.image_token_id)
        return seeded_model(transformers.DeepseekVLForConditionalGeneration, config, seed, jitter_constants=True)
    if family == "deepseek_vl_hybrid":
        # SAM's neck output (output_channels) feeds the hybrid's own convolutions, whose widths the config fixes
        sam = {"model_type": "sam_vision_model", "hidden_size": HIDDEN, "output_channels": 256, "num_hidden_layers": 2,
               "num_attention_heads": 2, "image_size": DEEPSEEK_HIGH_RES, "patch_size": 16, "mlp_dim": 64,
               "global_attn_indexes": [1], "window_size": 2}
        config = transformers.DeepseekVLHybridConfig(text_config=text_config(tok, model_type="llama"),
                                                     vision_config=siglip, high_res_vision_config=sam,
                                                     image_token_id=processor.image_token_id)
        return seeded_model(transformers.DeepseekVLHybridForConditionalGeneration, config, seed, jitter_constants=True)
    if family == "video_llava":
        from .families_a import LLAVA_IMAGE, LLAVA_PATCH

        config = transformers.VideoLlavaConfig(
            text_config=text_config(tok, model_type="llama"),
            vision_config=vision_config(LLAVA_IMAGE, LLAVA_PATCH, model_type="clip_vision_model",
                                        projection_dim=HIDDEN),
            image_token_index=processor.image_token_id, video_token_index=processor.video_token_id,
            vision_feature_select_strategy="default", vision_feature_layer=-2,
            image_seq_length=(LLAVA_IMAGE // LLAVA_PATCH) ** 2)
        return seeded_model(transformers.VideoLlavaForConditionalGeneration, config, seed, jitter_constants=True)
    if family == "lighton_ocr":
        vision = vision_config(LIGHTON_EDGE, LIGHTON_PATCH, model_type="pixtral", head_dim=16)
        config = transformers.LightOnOcrConfig(text_config=text_config(tok, model_type="qwen3"), vision_config=vision,
                                               spatial_merge_size=LIGHTON_MERGE, image_token_id=processor.image_token_id)
        return seeded_model(transformers.LightOnOcrForConditionalGeneration, config, seed, jitter_constants=True)
    if family == "granite4_vision":
        from .families_a import LLAVA_IMAGE, LLAVA_NEXT_PINPOINTS, LLAVA_PATCH

        # a SigLIP tower (no CLS token, as the Window Q-Former needs) 64 wide, the Q-Former as wide with one head;
        # one deepstack layer and the four spatial offset groups inject into the two decoder layers
        config = transformers.Granite4VisionConfig(
            text_config=text_config(tok, model_type="granite4_vision_text"),
            vision_config=vision_config(LLAVA_IMAGE, LLAVA_PATCH, model_type="siglip_vision_model", hidden_size=64),
            image_token_index=processor.image_token_id, vision_feature_select_strategy="full", vision_feature_layer=-1,
            image_grid_pinpoints=LLAVA_NEXT_PINPOINTS, downsample_rate=GRANITE4_DOWNSAMPLE,
            deepstack_layer_map=[[-1, 0]], spatial_vision_layer=-1, spatial_target_layers=[0, 1, 0, 1],
            qformer_config={"intermediate_size": 64, "hidden_size": 64, "num_attention_heads": 1,
                            "encoder_hidden_size": 64})  # 5.24 derives the last three from the tower, 5.17 does not
        return seeded_model(transformers.Granite4VisionForConditionalGeneration, config, seed, jitter_constants=True)
    if family == "chameleon":
        # a VQ-VAE of 32 codes whose 4x4 latent gives image_seq_length=16 codes per image (GroupNorm needs 32 channels);
        # code k is the BPE token "IMGIMG<k in letters A-J>Z", one of 32 ids past the tokenizer's vocabulary
        n_codes = 32
        codes = {"IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(k)) + "Z": len(tok) + k for k in range(n_codes)}
        vq = {"embed_dim": 8, "num_embeddings": n_codes, "latent_channels": 32, "base_channels": 32,
              "channel_multiplier": [1, 1, 1, 1], "num_res_blocks": 1, "resolution": CHAMELEON_IMAGE,
              "attn_resolutions": []}
        config = transformers.ChameleonConfig(**text_config(tok, vocab_size=len(tok) + n_codes), vq_config=vq,
                                              vocabulary_map={"<image>": processor.image_token_id, **codes},
                                              image_token_id=processor.image_token_id)
        return seeded_model(transformers.ChameleonForConditionalGeneration, config, seed)
    if family == "emu3":
        # a VQ-VAE of 32 codes downsampling 8x in space (the processor's fixed ratio: 4 levels) and 4x in time (an image
        # is repeated 4 times); code k is "<|visual token{k:06d}|>", one of 32 ids past the tokenizer's vocabulary, and
        # each latent row ends with "<|extra_200|>"
        n_codes = 32
        codes = {f"<|visual token{k:06d}|>": len(tok) + k for k in range(n_codes)}
        vq = {"codebook_size": n_codes, "embed_dim": 4, "latent_channels": 4, "base_channels": 32,
              "channel_multiplier": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "hidden_size": HIDDEN,
              "temporal_downsample_factor": 4}
        special = {t: tok.convert_tokens_to_ids(t) for t in ("<image>", "<|extra_200|>")}
        config = transformers.Emu3Config(vq_config=vq, text_config=text_config(tok, vocab_size=len(tok) + n_codes),
                                         vocabulary_map={**special, **codes}, image_token_id=processor.image_token_id)
        return seeded_model(transformers.Emu3ForConditionalGeneration, config, seed)
    from .families_b import INTERNVL_PATCH, INTERNVL_TILE

    vision = vision_config([INTERNVL_TILE, INTERNVL_TILE], [INTERNVL_PATCH, INTERNVL_PATCH])
    config = transformers.QianfanOCRConfig(text_config=text_config(tok, model_type="qwen3"), vision_config=vision,
                                           image_token_id=processor.image_token_id,
                                           image_seq_length=processor.image_seq_length)
    return seeded_model(transformers.QianfanOCRForConditionalGeneration, config, seed, jitter_constants=True)


# families with a tiny real model here, and why the others have none
MODEL_FAMILIES = ("deepseek_vl", "deepseek_vl_hybrid", "video_llava", "lighton_ocr", "qianfan_ocr", "chameleon", "emu3",
                  "granite4_vision")
NO_MODEL = {"granite_docling": "no adapter claims it (its one-tile pages have no global block)"}
