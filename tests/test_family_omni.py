"""Qwen2.5-Omni and Qwen3-Omni-MoE: images `<|vision_bos|> <|IMAGE|>×n <|vision_eos|>`, videos, and audio
`<|audio_bos|> <|AUDIO|>×k <|audio_eos|>` through one family adapter (`chunker.families.omni`).

The real processors (real image, video and Whisper feature extractor parts, Qwen/Qwen2.5-Omni-7B's real chat template)
and tiny real thinkers are built offline (`chunker.testing.families_omni`; their video processor needs torchvision, so
the module skips without it, and a family the installed transformers lacks skips by name). Qwen3-Omni-MoE's test
processor carries Qwen2.5-Omni-7B's template as a stand-in (no byte-exact copy of Qwen3-Omni's was found): it renders
images and audio with the same tokens.

References come from the processor itself (its expansion of each item in `text_replacement_offsets`, its
`_get_num_multimodal_tokens`, its image processor and feature extractor on a window's media alone), from the chat
template rendering the conversation incrementally, or from the ids read directly; never from chunker's own functions.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np
import pytest
import torch
from model_checks import assert_cut_raises, assert_trains
from PIL import Image

import chunker
from chunker.collator import WindowCollator
from chunker.testing.families_audio import waveforms
from chunker.testing.families_omni import OMNI_FAMILIES, build_model, build_processor

pytest.importorskip("torchvision", reason="the Omni processors' video processor needs torchvision")
transformers = pytest.importorskip("transformers")

CLASSES = {"qwen2_5_omni": "Qwen2_5OmniProcessor", "qwen3_omni_moe": "Qwen3OmniMoeProcessor"}
MAX_LENGTH = 64
LENGTHS = (3200, 12345, 1600, 8000)  # samples at 16 kHz, four audio items of different lengths
SIZES = ((40, 60), (84, 112))  # (height, width) of the two images: 6 and 12 tokens
PARTS = {"qwen2_5_omni": ("audio_tower", "visual", "language_model"),
         "qwen3_omni_moe": ("audio_tower", "visual", "language_model", "experts")}


def need(family):
    if not hasattr(transformers, CLASSES[family]):
        pytest.skip(f"transformers {transformers.__version__} has no {CLASSES[family]}")


@cache
def processor(family="qwen2_5_omni"):
    need(family)
    return build_processor(family)


def ids_of(family, *tokens):
    return [processor(family).tokenizer.convert_tokens_to_ids(t) for t in tokens]


def images():
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


def conversation():
    """Four turns: audio, an image, audio + image + audio, then audio; answers of a few words each."""
    users = [[{"type": "audio"}, {"type": "text", "text": "what is said?"}],
             [{"type": "image"}, {"type": "text", "text": "compare the two."}],
             [{"type": "audio"}, {"type": "image"}, {"type": "audio"}],
             [{"type": "text", "text": "and this one?"}, {"type": "audio"}]]
    answers = ["a cat sits on a mat next to a red ball.", "the quick brown fox jumps over the lazy dog.",
               "describe this picture in detail.", "answer briefly."]
    messages = []
    for user, answer in zip(users, answers):
        messages += [{"role": "user", "content": user},
                     {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return messages, images(), waveforms(LENGTHS)


def run(family, messages, imgs, audios, **kwargs):
    """The processor's own output for `messages` rendered by its template, with their media."""
    p = processor(family)
    text = p.apply_chat_template(messages, tokenize=False, **kwargs)
    media = {"images": imgs} if imgs else {}
    if audios:
        media["audio"] = audios
    return p(text=[text], return_tensors="np", return_text_replacement_offsets=True, **media)


@cache
def processed(family):
    messages, imgs, audios = conversation()
    return run(family, messages, imgs, audios)


def spans_read_off(family, ids):
    """(kind, start, end, placeholders) of every `<|vision_bos|>…<|vision_eos|>` and `<|audio_bos|>…<|audio_eos|>`
    bracket, in text order, read off the ids directly."""
    vbos, veos, abos, aeos, image, audio = ids_of(family, "<|vision_bos|>", "<|vision_eos|>", "<|audio_bos|>",
                                                  "<|audio_eos|>", "<|IMAGE|>", "<|AUDIO|>")
    out = []
    for kind, bos, eos, token in (("image", vbos, veos, image), ("audio", abos, aeos, audio)):
        starts, ends = np.flatnonzero(ids == bos), np.flatnonzero(ids == eos) + 1
        assert len(starts) == len(ends) and (starts < ends).all()
        out += [(kind, int(s), int(e), int((ids[s:e] == token).sum())) for s, e in zip(starts, ends)]
    return sorted(out, key=lambda x: x[1])


def expansion(family, out, kind):
    """Placeholders of each item of `kind` as the processor expanded it (its replacement text), in order."""
    p = processor(family)
    token = p.audio_token if kind == "audio" else p.image_token
    return [r["replacement"].count(token) for r in out["text_replacement_offsets"][0] if r["type"] == kind]


# ---------------------------------------------------------------------- the grammar against the processor


@pytest.mark.parametrize("family", OMNI_FAMILIES)
def test_each_image_and_audio_is_one_whole_span_as_the_processor_expands_it(family):
    """Two images of different sizes and four audio items of different lengths: each becomes one bracket holding
    exactly its placeholders (as the processor expanded it, and as its own counters say), and chunker finds exactly
    those brackets, in text order, kind AUDIO for audio."""
    p = processor(family)
    out = processed(family)
    ids = np.asarray(out["input_ids"])[0]
    images_k, audio_k = expansion(family, out, "image"), expansion(family, out, "audio")
    assert audio_k == p._get_num_multimodal_tokens(audio_lengths=list(LENGTHS))["num_audio_tokens"]
    assert len(set(audio_k)) == 4 and len(set(images_k)) == 2
    grid = np.asarray(out["image_grid_thw"])
    assert images_k == (grid.prod(-1) // 4).tolist()
    read = spans_read_off(family, ids)
    assert [k for kind, *_, k in read if kind == "audio"] == audio_k
    assert [k for kind, *_, k in read if kind == "image"] == images_k
    assert all(e - s == k + 2 for _, s, e, k in read)  # open, k placeholders, close: nothing else inside
    spec = chunker.ImageSpanSpec.from_processor(p)
    assert spec.family == family and spec.type_ids_column is None
    spans = chunker.find_image_spans(ids, spec)
    found = [("audio" if kind == 2 else "image", s, e, k) for kind, s, e, k in
             zip(spans.kinds.tolist(), spans.starts.tolist(), spans.ends.tolist(), spans.counts.tolist())]
    assert found == read


@pytest.mark.parametrize("family", OMNI_FAMILIES)
@pytest.mark.parametrize("lengths", [(300, 1031, 1762), (16000,), (4000, 29000, 12345, 800), (63000, 15999)])
def test_audio_counts_from_features_equal_the_processors_expansion(family, lengths):
    """The count rule on an item's valid frames gives the processor's own expansion of each audio, whether the item
    is padded beside longer ones or alone (so a window's audio subset needs the same tokens)."""
    from chunker.media import audio_item_tokens

    p = processor(family)
    spec = chunker.ImageSpanSpec.from_processor(p)
    waves = waveforms(lengths)
    out = p(text=[p.audio_token * len(waves)], audio=waves, return_text_replacement_offsets=True, return_tensors="np")
    expanded = [r["replacement"].count(p.audio_token) for r in out["text_replacement_offsets"][0]]
    assert audio_item_tokens(spec, out).tolist() == expanded
    alone = [int(audio_item_tokens(spec, p(text=[p.audio_token], audio=[w], return_tensors="np"))[0]) for w in waves]
    assert alone == expanded


@pytest.mark.parametrize("family", OMNI_FAMILIES)
def test_the_shared_contract_checks_pass(family):
    """The shared contract's checks (tests/test_families.py) on the Omni processor: the grammar probe passes and a
    broken grammar fails it, one span per image, and windows of its image conversation train exactly the answers
    located by incremental templating."""
    from test_families import check_one_span_per_image, check_probe_and_twin, test_windows_of_a_real_conversation

    p = processor(family)
    check_probe_and_twin(p)
    check_one_span_per_image(p, family)
    for max_length, overlap in ((96, 0), (128, 16)):
        test_windows_of_a_real_conversation({family: p}, family, max_length, overlap)


# ---------------------------------------------------------------------- windows


def reference_targets(family, messages, imgs, audios):
    """Supervised tokens by incremental templating, on the processor's tokens: each answer is what the conversation
    up to it adds to the conversation before it with the generation prompt, less the whitespace-only tokens the
    template puts after the turn."""
    out, used_images, used_audio = [], 0, 0
    for k, msg in enumerate(messages):
        used_images += sum(c.get("type") == "image" for c in msg["content"])
        used_audio += sum(c.get("type") == "audio" for c in msg["content"])
        if msg["role"] != "assistant":
            continue
        media = (imgs[:used_images], audios[:used_audio])
        prompt = np.asarray(run(family, messages[:k], *media, add_generation_prompt=True)["input_ids"])[0]
        full = np.asarray(run(family, messages[: k + 1], *media)["input_ids"])[0]
        assert (full[: len(prompt)] == prompt).all()
        answer = full[len(prompt):].tolist()
        while answer and not processor(family).tokenizer.decode(answer[-1:]).strip():
            answer.pop()
        out += answer
    return out


@pytest.mark.parametrize("family", OMNI_FAMILIES)
@pytest.mark.parametrize("max_length,overlap", [(MAX_LENGTH, 0), (48, 8)])
def test_conversation_windows_carry_their_own_media_and_train_every_answer_token_once(family, max_length, overlap):
    """Each window holds whole spans only, carries exactly the images and audio items whose spans it holds, in order,
    and the supervised tokens of all windows, in order, are the answers located by rendering the real template
    incrementally: nothing trained twice or lost, no placeholder or bracket trained."""
    messages, imgs, audios = conversation()
    windows = chunker.WindowSplitter(processor(family), max_length=max_length, overlap=overlap).split_example(
        {"messages": messages, "images": imgs, "audios": audios})
    assert len(windows) >= 3
    out = processed(family)
    image_k, audio_k = expansion(family, out, "image"), expansion(family, out, "audio")
    media_ids = ids_of(family, "<|vision_bos|>", "<|vision_eos|>", "<|audio_bos|>", "<|audio_eos|>", "<|IMAGE|>",
                       "<|AUDIO|>")
    trained, held_images, held_audio = [], [], []
    for w in windows:
        ids, labels = np.asarray(w["input_ids"]), np.asarray(w["labels"])
        assert len(ids) <= max_length
        own_images = [next(i for i, x in enumerate(imgs) if x is im) for im in w["images"]]
        own_audio = [next(i for i, x in enumerate(audios) if x is a) for a in w["audios"]]
        read = spans_read_off(family, ids)
        assert [k for kind, *_, k in read if kind == "image"] == [image_k[i] for i in own_images]
        assert [k for kind, *_, k in read if kind == "audio"] == [audio_k[i] for i in own_audio]
        assert not np.isin(labels, media_ids).any()
        held_images += own_images
        held_audio += own_audio
        trained += labels[1:][labels[1:] != -100].tolist()
    assert sorted(set(held_images)) == [0, 1] and sorted(set(held_audio)) == [0, 1, 2, 3]
    assert trained == reference_targets(family, messages, imgs, audios)


def pre_tokenized(family):
    """The whole conversation tokenized by the processor, with all its media tensors and item names."""
    out = processed(family)
    ids = np.asarray(out["input_ids"])[0]
    keys = ("pixel_values", "image_grid_thw", "input_features", "feature_attention_mask")
    return {"input_ids": ids, "labels": ids, "images": ["image 0", "image 1"],
            "audios": [f"audio {k}" for k in range(len(LENGTHS))], **{k: np.asarray(out[k]) for k in keys}}


@pytest.mark.parametrize("family", OMNI_FAMILIES)
def test_pre_tokenized_windows_carry_exactly_what_the_processor_gives_their_own_media(family):
    """Each window of the processor's own row (keep_pixels=True) holds whole spans, and its `input_features` /
    `feature_attention_mask` and `pixel_values` / `image_grid_thw` are what the feature extractor and image processor
    give that window's audio and images alone (valid frames; pixel rows), in order (Qwen3-Omni: its rows of the
    processor's output for the whole row, see below)."""
    p = processor(family)
    _, imgs, audios = conversation()
    windows = chunker.WindowSplitter(p, max_length=MAX_LENGTH, keep_pixels=True).split_example(pre_tokenized(family))
    assert len(windows) >= 3
    seen_images, seen_audio = [], []
    for w in windows:
        ids = np.asarray(w["input_ids"])
        assert len(ids) <= MAX_LENGTH
        own_images = [int(n.split()[1]) for n in w["images"]]
        own_audio = [int(n.split()[1]) for n in w["audios"]]
        read = spans_read_off(family, ids)
        assert len([r for r in read if r[0] == "image"]) == len(own_images)
        assert len([r for r in read if r[0] == "audio"]) == len(own_audio)
        if own_images:
            alone = p.image_processor([imgs[i] for i in own_images], return_tensors="np")
            np.testing.assert_array_equal(np.asarray(w["image_grid_thw"]), alone["image_grid_thw"])
            np.testing.assert_allclose(np.asarray(w["pixel_values"]), alone["pixel_values"], rtol=0, atol=1e-5)
        else:
            assert np.asarray(w["pixel_values"]).shape[0] == 0
        feats, mask = np.asarray(w["input_features"]), np.asarray(w["feature_attention_mask"]).astype(bool)
        assert feats.shape[0] == mask.shape[0] == len(own_audio)
        if own_audio and family == "qwen3_omni_moe":
            # Qwen3-Omni pads a batch's audio to its longest item, and an item's last frames depend on that padding:
            # the reference is the processor's own rows of these items in its output for the whole row
            np.testing.assert_array_equal(feats, np.asarray(processed(family)["input_features"])[own_audio])
            np.testing.assert_array_equal(mask, np.asarray(processed(family)["feature_attention_mask"])[own_audio])
        elif own_audio:
            alone = p(text=[p.audio_token * len(own_audio)], audio=[audios[i] for i in own_audio], return_tensors="np")
            own_mask = np.asarray(alone["feature_attention_mask"]).astype(bool)
            for j in range(len(own_audio)):
                assert mask[j].sum() == own_mask[j].sum()
                np.testing.assert_allclose(feats[j].T[mask[j]], np.asarray(alone["input_features"])[j].T[own_mask[j]],
                                           rtol=0, atol=1e-5)
        seen_images += own_images
        seen_audio += own_audio
    assert sorted(set(seen_images)) == [0, 1] and sorted(set(seen_audio)) == [0, 1, 2, 3]


@pytest.mark.parametrize("family", OMNI_FAMILIES)
def test_counts_from_image_sizes_give_the_same_windows(family):
    """`image_tokens_from="sizes"` (counts from the images' sizes, no pixels) splits an image conversation into the
    same windows and labels as the processor's own pixel path."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "compare"}, {"type": "image"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "a cat sits on a mat next to a red ball. " * 3}]}]
    row = {"messages": messages, "images": images()}
    pixels = chunker.WindowSplitter(processor(family), max_length=40).split_example(row)
    sizes = chunker.WindowSplitter(processor(family), max_length=40, image_tokens_from="sizes").split_example(row)
    assert len(pixels) == len(sizes) >= 2
    for a, b in zip(pixels, sizes):
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
        np.testing.assert_array_equal(a["labels"], b["labels"])


def test_a_window_too_small_for_an_audio_span_never_cuts_it():
    """The 19-token audio span (21 with its brackets) cannot fit 16 tokens: a named OversizeSpanError, never a cut;
    the twin at 24 tokens splits with that audio whole in one window."""
    row = pre_tokenized("qwen2_5_omni")
    assert expansion("qwen2_5_omni", processed("qwen2_5_omni"), "audio")[1] == 19
    splitter = lambda n: chunker.WindowSplitter(processor(), max_length=n, keep_pixels=True, prefix="none")
    with pytest.raises(chunker.OversizeSpanError, match="media span .* of 21 tokens"):
        splitter(16).split_example(row)
    assert sum(n == "audio 1" for w in splitter(24).split_example(row) for n in w["audios"]) >= 1


def test_audio_features_that_disagree_with_the_spans_are_refused_by_name():
    """Features of three audio items for four spans, or of the four in another order, are named errors; the row's
    own features in order split."""
    row = pre_tokenized("qwen2_5_omni")
    splitter = chunker.WindowSplitter(processor(), max_length=MAX_LENGTH, keep_pixels=True)
    fewer = {**row, "input_features": row["input_features"][:3],
             "feature_attention_mask": row["feature_attention_mask"][:3]}
    order = [1, 0, 2, 3]
    swapped = {**row, "input_features": row["input_features"][order],
               "feature_attention_mask": row["feature_attention_mask"][order]}
    with pytest.raises(chunker.PixelMismatchError, match="4 audio spans need 4 .*made for other audio"):
        splitter.split_example(fewer)
    with pytest.raises(chunker.ImageTokenCountError, match=r"holds 5 placeholder tokens but its item needs 19 \(audio 0"):
        splitter.split_example(swapped)
    assert splitter.split_example(row)


def test_audio_taken_from_a_video_is_refused_by_name_and_the_video_alone_splits():
    """A video whose audio the processor interleaves with its frames (`load_audio_from_video`: audio tokens inside
    the video's vision bracket) is refused by name; the same video without its audio splits, every window holding
    its span holding all of it with its `pixel_values_videos` / `video_grid_thw` / `video_second_per_grid` rows; the
    windows collate and the tiny thinker runs on them."""
    p = processor()
    frames = np.random.default_rng(2).integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "text", "text": "what happens?"}, {"type": "video"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "a cat sits on a mat next to a red ball. " * 4}]}]
    text = p.apply_chat_template(messages, tokenize=False)
    small = {"videos_kwargs": {"size": {"shortest_edge": 4 * 28 * 28, "longest_edge": 16 * 28 * 28}}}
    with_audio = p(text=[text], videos=[frames], audio=waveforms([16000]), audio_from_video_indices=[0],
                   load_audio_from_video=True, return_tensors="np", **small)
    ids = np.asarray(with_audio["input_ids"])[0]
    video, audio = ids_of("qwen2_5_omni", "<|VIDEO|>", "<|AUDIO|>")
    assert (ids == video).any() and (ids == audio).any()
    splitter = chunker.WindowSplitter(p, max_length=MAX_LENGTH, keep_pixels=True)
    with pytest.raises(chunker.SpanError, match=r"overlap .*audio taken from a video .*load_audio_from_video"):
        splitter.split_example({"input_ids": ids, "labels": ids, "audios": ["a"]})
    alone = p(text=[text], videos=[frames], return_tensors="np", **small)
    ids = np.asarray(alone["input_ids"])[0]
    keys = ("pixel_values_videos", "video_grid_thw", "video_second_per_grid")
    windows = splitter.split_example({"input_ids": ids, "labels": ids, **{k: np.asarray(alone[k]) for k in keys}})
    assert len(windows) >= 2
    holding = [w for w in windows if (np.asarray(w["input_ids"]) == video).any()]
    assert holding  # a window may hold the video again as context, whole and with its rows
    for w in holding:
        assert int((np.asarray(w["input_ids"]) == video).sum()) == int((ids == video).sum())
        for k in keys:
            np.testing.assert_array_equal(np.asarray(w[k]), np.asarray(alone[k]))
    for w in windows:
        if not (np.asarray(w["input_ids"]) == video).any():
            assert all(np.asarray(w[k]).shape[0] == 0 for k in keys)
    batch = WindowCollator(p)(windows)  # each video span checked against its own grid
    assert batch["video_grid_thw"].shape[0] == len(holding)
    with torch.no_grad():
        assert torch.isfinite(build_model("qwen2_5_omni", p)(**batch).loss)


# ---------------------------------------------------------------------- collator


@cache
def windows_of(family):
    messages, imgs, audios = conversation()
    return chunker.WindowSplitter(processor(family), max_length=MAX_LENGTH).split_example(
        {"messages": messages, "images": imgs, "audios": audios})


def test_the_collator_names_the_row_and_item_whose_span_disagrees_and_its_twin_collates():
    """Windows whose audio items (or images) are swapped between them fail the per-item check, naming the row and the
    item; the same windows with their own media collate, with the features and pixels the processor's parts make of
    each window's media."""
    p = processor()
    windows = windows_of("qwen2_5_omni")
    with_audio = [w for w in windows if len(w["audios"])]
    with_image = [w for w in windows if len(w["images"])]
    collator = WindowCollator(p)
    a, b = with_audio[0], with_audio[1]
    with pytest.raises(chunker.ImageTokenMismatchError, match=r"row 0 \(source_index -1, window_index 0\): audio 0: "):
        collator([{**a, "audios": b["audios"]}, {**b, "audios": a["audios"]}])
    c, d = with_image[0], with_image[1]
    with pytest.raises(chunker.ImageTokenMismatchError, match=r"row 0 .*: image 0: "):
        collator([{**c, "images": d["images"]}, {**d, "images": c["images"]}])
    batch = collator([a, b])
    own = p(text=[p.audio_token * (len(a["audios"]) + len(b["audios"]))], audio=list(a["audios"]) + list(b["audios"]),
            return_tensors="pt")
    assert torch.equal(batch["feature_attention_mask"], own["feature_attention_mask"])
    torch.testing.assert_close(batch["input_features"], own["input_features"], rtol=0, atol=1e-5)
    batch = collator([c, d])
    own = p.image_processor(list(c["images"]) + list(d["images"]), return_tensors="pt")
    assert torch.equal(batch["image_grid_thw"], own["image_grid_thw"])


def test_the_collator_refuses_audio_tokens_without_audio_and_its_twin_collates():
    """A window whose `audios` column was removed is a named ImageCountError; with it, it collates."""
    w = next(w for w in windows_of("qwen2_5_omni") if len(w["audios"]))
    collator = WindowCollator(processor())
    with pytest.raises(chunker.ImageCountError, match="no 'audios' and no input_features"):
        collator([{k: v for k, v in w.items() if k != "audios"}])
    assert "feature_attention_mask" in collator([w])


# ---------------------------------------------------------------------- a real tiny thinker


@pytest.mark.parametrize("family", OMNI_FAMILIES)
def test_the_thinker_gives_each_collated_window_the_positions_it_gives_the_window_alone(family):
    """The thinker computes its 3-D rope positions itself, from the batch's ids, grids and audio lengths: for the
    padded batch of windows they equal, row by row, what it computes for each window's text processed alone with
    its own media by the processor (so no position or type-id column is needed, and none is sent)."""
    p = processor(family)
    model = build_model(family, p)
    windows = windows_of(family)
    batch = WindowCollator(p)(windows)
    assert "position_ids" not in batch and "mm_token_type_ids" not in batch
    frames = batch["feature_attention_mask"].sum(-1)
    rope, _ = model.model.get_rope_index(batch["input_ids"], batch.get("image_grid_thw"), None,
                                         batch["attention_mask"], False, frames)
    for r, w in enumerate(windows):
        # the window's text with each expanded run back to the one placeholder the processor expands
        text = re.sub(r"(<\|AUDIO\|>)+", p.audio_token, p.tokenizer.decode(w["input_ids"]))
        text = re.sub(r"(<\|IMAGE\|>)+", p.image_token, text)
        media = {"images": list(w["images"])} if len(w["images"]) else {}
        if len(w["audios"]):
            media["audio"] = list(w["audios"])
        alone = p(text=[text], return_tensors="pt", **media)
        assert torch.equal(alone["input_ids"][0], torch.as_tensor(w["input_ids"]))
        grid = alone.get("image_grid_thw")
        lengths = alone["feature_attention_mask"].sum(-1) if "feature_attention_mask" in alone else None
        # a window without images or videos: the thinker's plain branch (audio positions are linear)
        own, _ = model.model.get_rope_index(alone["input_ids"], grid, None, alone["attention_mask"], False, lengths)
        n = len(w["input_ids"])
        assert torch.equal(rope[:, r, :n], own[:, 0]), r


@pytest.mark.parametrize("family", OMNI_FAMILIES)
def test_the_tiny_thinker_trains_on_collated_windows_and_naive_truncation_fails(family):
    """The real thinker (audio and vision towers) runs forward and backward on the collated windows and its audio
    tower, vision tower and language model (and experts) all change; the same row cut naively inside its first image
    span, with all its media, raises the model's own error (the positive control)."""
    p = processor(family)
    model = build_model(family, p)
    batch = WindowCollator(p)(windows_of(family))
    assert {"input_features", "feature_attention_mask", "pixel_values", "image_grid_thw"} <= set(batch)
    assert_trains(model, [batch, batch], PARTS[family])
    out = processed(family)
    ids = np.asarray(out["input_ids"])
    image = next(s for kind, s, *_ in spans_read_off(family, ids[0]) if kind == "image")
    keys = ("input_features", "feature_attention_mask", "pixel_values", "image_grid_thw")
    whole = {"input_ids": torch.as_tensor(ids), "attention_mask": torch.as_tensor(np.asarray(out["attention_mask"])),
             **{k: torch.as_tensor(np.asarray(out[k])) for k in keys}}
    cut = {**whole, "input_ids": whole["input_ids"][:, : image + 3], "attention_mask": whole["attention_mask"][:, : image + 3]}
    assert_cut_raises(model, cut, whole)


def test_naive_truncation_inside_an_audio_span_raises_nothing_and_feeds_the_cut_audio_to_other_tokens():
    """The thinker checks no audio count: a row of audio only, cut naively inside its second audio span, runs without
    an error while its text holds fewer audio placeholders than its audio tower makes features (the tail of the cut
    item, and every later item, reaches no token, and nothing says so). The whole row's counts agree."""
    p = processor()
    model = build_model("qwen2_5_omni", p)
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "hi"}, {"type": "audio"},
                                             {"type": "text", "text": "and"}, {"type": "audio"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "a cat."}]}]
    out = run("qwen2_5_omni", messages, [], waveforms(LENGTHS[:3]))
    ids = torch.as_tensor(np.asarray(out["input_ids"]))
    second = [s for kind, s, *_ in spans_read_off("qwen2_5_omni", ids[0].numpy()) if kind == "audio"][1]
    whole = {"input_ids": ids, "attention_mask": torch.as_tensor(np.asarray(out["attention_mask"])),
             "input_features": torch.as_tensor(np.asarray(out["input_features"])),
             "feature_attention_mask": torch.as_tensor(np.asarray(out["feature_attention_mask"]))}
    cut = {**whole, "input_ids": ids[:, : second + 4], "attention_mask": whole["attention_mask"][:, : second + 4]}
    features = sum(p._get_num_multimodal_tokens(audio_lengths=list(LENGTHS[:3]))["num_audio_tokens"])
    assert int((whole["input_ids"] == p.audio_token_id).sum()) == features
    assert int((cut["input_ids"] == p.audio_token_id).sum()) < features
    assert_cut_raises(model, cut, whole, silent=True)
    with pytest.raises(chunker.SpanError):
        chunker.find_image_spans(cut["input_ids"][0].numpy(), chunker.ImageSpanSpec.from_processor(p))


@pytest.mark.parametrize("family", OMNI_FAMILIES)
def test_packed_windows_get_each_windows_own_positions_from_the_thinker(family):
    """`pack_windows` rows collated with `model=`: the position ids are, per window, the text positions restarting
    at 0 and the thinker's own 3-D rope of the window alone; the packed batch trains. Without `model=` packed Omni
    rows are refused by name (the rope rule reads audio lengths and video timing)."""
    datasets = pytest.importorskip("datasets")
    p = processor(family)
    model = build_model(family, p)
    windows = windows_of(family)
    rows = [{k: w[k] for k in ("input_ids", "labels", "attention_mask", "images", "audios", "source_index",
                               "window_index", "num_windows")} for w in windows]
    rows = [{**r, "images": list(r["images"]), "audios": [a.tolist() for a in r["audios"]]} for r in rows]
    packed = chunker.pack_windows(datasets.Dataset.from_list(rows), max_length=128)
    assert len(packed) < len(windows)
    packed_rows = [packed[i] for i in range(len(packed))]
    with pytest.raises(chunker.ConfigError, match="packed qwen.* rows need the thinker's own rope rule"):
        WindowCollator(p)(packed_rows)
    batch = WindowCollator(p, model=model)(packed_rows)
    pos = batch["position_ids"]
    assert pos.shape[0] == 4
    alone = WindowCollator(p)(windows)
    frames = alone["feature_attention_mask"].sum(-1)
    rope, _ = model.model.get_rope_index(alone["input_ids"], alone.get("image_grid_thw"), None,
                                         alone["attention_mask"], False, frames)
    seen = []
    for r, row in enumerate(packed_rows):
        at = 0
        for n, k in zip(row["segment_lengths"], row["window_index"]):
            assert torch.equal(pos[0, r, at:at + n], torch.arange(n))
            assert torch.equal(pos[1:, r, at:at + n], rope[:, k, :n]), (r, k)
            at = at + n
            seen.append(k)
    assert sorted(seen) == list(range(len(windows)))
    assert torch.isfinite(model(**batch).loss)
