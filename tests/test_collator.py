"""WindowCollator on real offline processors: padding, pixels, per-row checks, policies and bad input.

Every test that expects an error has a happy-path twin nearby that passes the same path with good input.
"""

from __future__ import annotations

import io
import warnings
from functools import cache

import numpy as np
import pytest
import torch
from PIL import Image

import chunker
from chunker import (
    ConfigError,
    EmptyBatchError,
    ImageCountError,
    ImageDecodeError,
    ImageTokenMismatchError,
    RowFormatError,
    WindowSplitter,
)
from chunker.collator import WindowCollator, check_batch, make_media, pad_batch, parse_rows
from chunker.testing import build_processor

MAX_LENGTH = 96


def _image(rng, h, w):
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _conversation(rng, sizes, words=3):
    images = [_image(rng, h, w) for h, w in sizes]
    messages = []
    for _ in images:
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe this picture " * words}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": "a cat sits on a mat. " * words}]})
    return {"messages": messages, "images": images}


@pytest.fixture(scope="module")
def qwen():
    return build_processor("qwen2_vl")


@pytest.fixture(scope="module")
def qwen_windows(qwen):
    rng = np.random.default_rng(0)
    row = _conversation(rng, [(56, 84), (64, 64), (40, 96), (72, 48), (56, 56)])
    windows = WindowSplitter(qwen, max_length=MAX_LENGTH).split_example(row, index=7)
    assert len(windows) >= 3
    return windows


def _pixels_of(processor, images):
    out = processor.image_processor(images, return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def test_batch_is_right_padded_with_labels_ignored_on_padding(qwen, qwen_windows):
    rows = qwen_windows[:3]
    batch = WindowCollator(qwen, pad_to_multiple_of=16)(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    width = batch["input_ids"].shape[1]
    assert width % 16 == 0 and width >= max(lengths)
    for r, (row, n) in enumerate(zip(rows, lengths)):
        assert batch["input_ids"][r, :n].tolist() == list(row["input_ids"])
        assert batch["labels"][r, :n].tolist() == list(row["labels"])
        assert (batch["input_ids"][r, n:] == qwen.tokenizer.pad_token_id).all()
        assert (batch["labels"][r, n:] == -100).all()
        assert batch["attention_mask"][r].tolist() == [1] * n + [0] * (width - n)
        assert batch["mm_token_type_ids"][r, :n].tolist() == list(row["mm_token_type_ids"])
        assert (batch["mm_token_type_ids"][r, n:] == 0).all()
    assert all(batch[k].dtype == torch.int64 for k in ("input_ids", "labels", "attention_mask"))


def test_pixels_are_the_processors_own_for_the_windows_images_in_order(qwen, qwen_windows):
    rows = qwen_windows[:3]
    batch = WindowCollator(qwen)(rows)
    images = [im for r in rows for im in r["images"]]
    pixels, grid = _pixels_of(qwen, images)
    assert torch.equal(batch["image_grid_thw"], grid)
    assert torch.allclose(batch["pixel_values"], pixels)
    merge = qwen.image_processor.merge_size
    assert int((grid.prod(-1) // merge**2).sum()) == int((batch["input_ids"] == qwen.image_token_id).sum())


def test_text_only_batch_carries_no_pixel_keys(qwen):
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "hi"}]}], "images": []}
    windows = WindowSplitter(qwen, max_length=MAX_LENGTH).split_example(row, index=0)
    batch = WindowCollator(qwen)(windows)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "mm_token_type_ids"}


def test_rows_as_numpy_tensors_and_lists_give_the_same_batch(qwen, qwen_windows):
    collator = WindowCollator(qwen)
    as_lists = [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()} for r in qwen_windows]
    as_tensors = [{k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in r.items()}
                  for r in qwen_windows]
    a, b, c = collator(qwen_windows), collator(as_lists), collator(as_tensors)
    for key in a:
        assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key]), key


def test_dataset_map_and_iterable_dataset_rows_collate(qwen):
    from datasets import Dataset, List
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(1)
    rows = [_conversation(rng, [(56, 56), (48, 64), (64, 40)]) for _ in range(2)]
    ds = Dataset.from_list(rows)
    splitter = WindowSplitter(qwen, max_length=MAX_LENGTH)
    windows = ds.map(splitter, batched=True, with_indices=True, remove_columns=ds.column_names)
    collator = WindowCollator(qwen, pad_to_multiple_of=8)
    batch = collator([windows[i] for i in range(len(windows))])
    assert batch["input_ids"].shape[0] == len(windows)
    stream = ds.to_iterable_dataset().map(splitter, batched=True, with_indices=True, remove_columns=ds.column_names)
    streamed = collator(list(stream))
    for key in batch:
        assert torch.equal(batch[key], streamed[key]), key
    # the Arrow Image feature undecoded: {"bytes", "path"} dicts give the same pixels
    raw = windows.cast_column("images", List(ImageFeature(decode=False)))
    assert isinstance(raw[0]["images"][0], dict)
    from_dicts = collator([raw[i] for i in range(len(raw))])
    assert torch.equal(batch["pixel_values"], from_dicts["pixel_values"])


def test_images_as_paths_and_bytes(qwen, qwen_windows, tmp_path):
    row = dict(qwen_windows[0])
    paths, blobs = [], []
    for k, im in enumerate(row["images"]):
        path = tmp_path / f"{k}.png"
        im.save(path)
        paths.append(str(path))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        blobs.append(buf.getvalue())
    collator = WindowCollator(qwen)
    want = collator([row])["pixel_values"]
    assert torch.equal(collator([{**row, "images": paths}])["pixel_values"], want)
    assert torch.equal(collator([{**row, "images": blobs}])["pixel_values"], want)


def test_undecodable_image_raises_naming_the_row(qwen, qwen_windows):
    row = {**qwen_windows[1], "images": [b"not an image"] * len(qwen_windows[1]["images"])}
    with pytest.raises(ImageDecodeError, match="window_index 1"):
        WindowCollator(qwen)([qwen_windows[0], row])


def test_undecodable_image_is_dropped_and_counted_under_drop(qwen, qwen_windows):
    row = {**qwen_windows[1], "images": [b"not an image"] * len(qwen_windows[1]["images"])}
    collator = WindowCollator(qwen, on_mismatch="drop")
    with pytest.warns(UserWarning, match="dropped 1 row"):
        batch = collator([qwen_windows[0], row])
    assert batch["input_ids"].shape[0] == 1
    assert collator.stats.dropped == {"ImageDecodeError": 1}


def _swapped(windows):
    """Two rows whose images are exchanged (different counts), and a third untouched."""
    a, b = dict(windows[0]), dict(windows[1])
    a["images"], b["images"] = windows[1]["images"], windows[0]["images"]
    return [a, b, windows[2]]


def test_images_in_the_wrong_rows_raise_naming_every_bad_row(qwen, qwen_windows):
    rows = _swapped(qwen_windows)
    with pytest.raises(ImageTokenMismatchError) as info:
        WindowCollator(qwen)(rows)
    bad = info.value.bad_rows
    assert [(b["source_index"], b["window_index"]) for b in bad] == [(7, 0), (7, 1)]
    seen, expected = bad[0]["image tokens"]
    assert seen == int((torch.as_tensor(rows[0]["input_ids"]) == qwen.image_token_id).sum()) and seen != expected
    assert "source_index 7, window_index 0" in str(info.value)


def test_correct_rows_pass_the_check(qwen, qwen_windows):
    batch = WindowCollator(qwen)(qwen_windows[:3])
    assert batch["input_ids"].shape[0] == 3


def test_drop_removes_exactly_the_bad_rows_and_their_media_and_warns_once(qwen, qwen_windows):
    collator = WindowCollator(qwen, on_mismatch="drop")
    rows = _swapped(qwen_windows)
    with pytest.warns(UserWarning, match="dropped 2 row"):
        batch = collator(rows)
    clean = WindowCollator(qwen)([qwen_windows[2]])
    for key in clean:
        assert torch.equal(batch[key], clean[key]), key
    assert collator.stats.dropped == {"ImageTokenMismatchError": 2}
    assert [e["window_index"] for e in collator.stats.examples] == [0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        collator(rows)  # the second drop does not warn again
    assert collator.stats.dropped_rows == 4 and collator.stats.rows == 6


def test_every_row_dropped_and_empty_batch_raise_empty_batch(qwen, qwen_windows):
    collator = WindowCollator(qwen, on_mismatch="drop")
    with pytest.warns(UserWarning), pytest.raises(EmptyBatchError, match="every one of the 2 rows"):
        collator(_swapped(qwen_windows)[:2])
    with pytest.raises(EmptyBatchError):
        WindowCollator(qwen)([])


def test_row_without_its_images_raises(qwen, qwen_windows):
    row = {k: v for k, v in qwen_windows[0].items() if k != "images"}
    with pytest.raises(ImageCountError, match="no 'images'"):
        WindowCollator(qwen)([row])
    assert WindowCollator(qwen)([qwen_windows[0]])["input_ids"].shape[0] == 1


def test_rows_of_another_familys_processor_are_refused(qwen, qwen_windows):
    idefics = build_processor("idefics3")
    with pytest.raises(chunker.ChunkerError, match="another model's processor"):
        WindowCollator(idefics)(qwen_windows[:2])


def test_a_row_longer_than_max_length_is_refused_never_truncated(qwen, qwen_windows):
    n = len(qwen_windows[0]["input_ids"])
    with pytest.raises(RowFormatError, match="never truncates"):
        WindowCollator(qwen, max_length=n - 1)([qwen_windows[0]])
    assert WindowCollator(qwen, max_length=n)([qwen_windows[0]])["input_ids"].shape == (1, n)


@pytest.mark.parametrize("kwargs", [{"on_mismatch": "fix"}, {"pad_to_multiple_of": 0}, {"max_length": -1}])
def test_bad_settings_raise_config_error(qwen, kwargs):
    with pytest.raises(ConfigError):
        WindowCollator(qwen, **kwargs)
    assert WindowCollator(qwen, on_mismatch="drop", pad_to_multiple_of=8, max_length=64).max_length == 64


def test_pre_tokenized_rows_with_pixel_tensors_collate_like_images(qwen):
    """Rows that carry sliced pixel tensors (no images) give the same batch as rows with the images."""
    rng = np.random.default_rng(2)
    conv = _conversation(rng, [(56, 84), (64, 64), (40, 96)])
    text = qwen.apply_chat_template(conv["messages"], tokenize=False)
    enc = qwen(text=[text], images=[conv["images"]], return_tensors="np")
    pre = {"input_ids": enc["input_ids"][0], "assistant_masks": np.ones_like(enc["input_ids"][0]),
           "pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]}
    splitter = WindowSplitter(qwen, max_length=MAX_LENGTH)
    with_pixels = splitter.split_example(pre, index=0)
    with_images = splitter.split_example({**pre, "images": conv["images"]}, index=0)
    with_images = [{k: v for k, v in w.items() if k not in ("pixel_values", "image_grid_thw")} for w in with_images]
    assert "pixel_values" in with_pixels[0] and "images" not in with_pixels[0]
    a = WindowCollator(qwen)(with_pixels)
    b = WindowCollator(qwen)(with_images)
    assert set(a) == set(b)
    for key in a:
        assert torch.allclose(a[key].to(torch.float64), b[key].to(torch.float64)), key


def test_idefics3_pixels_are_per_row_and_zero_padded():
    """Idefics3: pixel_values (B, T_max, 3, H, W); row r's tiles first, zeros after; a text-only row all zeros."""
    proc = build_processor("idefics3")
    rng = np.random.default_rng(3)
    conv = _conversation(rng, [(64, 64), (32, 32), (64, 40)])
    windows = WindowSplitter(proc, max_length=160).split_example(conv, index=0)
    text_only = WindowSplitter(proc, max_length=160).split_example(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "hi"}]}], "images": []}, index=1)
    rows = windows + text_only
    batch = WindowCollator(proc)(rows)
    pv, mask = batch["pixel_values"], batch["pixel_attention_mask"]
    assert pv.dim() == 5 and pv.shape[0] == len(rows) and mask.shape[:2] == pv.shape[:2]
    for r, row in enumerate(rows):
        if not row["images"]:
            assert not pv[r].any() and not mask[r].any()
            continue
        own = proc.image_processor([row["images"]], return_tensors="pt")
        t = own["pixel_values"].shape[1]
        assert torch.allclose(pv[r, :t], own["pixel_values"][0])
        assert not pv[r, t:].any() and not mask[r, t:].any()
        tiles = int((pv[r] != 0).flatten(1).any(1).sum())
        assert tiles * proc.image_seq_len == int((batch["input_ids"][r] == proc.image_token_id).sum())


# ---------------------------------------------------------------------- per item: two images swapped in one row

# families whose token count depends on the image size (Gemma 3's is fixed, so a swap there is harmless to counts)
SIZED = ["qwen2_vl", "llava_next", "idefics3", "pixtral"]
TWO_SIZES = [(64, 64), (32, 128)]


@cache
def _two_image_row(family):
    """One window row holding two images of different token counts, each in its own user turn."""
    processor = build_processor(family)
    conv = _conversation(np.random.default_rng(5), TWO_SIZES)
    windows = WindowSplitter(processor, max_length=4096).split_example(conv, index=11)
    assert len(windows) == 1 and len(windows[0]["images"]) == 2
    return processor, windows[0]


@pytest.mark.parametrize("family", SIZED)
def test_two_images_swapped_within_a_row_raise_naming_the_row_and_both_items(family):
    """Per-row totals agree (a per-row check passes it); every span against its own item does not."""
    processor, row = _two_image_row(family)
    swapped = {**row, "images": list(row["images"])[::-1]}
    collator = WindowCollator(processor)
    spec = collator.spec
    right = make_media(processor, parse_rows([row], spec), spec).expected()[0][0].tolist()
    wrong = make_media(processor, parse_rows([swapped], spec), spec).expected()[0][0].tolist()
    assert wrong == right[::-1] and right[0] != right[1]
    in_text = int((torch.as_tensor(row["input_ids"]) == spec.image_token_id).sum())
    assert sum(wrong) == sum(right) == in_text  # the same totals and item numbers: only the order differs
    with pytest.raises(ImageTokenMismatchError) as info:
        collator([swapped])
    bad = info.value.bad_rows
    assert [(b["source_index"], b["window_index"]) for b in bad] == [(11, 0)]
    assert bad[0]["image tokens"] == (in_text, in_text) and bad[0]["image items"] == (2, 2)
    assert [(i["item"], i["seen"], i["expected"]) for i in bad[0]["items"]] == [(0, right[0], right[1]),
                                                                              (1, right[1], right[0])]
    message = str(info.value)
    assert "source_index 11, window_index 0" in message
    assert f"image 0: {right[0]} tokens (its media need {right[1]})" in message
    assert f"image 1: {right[1]} tokens (its media need {right[0]})" in message


@pytest.mark.parametrize("family", SIZED)
def test_two_images_in_their_own_order_pass(family):
    """The working twin: the same row with its images in the right order collates."""
    processor, row = _two_image_row(family)
    batch = WindowCollator(processor)([row])
    assert batch["input_ids"].shape[0] == 1 and "pixel_values" in batch


def test_a_row_with_swapped_images_is_dropped_with_exactly_its_media(qwen, qwen_windows):
    processor, row = _two_image_row("qwen2_vl")
    swapped = {**row, "images": list(row["images"])[::-1]}
    collator = WindowCollator(processor, on_mismatch="drop")
    with pytest.warns(UserWarning, match="dropped 1 row"):
        batch = collator([qwen_windows[0], swapped, qwen_windows[2]])
    clean = WindowCollator(qwen)([qwen_windows[0], qwen_windows[2]])
    for key in clean:
        assert torch.equal(batch[key], clean[key]), key
    assert collator.stats.dropped == {"ImageTokenMismatchError": 1}
    assert "image 0:" in collator.stats.examples[0]["reason"]


def test_the_public_stages_compose_into_the_collators_batch(qwen, qwen_windows):
    """parse_rows -> make_media -> pad_batch -> check_batch gives what WindowCollator gives."""
    spec = chunker.ImageSpanSpec.from_processor(qwen)
    rows = parse_rows(qwen_windows, spec, vocab_size=len(qwen.tokenizer))
    media = make_media(qwen, rows, spec)
    batch = pad_batch(rows, qwen.tokenizer.pad_token_id, pad_to_multiple_of=8, type_ids_column=spec.type_ids_column)
    result = check_batch(batch["input_ids"], media, spec, rows=rows)
    assert result.ok and result.tokens["image"][0].tolist() == result.tokens["image"][1].tolist()
    batch.update(media.model_inputs(qwen))
    want = WindowCollator(qwen, pad_to_multiple_of=8)(qwen_windows)
    assert set(batch) == set(want)
    for key in want:
        assert torch.equal(batch[key], want[key]), key


def test_check_batch_reports_without_raising_when_asked(qwen, qwen_windows):
    spec = chunker.ImageSpanSpec.from_processor(qwen)
    rows = parse_rows(_swapped(qwen_windows), spec)
    media = make_media(qwen, rows, spec)
    ids = pad_batch(rows, 0)["input_ids"]
    result = check_batch(ids, media, spec, rows=rows, raise_error=False)
    assert result.bad_rows == [0, 1] and not result.ok
    with pytest.raises(ImageTokenMismatchError, match="source_index 7, window_index 1"):
        check_batch(ids, media, spec, rows=rows)
    assert check_batch(ids[2:], media.select([2]), spec).ok  # the untouched row alone passes


def test_make_media_keeps_row_errors_when_asked(qwen, qwen_windows):
    spec = chunker.ImageSpanSpec.from_processor(qwen)
    broken = {**qwen_windows[1], "images": [b"not an image"] * len(qwen_windows[1]["images"])}
    rows = parse_rows([qwen_windows[0], broken], spec)
    with pytest.raises(ImageDecodeError, match="window_index 1"):
        make_media(qwen, rows, spec)
    media = make_media(qwen, rows, spec, errors="keep")
    assert [(i, type(e).__name__) for i, e in media.failed] == [(1, "ImageDecodeError")]
    assert len(media.rows[0].image_tokens) == len(qwen_windows[0]["images"])


def test_idefics3_pixel_tensors_without_tile_counts_are_checked_as_whole_tiles():
    """Rows carrying Idefics3 pixel tensors have no per-image tile counts: a span must hold whole tiles and the
    row's total must match (the documented limit); with images, each image is checked on its own."""
    proc = build_processor("idefics3")
    spec = chunker.ImageSpanSpec.from_processor(proc)
    _, row = _two_image_row("idefics3")
    with_images = make_media(proc, parse_rows([row], spec), spec)
    assert not with_images.merged and len(with_images.rows[0].image_tokens) == 2
    pixels = {k: v for k, v in row.items() if k != "images"}
    pixels["pixel_values"] = with_images.rows[0].tensors["pixel_values"]
    rows = parse_rows([pixels], spec)
    media = make_media(proc, rows, spec)
    assert media.merged and int(media.rows[0].image_tokens.sum()) == int(with_images.rows[0].image_tokens.sum())
    assert check_batch(pad_batch(rows, 0)["input_ids"], media, spec).ok
    assert torch.equal(WindowCollator(proc)([pixels])["pixel_values"], WindowCollator(proc)([row])["pixel_values"])


def test_qwen3_videos_are_one_item_each_and_checked_in_order():
    """Qwen3-VL nests a video's frame groups (`<t seconds><vision_start><video_pad>x n<vision_end>`) in an
    outer pair: each video is one item, checked against its own video_grid_thw; two videos swapped are named."""
    from chunker.testing.families_b import qwen_video_tokens

    proc = build_processor("qwen3_vl")
    tok = proc.tokenizer
    grids = [(2, 4, 4), (1, 4, 16)]  # two frame groups of 4 tokens; one group of 16
    ids = tok("watch this")["input_ids"]
    for g in grids:
        ids += qwen_video_tokens("qwen3_vl", proc, g) + tok(" and ")["input_ids"]
    dim = 3 * int(proc.image_processor.temporal_patch_size) * int(proc.image_processor.patch_size) ** 2
    row = {"input_ids": ids, "source_index": 2, "window_index": 0,
           "video_grid_thw": torch.tensor(grids), "pixel_values_videos": torch.zeros(sum(t * h * w for t, h, w in grids), dim)}
    batch = WindowCollator(proc)([row])  # the right order passes
    assert int((batch["mm_token_type_ids"] == 2).sum()) == 8 + 16
    swapped = {**row, "video_grid_thw": torch.tensor(grids[::-1])}
    with pytest.raises(ImageTokenMismatchError) as info:
        WindowCollator(proc)([swapped])
    assert [(i["stream"], i["item"], i["seen"], i["expected"]) for i in info.value.bad_rows[0]["items"]] == [
        ("video", 0, 8, 16), ("video", 1, 16, 8)]
    assert "video 0: 8 tokens (its media need 16)" in str(info.value)
