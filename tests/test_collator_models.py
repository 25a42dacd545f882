"""Proof on real model classes (tiny random configs, CPU): split windows collate into batches that train.

For every family: each window of a long multi-image conversation runs forward + backward with a finite
loss; naive truncation of the same conversation at max_length raises the model's own mismatch error
(the positive control); images moved to the wrong rows with equal totals pass the model's batch-wide
check but are caught by ours; every row of a batch computes the same logits (and, for Qwen, the same
rope positions) as its window alone. For Qwen2-VL: two images of one row in the wrong order train
silently in the model (features scattered into the wrong spans) and only our per-item check refuses them.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np
import pytest
import torch
from PIL import Image

from chunker import ImageTokenMismatchError, WindowSplitter
from chunker.collator import WindowCollator
from chunker.testing import build_model, build_processor

FAMILIES = ["gemma3", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "llava_next", "idefics3", "internvl",
            "pixtral", "mistral3"]
MAX_LENGTH = {"idefics3": 160, "llava_next": 160}
TYPE_IDS = {"gemma3": "token_type_ids", "qwen2_vl": "mm_token_type_ids", "qwen2_5_vl": "mm_token_type_ids",
            "qwen3_vl": "mm_token_type_ids"}
TRUNCATE = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")


@cache
def _setup(family):
    processor = build_processor(family)
    model = build_model(family, processor)
    rng = np.random.default_rng(0)
    sizes = [(56, 84), (64, 64), (40, 96), (72, 48), (48, 48)]
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    messages = []
    for _ in images:
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe this picture in detail " * 2}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": "a cat sits on a mat next to a red ball. " * 2}]})
    row = {"messages": messages, "images": images}
    max_length = MAX_LENGTH.get(family, 100)
    windows = WindowSplitter(processor, max_length=max_length).split_example(row, index=3)
    return processor, model, row, windows, max_length


@pytest.mark.parametrize("family", FAMILIES)
def test_every_window_trains_with_a_finite_loss(family):
    processor, model, row, windows, max_length = _setup(family)
    assert len(windows) >= 3
    assert sum(len(w["images"]) for w in windows) == len(row["images"])
    collator = WindowCollator(processor, pad_to_multiple_of=8)
    model.train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reached = set()
    for w in windows:
        assert len(w["input_ids"]) <= max_length
        assert (np.asarray(w["labels"]) != -100).any(), "a window with nothing to learn has a NaN mean loss"
        optimizer.zero_grad()
        out = model(**collator([w]))
        assert torch.isfinite(out.loss)
        out.loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        reached |= {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().max() > 1e-6}
        optimizer.step()
    # training moved every parameter the loss reaches, in the text model, the projector and the vision tower (a
    # finite loss alone proves little; parameters a family never uses, e.g. SigLIP's pooling head, get no gradient)
    moved = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert reached <= moved, sorted(reached - moved)[:5]
    for part in ("vision|visual", "language_model|text_model", "projector|connector|mlp1|merger"):
        assert any(re.search(part, name) for name in moved), f"no {part} parameter changed: {sorted(moved)[:8]}"


@pytest.mark.parametrize("family", FAMILIES)
def test_naive_truncation_of_the_same_row_fails_in_the_model_and_in_our_check(family):
    """Positive control: what TRL/Unsloth do (cut input_ids at max_length, keep every image) is wrong data.

    The model raises its own mismatch error, except Idefics3 in transformers <= 5.17, which has no check and
    silently scatters the first features into the surviving tokens; our collator refuses the row either way.
    """
    processor, model, row, _, max_length = _setup(family)
    text = processor.apply_chat_template(row["messages"], tokenize=False)
    enc = processor(text=[text], images=[row["images"]], return_tensors="pt")
    assert enc["input_ids"].shape[1] > max_length
    cut = {k: (v[:, :max_length] if k in TRUNCATE else v) for k, v in enc.items()}
    with torch.no_grad():
        model(**dict(enc))  # the whole row is fine
        try:
            model(**cut)
        except (ValueError, RuntimeError, IndexError) as exc:
            assert "match" in str(exc), str(exc)
        else:
            assert family == "idefics3" and _version() < (5, 18), "the model took a truncated row silently"
    truncated = {k: v[0, :max_length] for k, v in cut.items() if k in TRUNCATE}
    truncated.update(labels=truncated["input_ids"], images=row["images"], source_index=3, window_index=0)
    with pytest.raises(ImageTokenMismatchError, match="source_index 3, window_index 0"):
        WindowCollator(processor)([truncated])


def _version():
    import transformers

    return tuple(int(x) for x in transformers.__version__.split(".")[:2])


def _moved(windows):
    """Window k gets window k+1's first image: per-row counts break, batch totals and image order do not."""
    k = next(i for i in range(len(windows) - 1) if windows[i + 1]["images"])
    a, b = dict(windows[k]), dict(windows[k + 1])
    a["images"] = list(a["images"]) + [b["images"][0]]
    b["images"] = list(b["images"])[1:]
    return [a, b], (a["source_index"], a["window_index"])


@pytest.mark.parametrize("family", FAMILIES)
def test_images_in_the_wrong_rows_pass_the_models_check_but_not_ours(family):
    processor, model, _, windows, _ = _setup(family)
    rows, first_bad = _moved(windows)
    unchecked = WindowCollator(processor, check=False)(rows)
    with torch.no_grad():
        out = model(**unchecked)  # the model's batch-wide check cannot see it
    assert torch.isfinite(out.loss)
    with pytest.raises(ImageTokenMismatchError) as info:
        WindowCollator(processor)(rows)
    assert (info.value.bad_rows[0]["source_index"], info.value.bad_rows[0]["window_index"]) == first_bad
    assert len(info.value.bad_rows) == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_type_ids_and_positions_match_each_window_on_its_own(family):
    """Gemma 3 gets token_type_ids, Qwen mm_token_type_ids; each batch row computes what its window alone does."""
    processor, model, _, windows, _ = _setup(family)
    collator = WindowCollator(processor, pad_to_multiple_of=8)
    batch = collator(windows)
    column = TYPE_IDS.get(family)
    for other in ("token_type_ids", "mm_token_type_ids"):
        assert (other in batch) == (other == column)
    if column:
        image_id = collator.spec.image_token_id
        assert torch.equal(batch[column].bool(), batch["input_ids"] == image_id)
    model.eval()
    with torch.no_grad():
        together = model(**batch).logits
        for r, w in enumerate(windows):
            alone_batch = collator([w])
            n = len(w["input_ids"])
            alone = model(**alone_batch).logits
            assert torch.allclose(together[r, :n], alone[0, :n], atol=1e-4), f"row {r}"
            if column == "mm_token_type_ids":
                pos_batch, _ = model.model.get_rope_index(
                    batch["input_ids"], batch["mm_token_type_ids"], image_grid_thw=batch.get("image_grid_thw"),
                    attention_mask=batch["attention_mask"])
                pos_alone, _ = model.model.get_rope_index(
                    alone_batch["input_ids"], alone_batch["mm_token_type_ids"],
                    image_grid_thw=alone_batch.get("image_grid_thw"), attention_mask=alone_batch["attention_mask"])
                assert torch.equal(pos_batch[:, r, :n], pos_alone[:, 0, :n])
    model.train()


def test_two_images_swapped_within_a_row_train_silently_but_our_check_refuses_them():
    """Qwen2-VL: the row's two images (4 and 5 tokens) in the wrong order. Totals agree, so the model trains
    on it without a word (the positive control: only a per-item check can see it); our collator refuses it;
    the right order trains and changes every parameter."""
    processor = build_processor("qwen2_vl")
    model = build_model("qwen2_vl", processor)
    rng = np.random.default_rng(4)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(64, 64), (32, 128)]]
    messages = []
    for _ in images:
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe this picture"}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": "a cat sits on a mat"}]})
    (row,) = WindowSplitter(processor, max_length=4096).split_example({"messages": messages, "images": images}, index=5)
    swapped = {**row, "images": list(row["images"])[::-1]}

    unchecked = WindowCollator(processor, check=False)([swapped])
    merge = processor.image_processor.merge_size ** 2
    assert (unchecked["image_grid_thw"].prod(-1) // merge).tolist() == [5, 4]  # the text holds spans of 4, then 5
    model.train()
    model.zero_grad()
    out = model(**unchecked)  # no error: the model compares batch totals only
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    with pytest.raises(ImageTokenMismatchError, match="image 0: 4 tokens [(]its media need 5[)]; image 1: 5 tokens"):
        WindowCollator(processor)([swapped])

    batch = WindowCollator(processor)([row])
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    unchanged = [name for (name, p), b in zip(model.named_parameters(), before) if torch.equal(p.detach(), b)]
    assert not unchanged, unchanged
