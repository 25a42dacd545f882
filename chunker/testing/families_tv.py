"""Offline real processors and tiny real models of families whose image processor has only a torchvision backend:
the tile grammars of Command A Vision (`Cohere2VisionProcessor`) and Llama 4 (`Llama4Processor`), written in
`chunker.families.tv_tiles`, and MiniMax-M3 (`MiniMaxM3VLProcessor`), a grid family whose grammar is learned from its
processor. These builders need torchvision.

No public byte-exact copy of CohereLabs/command-a-vision-07-2025's chat template was found, so its processor carries
`STAND_IN_TEMPLATE`: a template written here in the Cohere turn format (`<|START_OF_TURN_TOKEN|><|USER_TOKEN|>` ...
`<|END_OF_TURN_TOKEN|>`, answers in `<|START_RESPONSE|>` ... `<|END_RESPONSE|>`), labelled as a stand-in, not the
checkpoint's file; MiniMax-M3's carries `MINIMAX_STAND_IN_TEMPLATE`, a ChatML stand-in writing the processor's image
marker (no public copy of MiniMaxAI/MiniMax-M3's template was found). Llama 4's processor carries the Llama 4 template transformers ships as `Llama4Processor`'s default,
vendored byte-exact in `tests/data/chat_templates/` (provenance in its `SOURCES.md`).
"""

from __future__ import annotations

from ._templates import chat_template_option, vendored_template
from ._tiny import HIDDEN, seeded_model, text_config, vision_config

FAMILIES_TV = ("cohere2_vision", "llama4")
# a grid family whose grammar is learned from its processor (`chunker.families.learned`), not written
LEARNED_TV = ("minimax_m3_vl",)

# CohereLabs/command-a-vision-07-2025: the Cohere tokenizer's control tokens, its response markers and the image tokens
# the processor reads off the tokenizer (`Cohere2VisionProcessor.__init__`: boi, eoi, image, line break)
COHERE2_SPECIALS = ("<PAD>", "<UNK>", "<CLS>", "<SEP>", "<MASK_TOKEN>", "<BOS_TOKEN>", "<EOS_TOKEN>",
                    "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>",
                    "<|SYSTEM_TOKEN|>", "<|START_RESPONSE|>", "<|END_RESPONSE|>", "<|START_OF_IMG|>", "<|END_OF_IMG|>",
                    "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>")
COHERE2_NAMED = {"boi_token": "<|START_OF_IMG|>", "eoi_token": "<|END_OF_IMG|>", "image_token": "<|IMG_PATCH|>",
                 "img_line_break_token": "<|IMG_LINE_BREAK|>"}
# Geometry: 16-pixel tiles of 4-pixel patches (4x4), pixel-shuffled 2x2 into 2x2 = 4 tokens per tile (the image
# processor's patch_size 2), at most 4 tiles and a thumbnail (the checkpoint: 512-pixel tiles, 16-pixel patches,
# patch_size 16: 256 tokens per tile, up to 12 tiles)
COHERE2_TILE, COHERE2_VIT_PATCH, COHERE2_DOWNSAMPLE, COHERE2_MAX_TILES = 16, 4, 2, 4
COHERE2_PATCH = COHERE2_TILE // COHERE2_VIT_PATCH // COHERE2_DOWNSAMPLE

# A stand-in (see the module docstring), not the checkpoint's template
STAND_IN_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|START_OF_TURN_TOKEN|>"
    "{% if message['role'] == 'user' %}<|USER_TOKEN|>{% elif message['role'] == 'assistant' %}<|CHATBOT_TOKEN|>"
    "<|START_RESPONSE|>{% else %}<|SYSTEM_TOKEN|>{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|IMG_PATCH|>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% if message['role'] == 'assistant' %}<|END_RESPONSE|>{% endif %}<|END_OF_TURN_TOKEN|>"
    "{% endfor %}{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>{% endif %}"
)


def _check_family(family: str) -> None:
    if family not in FAMILIES_TV + LEARNED_TV:
        raise ValueError(f"unknown family {family!r}: choose one of {FAMILIES_TV + LEARNED_TV}")


def build_processor(family: str = "cohere2_vision", **options):
    """The family's real processor with its real (torchvision) image processor at a small tile size.

    Args:
        family: one of `FAMILIES_TV`.
        **options: `chat_template` instead of the stand-in (Command A Vision) or the vendored one (Llama 4).

    Returns:
        A fresh processor: 4 image tokens per 16-pixel tile, up to 4 tiles and a thumbnail (a global tile) per image.

    Raises:
        ValueError: an unknown family or option.

    Example (with torchvision):
        >>> p = build_processor()  # doctest: +SKIP
        >>> type(p).__name__, p.patch_size  # doctest: +SKIP
        ('Cohere2VisionProcessor', 2)
    """
    _check_family(family)
    chat_template = chat_template_option(family, options)
    if family == "llama4":
        return _llama4(chat_template or vendored_template(LLAMA4_TEMPLATE))
    if family == "minimax_m3_vl":
        return _minimax_m3(chat_template or MINIMAX_STAND_IN_TEMPLATE)
    from transformers import Cohere2VisionProcessor
    from transformers.models.cohere2_vision.image_processing_cohere2_vision import Cohere2VisionImageProcessor

    from ._tokenizer import make_tokenizer

    tokenizer = make_tokenizer(COHERE2_SPECIALS, named=COHERE2_NAMED, bos_token="<BOS_TOKEN>",
                               eos_token="<|END_OF_TURN_TOKEN|>", pad_token="<PAD>", unk_token="<UNK>",
                               add_bos_token=True)
    image_processor = Cohere2VisionImageProcessor(size={"height": COHERE2_TILE, "width": COHERE2_TILE},
                                                  patch_size=COHERE2_PATCH, max_patches=COHERE2_MAX_TILES)
    return Cohere2VisionProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                  chat_template=chat_template or STAND_IN_TEMPLATE)


def build_model(family: str, processor, seed: int = 0):
    """The real `Cohere2VisionForConditionalGeneration` (a SigLIP tower at the processor's 16-pixel tiles, a two-layer
    Cohere2 decoder), `Llama4ForConditionalGeneration` (its own vision tower, a two-layer decoder with one MoE layer) or
    `MiniMaxM3SparseForConditionalGeneration` (its Qwen-style vision tower, a two-layer MoE decoder) with a tiny random
    config matching `processor`.

    Returns:
        The model in training mode, float32, on CPU; parameters the init leaves constant get small noise. Llama 4's
        image processor makes bfloat16 pixels (the checkpoint's dtype): cast them to float32 for this model.
    """
    _check_family(family)
    import transformers

    tok = processor.tokenizer
    if family == "llama4":
        return _llama4_model(processor, seed)
    if family == "minimax_m3_vl":
        return _minimax_m3_model(processor, seed)
    vision = vision_config(COHERE2_TILE, COHERE2_VIT_PATCH, model_type="siglip_vision_model")
    text = text_config(tok, model_type="cohere2", layer_types=["sliding_attention", "full_attention"],
                       sliding_window=64)
    config = transformers.Cohere2VisionConfig(vision_config=vision, text_config=text,
                                              downsample_factor=COHERE2_DOWNSAMPLE, alignment_intermediate_size=64,
                                              image_token_id=processor.image_token_id)
    return seeded_model(transformers.Cohere2VisionForConditionalGeneration, config, seed, jitter_constants=True)


# Llama 4 (meta-llama/Llama-4-Scout-17B-16E-Instruct): the chat template's and the processor's special tokens
# (`Llama4Processor.__init__` defaults); `<|patch|>` is the placeholder the model scatters features into
LLAMA4_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad|>", "<|header_start|>",
                   "<|header_end|>", "<|eot|>", "<|eom|>", "<|python_start|>", "<|python_end|>", "<|image_start|>",
                   "<|image_end|>", "<|image|>", "<|patch|>", "<|tile_x_separator|>", "<|tile_y_separator|>")
# Geometry: 16-pixel tiles of 4-pixel patches (4x4), pixel-shuffled by 0.5 into 4 tokens per tile, at most 4 tiles and
# a global tile (the checkpoint: 336-pixel tiles, 14-pixel patches: 144 tokens per tile, up to 16 tiles)
LLAMA4_TILE, LLAMA4_PATCH, LLAMA4_SHUFFLE, LLAMA4_MAX_TILES = 16, 4, 0.5, 4
LLAMA4_TEMPLATE = "transformers--Llama4Processor-default.jinja"


def _llama4(chat_template):
    from transformers import Llama4Processor
    from transformers.models.llama4.image_processing_llama4 import Llama4ImageProcessor

    from ._tokenizer import make_tokenizer

    tokenizer = make_tokenizer(LLAMA4_SPECIALS, bos_token="<|begin_of_text|>", eos_token="<|eot|>",
                               pad_token="<|finetune_right_pad|>", add_bos_token=True)
    image_processor = Llama4ImageProcessor(size={"height": LLAMA4_TILE, "width": LLAMA4_TILE},
                                           max_patches=LLAMA4_MAX_TILES)
    return Llama4Processor(image_processor=image_processor, tokenizer=tokenizer, patch_size=LLAMA4_PATCH,
                           pixel_shuffle_ratio=LLAMA4_SHUFFLE, chat_template=chat_template)


def _llama4_model(processor, seed):
    import transformers

    tok = processor.tokenizer
    # the pixel shuffle folds 2x2 patches into one: the vision MLP's width is 4x the tower's (1408 -> 5632 in Scout)
    vision = vision_config(LLAMA4_TILE, LLAMA4_PATCH, intermediate_size=4 * HIDDEN, vision_output_dim=HIDDEN,
                           projector_input_dim=HIDDEN, projector_output_dim=HIDDEN,
                           pixel_shuffle_ratio=LLAMA4_SHUFFLE)
    text = text_config(tok, intermediate_size_mlp=64, num_local_experts=2, interleave_moe_layer_step=2,
                       attention_chunk_size=64)
    config = transformers.Llama4Config(vision_config=vision, text_config=text,
                                       image_token_index=tok.convert_tokens_to_ids("<|patch|>"),
                                       boi_token_index=tok.convert_tokens_to_ids("<|image_start|>"),
                                       eoi_token_index=tok.convert_tokens_to_ids("<|image_end|>"))
    model = seeded_model(transformers.Llama4ForConditionalGeneration, config, seed, jitter_constants=True)
    model.language_model.register_forward_hook(_no_image_outputs)
    return model


def _no_image_outputs(module, args, output):
    # transformers 5.24's `Llama4ForConditionalGeneration.forward` reads `image_outputs` off its language model's
    # output, which has no such field (an AttributeError after the loss is computed): give it the empty one
    if not hasattr(output, "image_outputs"):
        output["image_outputs"] = None
    return output


# MiniMaxAI/MiniMax-M3: the markers `MiniMaxM3VLProcessor` writes itself (class constants), after ChatML's tokens
MINIMAX_SPECIALS = ("]<]image[>[", "]<]video[>[", "]<]start of image[>[", "]<]end of image[>[")
# Geometry: 4-pixel patches merged 2x2, images resized to 256..4096 pixels (the checkpoint: 14-pixel patches)
MINIMAX_PATCH, MINIMAX_MIN_PIXELS, MINIMAX_MAX_PIXELS = 4, 16 * 16, 64 * 64
# A stand-in (see the module docstring), not the checkpoint's template: ChatML turns, an image as the processor's marker
MINIMAX_STAND_IN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}]<]image[>["
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _minimax_m3(chat_template):
    from transformers import MiniMaxM3VLProcessor
    from transformers.models.minimax_m3_vl.image_processing_minimax_m3_vl import MiniMaxM3VLImageProcessor
    from transformers.models.minimax_m3_vl.video_processing_minimax_m3_vl import MiniMaxM3VLVideoProcessor

    from ._tokenizer import chatml_tokenizer

    size = {"shortest_edge": MINIMAX_MIN_PIXELS, "longest_edge": MINIMAX_MAX_PIXELS}
    return MiniMaxM3VLProcessor(image_processor=MiniMaxM3VLImageProcessor(patch_size=MINIMAX_PATCH, size=size),
                                tokenizer=chatml_tokenizer(MINIMAX_SPECIALS),
                                video_processor=MiniMaxM3VLVideoProcessor(patch_size=MINIMAX_PATCH),
                                chat_template=chat_template)


def _minimax_m3_model(processor, seed):
    import transformers

    text = text_config(processor.tokenizer, num_local_experts=2, num_experts_per_tok=1, dense_intermediate_size=64,
                       shared_intermediate_size=32, rotary_dim=4, index_n_heads=2, index_head_dim=8,
                       index_block_size=8, index_topk_blocks=2)
    vision = {"hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "patch_size": MINIMAX_PATCH, "temporal_patch_size": 2, "spatial_merge_size": 2}
    config = transformers.MiniMaxM3VLConfig(text_config=text, vision_config=vision, projector_hidden_size=HIDDEN,
                                            image_token_index=processor.image_token_id,
                                            video_token_index=processor.video_token_id)
    return seeded_model(transformers.MiniMaxM3SparseForConditionalGeneration, config, seed, jitter_constants=True)
