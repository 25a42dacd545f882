"""Qwen-style grid families no adapter writes, learned from their real processors (`chunker.families.learned`):
GLM-4.6V, GLM-5-Next, Cosmos3-Edge, Command-A Vision Compass and LFM3-VL (transformers 5.24; skipped, with the reason,
on 5.17).

Each processor expands an image into `open image×(t·h·w/merge²) close`. The GLM families' brackets come from the chat
template (GLM-4.1V-9B-Thinking's real one: no byte-exact copy of their own was found, see `chunker.testing.families_e`);
the others name their bracket tokens themselves (`vision_start_token` / `vision_end_token`) and are built without a
template, so their rows are pre-tokenized by the processor. Every window holds whole spans whose counts are the
processor's own grid for the window's images, and exactly those images' pixel rows (reference: the image processor on
those images); the real model class with a tiny config trains on the collated windows while naive truncation of the
same row raises its own error (the positive control). A processor of the same shape that names no brackets and has
no template (EXAONE 4.5) is refused by name, never guessed.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from model_checks import assert_cut_raises, assert_trains, conversation, forward_inputs, naive_cut, random_images

import chunker
from chunker.collator import WindowCollator
from chunker.families import adapter_for
from chunker.families.learned import Learned
from chunker.families.probe import check_grammar
from chunker.testing import LEARNED_E, build_model, build_processor
from chunker.testing.families_e import available

LEARNED = LEARNED_E
# family -> max_length of the windows its tiny model trains on (every family here builds a tiny model)
MODELS = {"glm46v": 64, "glm5_next": 64, "lfm3_vl": 64, "cosmos3_edge": 64, "cohere_compass": 64}
# family -> (real processor class, learned family name, open, placeholder, close): read off transformers' source
# (the processor's __init__ defaults; GLM: the template's image bracket, the ids Glm46VConfig names
# image_start_token_id / image_token_id / image_end_token_id)
EXPECTED = {
    "glm46v": ("Glm46VProcessor", "glm46v", "<|begin_of_image|>", "<|image|>", "<|end_of_image|>"),
    "glm5_next": ("Glm5NextProcessor", "glm5next", "<|begin_of_image|>", "<|image|>", "<|end_of_image|>"),
    "lfm3_vl": ("Lfm3VlProcessor", "lfm3vl", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"),
    "cosmos3_edge": ("Cosmos3EdgeProcessor", "cosmos3edge", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"),
    "cohere_compass": ("CohereCompassProcessor", "coherecompass", "<|VISION_START|>", "<|IMAGE_PAD|>",
                       "<|VISION_END|>"),
}
# the README matrix's row of each family (tools/families_matrix.py): real class, modalities, grammar; stated here so the
# table is the same on every transformers, and checked against the processor by the first test where it is installed
MATRIX = {
    "glm46v": ("Glm46VProcessor", "image", "learned (grid count; GLM-4.1V's template)"),
    "glm5_next": ("Glm5NextProcessor", "image", "learned (grid count; GLM-4.1V's template)"),
    "lfm3_vl": ("Lfm3VlProcessor", "image", "learned (grid count; pre-tokenized rows)"),
    "cosmos3_edge": ("Cosmos3EdgeProcessor", "image", "learned (grid count; pre-tokenized rows)"),
    "cohere_compass": ("CohereCompassProcessor", "image", "learned (grid count; pre-tokenized rows)"),
}


def need(family):
    why = available(family)
    if why:
        pytest.skip(why)


@cache
def setup(family):
    """The processor, four images, and one long row of them as the processor tokenizes it (GLM-4.6V: a conversation
    rendered by its template; the others: text with each image in the processor's own brackets)."""
    processor = build_processor(family)
    images = random_images()
    _, _, open_, token, close = EXPECTED[family]
    if processor.chat_template is not None:
        messages = conversation(len(images), answer_as_string=True)
        text = processor.apply_chat_template(messages, tokenize=False)
    else:
        messages = None
        text = "".join(f"describe this picture {open_}{token}{close} a cat sits on a mat next to a red ball. "
                       for _ in images)
    # the model computes 3-D positions from mm_token_type_ids; Cosmos3-Edge's processor returns it only when asked
    ask = {"return_mm_token_type_ids": True} if "mm_token_type_ids" in processor.model_input_names else {}
    enc = processor(text=[text], images=[images], return_tensors="np", **ask)
    return processor, images, messages, enc


def grid_counts(processor, images):
    """Placeholder tokens per image by the image processor's own grid (t·h·w / merge²)."""
    grid = np.asarray(processor.image_processor(images, return_tensors="np")["image_grid_thw"])
    return (grid.prod(-1) // processor.image_processor.merge_size**2).tolist()


@pytest.mark.parametrize("family", LEARNED)
def test_the_grammar_is_learned_from_the_processor(family):
    need(family)
    processor, _, _, _ = setup(family)
    real, name, open_, token, close = EXPECTED[family]
    assert real in [c.__name__ for c in type(processor).__mro__] and MATRIX[family][0] == real
    adapter = adapter_for(processor)
    assert MATRIX[family][2].startswith(f"learned ({adapter.count_rule} count;")
    assert MATRIX[family][2].endswith("template)") == (processor.chat_template is not None)
    assert isinstance(adapter, Learned) and adapter.name == name and adapter.count_rule == "grid"
    ids = processor.tokenizer.convert_tokens_to_ids
    spec = adapter.spec
    assert (spec.open_ids, spec.image_token_id, spec.close_ids) == ((ids(open_),), ids(token), (ids(close),))
    assert spec.extra["merge_size"] == processor.image_processor.merge_size == 2
    check_grammar(adapter)


@pytest.mark.parametrize("family", LEARNED)
def test_a_broken_learned_grammar_fails_the_probe(family):
    """The twin of the probe passing: the learned grammar with its close id swapped for a text token's cannot recover
    the processor's spans."""
    from dataclasses import replace

    need(family)
    processor, _, _, _ = setup(family)
    learned = adapter_for(processor)
    text_id = processor.tokenizer("cat", add_special_tokens=False)["input_ids"][0]
    broken = Learned(processor, replace(learned.spec, close_ids=(text_id,)))
    with pytest.raises(chunker.GrammarError):
        check_grammar(broken)


@pytest.mark.parametrize("family", LEARNED)
def test_pre_tokenized_windows_hold_whole_spans_and_their_own_pixels(family):
    need(family)
    processor, images, _, enc = setup(family)
    ids = np.asarray(enc["input_ids"])[0]
    _, _, open_, token, close = EXPECTED[family]
    tid = processor.tokenizer.convert_tokens_to_ids
    open_id, image_id, close_id = tid(open_), tid(token), tid(close)
    splitter = chunker.WindowSplitter(processor, max_length=MODELS[family], train_on="all")
    rows = splitter.split_example({"input_ids": ids, "labels": ids, "images": images,
                                   "pixel_values": np.asarray(enc["pixel_values"]),
                                   "image_grid_thw": np.asarray(enc["image_grid_thw"])})
    assert len(rows) >= 3
    seen = []
    for row in rows:
        win = np.asarray(row["input_ids"])
        assert len(win) <= MODELS[family]
        starts = np.flatnonzero(win == open_id)
        window_images = list(row["images"])
        assert len(starts) == len(window_images)
        counts = grid_counts(processor, window_images) if window_images else []
        for s, n in zip(starts, counts):  # every span whole: open, the image's own grid count, close
            assert (win[s + 1: s + 1 + n] == image_id).all() and win[s + 1 + n] == close_id
        assert int((win == image_id).sum()) == sum(counts)
        if window_images:
            own = processor.image_processor(window_images, return_tensors="np")
            np.testing.assert_array_equal(np.asarray(row["pixel_values"]), own["pixel_values"])
            np.testing.assert_array_equal(np.asarray(row["image_grid_thw"]), own["image_grid_thw"])
        seen += [next(i for i, im in enumerate(images) if im is w) for w in window_images]
    assert sorted(set(seen)) == [0, 1, 2, 3]


@pytest.mark.parametrize("family", ["glm46v", "glm5_next"])
def test_conversation_windows_train_exactly_the_answers(family):
    """GLM-4.6V / GLM-5-Next from a conversation: windows' supervised tokens are the answers located by incremental
    templating (the shared contract's reference, computed from the processor and its template)."""
    from test_families import reference_targets

    need(family)
    processor, images, messages, _ = setup(family)
    rows = chunker.WindowSplitter(processor, max_length=MODELS[family]).split_example(
        {"messages": messages, "images": images}, index=2)
    assert len(rows) >= 3
    trained = np.concatenate([np.asarray(r["labels"])[1:][np.asarray(r["labels"])[1:] != -100] for r in rows])
    np.testing.assert_array_equal(trained, reference_targets(processor, messages, images))


@pytest.mark.parametrize("family", sorted(MODELS))
def test_the_tiny_model_trains_on_windows_and_naive_truncation_fails(family):
    need(family)
    processor, images, messages, enc = setup(family)
    model = build_model(family, processor)
    max_length = MODELS[family]
    ids = np.asarray(enc["input_ids"])[0]
    row = {"messages": messages, "images": images} if messages else {"input_ids": ids, "labels": ids, "images": images}
    windows = chunker.WindowSplitter(processor, max_length=max_length, train_on="assistant" if messages else "all"
                                     ).split_example(row)
    collator = WindowCollator(processor)
    trained = [w for w in windows if (np.asarray(w["labels"]) != -100).any()]
    assert len(trained) >= 3 and any(len(w["images"]) for w in trained)
    assert_trains(model, (collator([w]) for w in trained), ("visual|vision", "language_model",
                                                                    "merger|projector|connector"))
    whole = forward_inputs(model, enc)
    assert_cut_raises(model, naive_cut(whole, max_length), whole)


def test_a_grid_processor_that_names_no_brackets_and_has_no_template_is_refused():
    """EXAONE 4.5's processor expands `<|image_pad|>` by the grid like the others, but names no bracket tokens: its
    brackets come only from its checkpoint's template (not vendored). Without one, the learner sees bare runs and
    refuses by name; the same processor with a template that brackets the image (the twin) is learned."""
    from transformers.models.exaone4_5.processing_exaone4_5 import Exaone4_5_Processor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from chunker.testing._image_only import image_only
    from chunker.testing._tokenizer import make_tokenizer
    from chunker.testing.families_e import MERGE, PATCH, SIZE

    tok = make_tokenizer(("<|endoftext|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"),
                         eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    image_processor = Qwen2VLImageProcessorPil(patch_size=PATCH, merge_size=MERGE, size=dict(SIZE))
    make = image_only(Exaone4_5_Processor)
    bare = make(image_processor=image_processor, tokenizer=tok, video_processor=None)
    with pytest.raises(chunker.UnsupportedProcessorError, match="Exaone4_5_Processor.*not between one special open"):
        chunker.WindowSplitter(bare, max_length=64)
    bracketing = ("{% for m in messages %}{% for c in m.content %}{% if c.type == 'image' %}"
                  "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c.text }}{% endif %}{% endfor %}"
                  "{% endfor %}")
    twin = make(image_processor=image_processor, tokenizer=tok, video_processor=None, chat_template=bracketing)
    assert isinstance(adapter_for(twin), Learned)


def ernie_processor(subclass=None):
    """ERNIE-4.5-VL's real processor, built offline (tokenizer names as its conversion script writes them), with a
    template that brackets each image as the checkpoint's does (`<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>`)."""
    from transformers.models.ernie4_5_vl_moe.image_processing_pil_ernie4_5_vl_moe import Ernie4_5_VLMoeImageProcessorPil
    from transformers.models.ernie4_5_vl_moe.processing_ernie4_5_vl_moe import Ernie4_5_VLMoeProcessor

    from chunker.testing._image_only import image_only
    from chunker.testing._tokenizer import make_tokenizer
    from chunker.testing.families_e import MERGE, PATCH, SIZE

    named = {"image_token": "<|IMAGE_PLACEHOLDER|>", "image_start_token": "<|IMAGE_START|>",
             "image_end_token": "<|IMAGE_END|>", "video_token": "<|VIDEO_PLACEHOLDER|>",
             "video_start_token": "<|VIDEO_START|>", "video_end_token": "<|VIDEO_END|>"}
    tok = make_tokenizer(("<unk>", "<s>", "</s>", *named.values()), named=named, bos_token="<s>", eos_token="</s>",
                         unk_token="<unk>", pad_token="<unk>")
    image_processor = Ernie4_5_VLMoeImageProcessorPil(patch_size=PATCH, merge_size=MERGE, size=dict(SIZE))
    template = ("{% for m in messages %}{% for c in m.content %}{% if c.type == 'image' %}"
                "<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>{% else %}{{ c.text }}{% endif %}{% endfor %}"
                "{% endfor %}")
    cls = image_only(Ernie4_5_VLMoeProcessor)
    if subclass:
        cls = type("Ernie4_5_VLMoeProcessorWithoutMoeTypeIds", (cls,), {"__call__": subclass, "__module__": __name__})
    return cls(image_processor=image_processor, tokenizer=tok, video_processor=None, chat_template=template)


def test_ernie_is_refused_by_name_for_its_moe_type_ids():
    """ERNIE-4.5-VL's grammar is a plain grid bracket, but its processor also returns `moe_mm_token_type_ids`, which its
    model reads to send image tokens (and their brackets) to the vision experts; no window recomputes that column yet,
    and without it the model routes every token to the text experts, silently. So the learner refuses it by name. The
    twin: the same processor with that one tensor dropped is learned, so the refusal is that tensor and nothing else."""
    processor = ernie_processor()
    with pytest.raises(chunker.UnsupportedProcessorError, match="Ernie4_5_VLMoeProcessor.*moe_mm_token_type_ids"):
        chunker.WindowSplitter(processor, max_length=64)

    def without_moe(self, *args, **kwargs):
        out = type(processor).__call__(self, *args, **kwargs)
        out.pop("moe_mm_token_type_ids")
        return out

    twin = adapter_for(ernie_processor(without_moe))
    assert isinstance(twin, Learned) and twin.count_rule == "grid"
