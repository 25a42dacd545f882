"""Offline real processor and tiny real model of Phi-4-multimodal (`Phi4MultimodalProcessor`,
`Phi4MultimodalForCausalLM`): images and audio.

The processor is the real class with its real image processor (`Phi4MultimodalImageProcessor`, torchvision only: the
builder needs torchvision) at the checkpoint's geometry (448-pixel crops in 14-pixel patches: the processor's count
rule hard-codes the 16x16 global block those give) and its real `Phi4MultimodalFeatureExtractor`, a tiny tokenizer
holding the checkpoint's special tokens, and the chat template transformers' processor test gives the converted
checkpoint, vendored byte-exact in `tests/data/chat_templates/` (provenance in its `SOURCES.md`).
"""

from __future__ import annotations

from ._templates import chat_template_option, vendored_template
from ._tiny import HIDDEN, seeded_model, text_config

FAMILIES_PHI4MM = ("phi4_multimodal",)
TEMPLATE_FILE = "microsoft--Phi-4-multimodal-instruct.jinja"
# microsoft/Phi-4-multimodal-instruct: `<|endoftext|>` is its BOS, EOS, padding and unknown token; the chat and tool
# markers its template writes; `<|image|>` and `<|audio|>` the placeholders the processor expands.
PHI4MM_SPECIALS = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|tool|>", "<|/tool|>",
                   "<|image|>", "<|audio|>")


def _check_family(family: str) -> None:
    if family not in FAMILIES_PHI4MM:
        raise ValueError(f"unknown family {family!r}: choose one of {FAMILIES_PHI4MM}")


def template(family: str = "phi4_multimodal") -> str:
    """The vendored chat template of the converted microsoft/Phi-4-multimodal-instruct processor.

    Raises:
        FileNotFoundError: the source tree's test data is not there (an installed wheel): pass `chat_template=`.
    """
    _check_family(family)
    return vendored_template(TEMPLATE_FILE)


def build_processor(family: str = "phi4_multimodal", **options):
    """The real `Phi4MultimodalProcessor`, built offline (needs torchvision: its image processor has no PIL backend).

    Args:
        family: "phi4_multimodal".
        **options: `chat_template` overrides the vendored one.

    Returns:
        A fresh `Phi4MultimodalProcessor` with the real image processor and feature extractor at their defaults.

    Raises:
        ValueError: an unknown family or option.

    Example (with torchvision):
        >>> p = build_processor()  # doctest: +SKIP
        >>> p.image_token, p.audio_token, type(p.audio_processor).__name__  # doctest: +SKIP
        ('<|image|>', '<|audio|>', 'Phi4MultimodalFeatureExtractor')
    """
    _check_family(family)
    chat_template = chat_template_option(family, options)
    from transformers import Phi4MultimodalFeatureExtractor, Phi4MultimodalImageProcessor, Phi4MultimodalProcessor

    from ._tokenizer import make_tokenizer

    tokenizer = make_tokenizer(PHI4MM_SPECIALS, named={"image_token": "<|image|>", "audio_token": "<|audio|>"},
                               bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                               unk_token="<|endoftext|>")
    return Phi4MultimodalProcessor(image_processor=Phi4MultimodalImageProcessor(),
                                   audio_processor=Phi4MultimodalFeatureExtractor(), tokenizer=tokenizer,
                                   chat_template=chat_template or template(family))


def build_model(family: str, processor, seed: int = 0):
    """The real `Phi4MultimodalForCausalLM` with a tiny random config matching `processor` (its vision tower at the
    processor's 448-pixel crops, a one-block audio conformer).

    Returns:
        The model in training mode, float32, on CPU; parameters the init leaves constant get small noise.
    """
    _check_family(family)
    import transformers

    tok = processor.tokenizer
    vision = {"hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 448, "patch_size": 14, "crop_size": 448, "image_token_id": tok.image_token_id}
    audio = {"hidden_size": HIDDEN, "intermediate_size": 64, "num_blocks": 1, "num_attention_heads": 2,
             "ext_pw_out_channel": HIDDEN, "depthwise_separable_out_channel": HIDDEN, "nemo_conv_channels": HIDDEN,
             "audio_token_id": tok.audio_token_id}
    base = text_config(tok)
    base.pop("head_dim")
    config = transformers.Phi4MultimodalConfig(**base, vision_config=vision, audio_config=audio)
    return seeded_model(transformers.Phi4MultimodalForCausalLM, config, seed, jitter_constants=True)
