"""Check a family adapter against the installed processor: run the processor on a probe and compare.

transformers changes grammars between releases (Gemma 3's image token in 5.15); hand-written knowledge is
a cross-check, the processor is the truth. `check_grammar` runs the processor on a short text with three
images of different sizes and checks that the adapter's span finder recovers one whole span per image,
that its count rules predict each span's placeholder count, that its pixel slicing owns every pixel row,
and that its type ids are the processor's own. A mismatch is a `GrammarError` naming what differs.
"""

from __future__ import annotations

import weakref

import numpy as np

from ..errors import ChunkerError, GrammarError
from ..spans import IMAGE

PROBE_SIZES = ((48, 64), (96, 40), (72, 72))  # (height, width): different sizes give different counts
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_grammar(adapter, processor_kwargs: dict | None = None) -> None:
    """Raise `GrammarError` unless the adapter's grammar recovers what the processor makes of a probe.

    Runs once per processor object, grammar and settings (a pass is remembered).

    Args:
        adapter: a `FamilyAdapter` bound to its processor.
        processor_kwargs: the keywords the splitter or collator calls the processor with.

    Raises:
        GrammarError: the spans, counts, pixel rows or type ids of the probe differ from the adapter's
            prediction; the message names the family, the processor class, the transformers version and
            what differs.

    Example:
        >>> from chunker.testing import build_processor
        >>> from chunker.families import adapter_for
        >>> check_grammar(adapter_for(build_processor("qwen2_vl")))
    """
    processor = adapter.processor
    key = (adapter.spec, repr(sorted((processor_kwargs or {}).items())))
    try:
        seen = _CHECKED.setdefault(processor, set())
    except TypeError:
        seen = set()
    if key in seen:
        return
    problem = _probe(adapter, dict(processor_kwargs or {}))
    if problem:
        import transformers

        raise GrammarError(
            f"the {adapter.name} grammar does not match {type(processor).__name__} of the installed transformers "
            f"{transformers.__version__}: {problem}. If the processor changed how it expands images, upgrade "
            "vlm-chunker, or pass spec=chunker.ImageSpanSpec(...) describing the new grammar"
        )
    seen.add(key)


def _probe(adapter, processor_kwargs) -> str | None:
    """What differs between the adapter's prediction and the processor's output on the probe, or None."""
    from PIL import Image

    from ..media import check_counts, slice_plan
    from ..spans import find_image_spans
    from ..splitter import type_ids

    processor, spec = adapter.processor, adapter.spec
    # the text placeholder the template writes: Qianfan-OCR's `image_placeholder_token` differs from its image_token
    token = getattr(processor, "image_placeholder_token", None) or getattr(processor, "image_token", None)
    if token is None:
        return "the processor has no image_token to place in a probe text"
    images = [Image.new("RGB", (w, h), (40 * k, 90, 160)) for k, (h, w) in enumerate(PROBE_SIZES)]
    try:
        text = _probe_text(processor, token, len(images))
        # a template that drops some image items fails every such row by name (ImageCountError); the grammar is
        # probed on the images it renders
        images = images[: text.count(token)]
        if not images:
            return (f"its chat template renders no image placeholder ({token!r}) for {{'type': 'image'}} items, so every "
                    "image would vanish from the text: the template and the processor's image_token disagree (set "
                    "processor.chat_template to the checkpoint's own template)")
        out = adapter.process(processor, text=[text], images=[images], return_tensors="np", **processor_kwargs)
    except Exception as exc:  # noqa: BLE001  (the processor's own refusal, whatever its type, is the finding)
        return f"the processor refused the probe ({type(exc).__name__}: {exc})"
    ids = np.asarray(out["input_ids"])[0].astype(np.int64)
    tensors = {k: np.asarray(v) for k, v in out.items() if k not in ("input_ids", "attention_mask")}
    tensors = adapter.row_tensors(tensors, images, processor_kwargs)
    from ..media import TENSOR_STREAMS

    media = {k: v for k, v in tensors.items() if k in TENSOR_STREAMS}
    try:
        spans = adapter.items(find_image_spans(ids, spec), media, images)
        n_image = int((spans.kinds == IMAGE).sum())
        if n_image != len(images):
            return f"the probe's {len(images)} images gave {n_image} image spans ({spans.counts.tolist()} tokens)"
        expected = {IMAGE: adapter.expected_item_tokens(media, IMAGE)}
        check_counts(spec, media, spans, expected=expected)
        slice_plan(spec, media, spans)
    except ChunkerError as exc:
        return str(exc)
    column = spec.type_ids_column
    made = out.get(column) if column else None
    if column and made is None and "mm_token_type_ids" in out:
        made = out["mm_token_type_ids"]
    if made is not None:
        ours = type_ids(ids, spec)
        theirs = np.asarray(made)[0]
        if not np.array_equal(ours, theirs):
            at = int(np.flatnonzero(ours != theirs)[0])
            return f"type id at position {at} is {int(theirs[at])} in the processor's {column} but {int(ours[at])} in ours"
    return None


def _probe_text(processor, token: str, n: int) -> str:
    """The probe as the model's chat template renders it (brackets come from the template for some families); without a
    template, each placeholder inside the bracket tokens the processor itself names (`declared_brackets`), if any."""
    if getattr(processor, "chat_template", None) is None:
        open_, close = declared_brackets(processor) or ("", "")
        return " ".join(f"x {open_}{token}{close}" for _ in range(n)) + " y"
    content = [item for _ in range(n) for item in ({"type": "image"}, {"type": "text", "text": "look"})]
    return processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)


# (open, close) attribute names under which a processor names the special tokens its chat template puts around an image
# placeholder (Cosmos3-Edge, Command-A Vision Compass, LFM3-VL name `vision_start_token` / `vision_end_token` and wrap
# each video frame in them)
BRACKET_ATTRS = (("vision_start_token", "vision_end_token"),)


def declared_brackets(processor) -> tuple[str, str] | None:
    """The image bracket tokens a processor names itself (`BRACKET_ATTRS`), when both are special tokens of its
    tokenizer; None otherwise. Used only when the processor has no chat template to render the probe."""
    tok = getattr(processor, "tokenizer", None)
    if tok is None:
        return None
    special = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}) or {})
    for names in BRACKET_ATTRS:
        texts = [getattr(processor, n, None) for n in names]
        if all(isinstance(t, str) and t for t in texts):
            ids = [tok.convert_tokens_to_ids(t) for t in texts]
            if all(i is not None and i != tok.unk_token_id and i in special for i in ids):
                return texts[0], texts[1]
    return None
