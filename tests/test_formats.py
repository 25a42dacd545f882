"""Rows in the formats users' datasets come in (LLaMA-Factory / ms-swift, LLaVA, ShareGPT, OpenAI, JSON strings)
split exactly as the same conversations typed by hand in the canonical (TRL) form.

The public rows are vendored in tests/data/formats (see SOURCES.md); their images are made here with PIL, each of
its own size and colour, at the paths the rows name. The references in tests/data/formats/canonical were typed by
hand, not produced by `chunker.formats`. Every error test has a working twin that differs only in the fault.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import chunker
from chunker.formats import FORMATS, detect_format, normalize_row
from chunker.media import load_image
from chunker.sources import load_processor, load_rows

DATA = Path(__file__).parent / "data" / "formats"
MAX_LENGTH, OVERLAP = 40, 6
IMAGES = {  # path the public rows name -> (width, height); 56 px = 2 patches of 28 with the demo processor
    "mllm_demo_data/1.jpg": (56, 84),
    "mllm_demo_data/2.jpg": (84, 56),
    "mllm_demo_data/3.jpg": (56, 56),
    "000000033471.jpg": (84, 84),
    "000000033472.jpg": (56, 112),
    "part-000001/997bb945-628d-4724-b370-b84de974a19f.jpg": (112, 56),
    "coco/train2017/000000000009.jpg": (84, 56),
    "azure_dc_zh_92K/000000051920.jpg": (56, 84),
    "xxx/x.jpg": (56, 56),
    "xxx/x.png": (84, 56),
}
WINDOW_KEYS = ("input_ids", "labels", "attention_mask", "mm_token_type_ids", "images", "source_index",
               "window_index", "num_windows")


@pytest.fixture(scope="module")
def processor():
    return load_processor("demo")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The vendored files and their images in one folder; ms-swift's placeholder folder /xxx/ points into it."""
    root = tmp_path_factory.mktemp("formats")
    for path in DATA.iterdir():
        if path.is_file():
            shutil.copy(path, root / path.name)
    swift = root / "ms_swift_sft.jsonl"
    swift.write_text(swift.read_text().replace('"/xxx/', f'"{root}/xxx/'))
    for k, (name, size) in enumerate(IMAGES.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (30 * k % 256, 90, 200 - 15 * k)).save(root / name)
    return root


def canonical(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / "canonical" / name).read_text().splitlines() if line.strip()]


def splitter(processor, **kw):
    return chunker.WindowSplitter(processor, max_length=kw.pop("max_length", MAX_LENGTH),
                                  overlap=kw.pop("overlap", OVERLAP), **kw)


def plain(windows) -> list[dict]:
    """Window rows (a Dataset or a list of dicts) as comparable Python values."""
    rows = windows.to_list() if hasattr(windows, "to_list") else windows
    return [{k: (np.asarray(w[k]).tolist() if k != "images" else w[k]) for k in WINDOW_KEYS} for w in rows]


def split_rows(sp, rows, start=0) -> list[dict]:
    return [w for i, row in enumerate(rows, start) for w in sp.split_example(row, i)]


def supervised_text(processor, windows) -> str:
    ids = [t for w in windows for t, lab in zip(w["input_ids"], w["labels"]) if lab != -100]
    return processor.tokenizer.decode(ids)


# ---------------------------------------------------------------------------------------------- public rows


@pytest.mark.parametrize("name, fmt", [("mllm_demo.json", "llama_factory"), ("llava_instruct.json", "llava"),
                                       ("sharegpt4v_style.json", "llava")])
def test_public_rows_split_as_their_conversation_typed_in_canonical_form(name, fmt, folder, processor):
    """Dataset.map over the file as published (paths relative to its folder) gives exactly the windows of the
    hand-typed canonical rows; every window carries its images as absolute paths that exist."""
    ds = load_rows(str(folder / name))
    got = plain(ds.map(splitter(processor), batched=True, with_indices=True, remove_columns=ds.column_names))
    want = plain(split_rows(splitter(processor, base_dir=folder), canonical(Path(name).stem + ".jsonl")))
    assert len(got) > len(ds)
    assert got == want
    assert [detect_format(r) for r in ds] == [fmt] * len(ds)
    shown = [p for w in got for p in w["images"]]
    assert shown and all(Path(p).is_absolute() and Path(p).exists() for p in shown)


@pytest.mark.parametrize("name", ["mllm_demo.json", "llava_instruct.json", "sharegpt4v_style.json"])
def test_normalized_rows_equal_the_hand_typed_conversations(name, folder):
    """The normalizer's output is the canonical row itself: the same messages, and the image paths made absolute
    against the data file's folder."""
    rows = json.loads((folder / name).read_text())
    want = canonical(Path(name).stem + ".jsonl")
    got = [normalize_row(r, base_dir=str(folder)) for r in rows]
    assert [g["messages"] for g in got] == [w["messages"] for w in want]
    assert [g["images"] for g in got] == [[str(folder / p) for p in w["images"]] for w in want]


def test_ms_swift_rows_split_and_audio_or_video_rows_are_refused_by_name(folder, processor):
    """ms-swift's documented SFT rows: the text row and the two-image row give the windows of their canonical form;
    the audio row and the image+video row are refused naming what they hold (never split with it dropped), and
    counted under on_error='skip'. Their twins without the audio / video split."""
    ds = load_rows(str(folder / "ms_swift_sft.jsonl"))
    rows = ds.to_list()
    sp = splitter(processor)
    two = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                     {"type": "text", "text": "What is the difference between the "
                                                                              "two images?"}]},
                        {"role": "assistant", "content": "The first one is a kitten, and the second one is a puppy."}],
           "images": [str(folder / "xxx/x.jpg"), str(folder / "xxx/x.png")]}
    text = {"messages": [{"role": "user", "content": "Where is the capital of Zhejiang?"},
                         {"role": "assistant", "content": "The capital of Zhejiang is Hangzhou."}]}
    assert plain(split_rows(sp, rows[:2])) == plain(split_rows(sp, [text, two]))
    with pytest.raises(chunker.RowFormatError, match=r"row 2: the conversation holds audio .*<audio> placeholder"):
        sp.split_example(rows[2], 2)
    with pytest.raises(chunker.RowFormatError, match=r"row 3: the conversation holds a video .*<video> placeholder"):
        sp.split_example(rows[3], 3)
    twin_audio = {**rows[2], "messages": [{"role": "user", "content": "What did the audio say?"},
                                          rows[2]["messages"][1]], "audios": None}
    twin_video = {**rows[3], "messages": [rows[3]["messages"][0], {"role": "user", "content": "<image>What is in "
                                                                   "the image?"}, rows[3]["messages"][2]],
                  "videos": None}
    assert sp.split_example(twin_audio, 2) and sp.split_example(twin_video, 3)
    skipping = splitter(processor, on_error="skip")
    stats = chunker.SplitStats.from_windows(ds.map(skipping, batched=True, with_indices=True,
                                                   remove_columns=ds.column_names))
    assert (stats.rows, dict(stats.skipped)) == (4, {"RowFormatError": 2})


def test_llama_factory_audio_demo_is_refused_row_by_row_and_its_text_twin_splits(folder, processor):
    """LLaMA-Factory's own audio demo: every row is refused naming the audio; the same rows without it split."""
    rows = json.loads((folder / "mllm_audio_demo.json").read_text())
    sp = splitter(processor)
    for i, row in enumerate(rows):
        with pytest.raises(chunker.RowFormatError, match=rf"row {i}: the conversation holds audio"):
            sp.split_example(row, i)
        twin = {"messages": [{**m, "content": m["content"].replace("<audio>", "")} for m in row["messages"]]}
        assert sp.split_example(twin, i)


# ---------------------------------------------------------------------------------------------- sharegpt roles


SHAREGPT = {
    "conversations": [
        {"from": "human", "value": "<image><image>What is the difference between the two images?"},
        {"from": "function_call", "value": '{"name": "classify", "arguments": {"images": [0, 1]}}'},
        {"from": "observation", "value": '{"labels": ["kitten", "puppy"]}'},
        {"from": "gpt", "value": "The first one is a kitten, and the second one is a puppy."},
    ],
    "images": ["xxx/x.jpg", "xxx/x.png"],
}
SHAREGPT_CANONICAL = {
    "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                     {"type": "text", "text": "What is the difference between the two images?"}]},
        {"role": "assistant", "content": '{"name": "classify", "arguments": {"images": [0, 1]}}'},
        {"role": "tool", "content": '{"labels": ["kitten", "puppy"]}'},
        {"role": "assistant", "content": "The first one is a kitten, and the second one is a puppy."},
    ],
    "images": ["xxx/x.jpg", "xxx/x.png"],
}


def test_sharegpt_multi_image_roles_function_call_trains_and_observation_does_not(folder, processor):
    """ShareGPT rows (conversations + images; human / function_call / observation / gpt) split as the canonical
    user / assistant / tool / assistant conversation; the call the model writes is supervised, the tool's result
    is not."""
    sp = splitter(processor, base_dir=folder)
    assert detect_format(SHAREGPT) == "sharegpt"
    assert plain(sp.split_example(SHAREGPT, 0)) == plain(sp.split_example(SHAREGPT_CANONICAL, 0))
    trained = supervised_text(processor, splitter(processor, max_length=4096, base_dir=folder).split_example(SHAREGPT))
    assert '"name": "classify"' in trained and "kitten, and the second" in trained
    assert '"labels"' not in trained


# ---------------------------------------------------------------------------------------------- openai


def openai_row(folder, second_url, third_url):
    return {"messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "text", "text": "Compare these two."},
                                     {"type": "image_url", "image_url": {"url": "xxx/x.jpg", "detail": "high"}},
                                     {"type": "image_url", "image_url": {"url": second_url}}]},
        {"role": "assistant", "content": "A kitten on the left and a puppy on the right."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": third_url}},
                                     {"type": "text", "text": "And what about this bus?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The bus is white and red."}]},
    ]}


@pytest.mark.parametrize("mode", ["pixels", "sizes"])
def test_openai_image_url_items_path_file_url_and_data_url_split_as_canonical(mode, folder, processor):
    """image_url items given as a relative path, a file:// URL and a data: URL (base64 JPEG) give the windows of
    the canonical conversation with the three files, with token counts from pixels or from image sizes; the
    data: image reaches the window as its bytes."""
    bus = folder / "000000033471.jpg"
    data = "data:image/jpeg;base64," + base64.b64encode(bus.read_bytes()).decode()
    row = openai_row(folder, (folder / "xxx/x.png").as_uri(), data)
    want_row = {"messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "text", "text": "Compare these two."}, {"type": "image"},
                                     {"type": "image"}]},
        {"role": "assistant", "content": "A kitten on the left and a puppy on the right."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And what about this bus?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The bus is white and red."}]},
    ], "images": ["xxx/x.jpg", "xxx/x.png", "000000033471.jpg"]}
    sp = splitter(processor, base_dir=folder, image_tokens_from=mode)
    assert detect_format(row) == "openai"
    got, want = plain(sp.split_example(row, 0)), plain(sp.split_example(want_row, 0))
    assert len(got) > 1
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if k != "images"} == {k: v for k, v in w.items() if k != "images"}
        assert [np.asarray(load_image(a)).tolist() for a in g["images"]] == \
               [np.asarray(load_image(b)).tolist() for b in w["images"]]
    assert any(isinstance(a, dict) and a["bytes"] == bus.read_bytes() for w in got for a in w["images"])


@pytest.mark.parametrize("bad, good, error, match", [
    ("https://example.com/cat.png", "FILE", chunker.ImageDecodeError, (r"row 0: message 1 points at "
     r"'https://example.com/cat.png', a web address: chunker reads media from local files")),
    ("data:image/png;base64,not base64!", "DATA", chunker.ImageDecodeError, (r"row 0: message 1 has a data: URL whose "
     r"data is not valid base64")),
], ids=["http-url", "bad-base64"])
def test_openai_urls_it_cannot_read_are_named_and_the_local_twin_splits(bad, good, error, match, folder, processor):
    sp = splitter(processor, base_dir=folder)
    third = folder / "000000033471.jpg"
    with pytest.raises(error, match=match):
        sp.split_example(openai_row(folder, bad, third.as_uri()), 0)
    encoded = "data:image/jpeg;base64," + base64.b64encode(third.read_bytes()).decode()
    good = third.as_uri() if good == "FILE" else encoded
    assert sp.split_example(openai_row(folder, good, third.as_uri()), 0)


def test_openai_input_audio_is_refused_by_name_and_its_twin_without_it_splits(folder, processor):
    clip = base64.b64encode(b"RIFF....WAVEfmt ").decode()
    row = {"messages": [{"role": "user", "content": [{"type": "input_audio",
                                                      "input_audio": {"data": clip, "format": "wav"}},
                                                     {"type": "text", "text": "What does the person say?"}]},
                        {"role": "assistant", "content": "Good morning."}]}
    with pytest.raises(chunker.RowFormatError, match=r"row 4: the conversation holds audio .*input_audio item"):
        splitter(processor).split_example(row, 4)
    twin = {"messages": [{**row["messages"][0], "content": row["messages"][0]["content"][1:]}, row["messages"][1]]}
    assert splitter(processor).split_example(twin, 4)


# ---------------------------------------------------------------------------------------------- JSON strings


def test_messages_stored_as_a_json_string_split_as_the_list(folder, processor):
    """A `messages` column holding JSON text (how many Parquet exports store mixed content) gives the windows of
    the decoded rows; content items written as bare strings are text."""
    rows = json.loads((folder / "mllm_demo.json").read_text())
    as_text = [{**r, "messages": json.dumps(r["messages"], ensure_ascii=False)} for r in rows]
    sp = splitter(processor, base_dir=folder)
    assert plain(split_rows(sp, as_text)) == plain(split_rows(sp, canonical("mllm_demo.jsonl")))
    bare = {"messages": json.dumps([{"role": "user", "content": [{"type": "image"}, "Who are they?"]},
                                    {"role": "assistant", "content": ["They're Kane and Gretzka from Bayern Munich."]},
                                    {"role": "user", "content": "What are they doing?"},
                                    {"role": "assistant", "content": "They are celebrating on the soccer field."}]),
            "images": ["mllm_demo_data/1.jpg"]}
    assert plain(sp.split_example(bare, 0)) == plain(sp.split_example(canonical("mllm_demo.jsonl")[0], 0))


def test_a_messages_string_that_is_not_json_is_named_and_the_json_twin_splits(folder, processor):
    row = json.loads((folder / "mllm_demo.json").read_text())[0]
    text = json.dumps(row["messages"])
    with pytest.raises(chunker.RowFormatError, match=r"row 3: 'messages' is a string that is not JSON"):
        splitter(processor, base_dir=folder).split_example({**row, "messages": text[:-1]}, 3)
    assert splitter(processor, base_dir=folder).split_example({**row, "messages": text}, 3)


# ---------------------------------------------------------------------------------------------- errors


def _llava(folder):
    return json.loads((folder / "llava_instruct.json").read_text())[0]


def _mllm(folder):
    return json.loads((folder / "mllm_demo.json").read_text())[0]


CASES = {
    "placeholders-vs-paths": (
        lambda f: {**_mllm(f), "messages": [{"role": "user", "content": "<image><image>Who are they?"},
                                            *_mllm(f)["messages"][1:]]},
        lambda f: {**_mllm(f), "messages": [{"role": "user", "content": "<image><image>Who are they?"},
                                            *_mllm(f)["messages"][1:]],
                   "images": ["mllm_demo_data/1.jpg", "mllm_demo_data/2.jpg"]},
        chunker.ImageCountError,
        (r"row 5: the row looks like LLaMA-Factory / ms-swift .* its text holds 2 <image> placeholders and "
         r"'images' gives 1 image: put one <image> in the text where each image goes"),
    ),
    "llava-image-without-placeholder": (
        lambda f: {**_llava(f), "conversations": [{"from": "human", "value": "What are the colors of the bus?"},
                                                  *_llava(f)["conversations"][1:]]},
        lambda f: {**_llava(f), "conversations": [{"from": "human", "value": "<image>\nWhat are the colors of the "
                                                   "bus?"}, *_llava(f)["conversations"][1:]]},
        chunker.ImageCountError,
        r"row 5: the row looks like LLaVA-Instruct .* its text holds 0 <image> placeholders and 'image' gives 1 image",
    ),
    "image-and-images": (
        lambda f: {**_llava(f), "images": ["000000033472.jpg"]},
        _llava,
        chunker.RowFormatError,
        r"row 5: the row looks like LLaVA-Instruct .* has both 'image' and 'images': keep one of the two",
    ),
    "tools-column": (
        lambda f: {**_llava(f), "tools": '[{"name": "zoom"}]'},
        lambda f: {**_llava(f), "tools": None},
        chunker.RowFormatError,
        r"row 5: the row looks like LLaVA-Instruct .* has a 'tools' column .* which the chat template would not see",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_inconsistent_rows_are_named_with_the_format_they_look_like_and_the_twin_splits(case, folder, processor):
    bad, good, error, match = CASES[case]
    sp = splitter(processor, base_dir=folder)
    with pytest.raises(error, match=match):
        sp.split_example(bad(folder), 5)
    assert sp.split_example(good(folder), 5)
    stats = chunker.SplitStats.from_windows(splitter(processor, base_dir=folder, on_error="skip")(
        {k: [v] for k, v in bad(folder).items()}, indices=[5]))
    assert dict(stats.skipped) == {error.__name__: 1}


def test_literal_image_text_needs_format_trl_which_keeps_it_as_text(processor):
    """A text-only row whose text contains '<image>' literally looks like LLaMA-Factory and is refused with the hint;
    with format='trl' the same row splits and the text keeps '<image>'."""
    row = {"messages": [{"role": "user", "content": "What does the HTML tag <image> do?"},
                        {"role": "assistant", "content": "In SVG it embeds a picture."}]}
    with pytest.raises(chunker.ImageCountError, match=r"row 1: .* 1 <image> placeholder and 'images' gives 0 images"
                                                      r".*pass format='trl' if '<image>' is meant as literal text"):
        splitter(processor).split_example(row, 1)
    windows = splitter(processor, format="trl", max_length=4096).split_example(row, 1)
    assert "tag <image> do?" in processor.tokenizer.decode(windows[0]["input_ids"])


def test_an_unknown_format_is_a_config_error_and_a_known_one_builds(processor):
    with pytest.raises(chunker.ConfigError, match=r"format='llava-instruct' is not a known row format: use 'auto'"):
        splitter(processor, format="llava-instruct")
    assert splitter(processor, format="llava").format == "llava"
    assert splitter(processor, format="ms_swift").format == "llama_factory"


def test_base_dir_reads_relative_paths_from_an_image_folder_and_without_it_they_are_named(folder, processor, tmp_path):
    """LLaVA keeps images in a folder of their own (its --image_folder): base_dir= reads them there and gives the
    canonical windows; without it the paths resolve against the data file's folder and the missing image is named."""
    (tmp_path / "ann").mkdir()
    shutil.copy(folder / "llava_instruct.json", tmp_path / "ann" / "llava.json")
    ds = load_rows(str(tmp_path / "ann" / "llava.json"))
    with pytest.raises(chunker.ImageDecodeError, match=r"row 0: cannot decode image '.*ann/000000033471.jpg'"):
        ds.map(splitter(processor), batched=True, with_indices=True, remove_columns=ds.column_names)
    got = plain(ds.map(splitter(processor, base_dir=folder), batched=True, with_indices=True,
                       remove_columns=ds.column_names))
    assert got == plain(split_rows(splitter(processor, base_dir=folder), canonical("llava_instruct.jsonl")))


@pytest.mark.parametrize("row, name", [
    ({"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
      "images": ["a.png"]}, "trl"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"}]}]}, "unsloth"),
    ({"messages": [{"role": "user", "content": "<video>What happens?"}], "videos": ["a.mp4"]}, "llama_factory"),
    ({"messages": [{"role": "user", "content": "Describe it."}], "images": ["a.png"]}, "llama_factory"),
    ({"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nHi"}]}, "llava"),
    ({"images": ["a.png"], "conversations": [{"from": "human", "value": "<image>Hi"}]}, "sharegpt"),
    ({"messages": [{"role": "user", "content": [{"type": "input_image", "image_url": "a.png"}]}]}, "openai"),
    ({"messages": json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])}, "trl"),
], ids=["trl", "unsloth", "llama-factory-video", "llama-factory-no-placeholder", "llava", "sharegpt", "openai",
        "json-text"])
def test_detect_format(row, name):
    assert name in FORMATS
    assert detect_format(row) == name


def test_a_first_map_batch_of_only_skipped_llava_rows_keeps_the_images_column_typed(processor, tmp_path):
    """LLaVA rows have no `images` column: when the first batch of a map is all skipped rows, their ledger rows
    carry the images the rows name, so later batches' windows write into the same column type (an all-null
    column could not take them: `datasets` refused the second batch)."""
    import datasets

    Image.new("RGB", (56, 56)).save(tmp_path / "a.jpg")
    turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A square."}]
    good = {"image": "a.jpg", "conversations": turns}
    bad = {"image": "missing.jpg", "conversations": turns}
    sp = chunker.WindowSplitter(processor, max_length=512, on_error="skip", base_dir=str(tmp_path))
    ds = datasets.Dataset.from_list([bad, bad, good, good])
    windows = ds.map(sp, batched=True, batch_size=2, with_indices=True, remove_columns=ds.column_names)
    stats = chunker.SplitStats.from_windows(windows)
    assert (stats.rows, stats.windows, dict(stats.skipped)) == (4, 2, {"ImageDecodeError": 2})
    assert windows["images"] == [[str(tmp_path / "missing.jpg")]] * 2 + [[str(tmp_path / "a.jpg")]] * 2
    # the twin: the good rows alone give the same two windows
    alone = datasets.Dataset.from_list([good, good]).map(sp, batched=True, batch_size=2, with_indices=True,
                                                         remove_columns=ds.column_names)
    assert alone["input_ids"] == windows["input_ids"][2:]
