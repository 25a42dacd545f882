"""Tiny real models of the `chunker.testing.families_d` families train on collated windows; naive truncation breaks them.

For each family of `MODELS`: every window of a long multi-image conversation (rendered by the checkpoint's real
template), collated by `WindowCollator`, runs forward + backward with a finite loss, and training moves parameters of
the text model, the projector and the vision tower; cutting the same row at max_length as TRL / Unsloth do raises the
model's own mismatch error while the whole row runs (the positive control).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from model_checks import assert_cut_raises, assert_trains, conversation, forward_inputs, naive_cut, random_images

from chunker import WindowSplitter
from chunker.collator import WindowCollator
from chunker.testing import build_model, build_processor

# test family -> max_length of its windows
MODELS = {"paddleocr_vl": 100, "glm4v": 64}
PARTS = ("visual|vision", "language_model|text_model", "projector|merger|connector")


@cache
def setup(family):
    processor = build_processor(family)
    model = build_model(family, processor)
    images = random_images()
    # GLM-4.1V's template prints an assistant turn's content as is: its users give strings
    row = {"messages": conversation(len(images), answer_as_string=family == "glm4v"), "images": images}
    windows = WindowSplitter(processor, max_length=MODELS[family]).split_example(row, index=3)
    return processor, model, row, windows


@pytest.mark.parametrize("family", list(MODELS))
def test_every_window_trains(family):
    processor, model, row, windows = setup(family)
    assert len(windows) >= 3
    assert sum(len(w["images"]) for w in windows) == len(row["images"])
    collator = WindowCollator(processor, pad_to_multiple_of=8)
    trained = [w for w in windows if (np.asarray(w["labels"]) != -100).any()]
    assert len(trained) >= len(windows) - 1 and any(w["images"] for w in trained)
    assert all(len(w["input_ids"]) <= MODELS[family] for w in trained)
    assert_trains(model, (collator([w]) for w in trained), PARTS)


@pytest.mark.parametrize("family", list(MODELS))
def test_naive_truncation_of_the_same_row_raises_the_models_error(family):
    processor, model, row, _ = setup(family)
    text = processor.apply_chat_template(row["messages"], tokenize=False)
    whole = forward_inputs(model, processor(text=[text], images=[row["images"]], return_tensors="pt"))
    assert_cut_raises(model, naive_cut(whole, MODELS[family]), whole)
