"""Every bad input of issue 2 raises its own ChunkerError subclass naming the row and the fix; each has a
happy-path twin that differs only in the fault and splits; on_error='skip' drops and counts the bad row."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

import chunker
from chunker import (
    ChunkerError,
    ConfigError,
    EmptyConversationError,
    ImageCountError,
    ImageSpanSpec,
    ImageTokenCountError,
    InvalidTokenError,
    OversizeSpanError,
    PixelMismatchError,
    RowFormatError,
    SpanError,
    WindowSplitter,
)

BOS, NL, EOT, IMG, VID, OPEN, CLOSE = 1, 3, 4, 20, 21, 22, 23
USER, MODEL = (10, 11, NL), (10, 12, NL)
TURNS = {"instruction_ids": USER, "response_ids": MODEL}
GEMMA = ImageSpanSpec(family="gemma3", kind="bracket", image_token_id=IMG, open_ids=(OPEN,), close_ids=(CLOSE,),
                      tokens_per_image=2, type_ids_column="token_type_ids", bos_id=BOS,
                      extra={"pixel_rules": {"pixel_values": ("crops", 0)}}, **TURNS)
LLAVA = ImageSpanSpec(family="llava", kind="run", image_token_id=IMG, tokens_per_image=3, bos_id=BOS, **TURNS)
LLAVA_NEXT = ImageSpanSpec(family="llava_next", kind="run", image_token_id=IMG, bos_id=BOS, **TURNS)
QWEN = ImageSpanSpec(family="qwen2_vl", kind="bracket", image_token_id=IMG, video_token_id=VID, open_ids=(OPEN,),
                     close_ids=(CLOSE,), type_ids_column="mm_token_type_ids",
                     extra={"token_rule": "grid", "merge_size": 2,
                            "pixel_rules": {"pixel_values": ("grid", 0), "pixel_values_videos": ("grid", 0)}}, **TURNS)
PALIGEMMA = ImageSpanSpec(family="paligemma", kind="run", image_token_id=IMG, tokens_per_image=3, bos_id=BOS,
                          response_ids=(NL,), prefix_media=True)

ANSWER = [*MODEL, 60, 61, 62, 63, EOT, NL]


def turn(*media):
    """BOS, a user turn holding `media` (token lists) and text, then an answer."""
    ids = [BOS, *USER, 50]
    for m in media:
        ids += [*m, 51]
    return [*ids, EOT, NL, *ANSWER]


IMAGE = [OPEN, IMG, IMG, CLOSE]
GOOD = turn(IMAGE)


@cache
def tokenizer():
    """A real tokenizer (432 ids) so the splitter knows the vocabulary size."""
    from chunker.testing._tokenizer import make_tokenizer

    return make_tokenizer(["<bos>", "<image>"], bos_token="<bos>")


def labelled(ids, **extra):
    ids = list(ids)
    mark = ids.index(MODEL[-1], len(ids) - len(ANSWER)) + 1
    labels = [-100] * mark + ids[mark:]
    return {"input_ids": ids, "labels": labels, **extra}


QWEN_IMAGE = [OPEN, IMG, IMG, CLOSE]
QWEN_VIDEO = [OPEN, VID, VID, CLOSE]
QWEN_ROW = [*USER, 50, *QWEN_IMAGE, 51, *QWEN_VIDEO, 52, *QWEN_VIDEO, EOT, NL, *ANSWER]

# name: (splitter kwargs, bad row, good twin, error class, text the message must hold (the fix))
CASES = {
    "unclosed bracket": (
        {"spec": GEMMA}, {"input_ids": [BOS, *USER, 50, OPEN, IMG, IMG], "images": ["a"]},
        {"input_ids": [BOS, *USER, 50, OPEN, IMG, IMG, CLOSE, *ANSWER], "images": ["a"]},
        SpanError, "is never closed (expected one of [23]): the row was truncated inside an image; tokenize without",
    ),
    "unopened bracket": (
        {"spec": GEMMA}, {"input_ids": [BOS, *USER, IMG, IMG, CLOSE, 50, *ANSWER], "images": ["a"]},
        {"input_ids": [BOS, *USER, OPEN, IMG, IMG, CLOSE, 50, *ANSWER], "images": ["a"]},
        SpanError, "has no opening token (expected one of [22] before it)",
    ),
    "run length not the family's count": (
        {"spec": LLAVA}, {"input_ids": turn([IMG] * 4), "images": ["a"]},
        {"input_ids": turn([IMG] * 3), "images": ["a"]},
        ImageTokenCountError, "holds 4 tokens, not a multiple of 3 tokens per image",
    ),
    "bracket holding another count": (
        {"spec": GEMMA}, {"input_ids": turn([OPEN, IMG, IMG, IMG, CLOSE]), "images": ["a"]},
        {"input_ids": GOOD, "images": ["a"]},
        ImageTokenCountError, "holds 3 image tokens but this family uses 2 per image",
    ),
    "grid count disagrees with the span": (
        {"spec": QWEN},
        labelled([*USER, OPEN, IMG, IMG, IMG, CLOSE, *ANSWER],
                 pixel_values=np.zeros((8, 6), np.float32), image_grid_thw=np.array([[1, 2, 4]])),
        labelled([*USER, OPEN, IMG, IMG, CLOSE, *ANSWER],
                 pixel_values=np.zeros((8, 6), np.float32), image_grid_thw=np.array([[1, 2, 4]])),
        ImageTokenCountError, "holds 3 placeholder tokens but its item needs 2",
    ),
    "more images than placeholders": (
        {"spec": GEMMA}, {"input_ids": GOOD, "images": ["a", "b"]}, {"input_ids": GOOD, "images": ["a"]},
        ImageCountError, "the row has 2 images but its text holds 1 image spans: give exactly one image per",
    ),
    "fewer images than placeholders": (
        {"spec": GEMMA}, {"input_ids": turn(IMAGE, IMAGE), "images": ["a"]},
        {"input_ids": turn(IMAGE, IMAGE), "images": ["a", "b"]},
        ImageCountError, "the row has 1 images but its text holds 2 image spans",
    ),
    "fewer videos than video placeholders": (
        {"spec": QWEN}, labelled(QWEN_ROW, images=["i"], videos=["v"]),
        labelled(QWEN_ROW, images=["i"], videos=["v", "w"]),
        ImageCountError, "1 videos but its text holds 2 video spans",
    ),
    "grid rows for another number of images": (
        {"spec": QWEN},
        labelled([*USER, *QWEN_IMAGE, *ANSWER], pixel_values=np.zeros((16, 6), np.float32),
                 image_grid_thw=np.array([[1, 2, 4], [1, 2, 4]])),
        labelled([*USER, *QWEN_IMAGE, *ANSWER], pixel_values=np.zeros((8, 6), np.float32),
                 image_grid_thw=np.array([[1, 2, 4]])),
        ImageCountError, "image_grid_thw describes 2 images but the text holds 1 image spans",
    ),
    "span longer than max_length": (
        {"spec": LLAVA_NEXT, "max_length": 5}, {"input_ids": turn([IMG] * 6), "images": ["a"]},
        {"input_ids": turn([IMG] * 4), "images": ["a"]},
        OversizeSpanError, ("media span [5, 11) of 6 tokens plus the 1-token prefix needs 7 tokens but max_length=5: "
        "raise max_length to >= 7 or pass on_oversize='skip'"),
    ),
    "media prefix longer than max_length": (
        {"spec": PALIGEMMA, "max_length": 7},
        {"input_ids": [*[IMG] * 6, BOS, 50, NL, *range(60, 70), 2], "images": ["a", "b"]},
        {"input_ids": [*[IMG] * 3, BOS, 50, NL, *range(60, 70), 2], "images": ["a"]},
        OversizeSpanError, "raise max_length to >= 8 or pass on_oversize='skip'",
    ),
    "empty input_ids": (
        {"spec": GEMMA}, {"input_ids": [], "images": []}, {"input_ids": GOOD, "images": ["a"]},
        EmptyConversationError, "input_ids is empty: drop the row",
    ),
    "empty messages": (
        {"spec": GEMMA, "processor": "tokenizer"}, {"messages": []}, {"input_ids": GOOD, "images": ["a"]},
        EmptyConversationError, "the conversation has no messages: drop the row",
    ),
    "labels of another length": (
        {"spec": GEMMA}, {"input_ids": GOOD, "labels": [-100] * 3, "images": ["a"]},
        labelled(GOOD, images=["a"]),
        RowFormatError, "labels has 3 entries but input_ids has 21: give one label per token",
    ),
    "assistant mask of another length": (
        {"spec": GEMMA}, {"input_ids": GOOD, "assistant_masks": [0, 1], "images": ["a"]},
        {"input_ids": GOOD, "assistant_masks": [0] * (len(GOOD) - 4) + [1] * 4, "images": ["a"]},
        RowFormatError, "the assistant mask has 2 entries but input_ids has 21: give one per token",
    ),
    "unknown row format": (
        {"spec": GEMMA}, {"text": "hello", "images": ["a"]}, {"input_ids": GOOD, "images": ["a"]},
        RowFormatError, "expected a conversation ('messages' in TRL, Unsloth, LLaMA-Factory or OpenAI format",
    ),
    "non-integer ids": (
        {"spec": GEMMA}, {"input_ids": [1.0, 2.5, 3.0]}, {"input_ids": [float(t) for t in GOOD], "images": ["a"]},
        InvalidTokenError, "token ids must be integers; tokenize the text first",
    ),
    "ids given as text": (
        {"spec": GEMMA}, {"input_ids": ["hello", "world"]}, {"input_ids": GOOD, "images": ["a"]},
        InvalidTokenError, "token ids must be integers",
    ),
    "ids outside the vocabulary": (
        {"spec": GEMMA, "processor": "tokenizer"}, {"input_ids": [*GOOD, 5000]}, {"input_ids": [*GOOD, 431], "images": ["a"]},
        InvalidTokenError, "token id 5000 is outside the vocabulary [0, 432): the row was tokenized by another",
    ),
    "negative ids": (
        {"spec": GEMMA}, {"input_ids": [1, -7, 3]}, {"input_ids": GOOD, "images": ["a"]},
        InvalidTokenError, "token id -7 is outside the vocabulary",
    ),
    "labels that train nothing": (
        {"spec": GEMMA}, {"input_ids": GOOD, "labels": [-100] * len(GOOD), "images": ["a"]},
        labelled(GOOD, images=["a"]),
        chunker.NoSupervisionError, "the row would train no token: its labels are all -100",
    ),
    "assistant mask that trains nothing": (
        {"spec": GEMMA}, {"input_ids": GOOD, "assistant_masks": [0] * len(GOOD), "images": ["a"]},
        {"input_ids": GOOD, "assistant_masks": [0] * (len(GOOD) - 4) + [1] * 4, "images": ["a"]},
        chunker.NoSupervisionError, "its assistant mask marks no text token",
    ),
    "turn markers with no answer": (
        {"spec": GEMMA}, {"input_ids": [BOS, *USER, 50, *IMAGE, 51, EOT, NL], "images": ["a"]},
        {"input_ids": GOOD, "images": ["a"]},
        chunker.NoSupervisionError, "no response marker [10, 12, 3] is followed by text",
    ),
    "pre-tokenized row with nothing to say where the answers are": (
        {"spec": LLAVA.with_turns((), ())}, {"input_ids": turn([IMG] * 3), "images": ["a"]},
        labelled(turn([IMG] * 3), images=["a"]),
        RowFormatError, "add labels (unshifted, -100 where no loss) or 'assistant_masks', pass instruction_part=",
    ),
    "pixel rows that do not match the spans": (
        {"spec": GEMMA}, {"input_ids": GOOD, "pixel_values": np.zeros((2, 3, 2, 2), np.float32)},
        {"input_ids": GOOD, "pixel_values": np.zeros((1, 3, 2, 2), np.float32)},
        PixelMismatchError, "pixel_values has 2 rows along axis 0 but the 1 media spans need 1",
    ),
    "grid pixel rows that do not match the grid": (
        {"spec": QWEN},
        labelled([*USER, *QWEN_IMAGE, *ANSWER], pixel_values=np.zeros((7, 6), np.float32),
                 image_grid_thw=np.array([[1, 2, 4]])),
        labelled([*USER, *QWEN_IMAGE, *ANSWER], pixel_values=np.zeros((8, 6), np.float32),
                 image_grid_thw=np.array([[1, 2, 4]])),
        PixelMismatchError, "pixel_values has 7 rows along axis 0 but the 1 media spans need 8",
    ),
}


def splitter(kw, **more) -> WindowSplitter:
    kw = {"max_length": 12, **kw, **more}
    if kw.get("processor") == "tokenizer":
        kw["processor"] = tokenizer()
    return WindowSplitter(**kw)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_row_raises_its_error_naming_the_row_and_the_fix(name):
    kw, bad, _, error, fix = CASES[name]
    with pytest.raises(error) as info:
        splitter(kw).split_example(bad, index=5)
    message = str(info.value)
    assert message.startswith("row 5: "), message
    assert fix in message, message
    assert info.value.row == 5 and isinstance(info.value, ChunkerError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", list(CASES))
def test_happy_twin_splits(name):
    kw, _, good, _, _ = CASES[name]
    rows = splitter(kw).split_example(good, index=6)
    assert rows and all(len(r["input_ids"]) <= splitter(kw).max_length for r in rows)
    assert [r["source_index"] for r in rows] == [6] * len(rows)
    assert sum(len(r["input_ids"]) for r in rows) >= len(good["input_ids"])


@pytest.mark.parametrize("name", list(CASES))
def test_on_error_skip_counts_the_bad_row_and_keeps_its_twin(name):
    kw, bad, good, error, fix = CASES[name]
    s = splitter(kw, on_error="skip")
    keys = sorted(set(bad) | set(good))
    batch = {k: [bad.get(k), good.get(k)] for k in keys}
    out = s(batch, indices=[5, 6])
    assert set(chunker.drop_skipped(out)["source_index"]) == {6}
    stats = chunker.SplitStats.from_windows(out)
    assert stats.rows == 2 and stats.skipped == {error.__name__: 1}
    assert stats.examples[0]["row"] == 5 and fix in stats.examples[0]["reason"]


def test_on_oversize_skip_skips_only_oversize_rows():
    s = splitter({"spec": GEMMA, "max_length": 4}, on_oversize="skip")
    out = s({"input_ids": [GOOD], "images": [["a"]]}, indices=[2])
    assert out["num_windows"] == [0] and chunker.SplitStats.from_windows(out).skipped == {"OversizeSpanError": 1}
    with pytest.raises(SpanError, match="row 3: "):
        s({"input_ids": [[BOS, OPEN, IMG]], "images": [["a"]]}, indices=[3])


@pytest.mark.parametrize("kw, match", [
    ({"max_length": 8, "overlap": 8}, "overlap=8 must be smaller than max_length=8"),
    ({"max_length": 8, "overlap": -2}, "overlap=-2 must be an integer >= 0"),
    ({"max_length": 1}, "max_length=1 must be an integer >= 2"),
    ({"max_length": 8, "prefix": "everything"}, "prefix='everything' must be one of"),
    ({"max_length": 8, "on_error": "ignore"}, "on_error='ignore' must be one of"),
    ({"max_length": 8, "train_on": "bot"}, "train_on='bot' must be one of"),
])
def test_settings_that_cannot_work_are_config_errors_and_the_twin_builds(kw, match):
    with pytest.raises(ConfigError, match=match):
        WindowSplitter(spec=GEMMA, **kw)
    assert WindowSplitter(spec=GEMMA, max_length=8, overlap=2).overlap == 2

