"""Offline real processor and tiny real model of Llama 3.2 Vision (`MllamaProcessor`, `MllamaForConditionalGeneration`).

Mllama's text holds one `<|image|>` per image; the model attends to the images by cross-attention, through a
`cross_attention_mask` (batch, tokens, images, tiles) the processor builds from the text. The processor is the real
class with the real PIL image processor (`MllamaImageProcessorPil`: no torchvision) at a small tile size, a tiny
tokenizer holding the checkpoint's special tokens, and the checkpoint's REAL chat template, vendored byte-exact in
`tests/data/chat_templates/` (provenance in its `SOURCES.md`).
"""

from __future__ import annotations

from ._templates import chat_template_option, vendored_template
from ._tiny import HIDDEN, seeded_model, text_config

FAMILIES_MLLAMA = ("mllama",)
TEMPLATE_FILE = "meta-llama--Llama-3.2-11B-Vision-Instruct.jinja"

# meta-llama/Llama-3.2-11B-Vision-Instruct: the special tokens its template and processor use (its added tokens); the
# tokenizer names no image token, so the processor falls back to `<|image|>` as it does for the checkpoint.
MLLAMA_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>")
# Geometry: tiles of 28x28 pixels in 14-pixel patches (the checkpoint: 560 and 14), at most 4 tiles per image (as the
# checkpoint), so an image is 1 to 4 tiles of 4 patches each.
MLLAMA_TILE, MLLAMA_PATCH, MLLAMA_TILES = 28, 14, 4


def _check_family(family: str) -> None:
    if family not in FAMILIES_MLLAMA:
        raise ValueError(f"unknown family {family!r}: choose one of {FAMILIES_MLLAMA}")


def template(family: str = "mllama") -> str:
    """The vendored real chat template of meta-llama/Llama-3.2-11B-Vision-Instruct.

    Raises:
        FileNotFoundError: the source tree's test data is not there (an installed wheel): pass `chat_template=`.
    """
    _check_family(family)
    return vendored_template(TEMPLATE_FILE)


def build_processor(family: str = "mllama", **options):
    """The real `MllamaProcessor`, built offline with small tiles and the checkpoint's real chat template.

    Args:
        family: "mllama".
        **options: `chat_template` overrides the vendored one.

    Returns:
        A fresh `MllamaProcessor` whose image processor is the PIL one (`MllamaImageProcessorPil`).

    Raises:
        ValueError: an unknown family or option.

    Example:
        >>> p = build_processor("mllama")
        >>> type(p).__name__, type(p.image_processor).__name__, p.image_token
        ('MllamaProcessor', 'MllamaImageProcessorPil', '<|image|>')
    """
    _check_family(family)
    chat_template = chat_template_option(family, options)
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil
    from transformers.models.mllama.processing_mllama import MllamaProcessor

    from ._tokenizer import make_tokenizer

    # the checkpoint's tokenizer puts <|begin_of_text|> before a text (its post-processor): add_bos_token does here
    tokenizer = make_tokenizer(MLLAMA_SPECIALS, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                               pad_token="<|finetune_right_pad_id|>", add_bos_token=True)
    image_processor = MllamaImageProcessorPil(size={"height": MLLAMA_TILE, "width": MLLAMA_TILE},
                                              max_image_tiles=MLLAMA_TILES)
    return MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                           chat_template=chat_template or template(family))


def build_model(family: str, processor, seed: int = 0):
    """The real `MllamaForConditionalGeneration` with a tiny random config matching `processor`.

    Args:
        family: "mllama".
        processor: from `build_processor("mllama")`.
        seed: the weights are drawn under this seed (the global RNG is restored after).

    Returns:
        The model in training mode, float32, on CPU: 2 text layers of which the second is a cross-attention layer,
        a vision tower of 2 + 1 global layers over 28-pixel tiles; parameters the init leaves constant get small
        noise and the tanh gates (0 at init) start at 0.5, so image features reach the loss.

    Example:
        >>> p = build_processor("mllama")
        >>> type(build_model("mllama", p)).__name__
        'MllamaForConditionalGeneration'
    """
    import torch
    import transformers

    _check_family(family)
    tok = processor.tokenizer
    text = text_config(tok, model_type="mllama_text_model", cross_attention_layers=[1])
    del text["head_dim"]  # MllamaTextConfig derives it (hidden / heads = 8, as text_config's)
    vision = {"hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2, "num_global_layers": 1,
              "attention_heads": 2, "image_size": MLLAMA_TILE, "patch_size": MLLAMA_PATCH,
              "max_num_tiles": MLLAMA_TILES, "intermediate_layers_indices": [0], "vision_output_dim": 2 * HIDDEN,
              "supported_aspect_ratios": processor_aspect_ratios(processor)}
    config = transformers.MllamaConfig(text_config=text, vision_config=vision,
                                       image_token_index=processor.image_token_id)
    model = seeded_model(transformers.MllamaForConditionalGeneration, config, seed, jitter_constants=True)
    with torch.no_grad():  # the tanh gates start closed (0): opened, image features reach the loss from the start
        for name, param in model.named_parameters():
            if name.endswith("gate"):
                param.fill_(0.5)
    return model


def processor_aspect_ratios(processor) -> list:
    """The (height, width) tile grids the image processor may choose, in the order its aspect_ratio_ids count them."""
    import sys

    module = sys.modules[type(processor.image_processor).__module__]
    return [list(r) for r in module.get_all_supported_aspect_ratios(processor.image_processor.max_image_tiles)]
