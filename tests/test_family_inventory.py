"""Every image-text-to-text processor of the installed transformers is accounted for, and every way chunker meets one
works as said: written families are detected, refused classes raise their named reason (on their real processor),
and a plain bracket grammar is learned from the processor alone, equal to the written grammar where one exists.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import chunker
from chunker.families import adapter_for
from chunker.families.inventory import PENDING, inventory, written
from chunker.families.learned import Learned, learn
from chunker.families.probe import check_grammar
from chunker.families.refused import REFUSED
from chunker.testing import build_processor

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
GRAMMAR = ("kind", "image_token_id", "open_ids", "close_ids", "type_ids_column", "bos_id")


def test_every_image_text_to_text_processor_is_written_refused_or_pending():
    rows = inventory()
    unknown = [e.processor for e in rows if e.status == "unknown"]
    assert not unknown, f"classify these in chunker/families (an adapter, REFUSED or PENDING): {unknown}"
    assert len(rows) >= 60  # transformers 5.17 registers 66, 5.24 registers 80
    assert not set(REFUSED) & set(PENDING) and not set(written()) & (set(REFUSED) | set(PENDING))
    assert all(e.detail for e in rows)


@pytest.mark.parametrize("family,rule", [("gemma3", "fixed"), ("qwen2_vl", "grid"), ("qwen2_5_vl", "grid"),
                                         ("qwen3_vl", "grid"), ("gemma4", "sizes")])
def test_a_plain_bracket_grammar_is_learned_equal_to_the_written_one(family, rule):
    """The probe alone recovers what the adapter says: brackets, placeholder, type ids, bos; the learned adapter passes
    the probe; a pre-tokenized split keeps its count rule through the spec."""
    processor = build_processor(family)
    learned, ours = learn(processor), adapter_for(processor)
    assert isinstance(learned, Learned) and not isinstance(ours, Learned) and learned.count_rule == rule
    assert {f: getattr(learned.spec, f) for f in GRAMMAR} == {f: getattr(ours.spec, f) for f in GRAMMAR}
    assert learned.spec.tokens_per_image == ours.spec.tokens_per_image
    check_grammar(learned)
    again = chunker.families.adapter_for_spec(learned.spec)
    assert isinstance(again, Learned) and again.count_rule == learned.count_rule


def test_a_learned_grammar_splits_like_the_written_one():
    """Windows of one conversation under the learned Qwen2-VL grammar equal those under the written adapter."""
    from test_families import conversation, images

    processor = build_processor("qwen2_vl")
    messages, n = conversation("qwen2_vl")
    row = {"messages": messages, "images": images(n)}
    written_rows = chunker.WindowSplitter(processor, max_length=96).split_example(row)
    learned_rows = chunker.WindowSplitter(processor, max_length=96, spec=learn(processor).spec).split_example(row)
    assert len(written_rows) >= 2
    assert [r["input_ids"].tolist() for r in learned_rows] == [r["input_ids"].tolist() for r in written_rows]
    assert [r["labels"].tolist() for r in learned_rows] == [r["labels"].tolist() for r in written_rows]


@pytest.mark.parametrize("family,why", [
    ("llava", "not between one special open and one special close token"),
    ("idefics3", "runs of '<image>'"),
    ("internvl", "which no tensor it returns explains"),
    ("llava_onevision", "batch_num_images"),
])
def test_a_grammar_the_probe_cannot_tie_down_is_refused_with_what_it_saw(family, why):
    with pytest.raises(chunker.UnsupportedProcessorError, match=why):
        learn(build_processor(family))


def test_a_broken_learned_grammar_fails_the_probe():
    """Positive control of the learned adapter's probe: a wrong close id cannot recover the spans."""
    processor = build_processor("qwen2_vl")
    broken = learn(processor)
    broken = Learned(processor, replace(broken.spec, close_ids=(processor.tokenizer.convert_tokens_to_ids("<|im_end|>"),)))
    with pytest.raises(chunker.GrammarError):
        check_grammar(broken)


def test_mllama_is_written_not_refused_nor_learned():
    """Its `<|image|>` is one token per image and its images reach the text by cross-attention: the written adapter
    (`chunker.families.mllama`) holds it, not the learner (tests/test_family_mllama.py proves its windows)."""
    from chunker.families.mllama import Mllama

    processor = build_processor("mllama")
    assert type(adapter_for(processor)) is Mllama
    assert "MllamaProcessor" not in REFUSED and "MllamaProcessor" in written()
    assert next(e for e in inventory() if e.processor == "MllamaProcessor").status == "written"
