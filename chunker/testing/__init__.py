"""Offline builders of real processors and tiny real models of each family, for tests, benchmarks and the demo.

Nothing here reaches the model hub: tokenizers are trained in-process and configs are tiny and random.
"""

from __future__ import annotations

FAMILIES_A = ("gemma3", "paligemma", "llava", "llava_next", "llava_onevision", "pixtral", "mistral3")
FAMILIES_B = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "smolvlm", "internvl")
FAMILIES_C = ("gemma4", "llava_next_video")
FAMILIES_D = ("paddleocr_vl", "glm4v")
FAMILIES = FAMILIES_A + FAMILIES_B + FAMILIES_C + FAMILIES_D
# processors whose grammar is learned, not written (chunker.families.learned), tested on pre-tokenized rows
LEARNED = ("janus", "gemma3n")


def _module(family: str):
    if family in FAMILIES_A:
        from . import families_a as mod
    elif family in FAMILIES_B:
        from . import families_b as mod
    elif family in FAMILIES_C + LEARNED:
        from . import families_c as mod
    elif family in FAMILIES_D:
        from . import families_d as mod
    else:
        raise ValueError(f"unknown test family {family!r}: choose one of {FAMILIES + LEARNED}")
    return mod


def build_processor(family: str, **options):
    """A real processor of `family`, built offline with a tiny tokenizer and a small image size."""
    return _module(family).build_processor(family, **options)


def build_model(family: str, processor, seed: int = 0):
    """The family's real model class with a tiny random config matching `processor`."""
    return _module(family).build_model(family, processor, seed=seed)
