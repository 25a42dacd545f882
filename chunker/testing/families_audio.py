"""Offline audio of the families with audio spans: Gemma 4's real processor (its real `Gemma4AudioFeatureExtractor` and
the checkpoint's real chat template, from `families_c`), a tiny real `Gemma4ForConditionalGeneration` whose audio tower
is built too, and deterministic test waveforms.
"""

from __future__ import annotations

from ._tiny import HIDDEN, seeded_model

AUDIO_FAMILIES = ("gemma4",)
SAMPLING_RATE = 16_000
# The smallest audio tower the real class builds: the subsampling projection's input width is
# `subsampling_conv_channels[0] // 4 * subsampling_conv_channels[1]`, which must equal the 128 mel bins / 4 times the
# second channel count, so the first stays 128 (the checkpoints' value); chunks of 4 frames, 4 frames of left context.
GEMMA4_AUDIO = {"model_type": "gemma4_audio", "hidden_size": HIDDEN, "num_hidden_layers": 1, "num_attention_heads": 2,
                "subsampling_conv_channels": [128, 4], "output_proj_dims": HIDDEN, "attention_chunk_size": 4,
                "attention_context_left": 5, "conv_kernel_size": 3}


def build_processor(family: str = "gemma4"):
    """The real processor of an audio family, built offline (`chunker.testing.build_processor`).

    Example:
        >>> p = build_processor()
        >>> p.audio_token, p.boa_token, p.eoa_token, type(p.feature_extractor).__name__
        ('<|audio|>', '<|audio>', '<audio|>', 'Gemma4AudioFeatureExtractor')
    """
    from . import build_processor as build

    _check(family)
    return build(family)


def build_model(family: str, processor, seed: int = 0):
    """The family's real `*ForConditionalGeneration` with a tiny random config, its audio tower included.

    Args:
        family: one of `AUDIO_FAMILIES`.
        processor: from `build_processor(family)`.
        seed: the weights are drawn under this seed (the global RNG is restored after).

    Returns:
        The model in training mode, float32, on CPU; parameters the init leaves constant get small noise.

    Example:
        >>> model = build_model("gemma4", build_processor())
        >>> type(model.model.audio_tower).__name__
        'Gemma4AudioModel'
    """
    import transformers

    from .families_c import gemma4_config

    _check(family)
    config = gemma4_config(processor, audio_config=dict(GEMMA4_AUDIO))
    return seeded_model(transformers.Gemma4ForConditionalGeneration, config, seed, jitter_constants=True)


def waveforms(samples, seed: int = 0) -> list:
    """Deterministic mono float32 test waveforms of the given lengths (samples at 16 kHz): a tone plus noise each.

    Example:
        >>> [len(w) for w in waveforms([1600, 3200])]
        [1600, 3200]
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for k, n in enumerate(samples):
        t = np.arange(int(n)) / SAMPLING_RATE
        tone = 0.3 * np.sin(2 * np.pi * (220 + 110 * k) * t)
        out.append((tone + 0.05 * rng.standard_normal(int(n))).astype(np.float32))
    return out


def _check(family: str) -> None:
    if family not in AUDIO_FAMILIES:
        raise ValueError(f"unknown audio family {family!r}: choose one of {AUDIO_FAMILIES}")
