"""Model types that share a supported family's processor class but have their own model class, each its own family:
Qwen3.5 (`qwen3_5`, `qwen3_5_moe`) and Qwen3-VL-MoE (`qwen3_vl_moe`) on `Qwen3VLProcessor`, VipLLaVA (`vipllava`) on
`LlavaProcessor`, GLM-4.5V (`glm4v_moe`) on `Glm4vProcessor` (builders: `chunker.testing.families_h`).

`qwen3_5` (Qwen3.5-2B's real template) and `qwen3_vl_moe` (the Qwen3-VL Instruct real template) run the whole shared
contract (`tests/test_families.py::CONTRACT`). The others run the same checks here, on conversations rendered by:
Qwen3.5-MoE: its checkpoints' real thinking template (Qwen3.5-4B and larger), whose generation prompt opens
`<think>\\n`, so the incremental reference holds with thinking off (`enable_thinking=False`, which renders exactly
as Qwen3.5-2B's template), and with thinking on the trained text is checked against a literal read off the
rendering; VipLLaVA and GLM-4.5V: no template of theirs is vendored, so a sibling's real one stands in (LLaVA-1.5's,
GLM-4.1V-9B-Thinking's), as the matrix states. Every type's real model class with a tiny config trains on the collated
windows (forward, backward, parameters of the text model, projector, vision tower and, for MoE types, the experts
change), while naive truncation of the same row raises the model's own error (the positive control); a padded batch
of the windows gives each row what its window alone gives.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from model_checks import assert_cut_raises, assert_trains, forward_inputs, naive_cut, random_images
from model_checks import conversation as model_conversation
from test_families import (
    check_one_span_per_image,
    check_probe_and_twin,
    conversation,
    images,
    item_counts,
    reference_targets,
)
from test_real_templates import trained

import chunker
from chunker.collator import WindowCollator
from chunker.families import adapter_for
from chunker.families.learned import Learned
from chunker.testing import FAMILIES_H, SHARED_H, build_model, build_processor
from chunker.testing.families_h import SHARES, available

SHARED = SHARED_H
# family -> max_length of the windows its tiny model trains on (every type here builds a tiny model)
MODELS = {"qwen3_5": 100, "qwen3_5_moe": 100, "qwen3_vl_moe": 100, "vipllava": 100, "glm4v_moe": 64}
# the adapter each type must be detected as (GLM-4.5V: learned, as GLM-4.1V)
ADAPTER = {"qwen3_5": "qwen3_vl", "qwen3_5_moe": "qwen3_vl", "qwen3_vl_moe": "qwen3_vl", "vipllava": "llava",
           "glm4v_moe": "glm4v"}
# template keywords under which the incremental reference holds (Qwen3.5-MoE's thinking template: see the docstring)
TEMPLATE_KWARGS = {"qwen3_5_moe": {"enable_thinking": False}}
# the README matrix's row of each SHARED type (tools/families_matrix.py): real class, modalities, grammar; stated here
# so the table is the same on every transformers, and checked against the processor by the first test
MATRIX = {
    "qwen3_5_moe": ("Qwen3VLProcessor", "image, video", "written (`qwen3_vl`; Qwen3.5-4B's template)"),
    "vipllava": ("LlavaProcessor", "image", "written (`llava`; LLaVA-1.5's template)"),
    "glm4v_moe": ("Glm4vProcessor", "image", "learned (grid count; GLM-4.1V's template)"),
}
PARTS = ("visual|vision", "language_model", "merger|projector|connector")


def need(family):
    why = available(family)
    if why:
        pytest.skip(why)


@cache
def processor_of(family):
    return build_processor(family)


def test_the_families_are_registered_once():
    from test_families import CONTRACT

    assert set(FAMILIES_H) <= set(CONTRACT) and not set(SHARED) & set(CONTRACT)
    assert {f: CONTRACT[f] for f in FAMILIES_H} == {f: ADAPTER[f] for f in FAMILIES_H}
    assert set(MODELS) == set(FAMILIES_H) | set(SHARED) == set(ADAPTER) and set(MATRIX) == set(SHARED)


@pytest.mark.parametrize("family", SHARED)
def test_the_matrix_row_is_the_processors(family):
    need(family)
    processor = processor_of(family)
    real, modalities, grammar = MATRIX[family]
    assert real in [c.__name__ for c in type(processor).__mro__]
    adapter = adapter_for(processor)
    video = adapter.spec.video_token_id is not None and not isinstance(adapter, Learned)
    assert modalities == "image" + (", video" if video else "")
    if isinstance(adapter, Learned):
        assert grammar.startswith(f"learned ({adapter.count_rule} count;")
    else:
        assert grammar.startswith(f"written (`{adapter.name}`;")


@pytest.mark.parametrize("family", SHARED)
def test_detected_as_its_processors_family_the_probe_passes_and_a_broken_grammar_fails_it(family):
    need(family)
    processor = processor_of(family)
    assert chunker.ImageSpanSpec.from_processor(processor).family == ADAPTER[family]
    assert isinstance(adapter_for(processor), Learned) == (family == "glm4v_moe")
    check_probe_and_twin(processor)


@pytest.mark.parametrize("family", SHARED)
def test_one_span_per_image(family):
    need(family)
    check_one_span_per_image(processor_of(family), SHARES[family], **TEMPLATE_KWARGS.get(family, {}))


@pytest.mark.parametrize("family", SHARED)
@pytest.mark.parametrize("max_length,overlap", [(96, 0), (128, 16)])
def test_windows_of_a_real_conversation_train_exactly_the_answers(family, max_length, overlap):
    need(family)
    processor = processor_of(family)
    kwargs = TEMPLATE_KWARGS.get(family, {})
    messages, n = conversation(SHARES[family])
    imgs = images(n)
    reference = reference_targets(processor, messages, imgs, **kwargs)
    assert len(reference) > 20
    splitter = chunker.WindowSplitter(processor, max_length=max_length, overlap=overlap, template_kwargs=kwargs or None)
    rows = splitter.split_example({"messages": messages, "images": imgs}, index=7)
    assert len(rows) >= 2
    spec = splitter.spec
    for k, row in enumerate(rows):
        win = np.asarray(row["input_ids"])
        assert len(win) <= max_length
        window_images = list(row["images"])
        order = [next(i for i, orig in enumerate(imgs) if orig is im) for im in window_images]
        counts = item_counts(processor, spec, imgs)
        spans = chunker.find_image_spans(win, spec, item_counts=None if counts is None else [counts[i] for i in order])
        assert len(spans) == len(window_images) and order == sorted(order)
        assert row["source_index"] == 7 and row["window_index"] == k and row["num_windows"] == len(rows)
    np.testing.assert_array_equal(trained(rows), reference)


def test_qwen3_5_moe_with_thinking_off_renders_as_qwen3_5_2b():
    """Why the incremental reference holds for Qwen3.5-MoE under `enable_thinking=False`: its template then renders
    every prefix of the conversation, with and without the generation prompt, as Qwen3.5-2B's template does."""
    from chunker.testing.families_h import template

    need("qwen3_5_moe")
    moe = processor_of("qwen3_5_moe")
    two_b = build_processor("qwen3_5_moe", chat_template=template("qwen3_5"))
    messages, _ = conversation("qwen3_vl")
    for k in range(1, len(messages) + 1):
        for prompt in (False, True):
            ours = moe.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=prompt,
                                           enable_thinking=False)
            assert ours == two_b.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=prompt)
    assert moe.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True).endswith("<think>\n")


@pytest.mark.parametrize("family,template", [("qwen3_5_moe", None), ("qwen3_5", "Qwen--Qwen3.5-4B.jinja")])
def test_with_thinking_on_the_generation_prompt_is_context_and_the_rest_is_trained(family, template):
    """Qwen3.5-4B-and-larger's template (the MoE checkpoints', and Qwen3.5-4B's, a `qwen3_5`): the generation prompt
    ends in `<think>\\n`; the last answer renders after `<think>\\n\\n</think>\\n\\n`, the first one without it.
    Reference: a literal read off the rendering (checked against it here), not chunker."""
    from chunker.testing._templates import vendored_template

    need(family)
    processor = build_processor(family, **({"chat_template": vendored_template(template)} if template else {}))
    messages, n = conversation("qwen3_vl")
    first, second = (m["content"][0]["text"] for m in messages[1::2])
    rendering = processor.apply_chat_template(messages, tokenize=False)
    assert rendering.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n" + second.strip() + "<|im_end|>\n")
    assert "<|im_start|>assistant\n" + first.strip() + "<|im_end|>\n" in rendering
    prompt = processor.apply_chat_template(messages[:3], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n")
    rows = chunker.WindowSplitter(processor, max_length=96).split_example({"messages": messages, "images": images(n)})
    assert len(rows) >= 2
    assert processor.tokenizer.decode(trained(rows)) == (
        first.strip() + "<|im_end|>" + "\n</think>\n\n" + second.strip() + "<|im_end|>")


@cache
def setup(family):
    processor = processor_of(family)
    imgs = random_images()
    messages = model_conversation(len(imgs), answer_as_string=family == "glm4v_moe")  # GLM prints content as is
    return processor, {"messages": messages, "images": imgs}


@pytest.mark.parametrize("family", sorted(MODELS))
def test_the_tiny_model_trains_on_windows_and_naive_truncation_fails(family):
    need(family)
    processor, row = setup(family)
    model = build_model(family, processor)
    assert type(model).__name__ == {"qwen3_5": "Qwen3_5ForConditionalGeneration",
                                    "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration",
                                    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
                                    "vipllava": "VipLlavaForConditionalGeneration",
                                    "glm4v_moe": "Glm4vMoeForConditionalGeneration"}[family]
    max_length = MODELS[family]
    windows = chunker.WindowSplitter(processor, max_length=max_length).split_example(row, index=3)
    assert len(windows) >= 3
    assert sum(len(w["images"]) for w in windows) == len(row["images"])
    collator = WindowCollator(processor, pad_to_multiple_of=8)
    trained_windows = [w for w in windows if (np.asarray(w["labels"]) != -100).any()]
    assert len(trained_windows) >= 3 and any(len(w["images"]) for w in trained_windows)
    assert all(len(w["input_ids"]) <= max_length for w in trained_windows)
    parts = PARTS + (("experts",) if "moe" in family else ())
    assert_trains(model, (collator([w]) for w in trained_windows), parts)
    # the positive control: the same row cut at max_length, every image kept, as TRL / Unsloth do
    text = processor.apply_chat_template(row["messages"], tokenize=False)
    whole = forward_inputs(model, processor(text=[text], images=[row["images"]], return_tensors="pt"))
    assert_cut_raises(model, naive_cut(whole, max_length), whole)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_each_row_of_a_padded_batch_computes_what_its_window_alone_does(family):
    """The windows collated together (padded) give every row the logits of that window collated alone: padding,
    per-row media (and for the Qwen types, their 3-D positions and Qwen3.5's linear-attention state) do not leak
    between rows. Reference: the model on each window alone."""
    need(family)
    processor, row = setup(family)
    model = build_model(family, processor).eval()
    windows = chunker.WindowSplitter(processor, max_length=MODELS[family]).split_example(row, index=3)
    collator = WindowCollator(processor, pad_to_multiple_of=8)
    batch = collator(windows)
    assert len({len(w["input_ids"]) for w in windows}) > 1, "rows of different lengths: some are padded"
    with torch.no_grad():
        together = model(**batch).logits
        for r, w in enumerate(windows):
            n = len(w["input_ids"])
            alone = model(**collator([w])).logits
            assert torch.allclose(together[r, :n], alone[0, :n], atol=1e-4), f"row {r}"
