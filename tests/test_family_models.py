"""Tiny real models of the families added for issue 9 train on collated windows; naive truncation breaks them.

One line per family in `MODELS` (the families of `tests/test_collator_models.py` are proven there). For each:
every window of a long multi-image conversation, collated by `WindowCollator`, runs forward + backward with a
finite loss and training moves parameters of the text model, the projector and the vision tower; cutting the same
row at max_length as TRL / Unsloth do raises the model's own mismatch error (the positive control).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from model_checks import assert_cut_raises, assert_trains, conversation, forward_inputs, naive_cut, random_images

from chunker import WindowSplitter
from chunker.collator import WindowCollator, model_media_keys
from chunker.testing import build_model, build_processor

# test family -> (max_length, model inputs the collator must hand on for the model to run)
MODELS = {
    "gemma4": (100, ("image_position_ids",)),
    "llava_next_video": (160, ()),
}
PARTS = ("vision", "language_model|text_model", "embed_vision|projector|connector")


def collator_gap(family):
    """Model inputs of `family` the collator does not hand on yet (`chunker.collator.model_media_keys`)."""
    return [k for k in MODELS[family][1] if k not in model_media_keys()]


def needs_collator(family):
    gap = collator_gap(family)
    return pytest.param(family, marks=pytest.mark.xfail(
        bool(gap), strict=True, reason=f"chunker.collator.model_media_keys() lacks {gap}: the model gets no such input"))


@cache
def setup(family):
    processor = build_processor(family)
    model = build_model(family, processor)
    images = random_images()
    row = {"messages": conversation(len(images)), "images": images}
    max_length = MODELS[family][0]
    windows = WindowSplitter(processor, max_length=max_length).split_example(row, index=3)
    return processor, model, row, windows, max_length


@pytest.mark.parametrize("family", [needs_collator(f) for f in MODELS])
def test_every_window_trains(family):
    processor, model, row, windows, max_length = setup(family)
    assert len(windows) >= 3
    assert sum(len(w["images"]) for w in windows) == len(row["images"])
    collator = WindowCollator(processor, pad_to_multiple_of=8)
    trained = [w for w in windows if (np.asarray(w["labels"]) != -100).any()]  # no target: a NaN mean loss
    assert len(trained) >= len(windows) - 1 and any(w["images"] for w in trained)
    assert all(len(w["input_ids"]) <= max_length for w in trained)
    assert_trains(model, (collator([w]) for w in trained), PARTS)


@pytest.mark.parametrize("family", list(MODELS))
def test_naive_truncation_of_the_same_row_raises_the_models_error(family):
    processor, model, row, _, max_length = setup(family)
    text = processor.apply_chat_template(row["messages"], tokenize=False)
    whole = forward_inputs(model, processor(text=[text], images=[row["images"]], return_tensors="pt"))
    assert_cut_raises(model, naive_cut(whole, max_length), whole)
