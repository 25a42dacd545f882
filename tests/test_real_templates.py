"""The splitter under the REAL chat templates of public checkpoints (vendored in tests/data/chat_templates with
their sources), on the real processor classes those checkpoints use, built offline.

The issue this answers: under llava-v1.6-vicuna's template (`USER:/ASSISTANT:` on a `LlavaNextProcessor`) and
other real templates, hand-written turn markers trained nothing, silently. Here every supervised token of the
windows is compared with a reference computed independently, by incremental templating on tokens
(`reference_targets`: what the conversation through an answer adds to the conversation before it with the
generation prompt), and the same rows written with ShareGPT/Gemma role aliases give the same windows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_families import conversation, images, reference_targets

import chunker
from chunker.testing import build_processor

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
# (test family builder, vendored template): the processor class each checkpoint ships with
CASES = [
    ("llava", "llava-hf--llava-1.5-7b-hf.jinja"),
    ("llava_next", "llava-hf--llava-1.5-7b-hf.jinja"),  # llava-v1.6-vicuna-7b-hf ships this template
    ("llava_next", "llava-hf--llava-v1.6-mistral-7b-hf.jinja"),
    ("llava", "KamilaMila--FastVLM-1.5B.jinja"),  # a FastVLM conversion: a LlavaProcessor with a ChatML template
    ("llava_onevision", "llava-hf--llava-onevision-qwen2-0.5b-ov-hf.jinja"),
    ("gemma3", "google--gemma-3-4b-it.jinja"),
    ("qwen2_vl", "Qwen--Qwen2.5-VL-3B-Instruct.jinja"),  # Qwen2-VL ships the same bytes
    ("qwen2_5_vl", "Qwen--Qwen2.5-VL-3B-Instruct.jinja"),
    ("qwen3_vl", "Qwen--Qwen3-VL-2B-Instruct.jinja"),
    ("idefics3", "HuggingFaceM4--Idefics3-8B-Llama3.jinja"),
    ("smolvlm", "HuggingFaceTB--SmolVLM-Instruct.jinja"),
]
# Qwen3.5's thinking template is tested on its own below: it renders an answer that ends the conversation with an
# empty <think> block it does not give the same answer inside a longer conversation, so a token-level incremental
# reference would include text the whole conversation does not hold.
# Not here: the vendored InternVL3 template is the conversion script's older one, which writes `<image>` where
# the InternVL processor expands `<IMG_CONTEXT>` (the probe refuses that pairing by name: see the test below).
ALIASES = {"user": "human", "assistant": "gpt"}


def processor_with(family, template):
    return build_processor(family, chat_template=(TEMPLATES / template).read_text())


def trained(rows):
    out = []
    for row in rows:
        labels, ids = np.asarray(row["labels"]), np.asarray(row["input_ids"])
        assert (labels[1:][labels[1:] != -100] == ids[1:][labels[1:] != -100]).all()
        out.append(labels[1:][labels[1:] != -100])
    return np.concatenate(out)


@pytest.mark.parametrize("family,template", CASES, ids=[f"{f}-{t.split('--')[1][:-6]}" for f, t in CASES])
def test_windows_train_exactly_the_answers_the_real_template_renders(family, template):
    processor = processor_with(family, template)
    messages, n = conversation(family)
    messages = [messages[0], {"role": "assistant", "content": [{"type": "text",
                "text": "copy this: ASSISTANT: USER: <|im_start|>user " + messages[1]["content"][0]["text"]}]},
                *messages[2:]]
    imgs = images(n)
    reference = reference_targets(processor, messages, imgs)
    assert len(reference) > 20
    spec = chunker.ImageSpanSpec.from_processor(processor)
    ids = processor(text=[processor.apply_chat_template(messages, tokenize=False)], images=[imgs])["input_ids"][0]
    longest = int(chunker.find_image_spans(np.asarray(ids), spec).lengths.max())
    splitter = chunker.WindowSplitter(processor, max_length=max(96, longest + 24), overlap=8)
    rows = splitter.split_example({"messages": messages, "images": imgs}, index=3)
    assert len(rows) >= 2
    np.testing.assert_array_equal(trained(rows), reference)
    aliased = [{**m, "role": ALIASES[m["role"]]} for m in messages]
    again = splitter.split_example({"messages": aliased, "images": imgs}, index=3)
    assert [r["input_ids"].tolist() for r in again] == [r["input_ids"].tolist() for r in rows]
    assert [r["labels"].tolist() for r in again] == [r["labels"].tolist() for r in rows]


def test_the_thinking_templates_generation_prompt_is_not_trained():
    """Qwen3.5's generation prompt ends in `<think>\\n`: that prompt is context; the model is trained to write what
    follows it (here the empty reasoning's close, then the answer). Reference: a literal read off the rendering."""
    processor = processor_with("qwen3_vl", "Qwen--Qwen3.5-4B.jinja")
    messages, n = conversation("qwen3_vl")
    rows = chunker.WindowSplitter(processor, max_length=1 << 16).split_example({"messages": messages,
                                                                               "images": images(n)})
    prompt = processor.apply_chat_template(messages[:3], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n")
    first, second = "the quick brown fox jumps over the lazy dog " * 4, "a cat sits on a mat next to a red ball " * 5
    assert processor.tokenizer.decode(trained(rows)) == (
        first.strip() + "<|im_end|>" + "\n</think>\n\n" + second.strip() + "<|im_end|>"
    )


def test_a_row_with_assistant_turns_that_trains_nothing_is_a_named_error_or_a_counted_skip():
    """A template that renders no assistant text (here: one that drops assistant messages) cannot train the row:
    NoSupervisionError naming the row and the template's processor; under on_error='skip' a counted ledger row.
    Its twin, the real template, trains."""
    processor = processor_with("llava", "llava-hf--llava-1.5-7b-hf.jinja")
    processor.chat_template = processor.chat_template.replace("{% generation %}", "{% if false %}").replace(
        "{% endgeneration %}", "{% endif %}")
    messages, n = conversation("llava")
    row = {"messages": messages, "images": images(n)}
    with pytest.raises(chunker.NoSupervisionError, match=r"row 4: the row has 2 assistant turns.*LlavaProcessor"):
        chunker.WindowSplitter(processor, max_length=240).split_example(row, index=4)
    skipping = chunker.WindowSplitter(processor, max_length=240, on_error="skip")
    out = skipping({k: [v] for k, v in row.items()}, indices=[4])
    stats = chunker.SplitStats.from_windows(out)
    assert stats.skipped == {"NoSupervisionError": 1} and stats.windows == 0 and out["num_windows"] == [0]
    real = processor_with("llava", "llava-hf--llava-1.5-7b-hf.jinja")
    assert chunker.WindowSplitter(real, max_length=240).split_example(row, index=4)


def test_a_template_that_renders_another_image_token_than_the_processor_expands_is_refused_by_name():
    """InternVL3's older conversion template writes `<image>`, the processor expands `<IMG_CONTEXT>`: every image
    would vanish from the text. The probe refuses the pairing when the splitter is built; the builder's own
    template (which writes `<IMG_CONTEXT>`) is its twin."""
    processor = processor_with("internvl", "OpenGVLab--InternVL3-1B-hf.jinja")
    with pytest.raises(chunker.GrammarError, match="chat template renders no image placeholder"):
        chunker.WindowSplitter(processor, max_length=96)
    assert chunker.WindowSplitter(build_processor("internvl"), max_length=96)
