"""Llama 3.2 Vision (Mllama, cross-attention) beyond the shared contract.

A window carries exactly the images whose `<|image|>` it holds, and the collator gives it the tensors
`MllamaProcessor` itself makes for that window's text and images: `cross_attention_mask`, `pixel_values`,
`aspect_ratio_ids`, `aspect_ratio_mask` (the reference is the processor's own output, called here on each window's
decoded text). A tiny real `MllamaForConditionalGeneration` trains on the collated windows. The model checks nothing
about images against the text, so the positive control measures what naive truncation silently does instead: the
images whose token is cut still run through the vision tower though no token's mask row names them, and the answers
after the cut are never trained.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np
import pytest
import torch
from PIL import Image
from test_families import reference_targets

import chunker
from chunker.collator import WindowCollator
from chunker.testing import build_model, build_processor

# windows of MAX_LENGTH hold each user turn with its answer; at TIGHT the splitter cuts between a turn and its answer,
# so answers land in windows without their image
MAX_LENGTH, TIGHT = 48, 40
# test family -> max_length of the windows its tiny model trains on (tools/families_matrix.py reads it)
MODELS = {"mllama": MAX_LENGTH}
MEDIA = ("cross_attention_mask", "pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")
# parts of the model that must learn: vision tower, projector, text self-attention, text cross-attention
PARTS = ("vision_model", "multi_modal_projector", r"language_model\.layers\.0\.", r"cross_attn\.")


@cache
def setup(max_length=MAX_LENGTH):
    """The processor, a tiny model, and a long conversation rendered by the real template: three user turns with
    four images (two back to back, one after the text of its turn) and long answers; its windows of `max_length`."""
    processor = build_processor("mllama")
    model = build_model("mllama", processor)
    rng = np.random.default_rng(0)
    sizes = [(56, 84), (64, 64), (40, 96), (72, 48)]  # (height, width): 4, 4, 3 and 4 tiles of 28 pixels
    imgs = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    answer = [{"type": "text", "text": "a cat sits on a mat next to a red ball. " * 2}]
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "compare them"}]},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": [{"type": "text", "text": "and this one?"}, {"type": "image"}]},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe this picture"}]},
        {"role": "assistant", "content": answer},
    ]
    row = {"messages": messages, "images": imgs}
    windows = chunker.WindowSplitter(processor, max_length=max_length).split_example(row, index=3)
    return processor, model, row, windows


def own_output(processor, ids, images, **kwargs):
    """The processor's output for a window: its decoded text and its images, as a user would call it (the text
    starts with `<|begin_of_text|>` already, so no second one is added)."""
    texts = [processor.tokenizer.decode(i) for i in ids]
    out = processor(text=texts, images=images if any(images) else None, add_special_tokens=False,
                    return_tensors="pt", **kwargs)
    for text_ids, made in zip(ids, out["input_ids"]):
        assert made[: len(text_ids)].tolist() == list(text_ids)  # the decoded text gives the window's very tokens
    return out


def positions(ids, token):
    return np.flatnonzero(np.asarray(ids) == token)


@pytest.mark.parametrize("max_length", [MAX_LENGTH, TIGHT])
def test_windows_carry_exactly_their_images_and_train_each_answer_token_once(max_length):
    processor, _, row, windows = setup(max_length)
    image = processor.image_token_id
    assert len(windows) >= 3
    carried = []
    for w in windows:
        assert len(w["input_ids"]) <= max_length
        assert len(w["images"]) == len(positions(w["input_ids"], image))
        carried += [next(k for k, im in enumerate(row["images"]) if im is own) for own in w["images"]]
    assert carried == list(range(len(row["images"])))
    trained = np.concatenate([np.asarray(w["labels"])[1:][np.asarray(w["labels"])[1:] != -100] for w in windows])
    np.testing.assert_array_equal(trained, reference_targets(processor, row["messages"], row["images"]))


@pytest.mark.parametrize("max_length", [MAX_LENGTH, TIGHT])
def test_each_collated_window_equals_the_processors_own_output_for_its_text_and_images(max_length):
    processor, _, _, windows = setup(max_length)
    collator = WindowCollator(processor)
    with_images = 0
    for w in windows:
        batch = collator([w])
        ref = own_output(processor, [w["input_ids"]], [list(w["images"])])
        for key in ("input_ids", "attention_mask", *MEDIA):
            if key in ref:
                assert torch.equal(batch[key], ref[key]), key
            else:
                assert key not in batch, key  # a window without images: text only, as the processor gives it
        with_images += "pixel_values" in ref
    assert with_images >= 2


def test_a_padded_batch_of_windows_equals_the_processors_batch():
    """Several windows with images in one batch: right padding, images padded per row, masks per row, all equal to
    the processor's own padded batch of those texts and images."""
    processor, _, _, windows = setup()
    chosen = [w for w in windows if len(w["images"])]
    assert len(chosen) >= 2 and len({len(w["images"]) for w in chosen}) >= 2
    batch = WindowCollator(processor)(chosen)
    ref = own_output(processor, [w["input_ids"] for w in chosen], [list(w["images"]) for w in chosen], padding=True)
    for key in ("input_ids", "attention_mask", *MEDIA):
        assert torch.equal(batch[key], ref[key]), key


def test_a_window_without_images_beside_one_with_images_attends_to_none():
    processor, _, _, windows = setup(TIGHT)
    text_only = next(w for w in windows if not len(w["images"]))
    pictured = next(w for w in windows if len(w["images"]))
    batch = WindowCollator(processor)([text_only, pictured])
    alone = own_output(processor, [pictured["input_ids"]], [list(pictured["images"])])
    n = len(pictured["input_ids"])
    assert not batch["cross_attention_mask"][0].any()
    assert torch.equal(batch["cross_attention_mask"][1, :n], alone["cross_attention_mask"][0])
    assert torch.equal(batch["pixel_values"][1], alone["pixel_values"][0])
    assert not batch["pixel_values"][0].any() and not batch["aspect_ratio_ids"][0].any()


@pytest.mark.parametrize("max_length,answers_see_images", [(MAX_LENGTH, True), (TIGHT, False)])
def test_a_windows_tokens_attend_to_its_own_images_only(max_length, answers_see_images):
    """The processor's rule on a window's own text: tokens before the window's first `<|image|>` attend to no image
    (their mask rows are empty), though in the whole conversation they attended to an earlier one, which the window
    does not carry. Where a window
    holds a user turn with its answer, every supervised token attends to an image as in the whole row; where the
    splitter cuts between them (TIGHT), the answers train without their image. Recorded here, stated in the README."""
    processor, _, row, windows = setup(max_length)
    text = processor.apply_chat_template(row["messages"], tokenize=False)
    whole = processor(text=[text], images=[row["images"]], add_special_tokens=False, return_tensors="pt")
    supervised_whole = int(whole["cross_attention_mask"][0].flatten(1).any(1)[1:].sum())
    collator = WindowCollator(processor)
    supervised, seeing = 0, 0
    for w in windows:
        mask = collator([w]).get("cross_attention_mask")
        attends = mask[0].flatten(1).any(1) if mask is not None else torch.zeros(len(w["input_ids"]), dtype=torch.bool)
        first = positions(w["input_ids"], processor.image_token_id)
        head = first[0] if len(first) else len(w["input_ids"])
        assert not attends[:head].any() and attends[head:].all()
        trains = torch.as_tensor(np.asarray(w["labels"]) != -100)
        supervised += int(trains.sum())
        seeing += int((trains & attends).sum())
    assert supervised_whole >= supervised  # in the whole row every answer token attends to an image
    assert (seeing == supervised) if answers_see_images else (seeing < supervised)


def test_pretokenized_rows_slice_the_processors_per_image_tensors_per_window():
    """A pre-tokenized row with the processor's tensors for it (without the row axis): each window carries the
    entries of exactly its images, equal to the processor's own output for that window."""
    processor, _, row, _ = setup()
    text = processor.apply_chat_template(row["messages"], tokenize=False)
    enc = processor(text=[text], images=[row["images"]], add_special_tokens=False, return_tensors="np")
    ids = enc["input_ids"][0]
    example = {"input_ids": ids, "labels": ids, **{k: enc[k][0] for k in MEDIA[1:]}}
    windows = chunker.WindowSplitter(processor, max_length=MAX_LENGTH).split_example(example, index=0)
    seen = 0
    for w in windows:
        n = len(positions(w["input_ids"], processor.image_token_id))
        assert np.asarray(w["pixel_values"]).shape[0] == n
        if n:
            ref = own_output(processor, [w["input_ids"]], [row["images"][seen: seen + n]])
            for key in MEDIA[1:]:
                np.testing.assert_array_equal(np.asarray(w[key]), ref[key][0].numpy())
            batch = WindowCollator(processor)([w])
            for key in MEDIA:
                assert torch.equal(batch[key], ref[key]), key
        seen += n
    assert seen == len(row["images"])


def test_pretokenized_tensors_with_the_processors_row_axis_are_refused_by_name():
    """The twin of the test above: the same tensors with the processor's row axis left on."""
    processor, _, row, _ = setup()
    text = processor.apply_chat_template(row["messages"], tokenize=False)
    enc = processor(text=[text], images=[row["images"]], add_special_tokens=False, return_tensors="np")
    ids = enc["input_ids"][0]
    example = {"input_ids": ids, "labels": ids, **{k: enc[k] for k in MEDIA[1:]}}
    with pytest.raises(chunker.PixelMismatchError, match=r"row 4.*6 dimensions.*carries 5.*pixel_values\[0\]"):
        chunker.WindowSplitter(processor, max_length=MAX_LENGTH).split_example(example, index=4)


def test_the_collator_refuses_window_tensors_with_the_processors_row_axis():
    """The twin is the pre-tokenized test above, whose windows carry the same tensors without that axis."""
    processor, _, _, windows = setup()
    w = next(w for w in windows if len(w["images"]))
    own = own_output(processor, [w["input_ids"]], [list(w["images"])])
    window = {"input_ids": w["input_ids"], "labels": w["labels"], **{k: own[k] for k in MEDIA[1:]}}
    with pytest.raises(chunker.PixelMismatchError, match=r"\(1, 2, 4, 3, 28, 28\) has 6 dimensions.*pixel_values\[0\]"):
        WindowCollator(processor)([window])
    batch = WindowCollator(processor)([{**window, **{k: own[k][0] for k in MEDIA[1:]}}])
    assert all(torch.equal(batch[k], own[k]) for k in MEDIA)


def test_counts_from_image_sizes_give_the_same_windows():
    processor, _, row, windows = setup()
    sizes = chunker.WindowSplitter(processor, max_length=MAX_LENGTH, image_tokens_from="sizes").split_example(row, 3)
    assert [w["input_ids"].tolist() for w in sizes] == [w["input_ids"].tolist() for w in windows]


def test_packed_mllama_windows_are_refused_and_unpacked_ones_collate():
    processor, _, _, windows = setup()
    a, b = [w for w in windows if len(w["images"])][:2]
    packed = {"input_ids": np.concatenate([a["input_ids"], b["input_ids"]]),
              "labels": np.concatenate([a["labels"], b["labels"]]),
              "images": [*a["images"], *b["images"]], "segment_lengths": [len(a["input_ids"]), len(b["input_ids"])]}
    with pytest.raises(chunker.ChunkerError, match="packed Mllama rows.*collate Mllama windows unpacked"):
        WindowCollator(processor)([packed])
    assert WindowCollator(processor)([a, b])["cross_attention_mask"].shape[:3] == (2, max(len(a["input_ids"]),
                                                                                        len(b["input_ids"])), 2)


def test_every_window_trains_the_tiny_model():
    processor, _, _, windows = setup()
    model = build_model("mllama", processor, seed=1)  # a model of its own: the others' stays untrained
    collator = WindowCollator(processor, pad_to_multiple_of=8)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trained = [w for w in windows if (np.asarray(w["labels"]) != -100).any()]
    assert len(trained) == len(windows)
    for w in trained:
        optimizer.zero_grad()
        out = model(**collator([w]))
        assert torch.isfinite(out.loss)
        out.loss.backward()
        optimizer.step()
    batch = collator(windows)  # all windows in one padded batch too
    assert batch["pixel_values"].shape[:2] == (len(windows), max(len(w["images"]) for w in windows))
    out = model(**batch)
    out.loss.backward()
    moved = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    for part in PARTS:
        assert any(re.search(part, name) for name in moved), f"no {part} parameter changed: {sorted(moved)[:8]}"


def test_naive_truncation_raises_nothing_but_drops_answers_and_orphans_the_cut_images():
    """Positive control. Cutting the same row at max_length (ids and the per-token mask, as TRL / Unsloth cut) runs
    without any error from the model: Mllama checks nothing about images against the text. What goes wrong is
    measured instead: the images whose `<|image|>` was cut still run through the vision tower, but no token's mask
    row names them, and the answer tokens past the cut never train. The windows of the same row name every image in
    some window's mask, train every answer token (test above), and give every image a gradient."""
    processor, model, row, windows = setup()
    text = processor.apply_chat_template(row["messages"], tokenize=False)
    enc = dict(processor(text=[text], images=[row["images"]], add_special_tokens=False, return_tensors="pt"))
    ids = enc["input_ids"][0]
    assert len(ids) > MAX_LENGTH
    cut = {k: (v[:, :MAX_LENGTH] if k in ("input_ids", "attention_mask", "cross_attention_mask") else v)
           for k, v in enc.items()}
    after = torch.as_tensor(positions(ids, processor.image_token_id) >= MAX_LENGTH)
    assert after.any() and not after.all()
    with torch.no_grad():
        assert torch.isfinite(model(**cut, labels=cut["input_ids"]).loss)  # no error from the model
    named = cut["cross_attention_mask"][0].any(-1).any(0)  # per image: does any token's mask row name it
    assert not named[after].any() and named[~after].all()
    reference = reference_targets(processor, row["messages"], row["images"])
    assert len(reference) > MAX_LENGTH  # more answer tokens than the cut row holds: those past the cut never train

    collator = WindowCollator(processor)
    for w in (w for w in windows if len(w["images"])):
        batch = collator([w])
        assert batch["cross_attention_mask"][0].any(-1).any(0).all()
        pixels = batch.pop("pixel_values").requires_grad_(True)
        model(**batch, pixel_values=pixels).loss.backward()
        assert (pixels.grad[0].flatten(1).abs().sum(1) > 0).all()
