"""Answers located by rendering real chat templates (tests/data/chat_templates, provenance in SOURCES.md).

Every expected answer below was typed by hand after reading the template; none is computed by chunker.
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest

from chunker.errors import RowFormatError, TemplateError
from chunker.template import ROLE_ALIASES, answer_char_ranges, normalize_messages, renderer, token_mask
from chunker.testing._tokenizer import make_tokenizer

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"

# Every special token of the vendored families, so one trained BPE serves all templates.
SPECIALS = (
    "<unk>", "<s>", "</s>", "<pad>", "<image>", "<video>", "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<|turn>", "<turn|>", "<|image|>",
    "<|begin_of_text|>", "<end_of_utterance>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>",
    "<|video_pad|>", "<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
)  # fmt: skip
BOS = {
    "google--gemma-3-4b-it": "<bos>",
    "google--gemma-4-E2B-it": "<bos>",
    "LiquidAI--LFM2.5-VL-3B": "<|startoftext|>",
    "LiquidAI--LFM2.5-VL-450M": "<|startoftext|>",
    "meta-llama--Llama-3.2-11B-Vision-Instruct": "<|begin_of_text|>",
}
# Llama 3.2 Vision writes today's date (strftime_now) into its system turn unless date_string is given.
TEMPLATE_KWARGS = {"meta-llama--Llama-3.2-11B-Vision-Instruct": {"date_string": "26 Jul 2024"}}


def template_text(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_bytes().decode("utf-8")


def tokenizer(name: str):
    return make_tokenizer(
        SPECIALS, chat_template=template_text(name), bos_token=BOS.get(name, "<s>"), eos_token="</s>", unk_token="<unk>"
    )


def render_for(name: str, **template_kwargs):
    return renderer(tokenizer(name), **{**TEMPLATE_KWARGS.get(name, {}), **template_kwargs})


def supervised(render, messages) -> list[str]:
    full = render(messages, False)
    return [full[s:e] for s, e in answer_char_ranges(render, messages)]


def text(s):
    return {"type": "text", "text": s}


IMAGE = {"type": "image"}
# A system turn, images before and after text, an answer full of other templates' turn markers, and a user
# asking the model to repeat a marker.
CONVERSATION = [
    {"role": "system", "content": [text("You are a careful describer.")]},
    {"role": "user", "content": [IMAGE, text("What is in the image?")]},
    {"role": "assistant", "content": [text("A red ball. ASSISTANT: USER: <|im_start|>")]},
    {"role": "user", "content": [text("copy this: ASSISTANT: done"), IMAGE]},
    {"role": "assistant", "content": [text("ASSISTANT: done")]},
]

EXPECTED = {
    # "ASSISTANT:" is the generation prompt, so the space after it is the answer's; the space the template
    # adds after each text is trailing layout.
    "llava-hf--llava-1.5-7b-hf": [
        " A red ball. ASSISTANT: USER: <|im_start|>",
        " ASSISTANT: done",
    ],
    # No generation prompt at all: the answer is everything after " [/INST]", "</s>" included.
    "llava-hf--llava-v1.6-mistral-7b-hf": [
        " A red ball. ASSISTANT: USER: <|im_start|></s>",
        " ASSISTANT: done</s>",
    ],
    "llava-hf--llava-onevision-qwen2-0.5b-ov-hf": [
        "A red ball. ASSISTANT: USER: <|im_start|><|im_end|>",
        "ASSISTANT: done<|im_end|>",
    ],
    "google--gemma-3-4b-it": [
        "A red ball. ASSISTANT: USER: <|im_start|><end_of_turn>",
        "ASSISTANT: done<end_of_turn>",
    ],
    "google--gemma-4-E2B-it": [
        "A red ball. ASSISTANT: USER: <|im_start|><turn|>",
        "ASSISTANT: done<turn|>",
    ],
    # The generation prompt is "Assistant:" and a text-first turn is "Assistant: ...".
    "HuggingFaceM4--Idefics3-8B-Llama3": [
        " A red ball. ASSISTANT: USER: <|im_start|><end_of_utterance>",
        " ASSISTANT: done<end_of_utterance>",
    ],
    "HuggingFaceTB--SmolVLM-Instruct": [
        " A red ball. ASSISTANT: USER: <|im_start|><end_of_utterance>",
        " ASSISTANT: done<end_of_utterance>",
    ],
    "Qwen--Qwen2.5-VL-3B-Instruct": [
        "A red ball. ASSISTANT: USER: <|im_start|><|im_end|>",
        "ASSISTANT: done<|im_end|>",
    ],
    "Qwen--Qwen3-VL-2B-Instruct": [
        "A red ball. ASSISTANT: USER: <|im_start|><|im_end|>",
        "ASSISTANT: done<|im_end|>",
    ],
    # ChatML as Qwen2.5-VL's (an image renders "<|vision_bos|><|IMAGE|><|vision_eos|>"): the same answers
    "Qwen--Qwen2.5-Omni-7B": [
        "A red ball. ASSISTANT: USER: <|im_start|><|im_end|>",
        "ASSISTANT: done<|im_end|>",
    ],
    # Thinking on: the prompt ends "<think>\n"; the answer after the last user turn gets an empty think block
    # that the model must close; the earlier answer is rendered as history, without one.
    "Qwen--Qwen3.5-4B": [
        "A red ball. ASSISTANT: USER: <|im_start|><|im_end|>",
        "\n</think>\n\nASSISTANT: done<|im_end|>",
    ],
    # Thinking off: the prompt carries the whole empty think block.
    "Qwen--Qwen3.5-2B": [
        "A red ball. ASSISTANT: USER: <|im_start|><|im_end|>",
        "ASSISTANT: done<|im_end|>",
    ],
    "LiquidAI--LFM2.5-VL-3B": [
        "A red ball. ASSISTANT: USER: <|im_start|><|im_end|>",
        "ASSISTANT: done<|im_end|>",
    ],
    "LiquidAI--LFM2.5-VL-450M": [
        "A red ball. ASSISTANT: USER: <|im_start|><|im_end|>",
        "ASSISTANT: done<|im_end|>",
    ],
    "meta-llama--Llama-3.2-11B-Vision-Instruct": [
        "A red ball. ASSISTANT: USER: <|im_start|><|eot_id|>",
        "ASSISTANT: done<|eot_id|>",
    ],
    "OpenGVLab--InternVL3-1B-hf": [
        "A red ball. ASSISTANT: USER: <|im_start|><|im_end|>",
        "ASSISTANT: done<|im_end|>",
    ],
    # As llava-1.5 (a system turn is its bare text): "ASSISTANT:" is the prompt, " " after each text is layout.
    "llava-hf--LLaVA-NeXT-Video-7B-hf": [
        " A red ball. ASSISTANT: USER: <|im_start|>",
        " ASSISTANT: done",
    ],
    # The prompt is "Assistant: " (its space included); the template closes every answer with eos_token.
    "PaddlePaddle--PaddleOCR-VL": [
        "A red ball. ASSISTANT: USER: <|im_start|></s>",
        "ASSISTANT: done</s>",
    ],
    # The prompt is "<|assistant|>\n"; the template prints an assistant's content as is, so a list of content items
    # comes out as its Python repr, and no end-of-turn token follows an answer (the next turn's "<|user|>" opens).
    "zai-org--GLM-4.1V-9B-Thinking": [
        "[{'type': 'text', 'text': 'A red ball. ASSISTANT: USER: <|im_start|>'}]",
        "[{'type': 'text', 'text': 'ASSISTANT: done'}]",
    ],
    # The prompt is "Assistant:" and an answer opens "Assistant: ", so its space is the answer's; the template writes the
    # end-of-sentence separator after an assistant turn only when another turn follows it, so the conversation up to
    # an answer ends without it and it is not trained.
    "deepseek-community--deepseek-vl-1.3b-chat": [" A red ball. ASSISTANT: USER: <|im_start|>", " ASSISTANT: done"],
    # As DeepSeek-VL's, with "<|Assistant|>:" for the prompt.
    "deepseek-community--Janus-Pro-1B": [" A red ball. ASSISTANT: USER: <|im_start|>", " ASSISTANT: done"],
    # The prompt is "<|im_start|>assistant\n"; a text item is printed with a newline after it, then "<|im_end|>".
    "lightonai--LightOnOCR-1B-1025": [
        "A red ball. ASSISTANT: USER: <|im_start|>\n<|im_end|>",
        "ASSISTANT: done\n<|im_end|>",
    ],
    # As Idefics3's without the BOS: the prompt is "Assistant:", a text-first turn is "Assistant: ...".
    "HuggingFaceM4--idefics2-8b-chatty": [
        " A red ball. ASSISTANT: USER: <|im_start|><end_of_utterance>",
        " ASSISTANT: done<end_of_utterance>",
    ],
    # ChatML: the prompt is "<|im_start|>assistant\n".
    "rhymes-ai--Aria": [
        "A red ball. ASSISTANT: USER: <|im_start|><|im_end|>",
        "ASSISTANT: done<|im_end|>",
    ],
    # ChatML after a fixed system turn the template always writes: the prompt is "<|im_start|>assistant\n".
    "thisisiron--Ovis2-2B-hf": [
        "A red ball. ASSISTANT: USER: <|im_start|><|im_end|>",
        "ASSISTANT: done<|im_end|>",
    ],
    # Each text is rendered as "\n" + text after the "<|im_start|>assistant\n" prompt.
    "KamilaMila--FastVLM-1.5B": [
        "\nA red ball. ASSISTANT: USER: <|im_start|><|im_end|>",
        "\nASSISTANT: done<|im_end|>",
    ],
    # The prompt is "<|assistant|>"; the template writes the EOS only after the last turn, so only the last answer
    # trains it. The conversation that ends with the first answer continues "</s>" where the whole one opens "<|user|>":
    # they agree on "<", so the character range ends inside that marker; the encoder moves a range end that falls
    # inside a special token back to the token's start (tests/test_family_phi4mm.py trains exactly "...<|end|>").
    # Llama 4: the generation prompt is "<|header_start|>assistant<|header_end|>\n\n"; each turn ends "<|eot|>"
    "transformers--Llama4Processor-default": [
        "A red ball. ASSISTANT: USER: <|im_start|><|eot|>",
        "ASSISTANT: done<|eot|>",
    ],
    "microsoft--Phi-4-multimodal-instruct": [
        "A red ball. ASSISTANT: USER: <|im_start|><|end|><",
        "ASSISTANT: done<|end|></s>",
    ],
}


def test_every_vendored_template_has_expected_answers():
    assert sorted(p.stem for p in TEMPLATES.glob("*.jinja")) == sorted(EXPECTED)
    assert len(EXPECTED) >= 15


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_answers_of_real_templates(name):
    assert supervised(render_for(name), CONVERSATION) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_answers_are_not_found_where_the_user_quotes_them(name):
    render = render_for(name)
    full = render(CONVERSATION, False)
    quote = full.index("copy this: ASSISTANT: done")
    for start, end in answer_char_ranges(render, CONVERSATION):
        assert end <= quote or start >= quote + len("copy this: ASSISTANT: done")


def test_the_thinking_generation_prompt_is_not_trained():
    render = render_for("Qwen--Qwen3.5-4B")
    full = render(CONVERSATION, False)
    think = full.rindex("<|im_start|>assistant\n<think>\n") + len("<|im_start|>assistant\n")
    ranges = answer_char_ranges(render, CONVERSATION)
    covered = token_mask([(i, i + 1) for i in range(len(full))], ranges)
    assert full[think : think + len("<think>\n")] == "<think>\n"
    assert not covered[think : think + len("<think>\n")].any()
    assert covered[think + len("<think>\n")]


def test_template_kwargs_reach_the_template():
    off = supervised(render_for("Qwen--Qwen3.5-4B", enable_thinking=False), CONVERSATION)
    on = supervised(render_for("Qwen--Qwen3.5-2B", enable_thinking=True), CONVERSATION)
    assert off[1] == "ASSISTANT: done<|im_end|>"
    assert on[1] == "\n</think>\n\nASSISTANT: done<|im_end|>"


def test_no_assistant_turn_gives_no_ranges():
    render = render_for("Qwen--Qwen2.5-VL-3B-Instruct")
    assert answer_char_ranges(render, CONVERSATION[:2]) == []


@pytest.mark.parametrize("name", ["Qwen--Qwen2.5-VL-3B-Instruct", "google--gemma-3-4b-it"])
def test_role_aliases_give_the_same_ranges(name):
    render = render_for(name)
    aliased = copy.deepcopy(CONVERSATION)
    for message, role in zip(aliased, ["System", "human", "GPT", "Human", "model"]):
        message["role"] = role
    sharegpt = [{"from": m["role"], "value": m["content"]} for m in copy.deepcopy(aliased)]
    expected = answer_char_ranges(render, CONVERSATION)
    assert answer_char_ranges(render, normalize_messages(aliased)) == expected
    assert answer_char_ranges(render, normalize_messages(sharegpt)) == expected
    assert supervised(render, normalize_messages(aliased)) == EXPECTED[name]


def test_every_alias_maps_to_a_role_templates_know():
    assert set(ROLE_ALIASES.values()) == {"user", "assistant", "system", "tool"}
    assert normalize_messages([{"role": "observation", "content": "22 C"}])[0]["role"] == "tool"
    assert normalize_messages([{"role": "ChatBot", "content": "hi"}])[0]["role"] == "assistant"


def test_bare_string_items_keep_their_text():
    render = render_for("Qwen--Qwen2.5-VL-3B-Instruct")
    bare = copy.deepcopy(CONVERSATION)
    bare[1]["content"] = [IMAGE, "What is in the image?"]
    bare[4]["content"] = ["ASSISTANT: done"]
    # Unnormalized, the template takes the bare "...image?" for an image ('image' in the string) and drops
    # the bare answer: the text vanishes.
    assert "What is in the image?" not in render(bare, False)
    normalized = normalize_messages(bare)
    assert render(normalized, False) == render(CONVERSATION, False)
    assert supervised(render, normalized) == EXPECTED["Qwen--Qwen2.5-VL-3B-Instruct"]


def test_none_text_becomes_empty():
    messages = normalize_messages([{"role": "user", "content": [IMAGE, {"type": "text", "text": None}]}])
    assert messages[0]["content"] == [IMAGE, {"type": "text", "text": ""}]
    assert messages[0]["content"][0] is IMAGE


def test_normalize_copies_and_keeps_other_keys():
    original = [{"role": "gpt", "content": "x", "reasoning_content": "because"}]
    before = copy.deepcopy(original)
    assert normalize_messages(original) == [{"role": "assistant", "content": "x", "reasoning_content": "because"}]
    assert original == before


@pytest.mark.parametrize(
    "messages, seen",
    [
        ({"role": "user", "content": "hi"}, "messages is a dict"),
        (["hi"], "message 0 is a str"),
        ([{"role": "narrator", "content": "hi"}], "role 'narrator'"),
        ([{"content": "hi"}], "role None"),
        ([{"role": "user", "content": [IMAGE, 3]}], "content item 1 of message 0 is a int"),
        ([{"role": "user", "content": {"text": "hi"}}], "content of type dict"),
    ],
)
def test_bad_messages_raise_a_named_row_error(messages, seen):
    with pytest.raises(RowFormatError) as err:
        normalize_messages(messages, row=7)
    assert str(err.value).startswith("row 7: ")
    assert seen in str(err.value)


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "hi"}],
        [{"role": "Human", "content": "hi"}],
        [{"from": "gpt", "value": "hi"}],
        [{"role": "user", "content": [IMAGE, "hi"]}],
        [{"role": "assistant", "content": None, "tool_calls": []}],
    ],
)
def test_good_messages_normalize(messages):
    assert len(normalize_messages(messages, row=7)) == 1


def test_unknown_role_error_says_what_is_accepted_and_the_fix():
    with pytest.raises(RowFormatError, match=r"accepted roles are user, assistant, system and tool.*rename the role"):
        normalize_messages([{"role": "narrator", "content": "hi"}])


def test_a_conversation_the_template_refuses_raises_template_error():
    render = render_for("google--gemma-3-4b-it")
    twice = [CONVERSATION[1], CONVERSATION[3], CONVERSATION[4]]  # user, user, assistant: Gemma 3 wants alternation
    with pytest.raises(TemplateError, match=r"^row 3: the chat template refused the conversation .*alternate"):
        answer_char_ranges(render, twice, row=3)


def test_an_alternating_conversation_is_accepted_by_the_same_template():
    render = render_for("google--gemma-3-4b-it")
    assert supervised(render, CONVERSATION[1:3]) == ["A red ball. ASSISTANT: USER: <|im_start|><end_of_turn>"]


def test_an_answer_whose_prefix_the_template_refuses_gets_an_empty_range():
    # Qwen3.5 raises "No user query found" for [system] with or without the generation prompt.
    render = render_for("Qwen--Qwen3.5-4B")
    messages = [CONVERSATION[0], CONVERSATION[2], CONVERSATION[3], CONVERSATION[4]]
    (s0, e0), (s1, e1) = answer_char_ranges(render, messages)
    assert s0 == e0
    assert render(messages, False)[s1:e1] == "\n</think>\n\nASSISTANT: done<|im_end|>"


# A hand-written template, not a vendored one: it refuses the generation prompt after a tool result.
STRICT = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
    "{% if add_generation_prompt %}{% if messages[-1]['role'] != 'user' %}"
    "{{ raise_exception('the generation prompt needs a user turn last') }}{% endif %}<assistant>{% endif %}"
)
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather?"},
    {"role": "assistant", "content": "Let me check."},
    {"role": "tool", "content": "22 C"},
    {"role": "assistant", "content": "Sunny."},
]


def test_when_the_generation_prompt_is_refused_the_answer_starts_after_the_prefix():
    render = renderer(make_tokenizer(SPECIALS, chat_template=STRICT))
    with pytest.raises(Exception, match="needs a user turn last"):
        render(TOOL_CONVERSATION[:3], True)
    assert supervised(render, TOOL_CONVERSATION) == ["Let me check.</assistant>", "<assistant>Sunny.</assistant>"]


def test_the_whole_conversation_is_rendered_once():
    render = render_for("Qwen--Qwen2.5-VL-3B-Instruct")
    calls = []

    def counting(messages, add_generation_prompt):
        calls.append((len(messages), add_generation_prompt))
        return render(messages, add_generation_prompt)

    answer_char_ranges(counting, CONVERSATION)
    assert calls.count((len(CONVERSATION), False)) == 1
    assert len(calls) <= 1 + 2 * 2


def test_the_caller_messages_are_not_modified():
    from chunker.testing import build_processor

    processor = build_processor("llava", chat_template=template_text("llava-hf--llava-1.5-7b-hf"))
    messages = copy.deepcopy(CONVERSATION)
    messages[1]["content"][0] = {"type": "image_url", "image_url": {"url": "file:///nowhere.png"}}
    before = copy.deepcopy(messages)
    answer_char_ranges(renderer(processor), messages)
    assert messages == before


def test_a_processor_renders_like_its_template():
    from chunker.testing import build_processor

    processor = build_processor("llava", chat_template=template_text("llava-hf--llava-1.5-7b-hf"))
    assert supervised(renderer(processor), CONVERSATION) == EXPECTED["llava-hf--llava-1.5-7b-hf"]


def test_renderer_pickles():
    render = render_for("Qwen--Qwen3.5-2B", enable_thinking=True)
    again = pickle.loads(pickle.dumps(render))
    assert again(CONVERSATION, True) == render(CONVERSATION, True)
    assert again.template_kwargs == {"enable_thinking": True}


@pytest.mark.parametrize(
    "name",
    [
        "llava-hf--llava-1.5-7b-hf",
        "Qwen--Qwen2.5-VL-3B-Instruct",
        "google--gemma-3-4b-it",
        "HuggingFaceTB--SmolVLM-Instruct",
    ],
)
def test_token_mask_marks_exactly_the_answer_tokens(name):
    tok = tokenizer(name)
    render = renderer(tok, **TEMPLATE_KWARGS.get(name, {}))
    full = render(CONVERSATION, False)
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = token_mask(enc["offset_mapping"], answer_char_ranges(render, CONVERSATION))
    ids = np.asarray(enc["input_ids"])
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    runs = [tok.decode(ids[a:b], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            for a, b in zip(edges[::2], edges[1::2])]  # fmt: skip
    assert runs == EXPECTED[name]


def test_token_mask_skips_empty_spans_and_reads_start_offsets():
    offsets = [(0, 0), (0, 2), (2, 4), (4, 4), (4, 7), (7, 9), (9, 12)]
    assert token_mask(offsets, [(2, 7)]).tolist() == [False, False, True, False, True, False, False]
    # a token that starts inside and runs past the end is in; one that starts before and holds the range's first
    # character is in too (an answer whose first token swallowed the prompt's trailing space); one that ends at the
    # range's start is out
    assert token_mask([(1, 3), (3, 8)], [(2, 5)]).tolist() == [True, True]
    assert token_mask([(0, 2), (2, 5)], [(2, 5)]).tolist() == [False, True]


def test_token_mask_with_unsorted_touching_overlapping_and_empty_ranges():
    offsets = [(i, i + 1) for i in range(12)]
    got = token_mask(offsets, [(8, 10), (0, 0), (1, 3), (2, 5), (5, 6), (11, 11)])
    assert np.flatnonzero(got).tolist() == [1, 2, 3, 4, 5, 8, 9]
    assert token_mask(offsets, []).tolist() == [False] * 12
    assert token_mask(np.zeros((0, 2), dtype=np.int64), [(0, 3)]).shape == (0,)
