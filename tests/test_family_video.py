"""Videos split whole with their real video processors: Gemma 4 (a video is its frames, each
`mm:ss <|image> <|video|>×n <image|>`, joined by spaces: one item from its first frame's `<|image>` to its last frame's
`<image|>`) and LLaVA-NeXT-Video (a video is one `<video>` run of frames × patches / 4 tokens).

Each processor is the real class with its real video processor (torchvision), built offline
(`chunker.testing.families_video`). References come from the processor itself (its expansion of each video in
`text_replacement_offsets`, its `_get_num_multimodal_tokens`, its video processor's output on a window's videos alone),
from the token ids read directly, or from the answers' places in the processor's expanded text; never from chunker's own
functions. A tiny real model of each family trains on collated windows while naive truncation of the same row raises
the model's own "Video features and video tokens do not match" (the positive control).
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np
import pytest

pytest.importorskip("torchvision", reason="the real video processors (Gemma4VideoProcessor, "
                    "LlavaNextVideoVideoProcessor) need torchvision, which does not load beside torch 2.13")

import torch
from model_checks import assert_cut_raises, assert_trains, forward_inputs, naive_cut, random_images

import chunker
from chunker.collator import WindowCollator
from chunker.families import adapter_for
from chunker.testing.families_video import build_model, build_processor, video_frames

ANSWERS = ("a cat sits on a mat next to a red ball.", "the quick brown fox jumps over the lazy dog.")
IMAGE = random_images(((30, 40),), seed=3)[0]


@cache
def processor(family):
    return build_processor(family)


def names(window, column):
    """The item indices a window carries (its `column` holds "v0", "i0"... names)."""
    return [int(n[1:]) for n in window[column]]


def token_ranges(family, kind):
    """(start, end) token range of each `kind` replacement the processor made, from its own character offsets in the
    expanded text (`new_span`) mapped to tokens by the tokenizer's offsets on that text."""
    text, out = processed(family)
    reps = sorted(out["text_replacement_offsets"][0], key=lambda r: r["span"][0])
    expanded, at = "", 0
    for r in reps:
        expanded += text[at:r["span"][0]] + r["replacement"]
        at = r["span"][1]
    expanded += text[at:]
    enc = processor(family).tokenizer(expanded, return_offsets_mapping=True)
    assert enc["input_ids"] == np.asarray(out["input_ids"])[0].tolist()  # the same tokens the processor gave
    offsets = np.asarray(enc["offset_mapping"])
    ranges = []
    for r in reps:
        if r["type"] == kind:
            a, b = r["new_span"]
            inside = np.flatnonzero((offsets[:, 0] >= a) & (offsets[:, 1] <= b) & (offsets[:, 1] > offsets[:, 0]))
            ranges.append((int(inside[0]), int(inside[-1]) + 1))
    return ranges, expanded, offsets


def answer_labels(family):
    """The row's labels: its ids on the answers' tokens (found as text in the expanded conversation), -100 elsewhere."""
    _, out = processed(family)
    ids = np.asarray(out["input_ids"])[0]
    _, expanded, offsets = token_ranges(family, "video")
    labels = np.full(len(ids), -100)
    for answer in ANSWERS:
        a = expanded.index(answer)
        inside = (offsets[:, 0] >= a) & (offsets[:, 1] <= a + len(answer)) & (offsets[:, 1] > offsets[:, 0])
        labels[inside] = ids[inside]
    return labels


def pre_tokenized(family, *keys):
    """The whole conversation as the processor tokenized it, with answer labels, item names and its media tensors."""
    _, out = processed(family)
    ids = np.asarray(out["input_ids"])[0]
    return {"input_ids": ids, "labels": answer_labels(family), "images": ["i0"],
            "videos": [f"v{k}" for k in range(len(videos(family)))], **{k: np.asarray(out[k]) for k in keys}}


def contains(ids, part) -> bool:
    """`part` occurs in `ids` as one contiguous run."""
    ids, part = list(ids), list(part)
    return any(ids[i:i + len(part)] == part for i in range(len(ids) - len(part) + 1))


def assert_supervised_once(family, windows):
    """The supervised tokens of all windows, in order, are the answers' tokens of the whole row, each exactly once."""
    labels = answer_labels(family)
    want = labels[1:][labels[1:] != -100].tolist()
    got = [t for w in windows for t in np.asarray(w["labels"])[1:].tolist() if t != -100]
    assert got == want and len(want) > 10


# ====================================================================== Gemma 4

G_SHAPES = ((2, 30, 30), (3, 24, 36))  # (frames, height, width): 64 and 60 soft tokens per frame by the processor
G_MAX = 240
G_TENSORS = ("pixel_values", "image_position_ids", "pixel_values_videos", "video_position_ids", "num_frames_per_video")


def videos(family):
    return video_frames(G_SHAPES if family == "gemma4" else L_SHAPES, seed=5)


@cache
def processed(family):
    """The processor's own output for the whole conversation: (its text, its output with replacement offsets)."""
    if family == "gemma4":
        from transformers.video_utils import VideoMetadata

        p = processor("gemma4")
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what happens?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": ANSWERS[0]}]},
                    {"role": "user", "content": [{"type": "image"}, {"type": "video"},
                                                 {"type": "text", "text": "and here?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": ANSWERS[1]}]}]
        text = p.apply_chat_template(messages, tokenize=False)
        clips = videos("gemma4")
        metadata = [VideoMetadata(total_num_frames=len(v), fps=1.0, frames_indices=list(range(len(v)))) for v in clips]
        out = p(text=[text], images=[[IMAGE]], videos=clips, video_metadata=metadata, return_tensors="np",
                return_text_replacement_offsets=True)
        return text, out
    # LLaVA-NeXT-Video-7B's template renders no video item: the conversation is written in its format by hand
    text = (f"USER: <video>\nwhat happens? ASSISTANT: {ANSWERS[0]} USER: <image>\n<video>\nand here? "
            f"ASSISTANT: {ANSWERS[1]}")
    out = processor(family)(text=[text], images=[IMAGE], videos=videos(family), return_tensors="np",
                            return_text_replacement_offsets=True)
    return text, out


def test_gemma4_expands_each_video_into_timestamped_frames_and_each_video_is_one_item():
    """The processor writes each video as `mm:ss <|image> <|video|>×n <image|>` per frame, joined by spaces, n its
    video processor's soft tokens per frame, frames as given; chunker makes each video ONE item from its first frame's
    `<|image>` to the end of the processor's replacement (only the first timestamp lies before it), holding the tokens
    `_get_num_multimodal_tokens` counts, beside the image item that is exactly the image's replacement."""
    p = processor("gemma4")
    _, out = processed("gemma4")
    own = p.video_processor(videos("gemma4"), return_tensors="np")
    per_frame, frames = own["num_soft_tokens_per_video"].tolist(), own["num_frames_per_video"].tolist()
    assert (per_frame, frames) == ([64, 60], [2, 3])
    totals = p._get_num_multimodal_tokens(video_sizes=list(G_SHAPES))["num_video_tokens"]
    assert totals == [n * t for n, t in zip(per_frame, frames)] == [128, 180]
    reps = [r["replacement"] for r in out["text_replacement_offsets"][0] if r["type"] == "video"]
    for rep, n, t in zip(reps, per_frame, frames):
        frame = rf"(\d\d:\d\d) <\|image>(?:<\|video\|>){{{n}}}<image\|>"
        assert re.fullmatch(rf"{frame}(?: {frame})*", rep)
        assert re.findall(r"\d\d:\d\d", rep) == [f"00:{s:02d}" for s in range(t)]  # 1 frame per second
    ids = np.asarray(out["input_ids"])[0]
    spec = chunker.ImageSpanSpec.from_processor(p)
    tensors = {k: np.asarray(out[k]) for k in G_TENSORS}
    items = adapter_for(p).items(chunker.find_image_spans(ids, spec), tensors, [IMAGE])
    video_ranges, _, _ = token_ranges("gemma4", "video")
    (image_range,), _, _ = token_ranges("gemma4", "image")
    video = items.kinds == 1
    assert items.kinds.tolist() == [1, 0, 1] and items.counts[video].tolist() == totals
    assert (int(items.starts[~video][0]), int(items.ends[~video][0])) == image_range
    for (a, b), s, e in zip(video_ranges, items.starts[video].tolist(), items.ends[video].tolist()):
        assert e == b and ids[s] == p.tokenizer.convert_tokens_to_ids("<|image>")
        assert p.tokenizer.decode(ids[a:s]) == "00:00 "


@pytest.mark.parametrize("max_length", [G_MAX, 300, 360])
def test_gemma4_windows_never_cut_a_video_and_carry_exactly_its_tensors(max_length):
    """Every window holds whole videos only (each video's tokens, timestamps between frames included, as one run
    equal to the whole row's), and its `pixel_values_videos`, `video_position_ids` and `num_frames_per_video` equal the
    video processor's output on that window's videos alone; each video lands in exactly one window."""
    p = processor("gemma4")
    ids = np.asarray(processed("gemma4")[1]["input_ids"])[0]
    video_ranges, _, _ = token_ranges("gemma4", "video")
    boi, video_id = p.tokenizer.convert_tokens_to_ids(["<|image>", "<|video|>"])
    runs = [ids[a + int(np.argmax(ids[a:b] == boi)):b] for a, b in video_ranges]
    row = pre_tokenized("gemma4", *G_TENSORS)
    windows = chunker.WindowSplitter(p, max_length=max_length, keep_pixels=True).split_example(row)
    assert len(windows) >= 2
    held = []
    for w in windows:
        win = np.asarray(w["input_ids"])
        own = names(w, "videos")
        assert len(win) <= max_length
        assert (win == video_id).sum() == sum((runs[k] == video_id).sum() for k in own)  # no part of a video
        assert all(contains(win, runs[k]) for k in own)
        if own:
            alone = p.video_processor([videos("gemma4")[k] for k in own], return_tensors="np")
            for key in ("pixel_values_videos", "video_position_ids", "num_frames_per_video"):
                np.testing.assert_array_equal(np.asarray(w[key]), alone[key])
        else:
            assert np.asarray(w["pixel_values_videos"]).shape[0] == np.asarray(w["num_frames_per_video"]).size == 0
        held += own
    assert held == [0, 1]
    assert_supervised_once("gemma4", windows)


def test_gemma4_video_rows_whose_tensors_do_not_say_the_frames_are_refused_by_name():
    """Frames without `num_frames_per_video` (no way to tell which frames make a video), frame counts that do not add up
    to the text's frames, and a grouping that would put the image inside a video are named errors, never a cut; the
    row with the processor's own tensors splits."""
    p = processor("gemma4")
    row = pre_tokenized("gemma4", *G_TENSORS)
    splitter = chunker.WindowSplitter(p, max_length=G_MAX, keep_pixels=True)
    bare = {k: row[k] for k in ("input_ids", "labels", "images", "videos")}
    with pytest.raises(chunker.SpanError, match="5 Gemma 4 video frames but no num_frames_per_video"):
        splitter.split_example(bare)
    with pytest.raises(chunker.ImageCountError, match=r"5 video frames but the video tensors describe videos of \[2, 2\]"):
        splitter.split_example({**row, "num_frames_per_video": np.array([2, 2])})
    with pytest.raises(chunker.SpanError, match="another media item lies between the frames of one video"):
        splitter.split_example({**row, "num_frames_per_video": np.array([3, 2])})
    assert len(splitter.split_example(row)) >= 2


def test_a_gemma4_processor_without_its_video_processor_refuses_the_video_row_by_name():
    """The image-only Gemma 4 processor (no torchvision) cannot tell a frame from an image: the real processor's video
    row is a named SpanError there; the processor with its video processor splits the same row."""
    from chunker.testing import build_processor as build

    row = pre_tokenized("gemma4", *G_TENSORS)
    with pytest.raises(chunker.SpanError, match="Gemma 4 video frame .*video processor is missing"):
        chunker.WindowSplitter(build("gemma4"), max_length=G_MAX, keep_pixels=True).split_example(row)
    assert chunker.WindowSplitter(processor("gemma4"), max_length=G_MAX, keep_pixels=True).split_example(row)


@cache
def gemma4_windows():
    row = pre_tokenized("gemma4", *G_TENSORS)
    return chunker.WindowSplitter(processor("gemma4"), max_length=G_MAX, keep_pixels=True).split_example(row)


def test_gemma4_collator_checks_every_video_frame_of_every_row_and_names_the_bad_item():
    """The windows collate with the video processor's tensors of their videos, in row order, and video type ids as the
    processor's; two windows given each other's video tensors (2 frames of 64 tokens vs 3 of 60) are refused, naming
    the row and its video item (frame 0, the first of its video's frames)."""
    p = processor("gemma4")
    windows = [w for w in gemma4_windows() if len(w["videos"])]
    assert [names(w, "videos") for w in windows] == [[0], [1]]
    collator = WindowCollator(p)
    batch = collator(windows)
    alone = p.video_processor(videos("gemma4"), return_tensors="pt")
    for key in ("pixel_values_videos", "video_position_ids", "num_frames_per_video"):
        assert torch.equal(batch[key], alone[key])
    ids = np.asarray(processed("gemma4")[1]["input_ids"])[0]
    video_id = p.tokenizer.convert_tokens_to_ids("<|video|>")
    assert int((batch["mm_token_type_ids"] == 2).sum()) == int((ids == video_id).sum()) == 308
    keys = ("pixel_values_videos", "video_position_ids", "num_frames_per_video")
    a, b = windows
    swapped = [{**a, **{k: b[k] for k in keys}}, {**b, **{k: a[k] for k in keys}}]
    with pytest.raises(chunker.ImageTokenMismatchError,
                       match=r"row 0 \(source_index -1, window_index 0\): video 0: 64 tokens \(its media need 60\)"):
        collator(swapped)


@pytest.mark.parametrize("family", ["gemma4", "llava_next_video"])
def test_video_windows_through_dataset_map_collate_as_the_direct_split(family):
    """`Dataset.map` (video tensors as Arrow lists; a window without videos holds empty ones) gives windows that
    collate to exactly the batch of the windows `split_example` gives."""
    import datasets

    keys, max_length = (G_TENSORS, G_MAX) if family == "gemma4" else (L_TENSORS, L_MAX)
    row = pre_tokenized(family, *keys)
    splitter = chunker.WindowSplitter(processor(family), max_length=max_length, keep_pixels=True)
    ds = datasets.Dataset.from_list([{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in row.items()}])
    mapped = list(ds.map(splitter, batched=True, with_indices=True, remove_columns=ds.column_names))
    direct = splitter.split_example(row, 0)
    assert len(mapped) == len(direct) >= 2 and any(not w["videos"] for w in mapped)
    collator = WindowCollator(processor(family))
    got, want = collator(mapped), collator(direct)
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_tiny_gemma4_trains_on_collated_video_windows_and_naive_truncation_fails():
    """The real Gemma4ForConditionalGeneration runs forward and backward on the collated windows (videos and the image)
    and its vision tower, vision projector and language model all change; the same row cut naively inside its second
    video, with all its media, raises the model's own video mismatch, while the whole row runs."""
    p = processor("gemma4")
    model = build_model("gemma4", p)
    batch = WindowCollator(p)(list(gemma4_windows()))
    assert {"pixel_values_videos", "video_position_ids", "num_frames_per_video", "pixel_values"} <= set(batch)
    assert_trains(model, [batch, batch], ("vision_tower", "embed_vision", "language_model"))
    whole = forward_inputs(model, processed("gemma4")[1])
    video_ranges, _, _ = token_ranges("gemma4", "video")
    cut_at = video_ranges[1][0] + 80  # inside the second video's second frame
    assert_cut_raises(model, naive_cut(whole, cut_at), whole, match="Video features and video tokens do not match")


# ====================================================================== LLaVA-NeXT-Video

L_SHAPES = ((3, 24, 36), (3, 30, 30))  # one processor call takes videos of one frame count; both become 3x28x28
L_MAX = 90
L_TENSORS = ("pixel_values", "image_sizes", "pixel_values_videos")


def test_llava_next_video_expands_each_video_into_one_run_that_is_one_item():
    """Each `<video>` becomes one run of frames × (28/7)² / 4 = 12 tokens as the processor expands it; the items chunker
    finds are exactly the processor's replacements (videos and the image), in text order."""
    p = processor("llava_next_video")
    _, out = processed("llava_next_video")
    reps = [r for r in out["text_replacement_offsets"][0]]
    assert [(r["type"], r["replacement"].count("<video>")) for r in reps] == [("video", 12), ("image", 0), ("video", 12)]
    ids = np.asarray(out["input_ids"])[0]
    tensors = {k: np.asarray(out[k]) for k in L_TENSORS}
    items = adapter_for(p).items(chunker.find_image_spans(ids, chunker.ImageSpanSpec.from_processor(p)), tensors,
                                 [IMAGE])
    (image_range,), _, _ = token_ranges("llava_next_video", "image")
    video_ranges, _, _ = token_ranges("llava_next_video", "video")
    assert items.kinds.tolist() == [1, 0, 1]
    assert list(zip(items.starts.tolist(), items.ends.tolist())) == [video_ranges[0], image_range, video_ranges[1]]
    assert items.counts.tolist() == [12, reps[1]["replacement"].count("<image>"), 12]


def test_llava_next_video_windows_carry_exactly_their_own_video_pixels():
    """Each window holds whole `<video>` runs and its `pixel_values_videos` equal the video processor's output on its
    videos alone (image pixels likewise); every answer token is supervised exactly once."""
    p = processor("llava_next_video")
    windows = chunker.WindowSplitter(p, max_length=L_MAX, keep_pixels=True).split_example(
        pre_tokenized("llava_next_video", *L_TENSORS))
    assert len(windows) >= 2
    video_id = p.tokenizer.convert_tokens_to_ids("<video>")
    held = []
    for w in windows:
        own = names(w, "videos")
        assert len(w["input_ids"]) <= L_MAX and (np.asarray(w["input_ids"]) == video_id).sum() == 12 * len(own)
        if own:
            alone = p.video_processor([videos("llava_next_video")[k] for k in own], return_tensors="np")
            np.testing.assert_array_equal(np.asarray(w["pixel_values_videos"]), alone["pixel_values_videos"])
        if names(w, "images"):
            np.testing.assert_array_equal(np.asarray(w["pixel_values"]), p.image_processor([IMAGE], return_tensors="np")[
                "pixel_values"])
        held += own
    assert held == [0, 1]
    assert_supervised_once("llava_next_video", windows)


@cache
def llava_windows():
    row = pre_tokenized("llava_next_video", *L_TENSORS)
    return chunker.WindowSplitter(processor("llava_next_video"), max_length=L_MAX, keep_pixels=True).split_example(row)


def test_llava_next_video_collator_names_a_video_whose_pixels_disagree_and_its_twin_collates():
    """A window whose video lost a frame (2 frames: 8 tokens of media for a 12-token run) is refused, naming the row and
    its video item; the same windows with their own pixels collate."""
    p = processor("llava_next_video")
    windows = [w for w in llava_windows() if len(w["videos"])]
    collator = WindowCollator(p)
    batch = collator(windows)
    assert batch["pixel_values_videos"].shape == (2, 3, 3, 28, 28)
    short = {**windows[1], "pixel_values_videos": np.asarray(windows[1]["pixel_values_videos"])[:, :2]}
    with pytest.raises(chunker.ImageTokenMismatchError,
                       match=r"row 1 \(source_index -1, window_index \d\): video 0: 12 tokens \(its media need 8\)"):
        collator([windows[0], short])


def test_tiny_llava_next_video_trains_on_collated_video_windows_and_naive_truncation_fails():
    """The real LlavaNextVideoForConditionalGeneration trains on the collated windows (vision tower, projector and
    language model change); the row cut inside its second video with all its pixels raises the model's own error."""
    p = processor("llava_next_video")
    model = build_model("llava_next_video", p)
    batch = WindowCollator(p)(list(llava_windows()))
    assert {"pixel_values_videos", "pixel_values", "image_sizes"} <= set(batch)
    assert_trains(model, [batch, batch], ("vision_tower", "multi_modal_projector", "language_model"))
    whole = forward_inputs(model, processed("llava_next_video")[1])
    video_ranges, _, _ = token_ranges("llava_next_video", "video")
    cut_at = video_ranges[1][0] + 5
    assert_cut_raises(model, naive_cut(whole, cut_at), whole, match="Video features and video tokens do not match")
