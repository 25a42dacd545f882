"""Conversational rows that used to be lost or crash: each is now a named ChunkerError naming the row (or, under
on_error='skip', a counted ledger row), and each has a working twin that differs only in the fault."""

from __future__ import annotations

import pytest
from PIL import Image

import chunker
from chunker.testing import build_processor


@pytest.fixture(scope="module")
def qwen():
    return build_processor("qwen2_vl")


@pytest.fixture(scope="module")
def gemma():
    return build_processor("gemma3")


def picture(w=40, h=30):
    return Image.new("RGB", (w, h), "red")


def user(*content):
    return {"role": "user", "content": list(content)}


def answer(text="a cat sits on a mat"):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


IMAGE = {"type": "image"}


def text(t):
    return {"type": "text", "text": t}


def split(processor, row, index=5, **kw):
    return chunker.WindowSplitter(processor, max_length=kw.pop("max_length", 128), **kw).split_example(row, index)


def skipped(processor, row, index=5, **kw):
    out = chunker.WindowSplitter(processor, max_length=kw.pop("max_length", 128), on_error="skip", **kw)(
        {k: [v] for k, v in row.items()}, indices=[index])
    return chunker.SplitStats.from_windows(out)


def test_content_items_given_as_bare_strings_are_text_not_lost(qwen):
    bare = {"messages": [user(IMAGE, "what is this?"), {"role": "assistant", "content": ["a red square"]}],
            "images": [picture()]}
    canonical = {"messages": [user(IMAGE, text("what is this?")), answer("a red square")], "images": [picture()]}
    got, want = split(qwen, bare), split(qwen, canonical)
    assert [w["input_ids"].tolist() for w in got] == [w["input_ids"].tolist() for w in want]
    assert [w["labels"].tolist() for w in got] == [w["labels"].tolist() for w in want]
    assert "what is this?" in qwen.tokenizer.decode(got[0]["input_ids"])


def test_a_video_item_is_refused_not_dropped(qwen):
    row = {"messages": [user({"type": "video"}, IMAGE, text("and this?")), answer()], "images": [picture()]}
    with pytest.raises(chunker.RowFormatError, match=r"row 5: .*\{'type': 'video'\} item"):
        split(qwen, row)
    assert skipped(qwen, row).skipped == {"RowFormatError": 1}
    twin = {"messages": [user(IMAGE, text("and this?")), answer()], "images": [picture()]}
    assert split(qwen, twin)


@pytest.mark.parametrize("messages", [
    [user(IMAGE, text("hello"))],
    [{"role": "system", "content": [text("you are a helpful assistant")]}],
], ids=["no assistant turn", "only a system message"])
def test_a_row_that_can_train_nothing_is_named_and_counted(qwen, messages):
    row = {"messages": messages, "images": [picture()] * sum(1 for m in messages for c in m["content"] if c == IMAGE)}
    with pytest.raises(chunker.NoSupervisionError, match="row 5: the conversation has no assistant turn"):
        split(qwen, row)
    assert skipped(qwen, row).skipped == {"NoSupervisionError": 1}
    twin = {"messages": [*messages, answer()] if messages[-1]["role"] == "user" else
            [*messages, user(text("hi")), answer()], "images": row["images"]}
    assert split(qwen, twin)
    assert split(qwen, row, train_on="all")  # a row with nothing to answer can still train every token, on request


@pytest.mark.parametrize("mode", ["pixels", "sizes"])
def test_an_empty_image_is_an_image_decode_error(qwen, mode):
    row = {"messages": [user(IMAGE, text("what?")), answer()], "images": [Image.new("RGB", (0, 30))]}
    with pytest.raises(chunker.ImageDecodeError, match="row 5: .*nothing to encode|row 5: .*no pixels to encode"):
        split(qwen, row, image_tokens_from=mode)
    assert skipped(qwen, row, image_tokens_from=mode).skipped == {"ImageDecodeError": 1}
    assert split(qwen, {**row, "images": [picture()]}, image_tokens_from=mode)


def test_an_image_the_processor_refuses_is_a_processor_error_naming_the_image(qwen):
    """Qwen's resize rule refuses an aspect ratio beyond 200 (a 2x600 strip): ProcessorError with the sizes, not
    'give one image per placeholder'."""
    row = {"messages": [user(IMAGE, text("what?")), answer()], "images": [picture(600, 2)]}
    with pytest.raises(chunker.ProcessorError, match=r"row 5: .*refused the row with 1 images of sizes \[\(600, 2\)\]"):
        split(qwen, row)
    assert skipped(qwen, row).skipped == {"ProcessorError": 1}
    assert split(qwen, {**row, "images": [picture(60, 20)]})


def test_a_conversation_the_template_refuses_is_a_template_error_and_skips(gemma):
    """Gemma 3's template raises on roles that do not alternate: TemplateError naming the row; on_error='skip'
    skips and counts it (it used to escape as a raw jinja exception)."""
    row = {"messages": [user(text("one")), user(text("two")), answer()], "images": []}
    with pytest.raises(chunker.TemplateError, match="row 5: the chat template of Gemma3Processor refused"):
        split(gemma, row)
    assert skipped(gemma, row).skipped == {"TemplateError": 1}
    assert split(gemma, {**row, "messages": [user(text("one two")), answer()]})


def test_an_unknown_role_is_named(qwen):
    row = {"messages": [{"role": "narrator", "content": [text("once")]}, answer()], "images": []}
    with pytest.raises(chunker.RowFormatError, match="row 5: .*narrator"):
        split(qwen, row)
    assert split(qwen, {**row, "messages": [user(text("once")), answer()]})


def test_prefix_system_that_fills_half_a_window_is_refused_not_silently_bos(qwen):
    long_system = {"role": "system", "content": [text("you are a helpful assistant. " * 12)]}
    turns = [user(IMAGE, text("describe this picture")), answer("the quick brown fox " * 12),
             user(text("and?")), answer("a cat sits on a mat " * 12)]
    row = {"messages": [long_system, *turns], "images": [picture()]}
    with pytest.raises(chunker.PrefixError, match="row 5: prefix='system' would repeat the"):
        split(qwen, row, prefix="system", max_length=96)
    assert skipped(qwen, row, prefix="system", max_length=96).skipped == {"PrefixError": 1}
    short = {"role": "system", "content": [text("be brief")]}
    rows = split(qwen, {**row, "messages": [short, *turns]}, prefix="system", max_length=96)
    assert len(rows) >= 2
    # the reference: the system turn rendered alone and tokenized, which every later window must start with
    system = qwen.tokenizer(qwen.apply_chat_template([short], tokenize=False), add_special_tokens=False)["input_ids"]
    for w in rows[1:]:
        assert w["input_ids"][: len(system)].tolist() == system
        assert (w["labels"][: len(system)] == -100).all()


def test_a_processor_that_rewrites_the_text_is_refused_for_conversations_not_mislabelled():
    """PaliGemma's processor moves images first and puts BOS after them: character ranges located in the rendered
    template would land one token off. Refused by name; its twin, pre-tokenized rows with the processor's own
    labels (prompt + suffix), splits."""
    processor = build_processor("paligemma")
    row = {"messages": [user(IMAGE, text("describe")), answer()], "images": [picture()]}
    with pytest.raises(chunker.ConfigError, match="PaliGemmaProcessor rewrites the conversation text"):
        split(processor, row)
    enc = processor(text=["describe"], images=[[picture()]], suffix=["a cat sits on a mat"], return_tensors="np")
    rows = split(processor, {"input_ids": enc["input_ids"][0], "labels": enc["labels"][0], "images": [picture()]})
    supervised = [t for r in rows for t, lab in zip(r["input_ids"][1:], r["labels"][1:]) if lab != -100]
    assert processor.tokenizer.decode(supervised).startswith("a cat sits on a mat")
