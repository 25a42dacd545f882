"""Offline real processors and tiny real models of the tile-grammar families (`chunker.families.tiles`): Aya Vision,
Ovis2, Aria, Idefics2.

Ovis2's, Aria's and Idefics2's processors carry their checkpoints' REAL chat templates, vendored byte-exact in
`tests/data/chat_templates/` (provenance in its `SOURCES.md`), read from the source tree; a builder whose template is
not there needs `chat_template=`. No public byte-exact copy of Aya Vision's template was found, so its processor has
none: it is proven on rows the processor itself tokenized (`tests/test_family_tiles.py`).
"""

from __future__ import annotations

from ._templates import vendored_template
from ._tiny import HIDDEN, seeded_model, text_config, vision_config

FAMILIES_G = ("ovis2", "aria")
# written families proven on pre-tokenized rows only (no conversation path: no real template, or a processor that
# rewrites the text), in tests/test_family_tiles.py
PRETOKENIZED_G = ("aya_vision", "idefics2")
TEMPLATE_FILES = {"ovis2": "thisisiron--Ovis2-2B-hf.jinja", "idefics2": "HuggingFaceM4--idefics2-8b-chatty.jinja",
                  "aria": "rhymes-ai--Aria.jinja"}

# CohereLabs/aya-vision-8b: the Cohere tokenizer's control tokens and the processor's image tokens (its defaults)
AYA_SPECIALS = ("<PAD>", "<UNK>", "<CLS>", "<SEP>", "<MASK_TOKEN>", "<BOS_TOKEN>", "<EOS_TOKEN>",
                "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>",
                "<|SYSTEM_TOKEN|>", "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>")
# Geometry: 16-pixel tiles of 4-pixel patches, pixel-shuffled 2x2: (16 / (4*2))² = 4 patch tokens per tile, at most 4
# tiles and the global view (the checkpoint: 364-pixel tiles, 14-pixel patches, 169 tokens, up to 12 tiles)
AYA_TILE, AYA_PATCH, AYA_DOWNSAMPLE, AYA_MAX_TILES = 16, 4, 2, 4

# thisisiron/Ovis2-2B-hf: the conversion's special tokens (`convert_ovis2_weights_to_hf.py`, SPECIAL_TOKENS), after
# Qwen2's ChatML ones (`_tokenizer.chatml_tokenizer`); the model's visual indicators are the five after `<IMG_ATOM>`
OVIS2_SPECIALS = ("<IMG_ATOM>", "<IMG_START>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>")
# Geometry: 16-pixel views of 4-pixel patches merged 2x2 (hidden_stride 2): 4 atoms per view, up to 4 cells
OVIS2_VIEW, OVIS2_PATCH, OVIS2_STRIDE, OVIS2_MAX_CELLS = 16, 4, 2, 4

# rhymes-ai/Aria: the conversion's named tokens (`convert_aria_weights_to_hf.py`) and the template's image brackets
ARIA_SPECIALS = ("<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<fim_prefix>", "<fim_suffix>", "<|img|>")
# Geometry: the image processor takes only 490- or 980-pixel crops; 140-pixel patches give 7x7 = 49 patches, which the
# projector maps to 4 queries per crop (the checkpoint: 14-pixel patches, 128 / 256 queries)
ARIA_SIDE, ARIA_PATCH, ARIA_QUERIES = 980, 140, 4

# HuggingFaceM4/idefics2-8b-chatty: the Mistral tokenizer's control tokens and the processor's image tokens
IDEFICS2_SPECIALS = ("<unk>", "<s>", "</s>", "<fake_token_around_image>", "<image>", "<end_of_utterance>")
IDEFICS2_IMAGE, IDEFICS2_PATCH, IDEFICS2_LATENTS = 32, 8, 4  # the checkpoint: 980 px, 14 px patches, 64 latents


def _check_family(family: str) -> None:
    if family not in FAMILIES_G + PRETOKENIZED_G:
        raise ValueError(f"unknown family {family!r}: choose one of {FAMILIES_G + PRETOKENIZED_G}")


def template(family: str) -> str:
    """The vendored real chat template of `family`'s checkpoint (`_templates.vendored_template`)."""
    return vendored_template(TEMPLATE_FILES[family])


def build_processor(family: str, **options):
    """A real processor of `family`, built offline at a small image size.

    Args:
        family: one of `FAMILIES_G + PRETOKENIZED_G`.
        **options: `chat_template` overrides the vendored one; Idefics2 also takes `do_image_splitting` (False), Ovis2
            `return_tensors` (the image processor's default, "np"; None as the checkpoint has it).

    Returns:
        A fresh processor of the real class (Aya Vision's without a chat template).

    Raises:
        ValueError: an unknown family or option.

    Example:
        >>> p = build_processor("ovis2")
        >>> type(p).__name__, p.image_seq_length
        ('Ovis2Processor', 4)
        >>> build_processor("aya_vision").img_patch_token
        '<|IMG_PATCH|>'
    """
    _check_family(family)
    chat_template = options.pop("chat_template", None)
    splitting = options.pop("do_image_splitting", False) if family == "idefics2" else False
    tensors = options.pop("return_tensors", "np") if family == "ovis2" else None
    if options:
        raise ValueError(f"unknown options {sorted(options)} for family {family!r}")
    if family == "aya_vision":
        return _aya_vision(chat_template)
    if family == "idefics2":
        return _idefics2(chat_template or template(family), splitting)
    if family == "aria":
        return _aria(chat_template or template(family))
    return _ovis2(chat_template or template(family), tensors)


def _aya_vision(chat_template):
    from transformers import AyaVisionProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    from ._tokenizer import make_tokenizer

    tokenizer = make_tokenizer(AYA_SPECIALS, bos_token="<BOS_TOKEN>", eos_token="<|END_OF_TURN_TOKEN|>",
                               pad_token="<PAD>", unk_token="<UNK>", add_bos_token=True)
    image_processor = GotOcr2ImageProcessorPil(size={"height": AYA_TILE, "width": AYA_TILE}, crop_to_patches=True,
                                               min_patches=1, max_patches=AYA_MAX_TILES)
    return AyaVisionProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=AYA_PATCH,
                              img_size=AYA_TILE, downsample_factor=AYA_DOWNSAMPLE, chat_template=chat_template)


def _ovis2(chat_template, return_tensors="np"):
    from transformers import Ovis2Processor
    from transformers.models.ovis2.image_processing_pil_ovis2 import Ovis2ImageProcessorPil

    from ._tokenizer import chatml_tokenizer

    tokenizer = chatml_tokenizer(OVIS2_SPECIALS, named={"image_token": "<IMG_ATOM>"})
    # `Ovis2Processor.replace_image_token` reads `grids[i].tolist()`: a processor call without return_tensors (lists)
    # crashes, so the image processor returns arrays by default (`return_tensors=None` builds the checkpoint's own,
    # tests/test_family_tiles.py)
    image_processor = Ovis2ImageProcessorPil(size={"height": OVIS2_VIEW, "width": OVIS2_VIEW}, crop_to_patches=True,
                                             max_patches=OVIS2_MAX_CELLS,
                                             **({"return_tensors": return_tensors} if return_tensors else {}))
    per_view = (OVIS2_VIEW // OVIS2_PATCH // OVIS2_STRIDE) ** 2
    return Ovis2Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template,
                          image_seq_length=per_view)


def _aria(chat_template):
    from transformers import AriaProcessor
    from transformers.models.aria.image_processing_pil_aria import AriaImageProcessorPil

    from ._tokenizer import make_tokenizer

    tokenizer = make_tokenizer(ARIA_SPECIALS, named={"image_token": "<|img|>"}, bos_token="<s>", eos_token="<|im_end|>",
                               pad_token="<pad>", unk_token="<unk>")
    return AriaProcessor(image_processor=AriaImageProcessorPil(max_image_size=ARIA_SIDE), tokenizer=tokenizer,
                         chat_template=chat_template, size_conversion={490: ARIA_QUERIES, 980: ARIA_QUERIES})


def _idefics2(chat_template, splitting):
    from transformers import Idefics2Processor
    from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

    from ._tokenizer import make_tokenizer

    tokenizer = make_tokenizer(IDEFICS2_SPECIALS, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                               pad_token="<unk>", add_bos_token=True)
    image_processor = Idefics2ImageProcessorPil(
        size={"longest_edge": IDEFICS2_IMAGE, "shortest_edge": IDEFICS2_PATCH}, do_image_splitting=splitting)
    return Idefics2Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=IDEFICS2_LATENTS,
                             chat_template=chat_template)


def build_model(family: str, processor, seed: int = 0):
    """The family's real `*ForConditionalGeneration` with a tiny random config matching `processor`.

    Args:
        family: one of `FAMILIES_G + PRETOKENIZED_G`.
        processor: from `build_processor(family)`.
        seed: the weights are drawn under this seed (the global RNG is restored after).

    Returns:
        The model in training mode, float32, on CPU; parameters the init leaves constant get small noise.

    Example:
        >>> p = build_processor("ovis2")
        >>> type(build_model("ovis2", p)).__name__
        'Ovis2ForConditionalGeneration'
    """
    import transformers

    _check_family(family)
    tok = processor.tokenizer
    if family == "aya_vision":
        vision = vision_config(AYA_TILE, AYA_PATCH, model_type="siglip_vision_model")
        config = transformers.AyaVisionConfig(
            vision_config=vision, text_config=text_config(tok, model_type="cohere2", layer_types=["sliding_attention",
                                                                                                   "full_attention"],
                                                          sliding_window=64),
            downsample_factor=AYA_DOWNSAMPLE, image_token_index=processor.image_token_id)
        return seeded_model(transformers.AyaVisionForConditionalGeneration, config, seed, jitter_constants=True)
    if family == "aria":
        vision = vision_config(ARIA_SIDE, ARIA_PATCH)
        text = text_config(tok, model_type="aria_text", moe_num_experts=2, moe_topk=1, moe_num_shared_experts=1,
                           moe_intermediate_size=32)
        config = transformers.AriaConfig(vision_config=vision, text_config=text, image_token_index=tok.image_token_id,
                                         projector_patch_to_query_dict={(ARIA_SIDE // ARIA_PATCH) ** 2: ARIA_QUERIES})
        return seeded_model(transformers.AriaForConditionalGeneration, config, seed, jitter_constants=True)
    if family == "idefics2":
        vision = vision_config(IDEFICS2_IMAGE, IDEFICS2_PATCH)
        perceiver = {"hidden_size": HIDDEN, "resampler_n_latents": IDEFICS2_LATENTS, "resampler_depth": 1,
                     "resampler_n_heads": 2, "resampler_head_dim": 8, "num_key_value_heads": 1}
        config = transformers.Idefics2Config(vision_config=vision, perceiver_config=perceiver,
                                             text_config=text_config(tok, model_type="mistral"),
                                             image_token_id=processor.image_token_id)
        return seeded_model(transformers.Idefics2ForConditionalGeneration, config, seed, jitter_constants=True)
    ids = tok.convert_tokens_to_ids(list(OVIS2_SPECIALS))
    vision = vision_config(OVIS2_VIEW, OVIS2_PATCH, hidden_stride=OVIS2_STRIDE, vocab_size=64)
    config = transformers.Ovis2Config(vision_config=vision, text_config=text_config(tok, model_type="qwen2"),
                                      image_token_id=ids[0], visual_indicator_token_ids=ids[1:],
                                      vocab_size=len(tok), hidden_size=HIDDEN)
    return seeded_model(transformers.Ovis2ForConditionalGeneration, config, seed, jitter_constants=True)
