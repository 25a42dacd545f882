"""Proof on real tiny models in float64: packed windows train exactly like the same windows one by one.

For each family, a long multi-image conversation is split into windows; the windows go through `pack_windows` (a
real `datasets.Dataset`) into packed rows, which `WindowCollator` collates. The summed token loss of the packed
batch (cross-entropy of the float64 logits, shifted by one as the models' own loss does; their loss function
upcasts to float32 only) and the gradient of every parameter must equal the sums over
the windows run one by one, to a relative 1e-8. The positive control: the same windows concatenated plainly (one
row, positions running on, no per-window labels) must fail the same comparison, so the test can fail.
"""

from __future__ import annotations

from functools import cache

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import chunker
from chunker import WindowSplitter
from chunker.collator import WindowCollator
from chunker.testing import build_model, build_processor

FAMILIES = ["gemma3", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "idefics3", "internvl"]
MAX_LENGTH = {"idefics3": 160}
RTOL = 1e-8
# Gemma3RMSNorm computes in float32 whatever the model's dtype (`self._norm(x.float())`, `self.weight.float()`), so
# every activation after a norm is rounded to float32: two layouts that sum the same float64 numbers in another
# order (attention over a longer row) can land one float32 ulp apart (6e-8 relative) there. Its loss still agrees
# to 1e-8; its gradients are compared at 1e-6, still four orders of magnitude below what plain concatenation gives.
FLOAT32_INSIDE = {"gemma3": 1e-6}


@cache
def _setup(family):
    processor = build_processor(family)
    model = build_model(family, processor).double()
    model.config.use_cache = False
    rng = np.random.default_rng(1)
    sizes = [(56, 84), (64, 64), (40, 96), (72, 48), (48, 48)]
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    messages = []
    for k, _ in enumerate(images):
        messages.append({"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": f"describe picture {k} in detail"}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": "a cat sits on a mat. " * (k + 1)}]})
    max_length = MAX_LENGTH.get(family, 100)
    windows = WindowSplitter(processor, max_length=max_length).split_example({"messages": messages, "images": images},
                                                                           index=7)
    return processor, model, windows, max_length


def _double(batch):
    return {k: v.double() if isinstance(v, torch.Tensor) and torch.is_floating_point(v) else v for k, v in batch.items()}


def _loss_and_grads(model, batches):
    """Summed token loss over `batches` (labels shifted by one, -100 ignored: the models' own rule, in float64)
    and the summed gradient of every parameter."""
    model.zero_grad()
    total = 0.0
    for batch in batches:
        batch = _double(batch)
        labels = batch.pop("labels")
        logits = model(**batch).logits
        assert logits.dtype == torch.float64
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
        loss.backward()
        total += float(loss.detach())
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return total, grads


def _close(a, b, family=None) -> tuple[bool, str]:
    (la, ga), (lb, gb) = a, b
    if abs(la - lb) > RTOL * abs(lb):
        return False, f"loss {la!r} vs {lb!r}"
    if ga.keys() != gb.keys():
        return False, f"gradients of other parameters: {sorted(ga.keys() ^ gb.keys())[:4]}"
    # a gradient that is zero in exact arithmetic (a key bias under softmax) is float noise: measured against
    # a millionth of the largest gradient instead of its own size
    floor = 1e-6 * max(float(g.abs().max()) for g in gb.values())
    for name in gb:
        scale = float(gb[name].abs().max())
        rtol = FLOAT32_INSIDE.get(family, RTOL)
        if float((ga[name] - gb[name]).abs().max()) > rtol * max(scale, floor):
            return False, f"gradient of {name}"
    return True, ""


def _packed_rows(windows, max_length):
    ds = datasets.Dataset.from_list([{k: w[k] for k in w if k != "images"} for w in windows])
    packed = chunker.pack_windows(ds, max_length=max_length)
    rows = packed.to_list()
    # images are kept as PIL objects here (Dataset.from_list of a PIL image goes through the Image feature too,
    # but the proof compares the very same pixels): each packed row takes its windows' images in order
    by_window = {(w["source_index"], w["window_index"]): list(w["images"]) for w in windows}
    for row in rows:
        row["images"] = [im for s, k in zip(row["source_index"], row["window_index"]) for im in by_window[s, k]]
    return rows


def _gemma3_overlay_remapped() -> bool:
    from transformers import masking_utils

    return hasattr(masking_utils, "remap_positions_for_packed_sequence")


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_windows_train_exactly_like_the_windows_one_by_one(family):
    processor, model, windows, max_length = _setup(family)
    assert len(windows) >= 3
    collator = WindowCollator(processor, model=model)
    model.train()
    alone = _loss_and_grads(model, [collator([w]) for w in windows])

    rows = _packed_rows(windows, 2 * max_length)
    assert len(rows) < len(windows) and all(len(r["segment_lengths"]) >= 1 for r in rows)
    assert sorted(k for r in rows for k in r["window_index"]) == [w["window_index"] for w in windows]
    if family == "gemma3" and _gemma3_overlay_remapped():
        with pytest.raises(chunker.ConfigError, match="image-block overlay at the wrong positions"):
            collator(rows)
        pytest.skip("this transformers builds Gemma 3's packed sliding masks wrong (see the Gemma3 adapter's "
                    "position_ids hook): the collator refuses packed rows with images after a row's first window")
    packed_batch = collator(rows)
    assert "attention_mask" not in packed_batch and "position_ids" in packed_batch
    ok, why = _close(_loss_and_grads(model, [packed_batch]), alone, family)
    assert ok, f"packed rows (padded batch): {why}"

    flat = WindowCollator(processor, model=model, padding_free=True)(rows)
    assert flat["input_ids"].shape == (1, sum(len(w["input_ids"]) for w in windows))
    ok, why = _close(_loss_and_grads(model, [flat]), alone, family)
    assert ok, f"padding-free: {why}"

    # positive control: the same windows concatenated plainly into one row must not train like them
    plain = {"input_ids": [t for w in windows for t in w["input_ids"]],
             "labels": [t for w in windows for t in w["labels"]],
             "images": [im for w in windows for im in w["images"]]}
    column = collator.spec.type_ids_column
    if column:
        plain[column] = [t for w in windows for t in w[column]]
    ok, _ = _close(_loss_and_grads(model, [WindowCollator(processor)([plain])]), alone, family)
    assert not ok, "plain concatenation trained like the windows: the comparison cannot fail"
