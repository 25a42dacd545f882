"""Offline real processors and tiny real models: Gemma 3, PaliGemma, LLaVA 1.5, LLaVA-NeXT, LLaVA-OneVision,
Pixtral and Mistral 3.

Each processor is the family's real transformers class (an image-only subclass for LLaVA-OneVision, whose real
class would demand a torchvision video processor) with its real PIL image processor at a small size, a tiny
in-process BPE tokenizer carrying the family's real special tokens, and a chat template shaped like the official
one (same turn markers, same image placement, same bos handling). Each model is the family's real
`*ForConditionalGeneration` class with a tiny random config (hidden 32, 2 layers) whose vision tower matches the
processor's image geometry, so a processed batch runs forward and backward on CPU in well under a second.

Sizes are scaled down from the real checkpoints by the same rules, so token counts stay small:
Gemma 3 and PaliGemma 16 tokens per image, LLaVA 1.5 16, LLaVA-NeXT / OneVision 16 per tile, Pixtral /
Mistral 3 one `[IMG]` per 4x4 / 8x8 pixels.
"""

from __future__ import annotations

from ._tiny import HIDDEN, seeded_model, text_config, vision_config

FAMILIES_A = ("gemma3", "paligemma", "llava", "llava_next", "llava_onevision", "pixtral", "mistral3")


# after Gemma's `<pad> <eos> <bos> <unk>` (`_tokenizer.gemma_tokenizer`)
GEMMA3_SPECIALS = (
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)
GEMMA3_NAMED = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
LLAMA_SPECIALS = ("<unk>", "<s>", "</s>", "<image>", "<pad>")
ONEVISION_SPECIALS = ("<image>", "<video>")  # after ChatML's (`_tokenizer.chatml_tokenizer`)
# Tekken control tokens in their real order, so [IMG]=10, [IMG_BREAK]=12, [IMG_END]=13, <s>=1, </s>=2 as in the hub.
TEKKEN_SPECIALS = (
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
)

# google/gemma-3-*-it: bos, a system turn folded into the first user turn, "model" for the assistant role.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
# PaliGemma ships no chat template: images first, then "prefix\n" per user turn and "answer<eos>" per model turn.
# The processor itself inserts <bos> after the last <image> and appends "\n" to the whole text.
PALIGEMMA_TEMPLATE = (
    "{%- for message in messages -%}{%- if message['content'] is not string -%}"
    "{%- for item in message['content'] -%}{%- if item['type'] == 'image' -%}{{ '<image>' }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{%- endfor -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
    " | join(' ') -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{ text + eos_token }}{%- else -%}{{ text + '\n' }}{%- endif -%}"
    "{%- endfor -%}"
)
# llava-hf/llava-1.5-*-hf: "USER: <image>\ntext ASSISTANT: answer " (images first in each turn, no bos).
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# llava-hf/llava-v1.6-mistral-7b-hf: "[INST] <image>\ntext [/INST] answer</s> " (the hub's later fix of "<\s>").
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s> '}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
# llava-hf/llava-onevision-qwen2-*-ov-hf: "<|im_start|>user <image>\ntext<|im_end|>\n" (a space after the role).
ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_MISTRAL_CONTENT = (
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for block in message['content'] -%}"
    "{%- if block['type'] == 'text' -%}{{- block['text'] -}}"
    "{%- elif block['type'] == 'image' or block['type'] == 'image_url' -%}{{- '[IMG]' -}}"
    "{%- else -%}{{- raise_exception('Only text and image blocks are supported in message content!') -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
)
_MISTRAL_ANSWER = (
    "{%- if message['content'] is string -%}{{- message['content'] + eos_token -}}"
    "{%- else -%}{{- message['content'][0]['text'] + eos_token -}}{%- endif -%}"
)
# mistral-community/pixtral-12b: "<s>[INST]text[IMG][/INST]answer</s>", the system prompt joined to the last user turn.
PIXTRAL_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] if messages[0]['content'] is string"
    " else messages[0]['content'][0]['text'] -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{{- bos_token -}}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if loop.last and system_message is defined -%}{{- '[INST]' + system_message + '\n\n' -}}"
    "{%- else -%}{{- '[INST]' -}}{%- endif -%}" + _MISTRAL_CONTENT + "{{- '[/INST]' -}}"
    "{%- elif message['role'] == 'assistant' -%}" + _MISTRAL_ANSWER + ""
    "{%- else -%}{{- raise_exception('Only user and assistant roles are supported!') -}}{%- endif -%}"
    "{%- endfor -%}"
)
# mistralai/Mistral-Small-3.1-24B-Instruct-2503: bos, a [SYSTEM_PROMPT] block (a default one when none is given;
# the hub's default also carries today's date, left out here so output is deterministic), [INST]...[/INST].
MISTRAL3_DEFAULT_SYSTEM = "You are a helpful assistant."
MISTRAL3_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] if messages[0]['content'] is string"
    " else messages[0]['content'][0]['text'] -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set system_message = '" + MISTRAL3_DEFAULT_SYSTEM + "' -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}"
    "{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' -}}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'user' -%}{{- '[INST]' -}}" + _MISTRAL_CONTENT + "{{- '[/INST]' -}}"
    "{%- elif message['role'] == 'system' -%}{{- '[SYSTEM_PROMPT]' + message['content'] + '[/SYSTEM_PROMPT]' -}}"
    "{%- elif message['role'] == 'assistant' -%}" + _MISTRAL_ANSWER + ""
    "{%- else -%}{{- raise_exception('Only user, system and assistant roles are supported!') -}}{%- endif -%}"
    "{%- endfor -%}"
)

# Geometry, scaled down from the real checkpoints.
GEMMA3_IMAGE, GEMMA3_PATCH, GEMMA3_TOKENS = 32, 4, 16  # 8x8 patches avg-pooled to 4x4 = 16 soft tokens
PALIGEMMA_IMAGE, PALIGEMMA_PATCH = 32, 8  # 4x4 = 16 image tokens
LLAVA_IMAGE, LLAVA_PATCH = 28, 7  # 4x4 = 16 patches (+ CLS, dropped by the "default" feature strategy)
LLAVA_NEXT_PINPOINTS = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]  # real [[336, 672], ...] / 12
ONEVISION_IMAGE, ONEVISION_PATCH = 28, 7  # SigLIP: 16 tokens per tile, no CLS
ONEVISION_PINPOINTS = [[28 * i, 28 * j] for i in range(1, 4) for j in range(1, 4)]  # real 384·(1..6) / 13.7
PIXTRAL_PATCH, PIXTRAL_EDGE = 4, 16  # one [IMG] per 4x4 pixels, at most 4x4 per image
MISTRAL3_PATCH, MISTRAL3_MERGE, MISTRAL3_EDGE = 4, 2, 32  # one [IMG] per 8x8 pixels, at most 4x4 per image


def _check_family(family: str) -> None:
    if family not in FAMILIES_A:
        raise ValueError(f"unknown family {family!r}: choose one of {FAMILIES_A}")


def build_processor(family: str, **options):
    """A real processor of `family`, built offline at a small image size.

    Args:
        family: one of `FAMILIES_A`.
        **options: `chat_template` (any family) overrides the built-in one. Gemma 3: `pan_and_scan=True` builds
            the image processor with pan-and-scan on; the processor's own call defaults still switch it off, so
            call it with `do_pan_and_scan=True` (see `call_kwargs`).

    Returns:
        A fresh processor (callers may mutate it). LLaVA-OneVision's is an image-only subclass of the real class
        (see `chunker.testing._image_only`).

    Raises:
        ValueError: an unknown family or option.

    Example:
        >>> p = build_processor("gemma3")
        >>> type(p).__name__, p.image_seq_length, p.tokenizer.image_token
        ('Gemma3Processor', 16, '<image_soft_token>')
    """
    _check_family(family)
    chat_template = options.pop("chat_template", None)
    pan_and_scan = options.pop("pan_and_scan", False)
    if options or (pan_and_scan and family != "gemma3"):
        bad = sorted(options) + (["pan_and_scan"] if pan_and_scan and family != "gemma3" else [])
        raise ValueError(
            f"unknown options {bad} for family {family!r}: valid are chat_template (+ pan_and_scan for gemma3)"
        )
    return _BUILDERS[family](chat_template, pan_and_scan)


def call_kwargs(family: str, **options) -> dict:
    """Keyword arguments to pass to `processor(...)` for the processor `build_processor(family, **options)` made.

    Gemma 3 with `pan_and_scan=True` needs `do_pan_and_scan=True` on every call: the processor's class
    defaults (`do_pan_and_scan=False`) outrank the image processor's own setting.

    Example:
        >>> call_kwargs("gemma3", pan_and_scan=True)
        {'do_pan_and_scan': True}
    """
    _check_family(family)
    return {"do_pan_and_scan": True} if family == "gemma3" and options.get("pan_and_scan") else {}


def _gemma3(chat_template, pan_and_scan):
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    from ._tokenizer import gemma_tokenizer

    tokenizer = gemma_tokenizer(GEMMA3_SPECIALS, named=GEMMA3_NAMED, add_bos_token=True)
    image_processor = Gemma3ImageProcessorPil(
        size={"height": GEMMA3_IMAGE, "width": GEMMA3_IMAGE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pan_and_scan=pan_and_scan,
        pan_and_scan_min_crop_size=256,
        pan_and_scan_max_num_crops=4,
        pan_and_scan_min_ratio_to_activate=1.2,
    )
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=GEMMA3_TOKENS,
        chat_template=chat_template or GEMMA3_TEMPLATE,
    )


def _paligemma(chat_template, pan_and_scan):
    from transformers import PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    from ._tokenizer import gemma_tokenizer

    tokenizer = gemma_tokenizer(("<image>",), named={"image_token": "<image>"})
    image_processor = SiglipImageProcessorPil(
        size={"height": PALIGEMMA_IMAGE, "width": PALIGEMMA_IMAGE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    image_processor.image_seq_length = (PALIGEMMA_IMAGE // PALIGEMMA_PATCH) ** 2
    return PaliGemmaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template or PALIGEMMA_TEMPLATE
    )


def _llama_tokenizer():
    from ._tokenizer import make_tokenizer

    return make_tokenizer(
        LLAMA_SPECIALS,
        named={"image_token": "<image>"},
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token=True,
    )


def _llava(chat_template, pan_and_scan):
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": LLAVA_IMAGE}, crop_size={"height": LLAVA_IMAGE, "width": LLAVA_IMAGE}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=_llama_tokenizer(),
        patch_size=LLAVA_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template or LLAVA_TEMPLATE,
    )


def llava_next_image_processor():
    """LLaVA-NeXT's real PIL image processor at this module's size (also LLaVA-NeXT-Video's and Granite 4 Vision's)."""
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    return LlavaNextImageProcessorPil(
        size={"shortest_edge": LLAVA_IMAGE},
        crop_size={"height": LLAVA_IMAGE, "width": LLAVA_IMAGE},
        image_grid_pinpoints=LLAVA_NEXT_PINPOINTS,
    )


def _llava_next(chat_template, pan_and_scan):
    from transformers import LlavaNextProcessor

    return LlavaNextProcessor(
        image_processor=llava_next_image_processor(),
        tokenizer=_llama_tokenizer(),
        patch_size=LLAVA_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template or LLAVA_NEXT_TEMPLATE,
    )


def _llava_onevision(chat_template, pan_and_scan):
    from transformers import LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    from ._image_only import image_only
    from ._tokenizer import chatml_tokenizer

    tokenizer = chatml_tokenizer(ONEVISION_SPECIALS, named={"image_token": "<image>", "video_token": "<video>"})
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": ONEVISION_IMAGE, "width": ONEVISION_IMAGE},
        image_grid_pinpoints=ONEVISION_PINPOINTS,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    return image_only(LlavaOnevisionProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(ONEVISION_IMAGE // ONEVISION_PATCH) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=chat_template or ONEVISION_TEMPLATE,
    )


def _pixtral_like(family, chat_template):
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    from ._tokenizer import make_tokenizer

    PixtralProcessor = pixtral_processor_class()

    tokenizer = make_tokenizer(
        TEKKEN_SPECIALS, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", add_bos_token=True
    )
    patch, merge, edge = (
        (PIXTRAL_PATCH, 1, PIXTRAL_EDGE) if family == "pixtral" else (MISTRAL3_PATCH, MISTRAL3_MERGE, MISTRAL3_EDGE)
    )
    image_processor = PixtralImageProcessorPil(
        size={"longest_edge": edge}, patch_size={"height": patch, "width": patch}
    )
    default = PIXTRAL_TEMPLATE if family == "pixtral" else MISTRAL3_TEMPLATE
    return PixtralProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        spatial_merge_size=merge,
        chat_template=chat_template or default,
    )


def pixtral_processor_class() -> type:
    """The real `transformers.models.pixtral.processing_pixtral.PixtralProcessor`, importable without torchvision.

    With PIL installed the module imports `get_resize_output_image_size` from the torchvision image processor
    module, which fails without torchvision (transformers 5.17 and 5.24). The module is then imported with
    `is_vision_available` reporting False for the duration of the import, and handed the identical function
    from the PIL image processor module, the only name it uses from there (in `_get_num_multimodal_tokens`).

    Returns:
        The `PixtralProcessor` class itself (not a subclass).
    """
    import importlib

    name = "transformers.models.pixtral.processing_pixtral"
    try:
        return importlib.import_module(name).PixtralProcessor
    except ImportError:
        pass
    from transformers import utils
    from transformers.models.pixtral import image_processing_pil_pixtral as pil

    real = utils.is_vision_available
    utils.is_vision_available = lambda: False
    try:
        module = importlib.import_module(name)
    finally:
        utils.is_vision_available = real
    if not hasattr(module, "get_resize_output_image_size"):
        module.get_resize_output_image_size = pil.get_resize_output_image_size
    return module.PixtralProcessor


_BUILDERS = {
    "gemma3": _gemma3,
    "paligemma": _paligemma,
    "llava": _llava,
    "llava_next": _llava_next,
    "llava_onevision": _llava_onevision,
    "pixtral": lambda template, _: _pixtral_like("pixtral", template),
    "mistral3": lambda template, _: _pixtral_like("mistral3", template),
}


def build_model(family: str, processor, seed: int = 0):
    """The family's real `*ForConditionalGeneration` with a tiny random config matching `processor`.

    Args:
        family: one of `FAMILIES_A`.
        processor: from `build_processor(family)`; its vocabulary size, token ids and image geometry fill the config.
        seed: the weights are drawn under `torch.manual_seed(seed)` (the global RNG state is restored after);
            equal seeds give equal weights.

    Returns:
        The model in training mode, float32, on CPU. Every weight is random: parameters the family's init leaves
        constant (Gemma 3's zero projector, norm weights) get Gaussian noise, so image features reach the loss.

    Raises:
        ValueError: an unknown family.

    Example:
        >>> p = build_processor("llava")
        >>> type(build_model("llava", p)).__name__
        'LlavaForConditionalGeneration'
    """
    import transformers

    _check_family(family)
    cls = getattr(transformers, _MODEL_CLASSES[family])
    return seeded_model(cls, _config(family, processor), seed, jitter_constants=True)


_MODEL_CLASSES = {
    "gemma3": "Gemma3ForConditionalGeneration",
    "paligemma": "PaliGemmaForConditionalGeneration",
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "pixtral": "LlavaForConditionalGeneration",
    "mistral3": "Mistral3ForConditionalGeneration",
}


def _config(family, processor):
    import transformers

    tok = processor.tokenizer
    if family == "gemma3":
        return transformers.Gemma3Config(
            text_config=text_config(tok, model_type="gemma3_text", query_pre_attn_scalar=8, sliding_window=64),
            vision_config=vision_config(GEMMA3_IMAGE, GEMMA3_PATCH, model_type="siglip_vision_model"),
            mm_tokens_per_image=processor.image_seq_length,
            boi_token_index=tok.boi_token_id,
            eoi_token_index=tok.eoi_token_id,
            image_token_index=tok.image_token_id,
        )
    if family == "paligemma":
        return transformers.PaliGemmaConfig(
            text_config=text_config(tok, model_type="gemma"),
            vision_config=vision_config(
                PALIGEMMA_IMAGE, PALIGEMMA_PATCH, model_type="siglip_vision_model", projection_dim=HIDDEN
            ),
            image_token_index=processor.image_token_id,
            vocab_size=len(tok),
            projection_dim=HIDDEN,
            hidden_size=HIDDEN,
        )
    if family in ("llava", "llava_next"):
        vision = vision_config(LLAVA_IMAGE, LLAVA_PATCH, model_type="clip_vision_model", projection_dim=HIDDEN)
        common = {
            "text_config": text_config(tok, model_type="llama"),
            "vision_config": vision,
            "image_token_index": processor.image_token_id,
            "vision_feature_select_strategy": "default",
            "vision_feature_layer": -2,
        }
        if family == "llava":
            return transformers.LlavaConfig(image_seq_length=(LLAVA_IMAGE // LLAVA_PATCH) ** 2, **common)
        return transformers.LlavaNextConfig(image_grid_pinpoints=LLAVA_NEXT_PINPOINTS, **common)
    if family == "llava_onevision":
        return transformers.LlavaOnevisionConfig(
            text_config=text_config(tok, model_type="qwen2"),
            vision_config=vision_config(ONEVISION_IMAGE, ONEVISION_PATCH, model_type="siglip_vision_model"),
            image_token_index=processor.image_token_id,
            video_token_index=processor.video_token_id,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            image_grid_pinpoints=ONEVISION_PINPOINTS,
            vision_aspect_ratio="anyres_max_9",
        )
    edge = PIXTRAL_EDGE if family == "pixtral" else MISTRAL3_EDGE
    vision = vision_config(edge, processor.patch_size, model_type="pixtral", head_dim=16)
    if family == "pixtral":
        return transformers.LlavaConfig(
            text_config=text_config(tok, model_type="mistral"),
            vision_config=vision,
            image_token_index=processor.image_token_id,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            multimodal_projector_bias=True,
        )
    return transformers.Mistral3Config(
        text_config=text_config(tok, model_type="mistral"),
        vision_config=vision,
        image_token_index=processor.image_token_id,
        spatial_merge_size=processor.spatial_merge_size,
        vision_feature_layer=-1,
    )
