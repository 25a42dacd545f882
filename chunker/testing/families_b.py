"""Offline real processors and tiny real models: Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Idefics3, SmolVLM, InternVL.

Each processor is the family's real transformers class (an image-only subclass where the real one would demand
a torchvision video processor) with its real PIL image processor at a small size, a tiny in-process BPE
tokenizer carrying the family's real special tokens, and a chat template shaped like the official one.
Each model is the family's real `*ForConditionalGeneration` class with a tiny random config (hidden 32,
2 layers) whose vision tower matches the processor's image size, so a processed batch runs forward and
backward on CPU in well under a second.
"""

from __future__ import annotations

from ._tiny import HIDDEN, seeded_model, text_config, vision_config

FAMILIES_B = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "smolvlm", "internvl")

# after ChatML's `<|endoftext|> <|im_start|> <|im_end|>` (`_tokenizer.chatml_tokenizer`), as INTERNVL_SPECIALS
QWEN_SPECIALS = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN_NAMED = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
ROW_COL_TOKENS = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))
IDEFICS3_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *ROW_COL_TOKENS,
)
SMOLVLM_SPECIALS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *ROW_COL_TOKENS,
)
SMOLVLM_NAMED = {
    "image_token": "<image>",
    "fake_image_token": "<fake_token_around_image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}
INTERNVL_SPECIALS = ("<img>", "</img>", "<IMG_CONTEXT>", "<video>")
INTERNVL_NAMED = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}

# Content rendering shared by the ChatML-style templates: a string, or a list of typed parts.
_QWEN_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
)
# Qwen2-VL / Qwen2.5-VL: the official template adds a default system turn when the first message is not one.
QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n" + _QWEN_CONTENT + "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3-VL (Instruct): no default system turn; same turn markers and image placement.
QWEN3_VL_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n" + _QWEN_CONTENT + "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# HuggingFaceM4/Idefics3-8B-Llama3: "User:<image>text<end_of_utterance>\nAssistant: text<end_of_utterance>\n".
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# OpenGVLab/InternVL3-*-hf: ChatML with "<IMG_CONTEXT>\n" per image.
INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Small image sizes: every image becomes a handful of placeholder tokens.
QWEN_PATCH = {"qwen2_vl": 14, "qwen2_5_vl": 14, "qwen3_vl": 16}
IDEFICS_TILE = 32  # vision image_size: one tile is 32x32 pixels
IDEFICS_PATCH = 8  # (32/8)^2 = 16 patches, pixel-shuffled by scale_factor 2 -> 4 tokens per tile
INTERNVL_TILE = 56  # vision image_size: one tile is 56x56 pixels
INTERNVL_PATCH = 14  # (56/14)^2 = 16 patches, downsample_ratio 0.5 -> 4 tokens per tile


def _check_family(family: str) -> None:
    if family not in FAMILIES_B:
        raise ValueError(f"unknown family {family!r}: choose one of {FAMILIES_B}")


def build_processor(family: str, **options):
    """A real processor of `family`, built offline at a small image size.

    Args:
        family: one of `FAMILIES_B`.
        **options: overrides. Qwen: `min_pixels`, `max_pixels` (defaults 4 and 64 merged tokens per image);
            Idefics3/SmolVLM: `longest_edge` (resize target, default 2 tiles = 64 px), `do_image_splitting`;
            InternVL: `max_patches` (default 4 tiles, plus a thumbnail tile when an image is split);
            any family: `chat_template`.

    Returns:
        The processor; Qwen-VL, SmolVLM and InternVL processors are image-only subclasses of the real class
        (see `chunker.testing._image_only`), Idefics3 the real class itself.

    Raises:
        ValueError: an unknown family.

    Example:
        >>> p = build_processor("qwen2_vl")
        >>> type(p).__mro__[1].__name__, p.image_token
        ('Qwen2VLProcessor', '<|image_pad|>')
    """
    _check_family(family)
    if family in QWEN_PATCH:
        return _qwen_processor(family, **options)
    if family in ("idefics3", "smolvlm"):
        return _idefics_processor(family, **options)
    return _internvl_processor(**options)


def _qwen_processor(family, min_pixels=None, max_pixels=None, chat_template=None):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from ._image_only import image_only
    from ._tokenizer import chatml_tokenizer

    patch = QWEN_PATCH[family]
    unit = (patch * 2) ** 2  # pixels per merged token (merge_size 2)
    image_kwargs = {"patch_size": patch, "temporal_patch_size": 2, "merge_size": 2}
    if family == "qwen3_vl":
        image_kwargs.update(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels or 4 * unit, max_pixels=max_pixels or 64 * unit, **image_kwargs
    )
    tokenizer = chatml_tokenizer(QWEN_SPECIALS, named=QWEN_NAMED)
    cls = {"qwen2_vl": Qwen2VLProcessor, "qwen2_5_vl": Qwen2_5_VLProcessor, "qwen3_vl": Qwen3VLProcessor}[family]
    default = QWEN3_VL_TEMPLATE if family == "qwen3_vl" else QWEN2_VL_TEMPLATE
    return image_only(cls)(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template or default)


def _idefics_processor(family, longest_edge=2 * IDEFICS_TILE, do_image_splitting=True, chat_template=None):
    from transformers import Idefics3Processor, SmolVLMProcessor

    from ._image_only import image_only
    from ._tokenizer import make_tokenizer

    image_kwargs = {
        "size": {"longest_edge": longest_edge},
        "max_image_size": {"longest_edge": IDEFICS_TILE},
        "do_image_splitting": do_image_splitting,
    }
    seq_len = (IDEFICS_TILE // IDEFICS_PATCH) ** 2 // 4
    if family == "idefics3":
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

        tokenizer = make_tokenizer(
            IDEFICS3_SPECIALS,
            bos_token="<|begin_of_text|>",
            eos_token="<end_of_utterance>",
            pad_token="<|end_of_text|>",
        )
        return Idefics3Processor(
            image_processor=Idefics3ImageProcessorPil(**image_kwargs),
            tokenizer=tokenizer,
            image_seq_len=seq_len,
            chat_template=chat_template or IDEFICS3_TEMPLATE,
        )
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
    from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    tokenizer = make_tokenizer(
        SMOLVLM_SPECIALS,
        named=SMOLVLM_NAMED,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
    )
    processor = image_only(SmolVLMProcessor)(
        image_processor=SmolVLMImageProcessorPil(**image_kwargs),
        tokenizer=tokenizer,
        video_processor=None,
        image_seq_len=seq_len,
        chat_template=chat_template or DEFAULT_CHAT_TEMPLATE,
    )
    # SmolVLMProcessor.apply_chat_template reads video_processor.num_frames/fps even for images. The real
    # SmolVLMVideoProcessor constructs without torchvision but fails ProcessorMixin's class check (its
    # BaseVideoProcessor reference is a torchvision placeholder), so it is attached after construction.
    processor.video_processor = SmolVLMVideoProcessor()
    return processor


def _internvl_processor(max_patches=4, chat_template=None):
    from transformers import InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    from ._image_only import image_only
    from ._tokenizer import chatml_tokenizer

    image_processor = GotOcr2ImageProcessorPil(
        size={"height": INTERNVL_TILE, "width": INTERNVL_TILE},
        crop_to_patches=True,
        min_patches=1,
        max_patches=max_patches,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    tokenizer = chatml_tokenizer(INTERNVL_SPECIALS, named=INTERNVL_NAMED)
    return image_only(InternVLProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        image_seq_length=(INTERNVL_TILE // INTERNVL_PATCH) ** 2 // 4,
        chat_template=chat_template or INTERNVL_TEMPLATE,
    )


def build_model(family: str, processor, seed: int = 0):
    """The family's real `*ForConditionalGeneration` with a tiny random config matching `processor`.

    Args:
        family: one of `FAMILIES_B`.
        processor: from `build_processor(family)`; its vocabulary size, token ids and image geometry
            fill the config.
        seed: `torch.manual_seed` before the weights are drawn; equal seeds give equal weights.

    Returns:
        The model in training mode, float32, on CPU, every weight random.

    Raises:
        ValueError: an unknown family.

    Example:
        >>> p = build_processor("qwen2_vl")
        >>> type(build_model("qwen2_vl", p)).__name__
        'Qwen2VLForConditionalGeneration'
    """
    _check_family(family)
    return seeded_model(_model_class(family), _config(family, processor), seed)


def _model_class(family):
    import transformers

    return getattr(
        transformers,
        {
            "qwen2_vl": "Qwen2VLForConditionalGeneration",
            "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
            "qwen3_vl": "Qwen3VLForConditionalGeneration",
            "idefics3": "Idefics3ForConditionalGeneration",
            "smolvlm": "SmolVLMForConditionalGeneration",
            "internvl": "InternVLForConditionalGeneration",
        }[family],
    )


def _config(family, processor):
    import transformers

    tok = processor.tokenizer
    ids = qwen_token_ids(processor) if family in QWEN_PATCH else {"image_token_id": processor.image_token_id}
    if family in QWEN_PATCH:
        ip = processor.image_processor
        geometry = {"patch_size": ip.patch_size, "temporal_patch_size": ip.temporal_patch_size, "spatial_merge_size": 2}
        # mrope_section halves of head_dim 8: temporal, height, width
        mrope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
        if family == "qwen2_vl":
            vision = {
                "depth": 2,
                "embed_dim": HIDDEN,
                "hidden_size": HIDDEN,
                "num_heads": 2,
                "mlp_ratio": 2,
                **geometry,
            }
            return transformers.Qwen2VLConfig(
                text_config=text_config(tok, rope_parameters=mrope), vision_config=vision, **ids
            )
        if family == "qwen2_5_vl":
            vision = {
                "depth": 2,
                "hidden_size": HIDDEN,
                "out_hidden_size": HIDDEN,
                "intermediate_size": 64,
                "num_heads": 2,
                "window_size": 2 * ip.patch_size * 2,
                "fullatt_block_indexes": [1],
                **geometry,
            }
            return transformers.Qwen2_5_VLConfig(
                text_config=text_config(tok, rope_parameters=mrope), vision_config=vision, **ids
            )
        vision = {
            "depth": 2,
            "hidden_size": HIDDEN,
            "out_hidden_size": HIDDEN,
            "intermediate_size": 64,
            "num_heads": 2,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
            **geometry,
        }
        mrope3 = {**mrope, "mrope_interleaved": True}
        return transformers.Qwen3VLConfig(text_config=text_config(tok, rope_parameters=mrope3), vision_config=vision, **ids)
    if family in ("idefics3", "smolvlm"):
        vision = vision_config(IDEFICS_TILE, IDEFICS_PATCH)
        cls = transformers.Idefics3Config if family == "idefics3" else transformers.SmolVLMConfig
        return cls(
            text_config={"model_type": "llama", **text_config(tok)},
            vision_config=vision,
            scale_factor=2,
            pad_token_id=tok.pad_token_id,
            **ids,
        )
    vision = vision_config([INTERNVL_TILE, INTERNVL_TILE], [INTERNVL_PATCH, INTERNVL_PATCH])
    return transformers.InternVLConfig(
        text_config={"model_type": "qwen2", **text_config(tok)},
        vision_config=vision,
        image_seq_length=processor.image_seq_length,
        downsample_ratio=0.5,
        **ids,
    )


def qwen_token_ids(processor) -> dict:
    """The token ids a Qwen-VL model config names: image and video placeholders, the vision brackets."""
    tok = processor.tokenizer
    return {"image_token_id": processor.image_token_id, "video_token_id": processor.video_token_id,
            "vision_start_token_id": tok.convert_tokens_to_ids("<|vision_start|>"),
            "vision_end_token_id": tok.convert_tokens_to_ids("<|vision_end|>")}


def qwen_video_tokens(family: str, processor, grid_thw, fps: float = 2.0, frames_indices=None) -> list[int]:
    """The token ids the installed processor's expansion gives one video of `grid_thw`, template brackets included.

    Videos cannot be processed here (no torchvision), so this rebuilds the text the processor's own
    `replace_video_token` writes in place of `<|video_pad|>`, puts it between the template's
    `<|vision_start|>` ... `<|vision_end|>`, and tokenizes it with the processor's tokenizer.

    Qwen2-VL / Qwen2.5-VL: `<|vision_start|> <|video_pad|>×(t·h·w/merge²) <|vision_end|>`.
    Qwen3-VL: per temporal group `<t.t seconds><|vision_start|><|video_pad|>×(h·w/merge²)<|vision_end|>`,
    all inside the template's outer `<|vision_start|>` ... `<|vision_end|>`; timestamps follow
    `Qwen3VLProcessor._calculate_timestamps` (mean time of each pair of sampled frames).

    Args:
        family: "qwen2_vl", "qwen2_5_vl" or "qwen3_vl".
        processor: from `build_processor(family)`.
        grid_thw: (t, h, w) of the video in patches, as `video_grid_thw` would report it.
        fps: the video's frame rate (Qwen3-VL timestamps).
        frames_indices: sampled frame indices (Qwen3-VL); default `range(2·t)` (temporal patch size 2).

    Returns:
        The list of token ids.

    Raises:
        ValueError: `family` is not a Qwen-VL family.

    Example:
        >>> p = build_processor("qwen2_vl")
        >>> ids = qwen_video_tokens("qwen2_vl", p, (2, 4, 4))
        >>> len(ids), ids.count(p.video_token_id)
        (10, 8)
    """
    if family not in QWEN_PATCH:
        raise ValueError(f"qwen_video_tokens needs a Qwen-VL family, one of {tuple(QWEN_PATCH)}; got {family!r}")
    t, h, w = (int(x) for x in grid_thw)
    merge = int(processor.image_processor.merge_size) ** 2
    start, end, video = "<|vision_start|>", "<|vision_end|>", processor.video_token
    if family == "qwen3_vl":
        temporal = int(processor.image_processor.temporal_patch_size)
        indices = list(range(temporal * t)) if frames_indices is None else list(frames_indices)
        stamps = processor._calculate_timestamps(indices, fps, temporal)
        inner = "".join(f"<{stamps[i]:.1f} seconds>{start}{video * (h * w // merge)}{end}" for i in range(t))
    else:
        inner = video * (t * h * w // merge)
    return processor.tokenizer(start + inner + end, add_special_tokens=False)["input_ids"]
