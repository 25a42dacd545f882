"""Family grammar records built from a transformers processor: the edge where transformers knowledge lives.

Each family is one record of data (token strings, turn markers, slicing rules); `spec_from_processor`
detects the family from the processor's class and fills the ids from its tokenizer.
"""

from __future__ import annotations

from dataclasses import fields, replace

from .errors import ConfigError, UnsupportedProcessorError
from .spec import ImageSpanSpec

QWEN_TURNS = {"instruction": "<|im_start|>user\n", "response": "<|im_start|>assistant\n"}
QWEN_RULES = {"pixel_values": ("grid", 0), "pixel_values_videos": ("grid", 0)}

# class-name fragment -> grammar record. Token fields name tokens (strings); "attr:" reads a tokenizer attribute.
FAMILIES = {
    "gemma3": {
        "classes": ("Gemma3Processor",),
        "kind": "bracket",
        "image": "attr:image_token",
        "open": ("attr:boi_token",),
        "close": ("attr:eoi_token",),
        "tokens_per_image": "processor:image_seq_length",
        "type_ids_column": "token_type_ids",
        "bos": True,
        "turns": {"instruction": "<start_of_turn>user\n", "response": "<start_of_turn>model\n"},
        "group_crops": True,
        "crops_kwargs": "Gemma3ProcessorKwargs",
        "pixel_rules": {"pixel_values": ("crops", 0)},
    },
    "paligemma": {
        "classes": ("PaliGemmaProcessor",),
        "kind": "run",
        "image": "attr:image_token",
        "tokens_per_image": "processor:image_seq_length",
        "type_ids_column": None,
        "bos": True,
        "prefix_media": True,
        "turns": {"instruction": "", "response": "\n"},
    },
    "qwen3_vl": {
        "classes": ("Qwen3VLProcessor", "Qwen3VLMoeProcessor"),
        "kind": "bracket",
        "image": "<|image_pad|>",
        "video": "<|video_pad|>",
        "open": ("<|vision_start|>",),
        "close": ("<|vision_end|>",),
        "type_ids_column": "mm_token_type_ids",
        "turns": QWEN_TURNS,
        "token_rule": "grid",
        "pixel_rules": QWEN_RULES,
    },
    "qwen2_5_vl": {
        "classes": ("Qwen2_5_VLProcessor",),
        "kind": "bracket",
        "image": "<|image_pad|>",
        "video": "<|video_pad|>",
        "open": ("<|vision_start|>",),
        "close": ("<|vision_end|>",),
        "type_ids_column": "mm_token_type_ids",
        "turns": QWEN_TURNS,
        "token_rule": "grid",
        "pixel_rules": QWEN_RULES,
    },
    "qwen2_vl": {
        "classes": ("Qwen2VLProcessor",),
        "kind": "bracket",
        "image": "<|image_pad|>",
        "video": "<|video_pad|>",
        "open": ("<|vision_start|>",),
        "close": ("<|vision_end|>",),
        "type_ids_column": "mm_token_type_ids",
        "turns": QWEN_TURNS,
        "token_rule": "grid",
        "pixel_rules": QWEN_RULES,
    },
    "llava_onevision": {
        "classes": ("LlavaOnevisionProcessor",),
        "kind": "run",
        "run_counts": "llava_onevision",
        "image": "attr:image_token",
        "video": "attr:video_token",
        # its template renders "<|im_start|>assistant \n" for answers but "assistant\n" as generation prompt
        "turns": {"instruction": "<|im_start|>user", "response": "<|im_start|>assistant"},
    },
    "llava_next": {
        "classes": ("LlavaNextProcessor",),
        "kind": "run",
        "run_counts": "llava_next",
        "image": "attr:image_token",
        "bos": True,
        "turns": {"instruction": "[INST]", "response": "[/INST]"},
    },
    "llava": {
        "classes": ("LlavaProcessor",),
        "kind": "run",
        "image": "attr:image_token",
        "tokens_per_image": "sizes",
        "bos": True,
        "turns": {"instruction": "USER:", "response": "ASSISTANT:"},
    },
    "idefics3": {
        "classes": ("Idefics3Processor", "SmolVLMProcessor"),
        "kind": "tiles",
        "image": "<image>",
        "open": ("<fake_token_around_image>",),
        "global": "<global-img>",
        "tiles": "row_col",
        "tokens_per_tile": "processor:image_seq_len",
        "bos": True,
        "turns": {"instruction": "User:", "response": "Assistant:"},
        "pixel_rules": {"pixel_values": ("tiles", 0), "pixel_attention_mask": ("tiles", 0)},
        "batch_axis_pixels": True,
    },
    "internvl": {
        "classes": ("InternVLProcessor",),
        "kind": "bracket",
        "image": "attr:context_image_token",
        "open": ("attr:start_image_token",),
        "close": ("attr:end_image_token",),
        "tokens_per_tile": "processor:image_seq_length",
        "turns": QWEN_TURNS,
        "pixel_rules": {"pixel_values": ("tiles", 0)},
    },
    "pixtral": {
        "classes": ("PixtralProcessor", "Mistral3Processor"),
        "kind": "terminated_run",
        "image": "[IMG]",
        "body": ("[IMG_BREAK]",),
        "end": "[IMG_END]",
        "bos": True,
        "turns": {"instruction": "[INST]", "response": "[/INST]"},
    },
}


def detect_family(processor) -> str:
    """The family name whose processor class appears in `processor`'s class hierarchy.

    Raises:
        UnsupportedProcessorError: none does; the message names the class and how to pass a spec.
    """
    names = [c.__name__ for c in type(processor).__mro__]
    for family, record in FAMILIES.items():
        if any(cls in names for cls in record["classes"]):
            return family
    raise UnsupportedProcessorError(
        f"no family grammar for processor class {type(processor).__name__}: supported are "
        f"{sorted(FAMILIES)}. Pass spec=chunker.ImageSpanSpec(family='custom', kind=..., image_token_id=..., ...) "
        "describing how its images appear in input_ids"
    )


def spec_from_processor(processor, **overrides) -> ImageSpanSpec:
    """Build the `ImageSpanSpec` of `processor`'s family (see `ImageSpanSpec.from_processor`)."""
    family = detect_family(processor)
    record = FAMILIES[family]
    tok = getattr(processor, "tokenizer", None)
    if tok is None:
        raise UnsupportedProcessorError(
            f"{type(processor).__name__} has no tokenizer: pass the model's processor, not its image processor"
        )

    def token(ref):
        text = getattr(tok, ref[5:], None) or getattr(processor, ref[5:], None) if ref.startswith("attr:") else ref
        if not text:
            raise UnsupportedProcessorError(f"{type(processor).__name__}: its tokenizer has no {ref[5:]}")
        tid = tok.convert_tokens_to_ids(text)
        if tid is None or (tok.unk_token_id is not None and tid == tok.unk_token_id):
            raise UnsupportedProcessorError(
                f"{type(processor).__name__}: token {text!r} of the {family} grammar is not in its vocabulary"
            )
        return int(tid)

    def number(ref):
        if ref is None:
            return None
        if ref == "sizes":
            return _fixed_tokens(processor)
        return int(getattr(processor, ref.split(":", 1)[1]))

    turns = record.get("turns", {})
    bos_id = tok.bos_token_id if record.get("bos") else None
    extra = {k: record[k] for k in ("pixel_rules", "token_rule", "batch_axis_pixels", "run_counts", "crops_kwargs") if k in record}
    if record.get("token_rule") == "grid":
        extra["merge_size"] = int(getattr(processor.image_processor, "merge_size", 2))
    tile_ids = ()
    if record.get("tiles") == "row_col":
        vocab = tok.get_vocab()
        tile_ids = tuple(sorted(i for t, i in vocab.items() if t.startswith("<row_") and "_col_" in t))
    spec = ImageSpanSpec(
        family=family,
        kind=record["kind"],
        image_token_id=token(record["image"]),
        video_token_id=_optional(token, record.get("video")),
        open_ids=tuple(token(t) for t in record.get("open", ())),
        close_ids=tuple(token(t) for t in record.get("close", ())),
        body_ids=tuple(token(t) for t in record.get("body", ())),
        end_id=_optional(token, record.get("end")),
        tile_ids=tile_ids,
        global_id=_optional(token, record.get("global")),
        tokens_per_image=number(record.get("tokens_per_image")),
        tokens_per_tile=number(record.get("tokens_per_tile")),
        type_ids_column=record.get("type_ids_column"),
        bos_id=bos_id,
        instruction_ids=_encode(tok, turns.get("instruction", "")),
        response_ids=_encode(tok, turns.get("response", "")),
        prefix_media=bool(record.get("prefix_media")),
        group_crops=bool(record.get("group_crops")),
        extra=extra,
    )
    return apply_overrides(spec, tok, overrides)


def apply_overrides(spec: ImageSpanSpec, tok, overrides: dict) -> ImageSpanSpec:
    """Replace fields; `instruction_part` / `response_part` text is tokenized like Unsloth does."""
    overrides = dict(overrides)
    for part, name in (("instruction_part", "instruction_ids"), ("response_part", "response_ids")):
        if part in overrides:
            value = overrides.pop(part)
            overrides[name] = _encode(tok, value) if isinstance(value, str) else tuple(value)
    known = {f.name for f in fields(ImageSpanSpec)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown spec fields {unknown}: valid are {sorted(known)}")
    return replace(spec, **overrides) if overrides else spec


def _optional(fn, value):
    return None if value is None else fn(value)


def _encode(tok, text: str) -> tuple[int, ...]:
    return tuple(tok(text, add_special_tokens=False)["input_ids"]) if text else ()


def _fixed_tokens(processor):
    counter = getattr(processor, "_get_num_multimodal_tokens", None)
    if counter is None:
        return None
    data = counter(image_sizes=[(336, 336)])
    tokens = getattr(data, "num_image_tokens", None) or data.get("num_image_tokens")
    return int(tokens[0]) if tokens else None


def run_item_counts(processor, spec: ImageSpanSpec, image_sizes, pixel_size=None):
    """Placeholder tokens of each image of a bracketless family, from (height, width) sizes; None if unknown.

    LLaVA-NeXT counts from each image's size; LLaVA-OneVision gives every image of a multi-image row
    the same fixed count (`num_image_tokens + 1`), and a lone image its size-based count.
    """
    rule = spec.extra.get("run_counts")
    if rule is None or processor is None or not len(image_sizes):
        return None
    default = getattr(processor, "vision_feature_select_strategy", "default") == "default"
    if rule == "llava_onevision" and len(image_sizes) > 1:
        return [processor.num_image_tokens + 1 - int(default)] * len(image_sizes)
    if pixel_size is None:
        size = processor.image_processor.size
        edge = size.get("shortest_edge") or min(size["height"], size["width"])
        pixel_size = (edge, edge)
    height, width = pixel_size
    return [
        processor._get_number_of_features(int(h), int(w), height, width) - int(default) for h, w in image_sizes
    ]


def crops_per_image(processor, spec: ImageSpanSpec, images, processor_kwargs: dict):
    """Pan-and-scan crops of each image (Gemma 3), from the image processor's own crop rule; None when off.

    The processor drops `num_crops` from its output, so the crops are counted by running the image
    processor's own crop rule (`pan_and_scan` of the PIL backend, `pan_and_scan_batched` of the torch
    one) on a zero-stride array of each image's size: views only, no pixels.
    """
    import sys

    import numpy as np

    name = spec.extra.get("crops_kwargs")
    if not name or not processor_kwargs.get("do_pan_and_scan"):
        return None
    defaults = getattr(getattr(sys.modules[type(processor).__module__], name, None), "_defaults", {})
    settings = {**defaults.get("images_kwargs", {}), **processor_kwargs}
    keys = ("pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops", "pan_and_scan_min_ratio_to_activate")
    args = {k: settings.get(k, getattr(processor.image_processor, k, None)) for k in keys}
    ip = processor.image_processor
    crops = []
    for image in images:
        width, height = image.size
        if hasattr(ip, "pan_and_scan"):
            found = ip.pan_and_scan(np.broadcast_to(np.zeros((), np.uint8), (1, height, width)), **args)
        else:
            import torch

            found = ip.pan_and_scan_batched(torch.zeros(()).expand(1, 1, height, width), **args)
        crops.append(len(found))
    return crops
