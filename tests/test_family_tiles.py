"""Tile-grammar families (`chunker.families.tiles`): Aya Vision, Ovis2, Idefics2, with their real processors built offline.

Ovis2 runs the shared contract on conversations rendered by its checkpoint's real template (tests/test_families.py).
Aya Vision (no byte-exact public template found) and Idefics2 (its processor rewrites the text: a space after a closing
fake token, so answers located in the template cannot be carried onto its tokens) are proven here on rows the
processor itself tokenized: every window holds whole images with exactly their placeholder counts and pixels
(references: the processor on each image alone, its image processor on the window's images). Each family's real model
class with a tiny config trains on the collated windows, and naive truncation of the same row raises the model's own
error (the positive control); transformers 5.17's Idefics2 does not check, and the cut row trains there, silently on
the wrong image features.
"""

from __future__ import annotations

import inspect
import sys
from functools import cache

import numpy as np
import pytest
import torch
from model_checks import MISMATCH, assert_cut_raises, assert_trains, conversation, naive_cut, random_images

import chunker
from chunker.collator import WindowCollator
from chunker.families import adapter_for
from chunker.families.probe import check_grammar
from chunker.testing import FAMILIES_G, build_model, build_processor

# written families proven here on pre-tokenized rows (the README matrix reads it), and the rows' processors
WRITTEN = ("aya_vision", "idefics2")
PRETOKENIZED = (*WRITTEN, "idefics2_split")
# family -> max_length of its windows, for the tiny-model tests
# (at smaller lengths the tile spans fill whole windows: no supervised token follows an image, no vision gradient)
MODELS = {"ovis2": 96, "aria": 48, "aya_vision": 96, "idefics2": 48}
PARTS = {
    "ovis2": ("vision_tower", "language_model", "visual_embeddings_table"),
    "aya_vision": ("vision_tower", "language_model", "multi_modal_projector"),
    "aria": ("vision_tower", "language_model", "multi_modal_projector"),
    "idefics2": ("vision_model", "text_model", "connector"),
}
SIZES = ((40, 30), (20, 60), (50, 50))  # (height, width): one, several and a grid of tiles


def processor_of(name):
    if name == "idefics2_split":
        return build_processor("idefics2", do_image_splitting=True)
    return build_processor(name)


def images():
    return random_images(SIZES)


@cache
def row(name):
    """(processor, images, ids, the processor's tensors): the processor tokenizes the text itself, rendered by the real
    template where the checkpoint's is vendored."""
    processor, imgs = processor_of(name), images()
    if processor.chat_template:
        text = processor.apply_chat_template(conversation(len(imgs)), tokenize=False)
    else:
        text = "".join(f"describe this picture {processor.image_token} a cat sits on a mat next to a red ball. " for _ in imgs)
    enc = processor(text=[text], images=[imgs], return_tensors="np")
    tensors = {k: np.asarray(v) for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    return processor, imgs, np.asarray(enc["input_ids"])[0], tensors


def example(name):
    """A pre-tokenized row as a dataset holds it: ids, labels, images and the row's own pixel tensors."""
    _, imgs, ids, tensors = row(name)
    ex = {"input_ids": ids, "labels": ids, "images": imgs}
    if name.startswith("idefics2"):  # the processor stacks a row's blocks on a batch axis: the row holds its own
        ex.update(pixel_values=tensors["pixel_values"][0], pixel_attention_mask=tensors["pixel_attention_mask"][0])
    return ex


def own_count(processor, image, token_id):
    """Placeholders the processor itself gives one image alone (the reference count)."""
    enc = processor(text=[f"x {processor.image_token}"], images=[[image]], return_tensors="np")
    return int((np.asarray(enc["input_ids"])[0] == token_id).sum())


def test_idefics2_template_renders_the_tgi_reference():
    """The vendored template renders text-generation-inference's reference output for it (router/src/infer/
    chat_template.rs, `test_image_chat_templates`, written there from transformers' own rendering): hand-copied."""
    processor = build_processor("idefics2")
    text = lambda t: {"type": "text", "text": t}
    messages = [
        {"role": "system", "content": [text("You are a helpful assistant")]},
        {"role": "user", "content": [{"type": "image"}, text("Hello, please describe the above.")]},
        {"role": "assistant", "content": [text("Hi there")]},
        {"role": "user", "content": [{"type": "image"}, text("This is me, who are you")]},
        {"role": "assistant", "content": [text("   I am an assistant   ")]},
        {"role": "user", "content": [{"type": "image"}, text("Another question, what is this?")]},
    ]
    expected = (
        "System: You are a helpful assistant<end_of_utterance>\nUser:<image>Hello, please describe the above."
        "<end_of_utterance>\nAssistant: Hi there<end_of_utterance>\nUser:<image>This is me, who are you"
        "<end_of_utterance>\nAssistant:    I am an assistant   <end_of_utterance>\nUser:<image>Another question, what "
        "is this?<end_of_utterance>\nAssistant:"
    )
    assert processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected


@pytest.mark.parametrize("name", PRETOKENIZED)
def test_the_written_grammar_is_detected_and_matches_the_processor(name):
    processor = processor_of(name)
    adapter = adapter_for(processor)
    assert adapter.name == name.removesuffix("_split")
    check_grammar(adapter)
    from dataclasses import replace

    adapter.spec = replace(adapter.spec, image_token_id=processor.tokenizer("cat", add_special_tokens=False)["input_ids"][0])
    with pytest.raises(chunker.GrammarError, match=type(processor).__name__):
        check_grammar(adapter)


@pytest.mark.parametrize("name", PRETOKENIZED)
@pytest.mark.parametrize("max_length", [64, 128])
def test_pre_tokenized_windows_hold_whole_images_and_their_own_pixels(name, max_length):
    processor, imgs, _, _ = row(name)
    splitter = chunker.WindowSplitter(processor, max_length=max_length, train_on="all")
    image_id = splitter.spec.image_token_id
    counts = [own_count(processor, im, image_id) for im in imgs]
    assert len(set(counts)) > 1 or name.startswith("idefics2")  # the sizes give different tile counts
    if name.startswith("idefics2"):
        assert counts == [processor.image_seq_len * (5 if name.endswith("split") else 1)] * 3  # hand-checked
    windows = splitter.split_example(example(name), index=0)
    assert len(windows) >= 2
    collator = WindowCollator(processor)
    seen = []
    for w in windows:
        win = np.asarray(w["input_ids"])
        assert len(win) <= max_length
        order = [next(i for i, im in enumerate(imgs) if im is x) for x in w["images"]]
        assert int((win == image_id).sum()) == sum(counts[i] for i in order)
        if name == "aya_vision":  # every image whole: opened, its tiles, closed
            tok = processor.tokenizer
            opens = np.flatnonzero(win == tok.convert_tokens_to_ids(processor.start_of_img_token))
            closes = np.flatnonzero(win == tok.convert_tokens_to_ids(processor.end_of_img_token))
            assert len(opens) == len(closes) == len(order) and (opens < closes).all()
            assert [int((win[a:b] == image_id).sum()) for a, b in zip(opens, closes)] == [counts[i] for i in order]
        if name.startswith("idefics2"):  # the row's own pixel blocks of these images, in order
            blocks = counts[0] // processor.image_seq_len
            own = row(name)[3]["pixel_values"][0].reshape(len(imgs), blocks, *row(name)[3]["pixel_values"].shape[2:])
            np.testing.assert_array_equal(np.asarray(w["pixel_values"]).reshape(-1), own[order].reshape(-1))
        elif order:  # the collator makes the window's pixels as the image processor does for its images
            own = processor.image_processor([imgs[i] for i in order], return_tensors="pt")["pixel_values"]
            torch.testing.assert_close(collator([w])["pixel_values"], own, rtol=0, atol=0)
        seen += order
    assert sorted(set(seen)) == [0, 1, 2]


def test_idefics2_split_images_keep_their_crops_and_a_torn_row_is_refused():
    """With image splitting every image is five blocks (four crops, then the whole image) sharing fake tokens: a row
    whose blocks are not whole images is a named ImageCountError; the whole row splits."""
    processor, imgs, ids, _ = row("idefics2_split")
    splitter = chunker.WindowSplitter(processor, max_length=48, train_on="all")
    image_id = splitter.spec.image_token_id
    assert splitter.split_example({"input_ids": ids, "labels": ids, "images": imgs})
    last = int(np.flatnonzero(ids == image_id)[-1])
    torn = np.concatenate([ids[: last + 1 - processor.image_seq_len], ids[last + 1:]])  # drop the last block's tokens
    with pytest.raises(chunker.ImageCountError, match="not whole images of 5 blocks"):
        splitter.split_example({"input_ids": torn, "labels": torn, "images": imgs})


def test_idefics2_conversations_are_refused_by_name_and_pre_tokenized_rows_split():
    processor, imgs, _, _ = row("idefics2")
    splitter = chunker.WindowSplitter(processor, max_length=48)
    with pytest.raises(chunker.ConfigError, match="Idefics2Processor rewrites the conversation text"):
        splitter.split_example({"messages": conversation(3), "images": imgs})
    assert chunker.WindowSplitter(processor, max_length=48, train_on="all").split_example(example("idefics2"))


def test_ovis2_as_the_checkpoint_ships_it_splits_conversations():
    """Ovis2's processor reads its grids as arrays (`grids[i].tolist()`): the encoder's text check asks for arrays."""
    processor = build_processor("ovis2", return_tensors=None)
    rows = chunker.WindowSplitter(processor, max_length=64).split_example(
        {"messages": conversation(3), "images": images()})
    assert len(rows) >= 3


@cache
def trained_setup(family):
    processor = build_processor(family)
    model = build_model(family, processor)
    max_length = MODELS[family]
    _, imgs, ids, tensors = row(family)
    if family in FAMILIES_G:  # conversations rendered by the real template
        windows = chunker.WindowSplitter(processor, max_length=max_length).split_example(
            {"messages": conversation(len(imgs)), "images": imgs}, index=0)
    else:
        windows = chunker.WindowSplitter(processor, max_length=max_length, train_on="all").split_example(example(family))
        if family == "idefics2":  # the collator cannot make Idefics2 pixels from images yet: the rows carry theirs
            windows = [{k: v for k, v in w.items() if k != "images"} for w in windows]
    return processor, model, ids, tensors, windows


@pytest.mark.parametrize("family", list(MODELS))
def test_every_window_trains(family):
    processor, model, _, _, windows = trained_setup(family)
    assert len(windows) >= 3
    collator = WindowCollator(processor, pad_to_multiple_of=8)
    trained = [w for w in windows if (np.asarray(w["labels"]) != -100).any()]
    assert any(np.asarray(w.get("pixel_values", w.get("images", []))).size for w in trained)
    assert all(len(w["input_ids"]) <= MODELS[family] for w in trained)
    assert_trains(model, (collator([w]) for w in trained), PARTS[family])


@pytest.mark.parametrize("family", list(MODELS))
def test_naive_truncation_of_the_same_row_raises_the_models_error(family):
    _, model, ids, tensors, _ = trained_setup(family)
    whole = {"input_ids": torch.as_tensor(ids[None]), **{k: torch.as_tensor(v) for k, v in tensors.items()}}
    # transformers 5.17's Idefics2 scatters the features without a check: the cut row trains, silently wrong
    silent = MISMATCH not in inspect.getsource(sys.modules[type(model).__module__])
    assert_cut_raises(model, naive_cut(whole, MODELS[family], ("input_ids",)), whole, silent=silent)


def test_idefics2_windows_with_images_collate():
    """Idefics2Processor has its own __call__ (no `_process_images`): the collator runs its image processor."""
    processor, _, _, _, _ = trained_setup("idefics2")
    windows = chunker.WindowSplitter(processor, max_length=48, train_on="all").split_example(
        {k: v for k, v in example("idefics2").items() if not k.startswith("pixel")})
    assert WindowCollator(processor)(windows)["pixel_values"].shape[0] == len(windows)


def test_ovis2_token_counts_from_image_sizes_give_the_windows_of_pixels():
    """Ovis2's grid of each image comes from its size by the image processor's own rule: the windows of rows with
    images of many shapes (1×1 grids, wide and tall ones) equal, array for array, those made from the pixels."""
    from test_image_sizes import assert_same_windows
    from test_image_sizes import rows as size_rows

    processor = build_processor("ovis2")
    pixels = chunker.WindowSplitter(processor, image_tokens_from="pixels", max_length=96, overlap=8)
    sizes = chunker.WindowSplitter(processor, image_tokens_from="sizes", max_length=96, overlap=8)
    split = 0
    for index, one in enumerate(size_rows()):
        want = pixels.split_example(one, index=index)
        assert_same_windows(want, sizes.split_example(one, index=index))
        split += len(want) > 1
    assert split >= 2


def test_families_without_a_size_rule_refuse_sizes_by_name():
    processor = build_processor("idefics2")
    with pytest.raises(chunker.ConfigError, match="cannot give the idefics2 family's exact token counts: its processor "
                                                  "rewrites the text"):
        chunker.WindowSplitter(processor, image_tokens_from="sizes", max_length=64).split_example(
            {"messages": conversation(1), "images": images()[:1]})
    assert chunker.WindowSplitter(processor, max_length=48, train_on="all").split_example(example("idefics2"))
