"""Offline real processors and tiny real models of chat VLM families whose grammar chunker learns from the processor
(`chunker.families.learned`): no adapter code names them, only a builder here and a line in the shared contract.

Every processor carries its checkpoint's REAL chat template, vendored byte-exact in `tests/data/chat_templates/`
(provenance in its `SOURCES.md`), read from the source tree; a builder whose template is not there needs
`chat_template=`.
"""

from __future__ import annotations

from ._templates import chat_template_option, vendored_template
from ._tiny import HIDDEN, seeded_model, text_config

FAMILIES_D = ("paddleocr_vl", "glm4v")
TEMPLATE_FILES = {"paddleocr_vl": "PaddlePaddle--PaddleOCR-VL.jinja", "glm4v": "zai-org--GLM-4.1V-9B-Thinking.jinja"}

# PaddlePaddle/PaddleOCR-VL: the tokenizer's special tokens (its added tokens). The processor reads the tokenizer's
# named `image_token` (it has no default), so the checkpoint's tokenizer names it, and `apply_chat_template` hands it
# to the template, whose `image_token` variable then replaces the bracketed default.
PADDLE_NAMED = {"image_token": "<|IMAGE_PLACEHOLDER|>"}
PADDLE_SPECIALS = ("<unk>", "<s>", "</s>", "<|begin_of_sentence|>", "<|end_of_sentence|>", "<|IMAGE_START|>",
                   "<|IMAGE_PLACEHOLDER|>", "<|IMAGE_END|>", "<|video_pad|>")
# Geometry: 4-pixel patches merged 2x2 (the checkpoint: 14-pixel patches); images resized to an area of 64..1024
# pixels, so a few merged tokens each.
PADDLE_PATCH, PADDLE_MERGE = 4, 2


def _check_family(family: str) -> None:
    if family not in FAMILIES_D:
        raise ValueError(f"unknown family {family!r}: choose one of {FAMILIES_D}")


def template(family: str) -> str:
    """The vendored real chat template of `family`'s checkpoint (`_templates.vendored_template`)."""
    return vendored_template(TEMPLATE_FILES[family])


def build_processor(family: str, **options):
    """A real processor of `family`, built offline at a small image size, with its checkpoint's real template.

    Args:
        family: one of `FAMILIES_D`.
        **options: `chat_template` overrides the vendored one.

    Returns:
        A fresh processor of the real class; GLM-4.1V's is an image-only subclass of the real `Glm4vProcessor` (its
        video processor needs torchvision).

    Raises:
        ValueError: an unknown family or option.

    Example:
        >>> p = build_processor("paddleocr_vl")
        >>> type(p).__name__, p.image_token
        ('PaddleOCRVLProcessor', '<|IMAGE_PLACEHOLDER|>')
        >>> type(build_processor("glm4v")).__mro__[1].__name__
        'Glm4vProcessor'
    """
    _check_family(family)
    return _BUILDERS[family](chat_template_option(family, options) or template(family))


def _paddleocr_vl(chat_template):
    from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import PaddleOCRVLImageProcessorPil
    from transformers.models.paddleocr_vl.processing_paddleocr_vl import PaddleOCRVLProcessor

    from ._tokenizer import make_tokenizer

    tokenizer = make_tokenizer(PADDLE_SPECIALS, named=PADDLE_NAMED, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                               pad_token="<unk>", cls_token="<|begin_of_sentence|>", sep_token="<|end_of_sentence|>")
    side = PADDLE_PATCH * PADDLE_MERGE
    image_processor = PaddleOCRVLImageProcessorPil(
        patch_size=PADDLE_PATCH, merge_size=PADDLE_MERGE, temporal_patch_size=1,
        size={"shortest_edge": (side * 1) ** 2, "longest_edge": (side * 4) ** 2})
    return PaddleOCRVLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


# zai-org/GLM-4.1V-9B-Thinking: its tokenizer's special tokens are `_tokenizer.GLM_SPECIALS`.
# Geometry: 4-pixel patches merged 2x2, two frames a patch in time (an image is repeated); images resized to an area
# of 64..1024 pixels.
GLM4V_PATCH, GLM4V_MERGE = 4, 2


def _glm4v(chat_template):
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil
    from transformers.models.glm4v.processing_glm4v import Glm4vProcessor

    from ._image_only import image_only
    from ._tokenizer import glm_tokenizer

    tokenizer = glm_tokenizer()
    side = GLM4V_PATCH * GLM4V_MERGE
    image_processor = Glm4vImageProcessorPil(patch_size=GLM4V_PATCH, merge_size=GLM4V_MERGE, temporal_patch_size=2,
                                             size={"shortest_edge": side**2, "longest_edge": (side * 4) ** 2})
    return image_only(Glm4vProcessor)(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                                      chat_template=chat_template)


_BUILDERS = {"paddleocr_vl": _paddleocr_vl, "glm4v": _glm4v}


def build_model(family: str, processor, seed: int = 0):
    """The family's real `*ForConditionalGeneration` with a tiny random config matching `processor`.

    Args:
        family: one of `FAMILIES_D`.
        processor: from `build_processor(family)`.
        seed: the weights are drawn under this seed (the global RNG is restored after).

    Returns:
        The model in training mode, float32, on CPU.

    Example:
        >>> p = build_processor("paddleocr_vl")
        >>> type(build_model("paddleocr_vl", p)).__name__
        'PaddleOCRVLForConditionalGeneration'
    """
    import transformers

    _check_family(family)
    tok = processor.tokenizer
    if family == "glm4v":
        config = transformers.Glm4vConfig(text_config=glm_text_config(tok, model_type="glm4v_text"),
                                          vision_config=glm_vision_config(), **glm_token_ids(tok))
        return seeded_model(transformers.Glm4vForConditionalGeneration, config, seed, jitter_constants=True)
    text = text_config(tok, model_type="paddleocr_vl_text", head_dim=16, num_attention_heads=2,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    vision = {"hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "patch_size": PADDLE_PATCH, "spatial_merge_size": PADDLE_MERGE, "image_size": 64}
    config = transformers.PaddleOCRVLConfig(
        text_config=text, vision_config=vision, image_token_id=tok.image_token_id,
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"), vision_start_token_id=tok.convert_tokens_to_ids("<|IMAGE_START|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|IMAGE_END|>"),
    )
    return seeded_model(transformers.PaddleOCRVLForConditionalGeneration, config, seed, jitter_constants=True)


def glm_token_ids(tok) -> dict:
    """The token ids a GLM-V model config names: the image and video placeholders and their brackets."""
    return {name: tok.convert_tokens_to_ids(t) for name, t in (
        ("image_token_id", "<|image|>"), ("video_token_id", "<|video|>"),
        ("image_start_token_id", "<|begin_of_image|>"), ("image_end_token_id", "<|end_of_image|>"),
        ("video_start_token_id", "<|begin_of_video|>"), ("video_end_token_id", "<|end_of_video|>"))}


def glm_text_config(tok, **extra) -> dict:
    """A tiny GLM-V text config: half of head_dim 16 rotates (the checkpoint: 64 of 128), mrope halves of those 8."""
    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1]}
    return text_config(tok, head_dim=16, num_attention_heads=2, rope_parameters=rope, **extra)


def glm_vision_config(patch=GLM4V_PATCH, merge=GLM4V_MERGE, temporal=2, **extra) -> dict:
    """A tiny GLM-V vision tower config (2 layers, hidden 32) with the processor's patch geometry."""
    return {"depth": 2, "hidden_size": HIDDEN, "num_heads": 2, "intermediate_size": 64, "out_hidden_size": HIDDEN,
            "patch_size": patch, "spatial_merge_size": merge, "temporal_patch_size": temporal, "image_size": 64,
            **extra}
