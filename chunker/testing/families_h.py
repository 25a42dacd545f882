"""Offline real processors and tiny real models of model types that share a processor class with a family chunker
already supports but have their own model class: Qwen3.5 (`qwen3_5`, `qwen3_5_moe`) and Qwen3-VL-MoE
(`qwen3_vl_moe`) use `Qwen3VLProcessor`, VipLLaVA (`vipllava`) uses `LlavaProcessor`, GLM-4.5V (`glm4v_moe`) uses
`Glm4vProcessor`.

Each processor is the shared class built as its sibling family's test processor (`chunker.testing.families_b`,
`families_a`, `families_d`: tiny in-process tokenizer with the real special tokens, real PIL image processor at a
small size), carrying a real vendored chat template where one is (`tests/data/chat_templates/SOURCES.md`):

- `qwen3_5`: Qwen/Qwen3.5-2B's template (`Qwen--Qwen3.5-2B.jinja`, thinking off by default; a `qwen3_5` checkpoint);
- `qwen3_5_moe`: Qwen/Qwen3.5-4B-and-larger's template (`Qwen--Qwen3.5-4B.jinja`, thinking on by default), which the
  Qwen3.5 MoE checkpoints (35B-A3B and larger) ship;
- `qwen3_vl_moe`: the Qwen3-VL Instruct template (`Qwen--Qwen3-VL-2B-Instruct.jinja`), which Qwen3-VL-30B-A3B-Instruct
  and the other Instruct checkpoints ship;
- `vipllava`: no VipLLaVA template is vendored: LLaVA-1.5's real template (`llava-hf--llava-1.5-7b-hf.jinja`) is a
  STAND-IN that renders an image the same way (`<image>`), not the checkpoint's own;
- `glm4v_moe`: no GLM-4.5V template is vendored: GLM-4.1V-9B-Thinking's real template is a STAND-IN (as for GLM-4.6V
  in `chunker.testing.families_e`), not the checkpoint's own.

Each model is the type's real `*ForConditionalGeneration` with a tiny random config (hidden 32, 2 layers; MoE types
with 4 experts, 2 per token; Qwen3.5 with one linear-attention and one full-attention layer).
"""

from __future__ import annotations

from ._templates import vendored_template
from ._tiny import HIDDEN, seeded_model, text_config, vision_config

FAMILIES_H = ("qwen3_5", "qwen3_5_moe", "qwen3_vl_moe", "vipllava", "glm4v_moe")
# the processor family each type shares its processor class with (chunker.testing builder)
SHARES = {"qwen3_5": "qwen3_vl", "qwen3_5_moe": "qwen3_vl", "qwen3_vl_moe": "qwen3_vl", "vipllava": "llava",
          "glm4v_moe": "glm4v"}
TEMPLATE_FILES = {
    "qwen3_5": "Qwen--Qwen3.5-2B.jinja",
    "qwen3_5_moe": "Qwen--Qwen3.5-4B.jinja",
    "qwen3_vl_moe": "Qwen--Qwen3-VL-2B-Instruct.jinja",
    "vipllava": "llava-hf--llava-1.5-7b-hf.jinja",  # stand-in: no VipLLaVA template vendored
    "glm4v_moe": "zai-org--GLM-4.1V-9B-Thinking.jinja",  # stand-in: no GLM-4.5V template vendored
}
# types whose template above is not their checkpoints' own
STAND_IN = ("vipllava", "glm4v_moe")
_MODEL_CLASSES = {
    "qwen3_5": "Qwen3_5ForConditionalGeneration",
    "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration",
    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
    "vipllava": "VipLlavaForConditionalGeneration",
    "glm4v_moe": "Glm4vMoeForConditionalGeneration",
}

def _check_family(family: str) -> None:
    if family not in FAMILIES_H:
        raise ValueError(f"unknown family {family!r}: choose one of {FAMILIES_H}")


def available(family: str) -> str | None:
    """None when the installed transformers has `family`'s model class, else why not (a skip reason)."""
    import transformers

    _check_family(family)
    if not hasattr(transformers, _MODEL_CLASSES[family]):
        return f"transformers {transformers.__version__} has no {_MODEL_CLASSES[family]}"
    return None


def template(family: str) -> str:
    """The vendored chat template `family`'s processor carries (see the module docstring; two are stand-ins)."""
    _check_family(family)
    return vendored_template(TEMPLATE_FILES[family])


def build_processor(family: str, **options):
    """A real processor of `family`: its shared class, built as its sibling's test processor, with its template.

    Args:
        family: one of `FAMILIES_H`.
        **options: passed to the sibling's builder (`chat_template` overrides the vendored template).

    Returns:
        The processor (Qwen / GLM: an image-only subclass of the real class, see `chunker.testing._image_only`).

    Example:
        >>> p = build_processor("qwen3_5")
        >>> type(p).__mro__[1].__name__
        'Qwen3VLProcessor'
    """
    from . import build_processor as sibling

    _check_family(family)
    options.setdefault("chat_template", template(family))
    return sibling(SHARES[family], **options)


def build_model(family: str, processor, seed: int = 0):
    """`family`'s real `*ForConditionalGeneration` with a tiny random config matching `processor`.

    Example:
        >>> p = build_processor("qwen3_5")
        >>> type(build_model("qwen3_5", p)).__name__
        'Qwen3_5ForConditionalGeneration'
    """
    import transformers

    _check_family(family)
    cls = getattr(transformers, _MODEL_CLASSES[family])
    return seeded_model(cls, _config(family, processor), seed, jitter_constants=True)


def _config(family, processor):
    import transformers

    from .families_b import qwen_token_ids

    tok = processor.tokenizer
    if family in ("qwen3_5", "qwen3_5_moe", "qwen3_vl_moe"):
        ip = processor.image_processor
        vision = {"depth": 2, "hidden_size": HIDDEN, "out_hidden_size": HIDDEN, "intermediate_size": 64,
                  "num_heads": 2, "num_position_embeddings": 64, "patch_size": ip.patch_size,
                  "temporal_patch_size": ip.temporal_patch_size, "spatial_merge_size": ip.merge_size}
        moe = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}
        if family == "qwen3_vl_moe":
            rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                    "mrope_interleaved": True}
            text = text_config(tok, rope_parameters=rope, decoder_sparse_step=1, **moe)
            vision["deepstack_visual_indexes"] = [0]
            return transformers.Qwen3VLMoeConfig(text_config=text, vision_config=vision, **qwen_token_ids(processor))
        # Qwen3.5: a quarter of head_dim rotates in the checkpoints (64 of 256); here half of 16: mrope halves of 8
        rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1],
                "mrope_interleaved": True}
        text = text_config(tok, rope_parameters=rope, head_dim=16, num_attention_heads=2, num_key_value_heads=1,
                           layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=4,
                           linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                           linear_num_value_heads=4)
        if family == "qwen3_5":
            return transformers.Qwen3_5Config(text_config=text, vision_config=vision, **qwen_token_ids(processor))
        text.update(moe, shared_expert_intermediate_size=16)
        text.pop("intermediate_size")
        return transformers.Qwen3_5MoeConfig(text_config=text, vision_config=vision, **qwen_token_ids(processor))
    if family == "vipllava":
        from .families_a import LLAVA_IMAGE, LLAVA_PATCH

        vision = vision_config(LLAVA_IMAGE, LLAVA_PATCH, model_type="clip_vision_model", projection_dim=HIDDEN)
        # the checkpoints concatenate 5 vision layers' features; the 2-layer tower here gives 2
        return transformers.VipLlavaConfig(text_config=text_config(tok, model_type="llama"), vision_config=vision,
                                           image_token_index=processor.image_token_id, vision_feature_layers=[-2, -1],
                                           image_seq_length=(LLAVA_IMAGE // LLAVA_PATCH) ** 2)
    from .families_d import glm_text_config, glm_token_ids, glm_vision_config

    text = glm_text_config(tok, model_type="glm4v_moe_text", moe_intermediate_size=16, num_experts_per_tok=2,
                           n_routed_experts=4, n_shared_experts=1, first_k_dense_replace=1)
    return transformers.Glm4vMoeConfig(text_config=text, vision_config=glm_vision_config(), **glm_token_ids(tok))
