"""Offline builders of real processors and tiny real models of each family, for tests, benchmarks and the demo.

Nothing here reaches the model hub: tokenizers are trained in-process and configs are tiny and random.
"""

from __future__ import annotations

FAMILIES_A = ("gemma3", "paligemma", "llava", "llava_next", "llava_onevision", "pixtral", "mistral3")
FAMILIES_B = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "smolvlm", "internvl")
FAMILIES_C = ("gemma4", "llava_next_video")
FAMILIES_D = ("paddleocr_vl", "glm4v")
FAMILIES_MLLAMA = ("mllama",)  # cross-attention (chunker.testing.families_mllama)
# grammars chunker already knows, in their own processor classes (chunker.testing.families_f): FAMILIES_F carry a real
# vendored template (the shared contract runs them), PRETOKENIZED_F are proven on pre-tokenized rows
FAMILIES_F = ("deepseek_vl", "deepseek_vl_hybrid", "lighton_ocr")
PRETOKENIZED_F = ("chameleon", "video_llava", "granite4_vision", "qianfan_ocr", "emu3")
# tile grammars (chunker.testing.families_g): FAMILIES_G carry a real vendored template, PRETOKENIZED_G are proven on
# pre-tokenized rows (tests/test_family_tiles.py)
FAMILIES_G = ("ovis2", "aria")
PRETOKENIZED_G = ("aya_vision", "idefics2")
# model types that share a supported family's processor class but have their own model class
# (chunker.testing.families_h; tests/test_family_shared.py): FAMILIES_H carry their checkpoints' real vendored template
# (the shared contract runs them), SHARED_H are proven in tests/test_family_shared.py (Qwen3.5-MoE: its real thinking
# template; VipLLaVA, GLM-4.5V: a sibling's real template as a stand-in)
FAMILIES_H = ("qwen3_5", "qwen3_vl_moe")
SHARED_H = ("qwen3_5_moe", "vipllava", "glm4v_moe")
FAMILIES = FAMILIES_A + FAMILIES_B + FAMILIES_C + FAMILIES_D + FAMILIES_MLLAMA + FAMILIES_F + FAMILIES_G + FAMILIES_H
# processors whose grammar is learned, not written (chunker.families.learned), tested on pre-tokenized rows
LEARNED = ("janus", "gemma3n")
# Qwen-style grid families whose grammar is learned (chunker.testing.families_e; LFM3-VL needs transformers 5.24)
LEARNED_E = ("glm46v", "glm5_next", "lfm3_vl", "cosmos3_edge", "cohere_compass")


# images, videos and audio in one family; their builders need torchvision (chunker.testing.families_omni,
# tests/test_family_omni.py runs the shared contract's checks on them)
FAMILIES_OMNI = ("qwen2_5_omni", "qwen3_omni_moe")
# images and audio as bare runs; its image processor needs torchvision (chunker.testing.families_phi4mm,
# tests/test_family_phi4mm.py)
FAMILIES_PHI4MM = ("phi4_multimodal",)
# tile grammars whose image processor has only a torchvision backend (chunker.testing.families_tv,
# tests/test_family_tv.py)
FAMILIES_TV = ("cohere2_vision", "llama4")
LEARNED_TV = ("minimax_m3_vl",)  # a grid family learned from its processor, in the same module and test
# the README matrix's row (tools/families_matrix.py) of each family whose processor needs torchvision: real class,
# modalities, grammar; stated so the table is the same with or without torchvision, and checked against the processor
# where torchvision loads (tests/test_family_torchvision_matrix.py)
TORCHVISION_MATRIX = {
    "qwen2_5_omni": ("Qwen2_5OmniProcessor", "image, video, audio", "written (`qwen2_5_omni`)"),
    "qwen3_omni_moe": ("Qwen3OmniMoeProcessor", "image, video, audio",
                       "written (`qwen3_omni_moe`; Qwen2.5-Omni's template)"),
    "phi4_multimodal": ("Phi4MultimodalProcessor", "image, audio", "written (`phi4_multimodal`)"),
    "cohere2_vision": ("Cohere2VisionProcessor", "image", "written (`cohere2_vision`; a stand-in template)"),
    "llama4": ("Llama4Processor", "image", "written (`llama4`)"),
    "minimax_m3_vl": ("MiniMaxM3VLProcessor", "image", "learned (grid count; a stand-in template)"),
}


def _module(family: str):
    if family in FAMILIES_PHI4MM:
        from . import families_phi4mm as mod
    elif family in FAMILIES_TV + LEARNED_TV:
        from . import families_tv as mod
    elif family in FAMILIES_OMNI:
        from . import families_omni as mod
    elif family in FAMILIES_A:
        from . import families_a as mod
    elif family in FAMILIES_B:
        from . import families_b as mod
    elif family in FAMILIES_C + LEARNED:
        from . import families_c as mod
    elif family in FAMILIES_D:
        from . import families_d as mod
    elif family in LEARNED_E:
        from . import families_e as mod
    elif family in FAMILIES_MLLAMA:
        from . import families_mllama as mod
    elif family in FAMILIES_F + PRETOKENIZED_F:
        from . import families_f as mod
    elif family in FAMILIES_G + PRETOKENIZED_G:
        from . import families_g as mod
    elif family in FAMILIES_H + SHARED_H:
        from . import families_h as mod
    else:
        known = FAMILIES + LEARNED + LEARNED_E + PRETOKENIZED_F + PRETOKENIZED_G + SHARED_H
        raise ValueError(f"unknown test family {family!r}: choose one of {known}")
    return mod


def build_processor(family: str, **options):
    """A real processor of `family`, built offline with a tiny tokenizer and a small image size."""
    return _module(family).build_processor(family, **options)


def build_model(family: str, processor, seed: int = 0):
    """The family's real model class with a tiny random config matching `processor`."""
    return _module(family).build_model(family, processor, seed=seed)
