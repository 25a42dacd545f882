"""image_tokens_from="sizes": token counts from image sizes give the same input_ids and windows as the pixels.

Every family runs on its real processor built offline (`chunker.testing.build_processor`), with images of
mixed sizes and aspect ratios in multi-turn, multi-image conversations; the "pixels" splitter calls the
processor on decoded images, the "sizes" splitter only reads image sizes and tokenizes with the tokenizer.
"""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from chunker import ImageSpanSpec, SplitStats, WindowSplitter
from chunker.errors import ConfigError, ImageCountError, ImageDecodeError
from chunker.families import adapter_for, image_hw, size_expander, spec_from_processor
from chunker.testing import build_processor

# (height, width): tall, wide, square, tiny, larger than every tile grid, odd sizes
SIZES = [(40, 30), (17, 90), (123, 64), (64, 64), (300, 200), (8, 8), (500, 37), (96, 250), (1300, 600)]
# every family with a size recipe, Gemma 3 with pan-and-scan on as its own case
CASES = ["gemma3", "gemma3_pan_and_scan", "llava", "llava_next", "llava_onevision", "pixtral", "mistral3",
         "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "smolvlm", "internvl"]
MAX_LENGTH = {"idefics3": 160, "smolvlm": 160, "gemma3_pan_and_scan": 192}


def processor_of(case: str):
    """The offline processor of `case` and the processor keywords the splitter must pass."""
    if case == "gemma3_pan_and_scan":
        return build_processor("gemma3", pan_and_scan=True), {"do_pan_and_scan": True}
    return build_processor(case), {}


def image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def conversation(per_turn: list[int], first: int = 0) -> tuple[list[dict], list]:
    """Alternating user/assistant turns; user turn t holds per_turn[t] images (before or after its text)."""
    messages, images = [], []
    for t, n in enumerate(per_turn):
        content = [{"type": "text", "text": f"describe picture {t} in detail. what is shown in the image?"}]
        for _ in range(n):
            h, w = SIZES[(first + len(images)) % len(SIZES)]
            images.append(image(h, w, seed=first + len(images)))
            content.insert(0 if t % 2 else len(content), {"type": "image"})
        messages.append({"role": "user", "content": content})
        answer = "a cat sits on a mat next to a red ball. " * (1 + t % 3)
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages, images


ROWS = [([1, 0, 2], 0), ([2, 3, 1, 1], 3), ([0, 1], 5), ([4], 7), ([1, 1, 1, 1, 1], 2)]


def rows():
    return [dict(zip(("messages", "images"), conversation(per_turn, first))) for per_turn, first in ROWS]


def assert_same_windows(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for wa, wb in zip(a, b):
        assert sorted(wa) == sorted(wb)
        for key in wa:
            if key == "images":
                assert [id(im) for im in wa[key]] == [id(im) for im in wb[key]]
            else:
                np.testing.assert_array_equal(np.asarray(wa[key]), np.asarray(wb[key]), err_msg=key)


@pytest.mark.parametrize("case", CASES)
def test_sizes_give_the_windows_of_pixels(case):
    """Over mixed image sizes, several images per turn and per row, "sizes" makes the windows "pixels" makes:
    the same input_ids, labels, masks, type ids, image subsets and window indices; rows really are split."""
    processor, kwargs = processor_of(case)
    common = {"max_length": MAX_LENGTH.get(case, 96), "overlap": 8, "processor_kwargs": kwargs}
    pixels = WindowSplitter(processor, image_tokens_from="pixels", **common)
    sizes = WindowSplitter(processor, image_tokens_from="sizes", **common)
    split = 0
    for index, row in enumerate(rows()):
        want = pixels.split_example(row, index=index)
        got = sizes.split_example(row, index=index)
        assert_same_windows(want, got)
        split += len(want) > 1
    assert split >= 2


def test_pan_and_scan_crops_are_counted_from_sizes():
    """Gemma 3 with pan-and-scan: wide and tall images get crops from their sizes alone, as the processor does."""
    processor, kwargs = processor_of("gemma3_pan_and_scan")
    expand = size_expander(processor, adapter_for(processor), kwargs)
    images = [Image.new("RGB", (w, h)) for h, w in [(600, 1300), (300, 300), (1200, 500)]]
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}] * 3 + [{"type": "text", "text": "hi"}]}], tokenize=False
    )
    expanded, _, tensors = expand(text, images)
    assert tensors["num_crops"].tolist() == [2, 0, 2]
    want = processor(text=[text], images=[images], return_tensors="np", add_special_tokens=False, **kwargs)
    got = processor.tokenizer(expanded, add_special_tokens=False)["input_ids"]
    assert want["input_ids"][0].tolist() == got


def test_processor_defaults_outrank_the_image_processor():
    """InternVL's processor defaults to crop_to_patches=True over its image processor's own False: "sizes"
    counts tiles as the processor call does (same windows), and more tokens than without tiles."""
    processor = build_processor("internvl")
    processor.image_processor.crop_to_patches = False
    pixels = WindowSplitter(processor, max_length=96, overlap=8, image_tokens_from="pixels")
    sizes = WindowSplitter(processor, max_length=96, overlap=8, image_tokens_from="sizes")
    row = rows()[1]
    want = pixels.split_example(row, index=1)
    assert_same_windows(want, sizes.split_example(row, index=1))
    no_tiles = WindowSplitter(processor, max_length=96, overlap=8, image_tokens_from="sizes",
                              processor_kwargs={"crop_to_patches": False})
    assert_same_windows(no_tiles.split_example(row, index=1),
                        WindowSplitter(processor, max_length=96, overlap=8, processor_kwargs={"crop_to_patches": False})
                        .split_example(row, index=1))
    count = sum(len(w["input_ids"]) for w in want)
    assert sum(len(w["input_ids"]) for w in no_tiles.split_example(row, index=1)) < count


def test_sizes_through_dataset_map_with_image_paths(tmp_path):
    """Through `Dataset.map` with images stored as file paths, "sizes" gives the token columns of "pixels" and
    each window keeps the paths of exactly the images "pixels" decoded."""
    datasets = pytest.importorskip("datasets")
    processor = build_processor("qwen2_vl")
    records = []
    for k, row in enumerate(rows()):
        paths = []
        for j, im in enumerate(row["images"]):
            paths.append(str(tmp_path / f"r{k}_{j}.png"))
            im.save(paths[-1])
        records.append({"messages": row["messages"], "images": paths})
    ds = datasets.Dataset.from_list(records)
    out = {}
    for mode in ("pixels", "sizes"):
        splitter = WindowSplitter(processor, max_length=96, overlap=8, image_tokens_from=mode)
        out[mode] = ds.map(splitter, batched=True, with_indices=True, remove_columns=ds.column_names)
    assert len(out["sizes"]) == len(out["pixels"]) > len(ds)
    for key in ("input_ids", "labels", "attention_mask", "mm_token_type_ids", "source_index", "window_index"):
        assert out["sizes"][key] == out["pixels"][key], key
    # both modes keep each image as the row gave it: its path
    assert out["sizes"]["images"] == out["pixels"]["images"]
    carried = out["pixels"]["images"]
    assert all(isinstance(p, str) for images in carried for p in images)
    assert sum(len(images) for images in carried) >= sum(len(r["images"]) for r in records)


def test_sizes_read_headers_only(tmp_path):
    """A JPEG whose body is cut off still has a readable size: "sizes" splits the row without decoding it,
    while "pixels" must decode it and reports the broken image."""
    processor = build_processor("qwen2_vl")
    buf = io.BytesIO()
    image(200, 300, seed=1).save(buf, format="JPEG")
    truncated = buf.getvalue()[: len(buf.getvalue()) // 2]
    row = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "a cat"}]}],
           "images": [{"bytes": truncated, "path": None}]}
    windows = WindowSplitter(processor, max_length=96, image_tokens_from="sizes").split_example(row, index=0)
    assert windows[0]["images"] == row["images"]
    assert image_hw(row["images"][0]) == (200, 300)
    with pytest.raises(ImageDecodeError):
        WindowSplitter(processor, max_length=96, image_tokens_from="pixels").split_example(row, index=0)


def test_unreadable_image_is_an_image_decode_error_in_both_modes():
    """Bytes that are no image raise ImageDecodeError naming the row under "sizes" as under "pixels";
    with on_error="skip" both skip the row and count it under the same reason."""
    processor = build_processor("gemma3")
    row = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "a cat"}]}],
           "images": [b"not an image at all"]}
    for mode in ("pixels", "sizes"):
        with pytest.raises(ImageDecodeError, match="row 4"):
            WindowSplitter(processor, max_length=96, image_tokens_from=mode).split_example(row, index=4)
        skipping = WindowSplitter(processor, max_length=96, image_tokens_from=mode, on_error="skip")
        out = skipping({"messages": [row["messages"]], "images": [row["images"]]}, [4])
        assert out["num_windows"] == [0] and SplitStats.from_windows(out).skipped == {"ImageDecodeError": 1}


def test_placeholder_count_mismatch_is_an_image_count_error():
    """A template that renders fewer placeholders than the row has images: ImageCountError in both modes."""
    processor = build_processor("qwen2_vl")
    # a template that renders an image item only when it comes first in its message
    template = processor.chat_template.replace(
        "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}",
        "{% if content['type'] == 'image' and loop.first %}",
    )
    assert template != processor.chat_template
    processor.chat_template = template
    row = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                      {"type": "text", "text": "hi"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "a cat"}]}],
           "images": [image(30, 40, 0), image(50, 20, 1)]}
    for mode in ("pixels", "sizes"):
        with pytest.raises(ImageCountError):
            WindowSplitter(processor, max_length=96, image_tokens_from=mode).split_example(row, index=0)


def test_paligemma_is_refused_and_gemma3_accepted():
    """PaliGemma's processor rebuilds the text itself: "sizes" refuses it with a ConfigError naming the
    family and "pixels"; Gemma 3 (its happy twin) builds and splits."""
    with pytest.raises(ConfigError, match=r"paligemma.*image_tokens_from='pixels'"):
        WindowSplitter(build_processor("paligemma"), max_length=96, image_tokens_from="sizes")
    WindowSplitter(build_processor("paligemma"), max_length=96, image_tokens_from="pixels")
    splitter = WindowSplitter(build_processor("gemma3"), max_length=96, image_tokens_from="sizes")
    assert splitter.split_example(rows()[0], index=0)


def test_llava_without_a_fixed_image_shape_is_refused():
    """LLaVA whose image processor neither center-crops nor resizes to a fixed height/width outputs images of
    varying shapes: refused; with its center crop (the happy twin) it is accepted."""
    processor = build_processor("llava")
    WindowSplitter(processor, max_length=96, image_tokens_from="sizes")
    processor.image_processor.do_center_crop = False
    with pytest.raises(ConfigError, match=r"llava.*no fixed output shape.*'pixels'"):
        WindowSplitter(processor, max_length=96, image_tokens_from="sizes")


def test_llava_next_tiles_unlike_its_size_are_refused():
    """LLaVA-NeXT whose tiles (center crop) differ from its resize size: the splitter's run split could not
    match, so it is refused; with equal sizes (the happy twin) it is accepted."""
    processor = build_processor("llava_next")
    WindowSplitter(processor, max_length=96, image_tokens_from="sizes")
    processor.image_processor.crop_size = {"height": 14, "width": 14}
    with pytest.raises(ConfigError, match=r"llava_next.*'pixels'"):
        WindowSplitter(processor, max_length=96, image_tokens_from="sizes")


def test_sizes_need_the_processor_family():
    """A hand-made spec (family 'custom') or no processor: refused; the spec read from the processor is accepted;
    an unknown mode is a ConfigError too."""
    processor = build_processor("qwen2_vl")
    spec = spec_from_processor(processor)
    custom = ImageSpanSpec(family="custom", kind="run", image_token_id=spec.image_token_id)
    with pytest.raises(ConfigError, match="custom.*'pixels'"):
        WindowSplitter(processor, max_length=96, spec=custom, image_tokens_from="sizes")
    with pytest.raises(ConfigError, match="processor"):
        WindowSplitter(None, max_length=96, spec=spec, image_tokens_from="sizes")
    WindowSplitter(processor, max_length=96, spec=spec, image_tokens_from="sizes")
    with pytest.raises(ConfigError, match="image_tokens_from"):
        WindowSplitter(processor, max_length=96, image_tokens_from="bytes")


def test_sizes_splitter_survives_pickling():
    """The splitter is pickled for worker processes (`num_proc`); the copy gives the same windows."""
    processor = build_processor("pixtral")
    splitter = WindowSplitter(processor, max_length=96, overlap=8, image_tokens_from="sizes")
    copy = pickle.loads(pickle.dumps(splitter))
    row = rows()[1]
    assert_same_windows(splitter.split_example(row, index=1), copy.split_example(row, index=1))


def test_image_hw_reads_every_image_form(tmp_path):
    """(height, width) from a PIL image, a path (relative to a base dir), bytes and a {"bytes", "path"} dict."""
    im = image(21, 34, seed=0)
    path = tmp_path / "a.png"
    im.save(path)
    data = path.read_bytes()
    assert image_hw(im) == (21, 34)
    assert image_hw("a.png", str(tmp_path)) == (21, 34)
    assert image_hw(os.fspath(path)) == (21, 34)
    assert image_hw(data) == (21, 34) == image_hw({"bytes": data, "path": None})
    assert image_hw({"bytes": None, "path": os.fspath(path)}) == (21, 34)
    with pytest.raises(ImageDecodeError, match="row 3"):
        image_hw(str(tmp_path / "missing.png"), row=3)
