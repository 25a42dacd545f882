"""find_image_spans and group_spans on hand-written rows of every grammar kind; expected values by hand."""

from __future__ import annotations

import numpy as np
import pytest

from chunker import ImageSpanSpec, SpanError, find_image_spans
from chunker.errors import ImageTokenCountError
from chunker.spans import Spans, group_spans

IMG, VID, OPEN, CLOSE, BREAK, END, FAKE, GLOBAL, R11, R12 = 20, 21, 22, 23, 24, 25, 26, 27, 30, 31
BRACKET = ImageSpanSpec(family="custom", kind="bracket", image_token_id=IMG, video_token_id=VID,
                        open_ids=(OPEN,), close_ids=(CLOSE,))


def as_lists(s: Spans):
    return s.starts.tolist(), s.ends.tolist(), s.kinds.tolist(), s.counts.tolist()


def test_bracket_spans_include_their_brackets_and_count_placeholders():
    ids = [1, OPEN, IMG, IMG, CLOSE, 5, OPEN, IMG, CLOSE, 2]
    assert as_lists(find_image_spans(ids, BRACKET)) == ([1, 6], [5, 9], [0, 0], [2, 1])


def test_nested_video_brackets_make_one_video_item_with_timestamps_inside():
    # Qwen3-VL: <vs> <0.5 seconds> <vs> pad pad <ve> <1.5 seconds> <vs> pad pad <ve> <ve>
    ids = [OPEN, 100, OPEN, VID, VID, CLOSE, 101, OPEN, VID, VID, CLOSE, CLOSE, 7, OPEN, IMG, CLOSE]
    assert as_lists(find_image_spans(ids, BRACKET)) == ([0, 13], [12, 16], [1, 0], [4, 1])


def test_media_at_the_very_start_and_the_very_end():
    ids = [OPEN, IMG, CLOSE, 9, OPEN, IMG, IMG, CLOSE]
    assert as_lists(find_image_spans(ids, BRACKET)) == ([0, 4], [3, 8], [0, 0], [1, 2])


def test_fixed_count_run_splits_back_to_back_images():
    spec = ImageSpanSpec(family="llava", kind="run", image_token_id=IMG, tokens_per_image=3)
    ids = [1, IMG, IMG, IMG, IMG, IMG, IMG, 5, IMG, IMG, IMG]
    assert as_lists(find_image_spans(ids, spec)) == ([1, 4, 8], [4, 7, 11], [0, 0, 0], [3, 3, 3])


def test_variable_run_is_one_item_per_run():
    spec = ImageSpanSpec(family="llava_next", kind="run", image_token_id=IMG)
    assert as_lists(find_image_spans([IMG, IMG, 5, IMG], spec)) == ([0, 3], [2, 4], [0, 0], [2, 1])


def test_fixed_count_run_of_another_length_is_refused():
    spec = ImageSpanSpec(family="llava", kind="run", image_token_id=IMG, tokens_per_image=3)
    with pytest.raises(ImageTokenCountError, match=r"row 4: image-token run at \[1, 5\) holds 4 tokens"):
        find_image_spans([1, IMG, IMG, IMG, IMG, 2], spec, row=4)


def test_terminated_rows_end_at_the_end_token_and_back_to_back_images_split():
    spec = ImageSpanSpec(family="pixtral", kind="terminated_run", image_token_id=IMG, body_ids=(BREAK,), end_id=END)
    ids = [1, IMG, IMG, BREAK, IMG, IMG, END, IMG, END, 5]
    assert as_lists(find_image_spans(ids, spec)) == ([1, 7], [7, 9], [0, 0], [4, 1])


def test_idefics3_tiles_end_after_the_global_block():
    spec = ImageSpanSpec(family="idefics3", kind="tiles", image_token_id=IMG, open_ids=(FAKE,), global_id=GLOBAL,
                         tile_ids=(R11, R12), tokens_per_tile=2)
    split = [FAKE, R11, IMG, IMG, FAKE, R12, IMG, IMG, 3, 3, FAKE, GLOBAL, IMG, IMG, FAKE]  # 15 tokens, 3 tiles
    single = [FAKE, GLOBAL, IMG, IMG, FAKE]
    ids = [1, *split, *single, 9]
    assert as_lists(find_image_spans(ids, spec)) == ([1, 16], [16, 21], [0, 0], [6, 2])


def test_unclosed_and_unopened_brackets_are_span_errors():
    with pytest.raises(SpanError, match="row 3: media span opened at position 1 is never closed"):
        find_image_spans([1, OPEN, IMG, IMG], BRACKET, row=3)
    with pytest.raises(SpanError, match="closing media token 23 at position 2 has no opening token"):
        find_image_spans([IMG, IMG, CLOSE, 5], BRACKET)


def test_a_placeholder_outside_every_span_is_a_span_error():
    with pytest.raises(SpanError, match="media token 20 at position 1 lies outside every media span"):
        find_image_spans([5, IMG, OPEN, IMG, CLOSE], BRACKET)


def test_group_spans_keeps_an_image_with_its_crops():
    s = Spans(np.array([0, 5, 9, 20]), np.array([3, 8, 12, 23]), np.zeros(4, np.int64), np.full(4, 2))
    assert as_lists(group_spans(s, [3, 1])) == ([0, 20], [12, 23], [0, 0], [6, 2])
    with pytest.raises(SpanError, match="cannot group 4 spans"):
        group_spans(s, [2, 1])


def test_no_media_gives_empty_spans():
    s = find_image_spans(np.array([1, 2, 3]), BRACKET)
    assert len(s) == 0 and s.starts.dtype == np.int64
