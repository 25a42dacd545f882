"""Families no adapter writes, learned from their real processors alone (`chunker.families.learned`): Janus, Gemma 3n.

Janus's processor expands each `<image_placeholder>` into `<begin_of_image> <image_placeholder>×N <end_of_image>`,
Gemma 3n's each `<image_soft_token>` into `\n\n<start_of_image> <image_soft_token>×N <end_of_image>\n\n`; nothing in
chunker names either. Their rows are pre-tokenized by the processor itself (no chat template of these checkpoints is
vendored, and pre-tokenized rows need none): every window holds whole spans and exactly their images' pixels
(reference: the processor on those images), and the real model class with a tiny config trains on the collated
windows while naive truncation of the same row raises its own error (the positive control). Gemma 3n's audio grammar is
learned as well (`chunker.families.audio`); audio tokens whose grammar cannot be learned are refused by name, never cut.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from model_checks import assert_cut_raises, assert_trains, random_images

import chunker
from chunker.collator import WindowCollator
from chunker.families import adapter_for
from chunker.families.learned import Learned
from chunker.testing import LEARNED, build_model, build_processor

MAX_LENGTH = 48
# families whose model class builds from a tiny config here (Gemma 3n's vision tower is a timm MobileNetV5: none)
MODELS = ("janus",)
# the checkpoint's token names (open, close, placeholder) and where its processor keeps N, read off its source
EXPECTED = {
    "janus": ("<begin_of_image>", "<end_of_image>", "<image_placeholder>", "num_image_tokens"),
    "gemma3n": ("<start_of_image>", "<end_of_image>", "<image_soft_token>", "image_seq_length"),
}


@cache
def setup(family):
    processor = build_processor(family)
    images = random_images(((40, 30), (20, 60), (50, 50)))
    token = processor.image_token
    text = "".join(f"describe this picture {token} a cat sits on a mat next to a red ball. " for _ in images)
    enc = processor(text=[text], images=[images], return_tensors="np")
    ids = np.asarray(enc["input_ids"])[0]
    return processor, images, ids, np.asarray(enc["pixel_values"])


@pytest.mark.parametrize("family", LEARNED)
def test_the_grammar_is_learned_from_the_processor(family):
    processor, _, ids, _ = setup(family)
    adapter = adapter_for(processor)
    tok = processor.tokenizer
    assert isinstance(adapter, Learned) and adapter.name == family
    spec = adapter.spec
    open_, close, image, count = EXPECTED[family]
    assert (spec.open_ids, spec.close_ids, spec.image_token_id) == (
        (tok.convert_tokens_to_ids(open_),), (tok.convert_tokens_to_ids(close),), tok.convert_tokens_to_ids(image))
    assert spec.tokens_per_image == getattr(processor, count) and spec.bos_id == tok.bos_token_id == ids[0]


@pytest.mark.parametrize("family", LEARNED)
def test_pre_tokenized_windows_hold_whole_spans_and_their_own_pixels(family):
    processor, images, ids, pixels = setup(family)
    splitter = chunker.WindowSplitter(processor, max_length=MAX_LENGTH, train_on="all")
    rows = splitter.split_example({"input_ids": ids, "labels": ids, "images": images, "pixel_values": pixels})
    assert len(rows) >= 3
    open_id = splitter.spec.open_ids[0]
    n = getattr(processor, EXPECTED[family][3])
    seen = []
    for row in rows:
        win = np.asarray(row["input_ids"])
        assert len(win) <= MAX_LENGTH
        starts = np.flatnonzero(win == open_id)  # every span whole: open, N placeholders, close (counted here)
        assert all(win[s + n + 1] == splitter.spec.close_ids[0] for s in starts)
        assert int((win == splitter.spec.image_token_id).sum()) == n * len(starts) == n * len(row["images"])
        if len(row["images"]):
            own = processor.image_processor(list(row["images"]), return_tensors="np")["pixel_values"]
            np.testing.assert_array_equal(np.asarray(row["pixel_values"]), own)
        seen += [next(i for i, im in enumerate(images) if im is w) for w in row["images"]]
    assert sorted(set(seen)) == [0, 1, 2]


@pytest.mark.parametrize("family", MODELS)
def test_the_tiny_model_trains_on_windows_and_naive_truncation_fails(family):
    processor, images, ids, pixels = setup(family)
    model = build_model(family, processor)
    rows = chunker.WindowSplitter(processor, max_length=MAX_LENGTH, train_on="all").split_example(
        {"input_ids": ids, "labels": ids, "images": images})
    batch = WindowCollator(processor)(rows)
    assert_trains(model, [batch, batch], ("vision_model", "language_model", "aligner"))
    cut = {"input_ids": torch.as_tensor(ids[None, :MAX_LENGTH]), "pixel_values": torch.as_tensor(pixels)}
    assert_cut_raises(model, cut)


def test_gemma3n_audio_is_learned_and_a_row_without_its_audio_is_refused_by_name():
    """Gemma 3n's audio grammar is learned too (`<start_of_audio> <audio_soft_token>×8 <end_of_audio>`, 8 per item
    whatever its length: the processor's `audio_seq_length`): a row holding an audio span without its audio is a named
    ImageCountError; its twin with the audio splits, the span whole in one window."""
    processor, images, ids, _ = setup("gemma3n")
    tok = processor.tokenizer
    spec = adapter_for(processor).spec
    assert (spec.audio_token_id, spec.audio_open_ids, spec.audio_close_ids) == (
        tok.convert_tokens_to_ids("<audio_soft_token>"), (tok.convert_tokens_to_ids("<start_of_audio>"),),
        (tok.convert_tokens_to_ids("<end_of_audio>"),))
    assert spec.extra["audio_count"] == {"rule": "fixed", "tokens": processor.audio_seq_length}
    audio = tok.convert_tokens_to_ids(["<start_of_audio>"] + ["<audio_soft_token>"] * 8 + ["<end_of_audio>"])
    splitter = chunker.WindowSplitter(processor, max_length=MAX_LENGTH, train_on="all")
    with_audio = np.concatenate([ids[:5], audio, ids[5:]])
    with pytest.raises(chunker.ImageCountError, match="no 'audios' column"):
        splitter.split_example({"input_ids": with_audio, "labels": with_audio, "images": images})
    windows = splitter.split_example({"input_ids": with_audio, "labels": with_audio, "images": images,
                                      "audios": ["the audio"]})
    held = [w for w in windows if len(w["audios"])]
    assert len(held) == 1 and (np.asarray(held[0]["input_ids"]) == audio[1]).sum() == 8


def test_audio_tokens_whose_grammar_is_not_learned_are_refused_not_cut():
    """A Gemma 3n processor without its feature extractor: no audio grammar can be learned, so its audio tokens may only
    lie inside a media span and a row holding an audio span is a named SpanError (never cut); its twin without the
    audio splits."""
    processor = build_processor("gemma3n")
    processor.feature_extractor = None
    _, images, ids, _ = setup("gemma3n")
    tok = processor.tokenizer
    audio = tok.convert_tokens_to_ids(["<start_of_audio>"] + ["<audio_soft_token>"] * 8 + ["<end_of_audio>"])
    splitter = chunker.WindowSplitter(processor, max_length=MAX_LENGTH, train_on="all")
    assert splitter.spec.audio_token_id is None
    with_audio = np.concatenate([ids[:5], audio, ids[5:]])
    with pytest.raises(chunker.SpanError, match="outside every media span"):
        splitter.split_example({"input_ids": with_audio, "labels": with_audio, "images": images})
    assert splitter.split_example({"input_ids": ids, "labels": ids, "images": images})
