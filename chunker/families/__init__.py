"""Family adapters: one object per model family holds everything family-specific (see `_base.FamilyAdapter`).

`adapter_for(processor)` detects the family from the processor's class; `spec_from_processor` gives its
grammar as plain data for the numpy core.
"""

from __future__ import annotations

from dataclasses import fields, replace

from ..errors import ConfigError
from ..spec import ImageSpanSpec
from . import gemma, idefics, internvl, llava, mllama, more, omni, paddle, phi4mm, pixtral, qwen, tiles, tv_tiles  # noqa: F401  (registers them)
from ._base import ADAPTERS, FamilyAdapter, adapter_for, adapter_for_spec, register
from .sizes import SizeExpander, image_hw, image_settings, size_expander

__all__ = ["ADAPTERS", "FamilyAdapter", "SizeExpander", "adapter_for", "adapter_for_spec", "apply_overrides", "detect_family",
           "image_hw", "image_settings", "register", "size_expander", "spec_from_processor"]


def detect_family(processor) -> str:
    """The name of `processor`'s family (see `adapter_for`)."""
    return adapter_for(processor).name


def spec_from_processor(processor, **overrides) -> ImageSpanSpec:
    """Build the `ImageSpanSpec` of `processor`'s family (see `ImageSpanSpec.from_processor`)."""
    spec = adapter_for(processor).spec
    return apply_overrides(spec, processor.tokenizer, overrides)


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


def _encode(tok, text: str) -> tuple[int, ...]:
    return tuple(tok(text, add_special_tokens=False)["input_ids"]) if text else ()
