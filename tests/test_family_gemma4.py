"""Gemma 4 beyond the shared contract: counts from image sizes equal the processor's, and its own per-image tensor
(`image_position_ids`, one row per image beside `pixel_values`) travels with each window like pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import chunker
from chunker.testing import build_processor

SIZES = [(64, 48), (300, 20), (40, 90), (72, 72)]


@pytest.fixture(scope="module")
def processor():
    return build_processor("gemma4")


def row(n=4):
    imgs = [Image.new("RGB", size, ("red", "blue", "green", "white")[k]) for k, size in enumerate(SIZES[:n])]
    messages = []
    for im in imgs:
        messages += [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is shown?"}]},
                     {"role": "assistant", "content": [{"type": "text", "text": "a cat sits on a mat " * 3}]}]
    return {"messages": messages, "images": imgs}


def test_counts_from_image_sizes_equal_the_processors(processor):
    """image_tokens_from='sizes' (no pixels) gives the very windows the pixel path gives."""
    pixels = chunker.WindowSplitter(processor, max_length=100).split_example(row())
    sizes = chunker.WindowSplitter(processor, max_length=100, image_tokens_from="sizes").split_example(row())
    assert len(pixels) >= 3
    assert [r["input_ids"].tolist() for r in sizes] == [r["input_ids"].tolist() for r in pixels]


def test_image_position_ids_are_sliced_per_window_with_the_pixels(processor):
    """A pre-tokenized row carrying the processor's pixel_values and image_position_ids: each window gets the rows of
    exactly its images, equal to what the processor makes of those images alone (reference: the processor)."""
    example = row()
    text = processor.apply_chat_template(example["messages"], tokenize=False)
    enc = processor(text=[text], images=[example["images"]], return_tensors="np")
    ids = np.asarray(enc["input_ids"])[0]
    pre = {"input_ids": ids, "labels": ids, "pixel_values": np.asarray(enc["pixel_values"]),
           "image_position_ids": np.asarray(enc["image_position_ids"])}
    windows = chunker.WindowSplitter(processor, max_length=100, keep_pixels=True).split_example(pre)
    assert len(windows) >= 3
    seen = 0
    for w in windows:
        n = len(chunker.find_image_spans(np.asarray(w["input_ids"]), chunker.ImageSpanSpec.from_processor(processor)))
        assert np.asarray(w["image_position_ids"]).shape[0] == np.asarray(w["pixel_values"]).shape[0] == n
        if n:
            own = processor.image_processor(example["images"][seen: seen + n], return_tensors="np")
            np.testing.assert_array_equal(np.asarray(w["image_position_ids"]), own["image_position_ids"])
            np.testing.assert_array_equal(np.asarray(w["pixel_values"]), own["pixel_values"])
        seen += n
    assert seen == len(example["images"])


def test_a_row_with_an_audio_span_and_no_audio_is_refused_by_name_not_cut(processor):
    """A pre-tokenized row holding `<|audio> <|audio|>×6 <audio|>` without its audio is a named ImageCountError (no
    window could carry the audio's features); its twin with the audio (3520 samples: 6 tokens by the processor's own
    `_get_num_multimodal_tokens`) splits, the audio whole in one window (tests/test_audio.py covers audio in full)."""
    example = row(2)
    text = processor.apply_chat_template(example["messages"], tokenize=False)
    ids = np.asarray(processor(text=[text], images=[example["images"]], return_tensors="np")["input_ids"])[0]
    audio = processor.tokenizer.convert_tokens_to_ids(["<|audio>"] + ["<|audio|>"] * 6 + ["<audio|>"])
    with_audio = np.concatenate([ids[:4], audio, ids[4:]])
    splitter = chunker.WindowSplitter(processor, max_length=100)
    with pytest.raises(chunker.ImageCountError, match="no 'audios' column and no input_features"):
        splitter.split_example({"input_ids": with_audio, "labels": with_audio, "images": example["images"]})
    assert processor._get_num_multimodal_tokens(audio_lengths=[3520])["num_audio_tokens"] == [6]
    wave = np.zeros(3520, dtype=np.float32)
    windows = splitter.split_example({"input_ids": with_audio, "labels": with_audio, "images": example["images"],
                                      "audios": [wave]})
    assert [len(w["audios"]) for w in windows].count(1) == 1 and sum(len(w["audios"]) for w in windows) == 1
