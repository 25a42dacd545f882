"""Audio spans (Gemma 4 `<|audio> <|audio|>×k <audio|>`, Gemma 3n's learned grammar): kept whole, one span per audio
item, with each window carrying exactly its own audio items' `input_features` / `input_features_mask`; the collator
checks every audio item of every row; a tiny real Gemma 4 (audio tower included) trains on collated windows while
naive truncation of the same row raises the model's own error.

References come from the processor itself (its expansion of each audio in `text_replacement_offsets`, its
`_get_num_multimodal_tokens`, its feature extractor's output on the audio alone), from the checkpoint's chat template
rendering the conversation, or from the token ids read directly; never from chunker's own functions.
"""

from __future__ import annotations

import base64
import io
import wave
from functools import cache

import numpy as np
import pytest
import torch
from model_checks import assert_cut_raises, assert_trains
from PIL import Image

import chunker
from chunker.collator import WindowCollator
from chunker.testing.families_audio import build_model, build_processor, waveforms

MAX_LENGTH = 96  # an image is about 70 soft tokens (the image processor's smallest budget), an audio 3 to 13
LENGTHS = (3200, 8000, 1600, 6400)  # samples at 16 kHz: 5, 13, 3 and 10 audio tokens by the processor


@cache
def processor():
    return build_processor("gemma4")


def ids_of(*tokens):
    return [processor().tokenizer.convert_tokens_to_ids(t) for t in tokens]


def conversation(image_too=True):
    """Four turns, each user turn with an audio item (the third with an image too), answers of a few tokens."""
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    answers = ["a cat sits on a mat next to a red ball.", "the quick brown fox jumps over the lazy dog.",
               "describe this picture in detail.", "answer briefly."]
    users = [[{"type": "audio"}, {"type": "text", "text": "what is said?"}],
             [{"type": "audio"}, {"type": "text", "text": "compare the two."}],
             [{"type": "image"}] * image_too + [{"type": "audio"}],
             [{"type": "text", "text": "and this one?"}, {"type": "audio"}]]
    messages = []
    for user, answer in zip(users, answers):
        messages += [{"role": "user", "content": user},
                     {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return messages, [image] * image_too, waveforms(LENGTHS)


@cache
def processed(image_too=True):
    """The processor's own output for the whole conversation (ids, media tensors, its expansion of each item)."""
    messages, images, audios = conversation(image_too)
    text = processor().apply_chat_template(messages, tokenize=False)
    media = {"images": [images]} if images else {}
    out = processor()(text=[text], audio=audios, return_tensors="np", return_text_replacement_offsets=True, **media)
    return text, out


def expansion_counts():
    """Audio tokens of each audio item as the processor expanded it (its replacement text), in order."""
    _, out = processed()
    audio = processor().audio_token
    return [r["replacement"].count(audio) for r in out["text_replacement_offsets"][0] if r["type"] == "audio"]


def pre_tokenized(image_too=True):
    """The whole conversation pre-tokenized by the processor, with its audio features, its pixels and item names."""
    _, out = processed(image_too)
    ids = np.asarray(out["input_ids"])[0]
    row = {"input_ids": ids, "labels": ids, "input_features": np.asarray(out["input_features"]),
           "input_features_mask": np.asarray(out["input_features_mask"]),
           "audios": [f"audio {k}" for k in range(len(LENGTHS))]}
    if image_too:
        row.update(pixel_values=np.asarray(out["pixel_values"]), images=["image 0"],
                   image_position_ids=np.asarray(out["image_position_ids"]))
    return row


def audio_spans_read_off(ids):
    """(start, end, placeholder count) of each `<|audio> ... <audio|>` bracket, read off the ids directly."""
    boa, eoa, audio = ids_of("<|audio>", "<audio|>", "<|audio|>")
    starts, ends = np.flatnonzero(ids == boa), np.flatnonzero(ids == eoa) + 1
    assert len(starts) == len(ends) and (starts < ends).all()
    return [(int(s), int(e), int((ids[s:e] == audio).sum())) for s, e in zip(starts, ends)]


# ---------------------------------------------------------------------- the grammar against the processor


def test_the_processors_expansion_of_each_audio_is_one_whole_span():
    """Each audio item becomes `<|audio> <|audio|>×k <audio|>` with k as the processor expanded it; the spans chunker
    finds are exactly those brackets, kind AUDIO, beside the image span."""
    _, out = processed()
    ids = np.asarray(out["input_ids"])[0]
    ks = expansion_counts()
    counted = processor()._get_num_multimodal_tokens(audio_lengths=list(LENGTHS))["num_audio_tokens"]
    assert ks == [5, 13, 3, 10] == counted
    read = audio_spans_read_off(ids)
    assert [k for _, _, k in read] == ks
    assert all(e - s == k + 2 for s, e, k in read)  # open, k placeholders, close: nothing else inside
    spans = chunker.find_image_spans(ids, chunker.ImageSpanSpec.from_processor(processor()))
    audio = spans.kinds == 2
    assert list(zip(spans.starts[audio].tolist(), spans.ends[audio].tolist(), spans.counts[audio].tolist())) == read
    assert (~audio).sum() == 1 and (np.diff(spans.starts) > 0).all()  # the image span too, all in text order
    assert np.asarray(out["input_features"]).shape[:1] == np.asarray(out["input_features_mask"]).shape[:1] == (4,)


@pytest.mark.parametrize("lengths", [(300, 1031, 1762), (16000,), (4000, 29000, 12345, 800)])
def test_audio_counts_from_features_equal_the_processors_expansion(lengths):
    """The count rule (features' frame mask halved twice) gives the processor's own expansion of each audio, whether
    the audio is padded beside longer ones or alone; so a window's audio subset needs the same tokens."""
    p = processor()
    spec = chunker.ImageSpanSpec.from_processor(p)
    waves = waveforms(lengths)
    out = p(text=[p.audio_token * len(waves)], audio=waves, return_text_replacement_offsets=True, return_tensors="np")
    expanded = [r["replacement"].count(p.audio_token) for r in out["text_replacement_offsets"][0]]
    from chunker.media import audio_item_tokens

    assert audio_item_tokens(spec, out).tolist() == expanded
    alone = [int(audio_item_tokens(spec, p.feature_extractor([w], return_tensors="np"))[0]) for w in waves]
    assert alone == expanded


# ---------------------------------------------------------------------- windows


def test_pre_tokenized_windows_keep_every_audio_whole_with_exactly_its_own_features():
    """Each window holds whole audio spans only, and its `input_features` / `input_features_mask` rows are exactly those
    of its own audio items: the feature extractor's output on those audios alone (valid frames), in order."""
    row = pre_tokenized()
    _, _, audios = conversation()
    ks = expansion_counts()
    windows = chunker.WindowSplitter(processor(), max_length=MAX_LENGTH, keep_pixels=True).split_example(row)
    assert len(windows) >= 3
    seen = []
    for w in windows:
        ids = np.asarray(w["input_ids"])
        assert len(ids) <= MAX_LENGTH
        names = list(w["audios"])
        items = [int(n.split()[1]) for n in names]
        assert [k for _, _, k in audio_spans_read_off(ids)] == [ks[i] for i in items]
        feats, mask = np.asarray(w["input_features"]), np.asarray(w["input_features_mask"]).astype(bool)
        assert feats.shape[0] == mask.shape[0] == len(items)
        if items:
            own = processor().feature_extractor([audios[i] for i in items], return_tensors="np")
            own_mask = np.asarray(own["input_features_mask"]).astype(bool)
            for j in range(len(items)):
                assert mask[j].sum() == own_mask[j].sum()
                np.testing.assert_allclose(feats[j][mask[j]], np.asarray(own["input_features"])[j][own_mask[j]],
                                           rtol=0, atol=1e-6)
                assert not feats[j][~mask[j]].any()  # padding frames stay zero
        seen += items
    assert sorted(set(seen)) == [0, 1, 2, 3]


def test_conversation_windows_carry_their_own_audio_and_supervise_every_answer_token_once():
    """From the conversation itself: each window's `audios` are the items whose spans it holds, in order, and the
    supervised tokens of all windows, in order, decode to the answers as the chat template renders them (each answer
    from its generation prompt to the end of its turn), so nothing is trained twice or lost."""
    messages, images, audios = conversation()
    windows = chunker.WindowSplitter(processor(), max_length=MAX_LENGTH).split_example(
        {"messages": messages, "images": images, "audios": audios})
    assert len(windows) >= 3
    ks = expansion_counts()
    tok = processor().tokenizer
    supervised, held = [], []
    for w in windows:
        ids, labels = np.asarray(w["input_ids"]), np.asarray(w["labels"])
        own = [next(i for i, a in enumerate(audios) if a is x) for x in w["audios"]]
        assert [k for _, _, k in audio_spans_read_off(ids)] == [ks[i] for i in own]
        held += own
        supervised += labels[labels != -100].tolist()
        boa, eoa, audio = ids_of("<|audio>", "<audio|>", "<|audio|>")
        assert not np.isin(labels, [boa, eoa, audio]).any()
    assert sorted(set(held)) == [0, 1, 2, 3]
    render = lambda msgs, gen: processor().apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    answers = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            prompt, full = render(messages[:i], True), render(messages[: i + 1], False)
            assert full.startswith(prompt)
            answers.append(full[len(prompt):])
    # each rendered answer ends "<turn|>\n": the newline between turns is the template's separator, not trained
    assert all(a.endswith("<turn|>\n") for a in answers)
    assert tok.decode(supervised) == "".join(a[:-1] for a in answers)


def test_a_window_too_small_for_an_audio_span_never_cuts_it():
    """The 13-token audio span (15 with its brackets) cannot fit 12 tokens: a named OversizeSpanError, never a cut;
    the twin at 16 tokens splits with that audio whole in one window."""
    row = pre_tokenized(image_too=False)
    with pytest.raises(chunker.OversizeSpanError, match="media span .* of 15 tokens"):
        chunker.WindowSplitter(processor(), max_length=12, keep_pixels=True, prefix="none").split_example(row)
    windows = chunker.WindowSplitter(processor(), max_length=16, keep_pixels=True, prefix="none").split_example(row)
    assert sum(n == "audio 1" for w in windows for n in w["audios"]) >= 1


def test_a_row_whose_audio_features_disagree_with_its_spans_is_refused_by_name():
    """Features of three audio items for four spans, or of the four in another order, are named errors (never a cut
    or a silent mismatch); the row's own features in order split."""
    row = pre_tokenized()
    fewer = {**row, "input_features": row["input_features"][:3], "input_features_mask": row["input_features_mask"][:3]}
    order = [1, 0, 2, 3]
    swapped = {**row, "input_features": row["input_features"][order],
               "input_features_mask": row["input_features_mask"][order]}
    splitter = chunker.WindowSplitter(processor(), max_length=MAX_LENGTH, keep_pixels=True)
    with pytest.raises(chunker.PixelMismatchError, match="4 audio spans need 4 .*made for other audio"):
        splitter.split_example(fewer)
    with pytest.raises(chunker.ImageTokenCountError, match=r"holds 5 placeholder tokens but its item needs 13 \(audio 0, from its audio features\)"):
        splitter.split_example(swapped)
    assert splitter.split_example(row)


# ---------------------------------------------------------------------- formats and refusals


def _wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
    return buf.getvalue()


def test_openai_input_audio_and_llama_factory_audio_rows_split_for_gemma4():
    """An OpenAI row with an `input_audio` WAV item and a LLaMA-Factory row with an `<audio>` placeholder and an
    `audios` column both split: their windows carry the audio, and its span holds the tokens the processor expands it
    into."""
    clip = waveforms([8000])[0]
    data = base64.b64encode(_wav_bytes(clip)).decode()
    item = {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
    openai = {"messages": [{"role": "user", "content": [item, {"type": "text", "text": "what is said?"}]},
                           {"role": "assistant", "content": "a cat sits on a mat."}]}
    factory = {"messages": [{"role": "user", "content": "<audio>what is said?"},
                            {"role": "assistant", "content": "a cat sits on a mat."}], "audios": [clip]}
    want = processor()._get_num_multimodal_tokens(audio_lengths=[8000])["num_audio_tokens"]
    for row in (openai, factory):
        windows = chunker.WindowSplitter(processor(), max_length=64).split_example(row)
        spans = [k for w in windows for _, _, k in audio_spans_read_off(np.asarray(w["input_ids"]))]
        assert spans == want and sum(len(w["audios"]) for w in windows) == 1


def test_audio_at_another_sampling_rate_is_refused_by_name_and_its_twin_splits():
    """chunker never resamples: 8 kHz audio for a 16 kHz feature extractor is a named error; at 16 kHz it splits."""
    clip = waveforms([8000])[0]
    row = lambda rate: {"messages": [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "hi"}]},
                                     {"role": "assistant", "content": "a cat."}],
                        "audios": [{"array": clip, "sampling_rate": rate}]}
    splitter = chunker.WindowSplitter(processor(), max_length=64)
    with pytest.raises(chunker.ImageDecodeError, match="8000 Hz but the feature extractor expects 16000 Hz"):
        splitter.split_example(row(8000))
    assert splitter.split_example(row(16000))


def test_audio_for_a_family_without_audio_is_still_refused_by_name():
    """Gemma 3 has no audio: a conversation with an audio item is a named RowFormatError, its text twin splits."""
    from chunker.testing import build_processor as build

    gemma3 = build("gemma3")
    row = {"messages": [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "hi"}]},
                        {"role": "assistant", "content": "a cat."}], "audios": [waveforms([1600])[0]]}
    splitter = chunker.WindowSplitter(gemma3, max_length=64)
    with pytest.raises(chunker.RowFormatError, match="the conversation holds audio .*takes no audio"):
        splitter.split_example(row)
    twin = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a cat."}]}
    assert splitter.split_example(twin)


# ---------------------------------------------------------------------- collator


def windows_from_conversation():
    messages, images, audios = conversation()
    return chunker.WindowSplitter(processor(), max_length=MAX_LENGTH).split_example(
        {"messages": messages, "images": images, "audios": audios})


def test_the_collator_names_the_row_and_audio_item_whose_span_disagrees_and_its_twin_collates():
    """Two windows whose audio items are swapped between them (batch totals could still agree) fail the per-item check,
    naming the row and its audio item; the same windows with their own audio collate, with the features the feature
    extractor makes of each window's audio."""
    windows = [w for w in windows_from_conversation() if len(w["audios"])]
    a, b = windows[0], windows[1]
    collator = WindowCollator(processor())
    swapped = [{**a, "audios": b["audios"]}, {**b, "audios": a["audios"]}]
    with pytest.raises(chunker.ImageTokenMismatchError, match=r"row 0 \(source_index -1, window_index 0\): audio 0: "):
        collator(swapped)
    batch = collator([a, b])
    own = processor().feature_extractor(list(a["audios"]) + list(b["audios"]), return_tensors="pt")
    frames = own["input_features_mask"].shape[1]
    assert torch.equal(batch["input_features_mask"][:, :frames], own["input_features_mask"])
    assert batch["input_features"].shape[0] == len(a["audios"]) + len(b["audios"])
    assert (batch["mm_token_type_ids"] == 3).sum() == sum(
        k for w in (a, b) for _, _, k in audio_spans_read_off(np.asarray(w["input_ids"])))


def test_the_collator_refuses_audio_tokens_without_audio_and_its_twin_collates():
    """A window whose `audios` column was removed is a named ImageCountError; with it, it collates."""
    w = next(w for w in windows_from_conversation() if len(w["audios"]))
    collator = WindowCollator(processor())
    with pytest.raises(chunker.ImageCountError, match="no 'audios' and no input_features"):
        collator([{k: v for k, v in w.items() if k != "audios"}])
    assert "input_features" in collator([w])


# ---------------------------------------------------------------------- a real tiny model


def test_the_tiny_gemma4_trains_on_collated_windows_with_audio_and_naive_truncation_fails():
    """The real Gemma4ForConditionalGeneration (audio and vision towers) runs forward and backward on the collated
    windows and its audio and vision towers, their projectors and its language model all change; the same row cut
    naively at MAX_LENGTH with all its audio raises the model's own error (the positive control)."""
    model = build_model("gemma4", processor())
    windows = windows_from_conversation()
    batch = WindowCollator(processor())(windows)
    assert {"input_features", "input_features_mask", "pixel_values"} <= set(batch)
    assert_trains(model, [batch, batch],
                          ("audio_tower", "embed_audio", "vision_tower", "embed_vision", "language_model"))
    _, out = processed()
    cut = {"input_ids": torch.as_tensor(np.asarray(out["input_ids"])[:, :MAX_LENGTH]),
           "input_features": torch.as_tensor(np.asarray(out["input_features"])),
           "input_features_mask": torch.as_tensor(np.asarray(out["input_features_mask"]))}
    assert_cut_raises(model, cut, match="Audio features and audio tokens do not match")


# ---------------------------------------------------------------------- Gemma 3n (learned audio grammar)


def test_gemma3n_windows_keep_each_audio_whole_with_its_own_features_and_collate():
    """Gemma 3n (no written adapter): each audio becomes `<start_of_audio> <audio_soft_token>×8 <end_of_audio>` as its
    processor expands it; each window carries exactly its own audio items' rows of the processor's features, and the
    collator checks them: a window whose features were dropped is named by row and item (every Gemma 3n audio needs 8
    tokens, so only a missing or extra item can disagree)."""
    from chunker.testing import build_processor as build

    p = build("gemma3n")
    tok = p.tokenizer
    audios = waveforms((1600, 16000, 4800))
    text = "".join(f"what is said in {p.audio_token} a cat sits on a mat next to a red ball. " for _ in audios)
    out = p(text=[text], audio=audios, return_tensors="np")
    ids = np.asarray(out["input_ids"])[0]
    boa, eoa, soft = tok.convert_tokens_to_ids(["<start_of_audio>", "<end_of_audio>", "<audio_soft_token>"])
    row = {"input_ids": ids, "labels": ids, "input_features": np.asarray(out["input_features"]),
           "input_features_mask": np.asarray(out["input_features_mask"]), "audios": ["a0", "a1", "a2"]}
    windows = chunker.WindowSplitter(p, max_length=32, train_on="all", keep_pixels=True).split_example(row)
    assert len(windows) >= 3
    seen = []
    for w in windows:
        win = np.asarray(w["input_ids"])
        items = [int(n[1]) for n in w["audios"]]
        starts = np.flatnonzero(win == boa)
        assert len(starts) == len(items) and all(win[s + p.audio_seq_length + 1] == eoa for s in starts)
        assert (win == soft).sum() == p.audio_seq_length * len(items)
        # Gemma 3n's frame mask depends on the batch's padding (unlike Gemma 4's): the reference is the processor's own
        # rows of these items in its output for the whole row
        np.testing.assert_array_equal(np.asarray(w["input_features"]), np.asarray(out["input_features"])[items])
        np.testing.assert_array_equal(np.asarray(w["input_features_mask"]),
                                      np.asarray(out["input_features_mask"])[items])
        seen += items
    assert sorted(seen) == [0, 1, 2]
    collator = WindowCollator(p)
    with_audio = [w for w in windows if len(w["audios"])]
    batch = collator(with_audio)
    assert batch["input_features"].shape[0] == 3
    lost = [{**with_audio[0], "input_features": with_audio[0]["input_features"][:0],
             "input_features_mask": with_audio[0]["input_features_mask"][:0]}] + with_audio[1:]
    with pytest.raises(chunker.ImageTokenMismatchError, match=r"row 0 .*audio 0: a span of 8 tokens with no media"):
        collator(lost)


def test_a_gemma4_video_is_refused_by_name_not_cut_and_its_twin_without_it_splits():
    """Gemma 4 video (frames with timestamps) is not split yet: a pre-tokenized row holding the processor's own
    expansion of a 3-frame video (`replace_video_token`, `mm:ss <|image> <|video|>×n <image|>` per frame) is a named
    SpanError; the same row without the video splits."""
    from transformers.video_utils import VideoMetadata

    p = processor()
    metadata = VideoMetadata(total_num_frames=3, fps=1.0, frames_indices=[0, 1, 2])
    video = p.replace_video_token({"num_soft_tokens_per_video": [4], "video_metadata": [metadata]}, 0)
    assert video.count("<|video|>") == 12 and video.startswith("00:00 <|image>")
    text = "<bos><|turn>user\n{}what happens?<turn|>\n<|turn>model\na cat sits on a mat.<turn|>\n"
    tokenize = lambda t: np.asarray(p.tokenizer(t, add_special_tokens=False)["input_ids"])
    splitter = chunker.WindowSplitter(p, max_length=MAX_LENGTH)
    with_video = tokenize(text.format(video))
    with pytest.raises(chunker.SpanError, match="holds no image token .*Gemma 4 video frame"):
        splitter.split_example({"input_ids": with_video, "labels": with_video, "images": []})
    without = tokenize(text.format(""))
    assert splitter.split_example({"input_ids": without, "labels": without, "images": []})


def test_conversations_and_pre_tokenized_rows_with_audio_split_through_dataset_map_and_collate():
    """Through `Dataset.map` (Arrow storage of the `audios` column), conversational and pre-tokenized rows with audio
    give windows whose audio, read back from Arrow, collates into one feature row per audio item of the batch."""
    datasets = pytest.importorskip("datasets")
    messages, _, audios = conversation(image_too=False)
    waves = [a.tolist() for a in audios]
    _, out = processed(image_too=False)
    ids = np.asarray(out["input_ids"])[0].tolist()
    splitter = chunker.WindowSplitter(processor(), max_length=MAX_LENGTH)
    collator = WindowCollator(processor())
    for rows in ([{"messages": messages, "audios": waves}] * 2, [{"input_ids": ids, "labels": ids, "audios": waves}]):
        ds = datasets.Dataset.from_list(rows)
        windows = ds.map(splitter, batched=True, with_indices=True, remove_columns=ds.column_names)
        assert sum(len(a) for a in windows["audios"]) == len(LENGTHS) * len(rows)
        batch = collator([windows[i] for i in range(len(windows))])
        assert batch["input_features"].shape[0] == len(LENGTHS) * len(rows)
