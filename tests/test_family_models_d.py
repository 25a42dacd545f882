"""Tiny real models of the `chunker.testing.families_d` families train on collated windows; naive truncation breaks them.

For each family of `MODELS`: every window of a long multi-image conversation (rendered by the checkpoint's real
template), collated by `WindowCollator`, runs forward + backward with a finite loss, and training moves parameters of
the text model, the projector and the vision tower; cutting the same row at max_length as TRL / Unsloth do raises the
model's own mismatch error while the whole row runs (the positive control).
"""

from __future__ import annotations

import inspect
import re
from functools import cache

import numpy as np
import pytest
import torch
from PIL import Image

from chunker import WindowSplitter
from chunker.collator import WindowCollator
from chunker.testing import build_model, build_processor

# test family -> max_length of its windows
MODELS = {"paddleocr_vl": 100, "glm4v": 64}
TRUNCATE = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
PARTS = ("visual|vision", "language_model|text_model", "projector|merger|connector")


@cache
def setup(family):
    processor = build_processor(family)
    model = build_model(family, processor)
    rng = np.random.default_rng(0)
    sizes = [(56, 84), (64, 64), (40, 96), (72, 48)]
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    messages = []
    for _ in images:
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe this picture"}]})
        answer = "a cat sits on a mat next to a red ball. " * 2
        # GLM-4.1V's template prints an assistant turn's content as is: its users give strings
        messages.append({"role": "assistant", "content": answer if family == "glm4v" else [{"type": "text", "text": answer}]})
    row = {"messages": messages, "images": images}
    windows = WindowSplitter(processor, max_length=MODELS[family]).split_example(row, index=3)
    return processor, model, row, windows


@pytest.mark.parametrize("family", list(MODELS))
def test_every_window_trains(family):
    processor, model, row, windows = setup(family)
    assert len(windows) >= 3
    assert sum(len(w["images"]) for w in windows) == len(row["images"])
    collator = WindowCollator(processor, pad_to_multiple_of=8)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    trained = [w for w in windows if (np.asarray(w["labels"]) != -100).any()]
    assert len(trained) >= len(windows) - 1 and any(w["images"] for w in trained)
    for w in trained:
        assert len(w["input_ids"]) <= MODELS[family]
        optimizer.zero_grad()
        out = model(**collator([w]))
        assert torch.isfinite(out.loss)
        out.loss.backward()
        optimizer.step()
    moved = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    for part in PARTS:
        assert any(re.search(part, name) for name in moved), f"no {part} parameter changed: {sorted(moved)[:8]}"


@pytest.mark.parametrize("family", list(MODELS))
def test_naive_truncation_of_the_same_row_raises_the_models_error(family):
    processor, model, row, _ = setup(family)
    max_length = MODELS[family]
    text = processor.apply_chat_template(row["messages"], tokenize=False)
    enc = dict(processor(text=[text], images=[row["images"]], return_tensors="pt"))
    takes = inspect.signature(model.forward).parameters
    enc = {k: v for k, v in enc.items() if k in takes}
    assert enc["input_ids"].shape[1] > max_length
    cut = {k: (v[:, :max_length] if k in TRUNCATE else v) for k, v in enc.items()}
    with torch.no_grad():
        assert torch.isfinite(model(**enc, labels=enc["input_ids"]).loss)  # the whole row is fine
        with pytest.raises(ValueError, match="Image features and image tokens do not match"):
            model(**cut)
