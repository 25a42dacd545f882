"""The tiny-model checks the family tests share: training on collated windows moves the parameters of every named
part of the model, and the same row cut naively at max_length (as TRL / Unsloth cut it) raises the model's own error
while the whole row runs (the positive control).

A helper module the test modules import (`tests/` is on sys.path, see conftest.py); it holds no tests.
"""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
import torch
from PIL import Image

MISMATCH = "Image features and image tokens do not match"
# the per-token inputs a naive cut shortens; every media tensor is kept whole
TRUNCATE = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
# (height, width) of the images of the long conversations the tiny models train on
SIZES = ((56, 84), (64, 64), (40, 96), (72, 48))
ANSWER = "a cat sits on a mat next to a red ball. " * 2


def random_images(sizes=SIZES, seed: int = 0) -> list:
    """RGB images of random pixels, one per (height, width) in `sizes`, drawn under `seed`."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def conversation(n: int, question: str = "describe this picture", answer: str = ANSWER,
                 answer_as_string: bool = False) -> list:
    """`n` user turns of one image and `question`, each answered by `answer` (a plain string where the template prints
    an assistant turn's content as is, else one text part)."""
    reply = answer if answer_as_string else [{"type": "text", "text": answer}]
    messages = []
    for _ in range(n):
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]})
        messages.append({"role": "assistant", "content": reply})
    return messages


def assert_trains(model, batches, parts) -> None:
    """Train `model` with SGD on each batch of `batches` in turn (forward, finite loss, backward, step), then assert
    that for each regex of `parts` some parameter whose name it matches changed."""
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for batch in batches:
        optimizer.zero_grad()
        loss = model(**batch).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    moved = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    for part in parts:
        assert any(re.search(part, name) for name in moved), f"no {part} parameter changed: {sorted(moved)[:8]}"


def forward_inputs(model, encoding) -> dict:
    """The tensors of a processor's `encoding` that `model.forward` takes."""
    takes = inspect.signature(model.forward).parameters
    return {k: torch.as_tensor(v) for k, v in encoding.items() if k in takes}


def naive_cut(whole: dict, max_length: int, keys=TRUNCATE) -> dict:
    """`whole` (a row longer than `max_length`) with its `keys` cut at `max_length`, every other tensor kept."""
    assert whole["input_ids"].shape[1] > max_length
    return {k: (v[:, :max_length] if k in keys else v) for k, v in whole.items()}


def assert_cut_raises(model, cut: dict, whole: dict | None = None, match: str = MISMATCH, silent: bool = False):
    """`model` on the `cut` row raises its own ValueError matching `match`; the `whole` row (when given) runs with a
    finite loss. `silent`: the model checks nothing, so the cut row runs (a finite loss) instead."""
    with torch.no_grad():
        if whole is not None:
            assert torch.isfinite(model(**whole, labels=whole["input_ids"]).loss)  # the whole row is fine
        if silent:
            assert torch.isfinite(model(**cut, labels=cut["input_ids"]).loss)
            return
        with pytest.raises(ValueError, match=match):
            model(**cut)


def assert_loss_falls(model, batch: dict, steps: int = 4, lr: float = 5e-3) -> None:
    """Train `model` on one collated `batch` for `steps` AdamW steps: every loss is finite and the last is below the
    first (the batch reaches the loss and the gradients reach the parameters)."""
    import math

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        assert math.isfinite(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
