"""Offline real processors and tiny real models of Qwen-style grid families whose grammar chunker learns from the
processor (`chunker.families.learned`): GLM-4.6V, GLM-5-Next, Cosmos3-Edge, Command-A Vision Compass and (transformers
5.24, not 5.17) LFM3-VL. No adapter code names them, only a builder here.

Each image becomes `open image×(t·h·w/merge²) close`. GLM-4.6V's and GLM-5-Next's brackets come from their chat
templates: no byte-exact copy of either checkpoint's own was found, so their processors carry GLM-4.1V-9B-Thinking's
real template (vendored, see `tests/data/chat_templates/SOURCES.md`), which renders an image as
`<|begin_of_image|><|image|><|end_of_image|>`, the tokens whose ids their configs name `image_start_token_id`,
`image_token_id`, `image_end_token_id`. The others are built without a chat template (none of their checkpoints'
templates is vendored): the processor names its bracket tokens itself (`vision_start_token`, `vision_end_token`; its
config names their ids), which the learner's probe reads (`chunker.families.probe.declared_brackets`), and their rows
are pre-tokenized.
"""

from __future__ import annotations

from ._templates import chat_template_option
from ._tiny import HIDDEN, seeded_model, text_config

FAMILIES_E = ("glm46v", "glm5_next", "lfm3_vl", "cosmos3_edge", "cohere_compass")
# families whose brackets come from a chat template: GLM-4.1V-9B-Thinking's real one (see the module docstring)
GLM = ("glm46v", "glm5_next")
# Geometry of every family here: 4-pixel patches merged 2x2; images resized to an area of 64..1024 pixels.
PATCH, MERGE = 4, 2
SIDE = PATCH * MERGE
SIZE = {"shortest_edge": SIDE**2, "longest_edge": (SIDE * 4) ** 2}
# 3-D rope over half of the tiny text model's head_dim 8 (the checkpoints': [24, 20, 20] of 128)
MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}

# zai-org/GLM-4.6V's and GLM-5-Next's tokenizer is the GLM-V one (GLM-4.1V's: `_tokenizer.glm_tokenizer`).
# The defaults each processor class reads when its tokenizer names none (from the class's __init__): placeholder,
# video placeholder, bracket open, bracket close; plus an end-of-text token for padding.
QWEN_STYLE = {
    "lfm3_vl": ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"),
    "cosmos3_edge": ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"),
    "cohere_compass": ("<|IMAGE_PAD|>", "<|VIDEO_PAD|>", "<|VISION_START|>", "<|VISION_END|>"),
}
_PROCESSORS = {
    "glm46v": ("glm46v", "Glm46VProcessor", "glm46v.image_processing_pil_glm46v", "Glm46VImageProcessorPil", 2),
    "glm5_next": ("glm5_next", "Glm5NextProcessor", "glm5_next.image_processing_pil_glm5_next",
                  "Glm5NextImageProcessorPil", 2),
    "lfm3_vl": ("lfm3_vl", "Lfm3VlProcessor", "qwen2_vl.image_processing_pil_qwen2_vl", "Qwen2VLImageProcessorPil", 2),
    "cosmos3_edge": ("cosmos3_edge", "Cosmos3EdgeProcessor", "cosmos3_edge.image_processing_pil_cosmos3_edge",
                     "Cosmos3EdgeImageProcessorPil", 1),
    "cohere_compass": ("cohere_compass", "CohereCompassProcessor", "cohere_compass.image_processing_pil_cohere_compass",
                       "CohereCompassImageProcessorPil", 2),
}


def _check_family(family: str) -> None:
    if family not in FAMILIES_E:
        raise ValueError(f"unknown family {family!r}: choose one of {FAMILIES_E}")


def available(family: str) -> str | None:
    """None when the installed transformers has `family`'s processor, else why not (a skip reason)."""
    import importlib.util

    import transformers

    _check_family(family)
    module = _PROCESSORS[family][0]
    if importlib.util.find_spec(f"transformers.models.{module}") is None:
        return f"transformers {transformers.__version__} has no {module} model (5.24 has it)"
    return None


def build_processor(family: str, **options):
    """A real processor of `family`, built offline at a small image size.

    Args:
        family: one of `FAMILIES_E`.
        **options: `chat_template` (GLM-4.6V: overrides the vendored GLM-4.1V one; the others: none by default).

    Returns:
        An image-only subclass of the real processor class (its video processor needs torchvision).

    Raises:
        ValueError: an unknown family or option.
        ImportError: the installed transformers has no such model (`available` says why).

    Example:
        >>> p = build_processor("glm46v")
        >>> type(p).__mro__[1].__name__, p.image_token
        ('Glm46VProcessor', '<|image|>')
    """
    import importlib

    from ._image_only import image_only
    from ._tokenizer import glm_tokenizer, make_tokenizer

    _check_family(family)
    chat_template = chat_template_option(family, options)
    why = available(family)
    if why:
        raise ImportError(why)
    module, cls_name, ip_module, ip_name, temporal = _PROCESSORS[family]
    processor_cls = getattr(importlib.import_module(f"transformers.models.{module}.processing_{module}"), cls_name)
    image_processor_cls = getattr(importlib.import_module(f"transformers.models.{ip_module}"), ip_name)
    if family in GLM:
        from .families_d import template

        tokenizer = glm_tokenizer()
        chat_template = chat_template or template("glm4v")
    else:
        tokenizer = make_tokenizer(("<|endoftext|>", *QWEN_STYLE[family]), eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    # GLM-5-Next sizes images by a budget of merged tokens (its checkpoint: 16..8000), not by an area in pixels
    budget = {"min_image_tokens": 1, "max_image_tokens": 16} if family == "glm5_next" else {"size": dict(SIZE)}
    image_processor = image_processor_cls(patch_size=PATCH, merge_size=MERGE, temporal_patch_size=temporal, **budget)
    return image_only(processor_cls)(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                                     chat_template=chat_template)


def build_model(family: str, processor, seed: int = 0):
    """The family's real `*ForConditionalGeneration` with a tiny random config matching `processor`.

    Args:
        family: one of `FAMILIES_E`.
        processor: from `build_processor(family)`.
        seed: the weights are drawn under this seed (the global RNG is restored after).

    Returns:
        The model in training mode, float32, on CPU.

    Example:
        >>> p = build_processor("glm46v")
        >>> type(build_model("glm46v", p)).__name__
        'Glm46VForConditionalGeneration'
    """
    import transformers

    from .families_d import glm_text_config, glm_token_ids, glm_vision_config

    _check_family(family)
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids
    temporal = processor.image_processor.temporal_patch_size
    if family == "glm46v":
        config = transformers.Glm46VConfig(
            text_config=glm_text_config(tok, model_type="glm4v_text"),
            vision_config=glm_vision_config(PATCH, MERGE, temporal, model_type="glm4v_vision"), **glm_token_ids(tok))
        return seeded_model(transformers.Glm46VForConditionalGeneration, config, seed, jitter_constants=True)
    if family == "glm5_next":
        return _glm5_next(tok, temporal, seed)
    image, video, open_, close = QWEN_STYLE[family]
    special = {"image_token_id": ids(image), "video_token_id": ids(video), "vision_start_token_id": ids(open_),
               "vision_end_token_id": ids(close)}
    build = _MODELS[family]
    return build(tok, special, temporal, seed)


def _glm5_next(tok, temporal, seed):
    import transformers

    from .families_d import glm_token_ids, glm_vision_config

    # two MLA layers with the DSA indexer ("full_attention", which 5.24 renames "indexed_attention"; the checkpoint
    # interleaves them with linear-attention layers, left out here), one dense and one sparse feed-forward; its DSA
    # layers use no rotary part (qk_rope_head_dim 0)
    text = text_config(tok, num_attention_heads=2, num_key_value_heads=2, head_dim=16, moe_intermediate_size=16,
                       n_routed_experts=4, num_experts_per_tok=2, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=0,
                       v_head_dim=16, qk_nope_head_dim=16, index_topk=64, index_head_dim=16, index_n_heads=2,
                       layer_types=["full_attention"] * 2, mlp_layer_types=["dense", "sparse"], linear_head_dim=16,
                       linear_num_heads=2, hc_mult=2, index_kpool=4,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    vision = glm_vision_config(PATCH, MERGE, temporal, projection_intermediate_size=64)
    config = transformers.Glm5NextConfig(text_config=text, vision_config=vision, **glm_token_ids(tok))
    return seeded_model(transformers.Glm5NextForConditionalGeneration, config, seed, jitter_constants=True)


def _vision(temporal) -> dict:
    """A tiny Qwen-style vision tower config (2 layers, hidden 32) with the processors' patch geometry."""
    return {"hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "patch_size": PATCH, "spatial_merge_size": MERGE, "temporal_patch_size": temporal,
            "out_hidden_size": HIDDEN}


def _lfm3_vl(tok, special, temporal, seed):
    import transformers

    # one attention layer and one short-convolution layer (the checkpoint interleaves them); a model of convolutions
    # only has no attention layer to count its cache by
    text = text_config(tok, model_type="lfm3", layer_types=["conv", "full_attention"])
    vision = _vision(temporal)
    config = transformers.Lfm3VlConfig(text_config=text, vision_config=vision, **special)
    return seeded_model(transformers.Lfm3VlForConditionalGeneration, config, seed, jitter_constants=True)


def _cosmos3_edge(tok, special, temporal, seed):
    import transformers

    text = text_config(tok, rope_parameters=dict(MROPE))
    vision = _vision(temporal)
    config = transformers.Cosmos3EdgeConfig(text_config=text, vision_config=vision, **special)
    return seeded_model(transformers.Cosmos3EdgeForConditionalGeneration, config, seed, jitter_constants=True)


def _cohere_compass(tok, special, temporal, seed):
    import transformers

    # rope parameters per layer type (its config's shape), 3-D rope sections over half of head_dim 8
    text = text_config(tok, rope_parameters={"full_attention": dict(MROPE)})
    vision = _vision(temporal)
    config = transformers.CohereCompassConfig(text_config=text, vision_config=vision, **special)
    return seeded_model(transformers.CohereCompassForConditionalGeneration, config, seed, jitter_constants=True)


_MODELS = {"lfm3_vl": _lfm3_vl, "cosmos3_edge": _cosmos3_edge, "cohere_compass": _cohere_compass}
