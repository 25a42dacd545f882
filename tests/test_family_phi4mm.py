"""Phi-4-multimodal: images `<|image|>×n` and audio `<|audio|>×k` as bare runs, through one family adapter
(`chunker.families.phi4mm`).

The real processor (its real torchvision image processor, its real `Phi4MultimodalFeatureExtractor` and the converted
checkpoint's chat template, vendored) and a tiny real `Phi4MultimodalForCausalLM` are built offline
(`chunker.testing.families_phi4mm`; the image processor needs torchvision, so the module skips without it).

References come from the processor itself (its expansion of each item in `text_replacement_offsets` mapped to tokens
by its own offsets, its image processor's `num_img_tokens`, its feature extractor's `audio_embed_sizes`, both on a
window's media alone), from the chat template rendering the conversation incrementally, or from the ids read directly;
never from chunker's own functions.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from model_checks import assert_trains
from PIL import Image

import chunker
from chunker.collator import WindowCollator

pytest.importorskip("torchvision", reason="Phi4MultimodalImageProcessor has only a torchvision backend")

from chunker.testing.families_audio import waveforms
from chunker.testing.families_phi4mm import build_model, build_processor

MAX_LENGTH = 800  # the larger image is 721 tokens (a global image and two 448x448 crops), the smaller 545
SIZES = ((300, 500), (448, 448))  # (height, width) of the two images
LENGTHS = (3200, 8000, 16000)  # samples at 16 kHz: 3, 6 and 13 audio tokens by the feature extractor
ANSWERS = ("the quick brown fox jumps over the lazy dog. " * 3, "a cat sits on a mat next to a red ball. " * 3,
           "describe this picture in detail. answer briefly. " * 2)


@cache
def processor():
    return build_processor()


def ids_of(*tokens):
    return [processor().tokenizer.convert_tokens_to_ids(t) for t in tokens]


def images():
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


def conversation(with_images=True):
    """Three turns: two images back to back, two audio clips back to back, then an audio clip after text."""
    users = [[{"type": "image"}] * 2 * with_images + [{"type": "text", "text": "compare the two images"}],
             [{"type": "text", "text": "what is said?"}, {"type": "audio"}, {"type": "audio"}],
             [{"type": "audio"}, {"type": "text", "text": "and this one?"}]]
    messages = []
    for user, answer in zip(users, ANSWERS):
        messages += [{"role": "user", "content": user},
                     {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return messages


def process(text, imgs, audios, **kwargs):
    media = {"images": imgs} if imgs else {}
    if audios:
        media["audio"] = list(audios)
    return processor()(text=[text], return_tensors="np", **media, **kwargs)


@cache
def processed():
    """The processor's own output for the whole conversation, with its expansion of each item."""
    text = processor().apply_chat_template(conversation(), tokenize=False)
    return process(text, images(), waveforms(LENGTHS), return_text_replacement_offsets=True,
                   return_offsets_mapping=True)


def expanded_items():
    """(kind, first token, end token) of each item as the processor expanded it: its replacement's characters mapped
    to tokens by the processor's own offsets (each placeholder is one token), in text order."""
    out = processed()
    starts = np.asarray(out["offset_mapping"])[0][:, 0]
    items = []
    for r in out["text_replacement_offsets"][0]:
        a, b = r["new_span"]
        assert r["replacement"] == r["text"] * (len(r["replacement"]) // len(r["text"]))  # a bare run, no brackets
        first, end = int(np.searchsorted(starts, a)), int(np.searchsorted(starts, b))
        items.append((r["type"], first, end))
    return items


def pre_tokenized():
    """The whole conversation pre-tokenized by the processor, with its media tensors and item names."""
    out = processed()
    ids = np.asarray(out["input_ids"])[0]
    keys = ("image_pixel_values", "image_sizes", "image_attention_mask", "audio_input_features", "audio_embed_sizes",
            "audio_attention_mask")
    return {"input_ids": ids, "labels": ids, **{k: np.asarray(out[k]) for k in keys},
            "images": [f"image {k}" for k in range(len(SIZES))], "audios": [f"audio {k}" for k in range(len(LENGTHS))]}


def runs_of(ids, token):
    """Lengths of the runs of `token` in `ids`, read directly."""
    pos = np.flatnonzero(np.asarray(ids) == token)
    if not len(pos):
        return []
    cuts = np.flatnonzero(np.diff(pos) != 1) + 1
    return [len(r) for r in np.split(pos, cuts)]


# ---------------------------------------------------------------------- the grammar against the processor


def test_detected_and_the_grammar_probe_passes_and_a_broken_grammar_fails_it():
    from test_families import check_probe_and_twin

    spec = chunker.ImageSpanSpec.from_processor(processor())
    assert spec.family == "phi4_multimodal" and spec.kind == "run" and not spec.audio_open_ids
    check_probe_and_twin(processor())


def test_items_are_the_processors_own_expansion_of_each_image_and_audio():
    """The processor expands each `<|image|>` / `<|audio|>` into a bare run of itself (back-to-back items share a run
    of the text); the items chunker finds are exactly its expansions, kinds and counts included."""
    from chunker.families import adapter_for

    out = processed()
    ids = np.asarray(out["input_ids"])[0]
    image, audio = ids_of("<|image|>", "<|audio|>")
    want = expanded_items()
    assert [k for k, _, _ in want] == ["image", "image", "audio", "audio", "audio"]
    assert runs_of(ids, image) == [want[0][2] - want[0][1] + want[1][2] - want[1][1]]  # the images share one run
    assert len(runs_of(ids, audio)) == 2
    own = processor().image_processor(images(), return_tensors="np")["num_img_tokens"]
    assert [e - s for _, s, e in want] == [*own, *np.asarray(out["audio_embed_sizes"]).tolist()] == [721, 545, 3, 6, 13]
    spec = chunker.ImageSpanSpec.from_processor(processor())
    tensors = {k: np.asarray(out[k]) for k in ("image_sizes", "image_attention_mask", "audio_embed_sizes")}
    spans = adapter_for(processor()).items(chunker.find_image_spans(ids, spec), tensors, None)
    kinds = {"image": 0, "audio": 2}
    assert list(zip(spans.kinds.tolist(), spans.starts.tolist(), spans.ends.tolist())) == [
        (kinds[k], s, e) for k, s, e in want]


# microsoft/Phi-4-multimodal-instruct's original (remote-code) `tokenizer_config.json` template, which takes string
# contents only (the Phi-4-mini one; public copies in SOURCES.md's row of the vendored template)
ORIGINAL_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and message['tools'] is not "
    "none %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' + "
    "'<|end|>' }}{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)


@pytest.mark.parametrize("generation_prompt", [False, True])
def test_the_vendored_template_renders_string_conversations_as_the_checkpoints_original_one(generation_prompt):
    """On string contents (what the original template takes), the vendored processor template gives the same text."""
    messages = [{"role": "system", "content": "answer briefly."}, {"role": "user", "content": "what is shown?"},
                {"role": "assistant", "content": "a cat."}, {"role": "user", "content": "and now?"}]
    render = lambda template: processor().apply_chat_template(messages, chat_template=template, tokenize=False,
                                                              add_generation_prompt=generation_prompt)
    assert render(None) == render(ORIGINAL_TEMPLATE)


@pytest.mark.parametrize("sizes", [((300, 500), (448, 448)), ((1000, 200), (60, 900), (900, 900))])
def test_image_counts_from_sizes_and_masks_equal_the_image_processors(sizes):
    """Each image's count, read from its `image_sizes` and `image_attention_mask` rows, is the image processor's own
    `num_img_tokens`, whether the image is processed beside larger ones (padded crops) or alone."""
    from chunker.families.phi4mm import image_tokens

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    ip = processor().image_processor
    out = ip(imgs, return_tensors="np")
    assert image_tokens(out["image_sizes"], out["image_attention_mask"], 448).tolist() == list(out["num_img_tokens"])
    alone = [ip([im], return_tensors="np") for im in imgs]
    assert [int(image_tokens(a["image_sizes"], a["image_attention_mask"], 448)[0]) for a in alone] == list(
        out["num_img_tokens"])


# ---------------------------------------------------------------------- windows


def test_pre_tokenized_windows_keep_every_item_whole_with_exactly_its_own_tensors():
    """Each window holds whole items only (an image or audio run is cut only where an item ends) and its tensors are
    those of its own items: the image processor's and the feature extractor's output on the window's media alone
    (pixels and masks of each image's real crops, sizes; features of each audio's real frames, embed sizes)."""
    row = pre_tokenized()
    imgs, waves = images(), waveforms(LENGTHS)
    want = expanded_items()
    counts = {"image": [e - s for k, s, e in want if k == "image"], "audio": [e - s for k, s, e in want if k == "audio"]}
    windows = chunker.WindowSplitter(processor(), max_length=MAX_LENGTH, keep_pixels=True).split_example(row)
    assert len(windows) >= 2
    image, audio = ids_of("<|image|>", "<|audio|>")
    seen = {"image": [], "audio": []}
    for w in windows:
        ids = np.asarray(w["input_ids"])
        assert len(ids) <= MAX_LENGTH
        own_images = [int(n.split()[1]) for n in w["images"]]
        own_audios = [int(n.split()[1]) for n in w["audios"]]
        assert sum(runs_of(ids, image)) == sum(counts["image"][i] for i in own_images)
        assert sum(runs_of(ids, audio)) == sum(counts["audio"][i] for i in own_audios)
        if own_images:
            alone = processor().image_processor([imgs[i] for i in own_images], return_tensors="np")
            np.testing.assert_array_equal(w["image_sizes"], alone["image_sizes"])
            for j in range(len(own_images)):
                h, wd = np.asarray(alone["image_sizes"])[j]
                real = 1 + (h // 448) * (wd // 448)
                np.testing.assert_allclose(np.asarray(w["image_pixel_values"])[j][:real],
                                           np.asarray(alone["image_pixel_values"])[j][:real], rtol=0, atol=1e-6)
                np.testing.assert_array_equal(np.asarray(w["image_attention_mask"])[j][:real],
                                              np.asarray(alone["image_attention_mask"])[j][:real])
                assert not np.asarray(w["image_pixel_values"])[j][real:].any()  # padding crops stay zero
        if own_audios:
            alone = processor().audio_processor([waves[i] for i in own_audios], return_tensors="np")
            np.testing.assert_array_equal(w["audio_embed_sizes"], alone["audio_embed_sizes"])
            frames = [(len(waves[i]) - 400) // 160 + 1 for i in own_audios]  # the extractor's frames of each clip
            for j, n in enumerate(frames):
                np.testing.assert_allclose(np.asarray(w["audio_input_features"])[j][:n],
                                           np.asarray(alone["audio_input_features"])[j][:n], rtol=0, atol=1e-4)
                assert np.asarray(w["audio_attention_mask"])[j].sum() == n
        seen["image"] += own_images
        seen["audio"] += own_audios
    assert sorted(set(seen["image"])) == [0, 1] and sorted(set(seen["audio"])) == [0, 1, 2]


def reference_targets(messages, imgs, waves):
    """Supervised tokens by incremental templating, on tokens: what each answer adds to the conversation before it
    with the generation prompt, as far as the whole conversation continues with it (the template ends a conversation
    with its EOS, which follows an answer in the whole conversation only after the last one)."""
    render = lambda msgs, gen: processor().apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    whole = np.asarray(processed()["input_ids"])[0]
    out, n_img, n_aud = [], 0, 0
    for k, msg in enumerate(messages):
        n_img += sum(c.get("type") == "image" for c in msg["content"])
        n_aud += sum(c.get("type") == "audio" for c in msg["content"])
        if msg["role"] != "assistant":
            continue
        prompt = np.asarray(process(render(messages[:k], True), imgs[:n_img], waves[:n_aud])["input_ids"])[0]
        full = np.asarray(process(render(messages[:k + 1], False), imgs[:n_img], waves[:n_aud])["input_ids"])[0]
        assert (full[:len(prompt)] == prompt).all() and (whole[:len(prompt)] == prompt).all()
        answer, rest = full[len(prompt):], whole[len(prompt):]
        n = min(len(answer), len(rest))
        agree = int(np.argmax(answer[:n] != rest[:n])) if (answer[:n] != rest[:n]).any() else n
        out.append(answer[:agree])
    eos, end = processor().tokenizer.eos_token_id, ids_of("<|end|>")[0]
    assert [a[-1] for a in out] == [end] * (len(out) - 1) + [eos]
    return np.concatenate(out)


@pytest.mark.parametrize("max_length,overlap", [(MAX_LENGTH, 0), (1024, 64)])
def test_conversation_windows_train_every_answer_token_exactly_once(max_length, overlap):
    """From the conversation itself: windows of at most max_length carry exactly the images and audio whose runs they
    hold, and their supervised tokens, in order, are the answers as the chat template renders them, each once."""
    messages, imgs, waves = conversation(), images(), waveforms(LENGTHS)
    windows = chunker.WindowSplitter(processor(), max_length=max_length, overlap=overlap).split_example(
        {"messages": messages, "images": imgs, "audios": waves}, index=3)
    assert len(windows) >= 2
    want = expanded_items()
    counts = {"image": [e - s for k, s, e in want if k == "image"], "audio": [e - s for k, s, e in want if k == "audio"]}
    image, audio = ids_of("<|image|>", "<|audio|>")
    trained = []
    for w in windows:
        ids, labels = np.asarray(w["input_ids"]), np.asarray(w["labels"])
        assert len(ids) <= max_length and w["source_index"] == 3
        own_images = [next(i for i, im in enumerate(imgs) if im is x) for x in w["images"]]
        own_audios = [next(i for i, a in enumerate(waves) if a is x) for x in w["audios"]]
        assert sum(runs_of(ids, image)) == sum(counts["image"][i] for i in own_images)
        assert sum(runs_of(ids, audio)) == sum(counts["audio"][i] for i in own_audios)
        assert not np.isin(labels, [image, audio]).any()
        trained.append(labels[1:][labels[1:] != -100])
    np.testing.assert_array_equal(np.concatenate(trained), reference_targets(messages, imgs, waves))


def test_a_window_too_small_for_an_image_never_cuts_it():
    """The 721-token image cannot fit 700 tokens: a named OversizeSpanError, never a cut; at MAX_LENGTH it splits."""
    row = pre_tokenized()
    with pytest.raises(chunker.OversizeSpanError, match="of 721 tokens"):
        chunker.WindowSplitter(processor(), max_length=700, keep_pixels=True).split_example(row)
    assert chunker.WindowSplitter(processor(), max_length=MAX_LENGTH, keep_pixels=True).split_example(row)


def test_a_row_whose_audio_sizes_disagree_with_its_runs_is_refused_by_name():
    """Audio embed sizes of the second and third clips swapped cannot cut the audio runs (3 + 6 back to back, then
    13): a named error, never a silent cut; the row's own sizes split."""
    row = pre_tokenized()
    swapped = {**row, "audio_embed_sizes": row["audio_embed_sizes"][[0, 2, 1]]}
    splitter = chunker.WindowSplitter(processor(), max_length=MAX_LENGTH, keep_pixels=True)
    with pytest.raises(chunker.ImageTokenCountError, match=r"runs of \[9, 13\] tokens cannot be cut into images of "
                                                            r"\[3, 13, 6\]"):
        splitter.split_example(swapped)
    assert splitter.split_example(row)


# ---------------------------------------------------------------------- collator


def windows_from_conversation():
    return chunker.WindowSplitter(processor(), max_length=MAX_LENGTH).split_example(
        {"messages": conversation(), "images": images(), "audios": waveforms(LENGTHS)})


def test_the_collator_names_the_row_and_audio_item_whose_run_disagrees_and_its_twin_collates():
    """Two windows whose audio items are swapped between them fail the per-item check, naming the row and its audio
    item; the same windows with their own audio collate, with the features the feature extractor makes of them."""
    waves = waveforms(LENGTHS)
    windows = chunker.WindowSplitter(processor(), max_length=40).split_example(
        {"messages": conversation(with_images=False), "audios": waves})
    a, b = [w for w in windows if len(w["audios"])]
    assert [len(a["audios"]), len(b["audios"])] == [2, 1]  # audio 0 and 1 back to back (3 + 6 tokens), audio 2 (13)
    collator = WindowCollator(processor())
    swapped = [{**a, "audios": b["audios"]}, {**b, "audios": a["audios"]}]
    with pytest.raises(chunker.ImageTokenMismatchError, match=r"row 0 \(source_index -1, window_index \d\): audio 0: "
                                                             r"9 tokens \(its media need 13\); row 1 \(source_index -1, window_index \d\): audios from 0 on: a run of "
                                                             r"13 tokens that does not end where one of them ends"):
        collator(swapped)
    batch = collator([a, b])
    own = processor().audio_processor(list(a["audios"]) + list(b["audios"]), return_tensors="pt")
    torch.testing.assert_close(batch["audio_input_features"], own["audio_input_features"])
    assert torch.equal(batch["audio_embed_sizes"], own["audio_embed_sizes"])


def test_the_collator_names_the_row_and_image_whose_run_disagrees_and_its_twin_collates():
    """Two windows whose images are swapped between them (721 and 545 tokens) fail the per-item check, naming the row
    and its image; with their own images they collate, with the pixels the image processor makes of them."""
    with_image = [w for w in windows_from_conversation() if len(w["images"])]
    a, b = with_image[0], with_image[1]
    collator = WindowCollator(processor())
    swapped = [{**a, "images": b["images"]}, {**b, "images": a["images"]}]
    with pytest.raises(chunker.ImageTokenMismatchError, match=r"row 0 \(source_index -1, window_index 0\): image"):
        collator(swapped)
    batch = collator([a, b])
    own = processor().image_processor(list(a["images"]) + list(b["images"]), return_tensors="pt")
    torch.testing.assert_close(batch["image_pixel_values"], own["image_pixel_values"])
    assert torch.equal(batch["image_sizes"], own["image_sizes"])


def test_the_collator_refuses_audio_tokens_without_audio_and_its_twin_collates():
    """A window whose `audios` column was removed is a named ImageCountError; with it, it collates."""
    w = next(w for w in windows_from_conversation() if len(w["audios"]))
    collator = WindowCollator(processor())
    with pytest.raises(chunker.ImageCountError, match="no 'audios'"):
        collator([{k: v for k, v in w.items() if k != "audios"}])
    assert "audio_input_features" in collator([w])


# ---------------------------------------------------------------------- a real tiny model


def test_the_tiny_phi4mm_trains_on_collated_windows_and_naive_truncation_fails():
    """The real Phi4MultimodalForCausalLM runs forward and backward on the collated windows and its vision tower,
    image projection, audio encoder and language model all change; the same row cut naively at MAX_LENGTH with all
    its media raises the model's own error (its `index_put` of the features into fewer placeholders), while the whole
    row runs (the positive control)."""
    model = build_model("phi4_multimodal", processor())
    batch = WindowCollator(processor())(windows_from_conversation())
    assert {"image_pixel_values", "image_attention_mask", "audio_input_features", "audio_embed_sizes"} <= set(batch)
    assert_trains(model, [batch, batch], (r"image_embed\.img_processor", r"image_embed\.img_projection",
                                          r"audio_embed\.encoder", r"layers\.\d"))
    out = processed()
    takes = ("input_ids", "attention_mask", "image_pixel_values", "image_sizes", "image_attention_mask",
             "audio_input_features", "audio_embed_sizes", "audio_attention_mask")
    whole = {k: torch.as_tensor(np.asarray(out[k])) for k in takes}
    cut = {k: v[:, :MAX_LENGTH] if k in ("input_ids", "attention_mask") else v for k, v in whole.items()}
    with torch.no_grad():
        assert torch.isfinite(model(**whole, labels=whole["input_ids"]).loss)
        with pytest.raises(RuntimeError, match=r"shape mismatch: value tensor of shape \[\d+, \d+\] cannot be "
                                               r"broadcast to indexing result of shape \[\d+, \d+\]"):
            model(**cut)


def test_conversations_and_pre_tokenized_rows_split_through_dataset_map_and_collate():
    """Through `Dataset.map` (Arrow storage of the media columns), conversational and pre-tokenized rows give windows
    that carry every image and audio item of their rows and, read back from Arrow, collate with each item checked. A
    pre-tokenized row needs its `audio_embed_sizes` to cut its back-to-back audio (a named error without them)."""
    datasets = pytest.importorskip("datasets")
    waves = [a.tolist() for a in waveforms(LENGTHS)]
    ids = np.asarray(processed()["input_ids"])[0].tolist()
    splitter = chunker.WindowSplitter(processor(), max_length=MAX_LENGTH)
    collator = WindowCollator(processor())
    bare = {"input_ids": ids, "labels": ids, "images": images(), "audios": waves}
    with pytest.raises(chunker.ImageCountError, match="3 audio items but its text holds 2 audio spans"):
        splitter.split_example(bare)
    sizes = np.asarray(processed()["audio_embed_sizes"]).tolist()
    conversational = [{"messages": conversation(), "images": images(), "audios": waves}] * 2
    for rows in (conversational, [{**bare, "audio_embed_sizes": sizes}]):
        ds = datasets.Dataset.from_list(rows)
        windows = ds.map(splitter, batched=True, with_indices=True, remove_columns=ds.column_names)
        assert sum(len(a) for a in windows["audios"]) >= len(LENGTHS) * len(rows)
        assert sum(len(a) for a in windows["images"]) >= len(SIZES) * len(rows)
        batch = collator([windows[i] for i in range(len(windows))])
        clips = [np.asarray(a, dtype=np.float32) for w in windows for a in w["audios"]]
        assert batch["audio_embed_sizes"].tolist() == [int(processor().audio_processor([c])["audio_embed_sizes"][0])
                                                       for c in clips]


def test_windows_with_and_without_an_audio_mask_collate_with_one_mask_row_per_audio_item():
    """The feature extractor leaves `audio_attention_mask` out for a single clip: a pre-tokenized window of a one-clip
    row beside a window holding the mask collates with a mask row for every clip (the single clip's frames all valid),
    as the feature extractor gives the same clips together; the model runs on it."""
    one = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "what is said?"}]},
           {"role": "assistant", "content": [{"type": "text", "text": ANSWERS[0]}]}]
    lone, many = waveforms((24000,)), waveforms(LENGTHS)
    rows = []
    for messages, waves in ((one, lone), (conversation(with_images=False), many)):
        out = process(processor().apply_chat_template(messages, tokenize=False), None, waves)
        ids = np.asarray(out["input_ids"])[0]
        keys = [k for k in ("audio_input_features", "audio_embed_sizes", "audio_attention_mask") if k in out]
        rows.append({"input_ids": ids, "labels": ids, **{k: np.asarray(out[k]) for k in keys}})
    assert "audio_attention_mask" not in rows[0] and "audio_attention_mask" in rows[1]
    splitter = chunker.WindowSplitter(processor(), max_length=MAX_LENGTH, keep_pixels=True)
    windows = [splitter.split_example(r)[0] for r in rows]
    batch = WindowCollator(processor())(windows)
    own = processor().audio_processor([*lone, *many], return_tensors="pt")
    assert torch.equal(batch["audio_attention_mask"], own["audio_attention_mask"])
    assert torch.equal(batch["audio_embed_sizes"], own["audio_embed_sizes"])
    with torch.no_grad():
        assert torch.isfinite(build_model("phi4_multimodal", processor())(**batch).loss)
