"""The loss mask of a whole conversation and the labels of each window; expected values by hand."""

from __future__ import annotations

import numpy as np
import pytest

from chunker import ConfigError, RowFormatError
from chunker.labels import (
    IGNORE,
    find_marker,
    labels_from_mask,
    loss_mask,
    mask_from_labels,
    media_mask,
    turn_boundaries,
    window_labels,
)
from chunker.spans import Spans

USER, MODEL = (10, 11, 3), (10, 12, 3)
#          0  1   2   3  4   5   6   7  8   9  10  11 12  13  14  15 16
IDS = np.array([1, 10, 11, 3, 20, 20, 50, 10, 12, 3, 60, 61, 4, 3, 10, 11, 3])
IMAGE = Spans(np.array([4]), np.array([6]), np.array([0]), np.array([2]))


def test_find_marker_finds_every_occurrence():
    assert find_marker(IDS, USER).tolist() == [1, 14]
    assert find_marker(IDS, MODEL).tolist() == [7]
    assert find_marker(IDS, ()).tolist() == []


def test_media_mask_covers_spans_end_exclusive():
    assert np.flatnonzero(media_mask(8, IMAGE)).tolist() == [4, 5]


def test_assistant_mask_runs_from_the_response_marker_to_the_next_user_marker():
    mask = loss_mask(IDS, IMAGE, instruction_ids=USER, response_ids=MODEL)
    assert np.flatnonzero(mask).tolist() == [10, 11, 12, 13]


def test_train_on_all_excludes_media_only():
    mask = loss_mask(IDS, IMAGE, train_on="all")
    assert np.flatnonzero(~mask).tolist() == [4, 5]


def test_assistant_mask_without_a_response_marker_names_the_fix():
    with pytest.raises(ConfigError, match="response_part="):
        loss_mask(IDS, IMAGE, instruction_ids=USER)
    with pytest.raises(ConfigError, match="train_on='bot' must be one of"):
        loss_mask(IDS, IMAGE, train_on="bot", response_ids=MODEL)


def test_labels_round_trip_through_the_mask():
    mask = np.zeros(len(IDS), bool)
    mask[[10, 11, 12]] = True
    labels = labels_from_mask(IDS, mask)
    assert labels[10:13].tolist() == [60, 61, 4] and (labels[:10] == IGNORE).all()
    assert np.array_equal(mask_from_labels(IDS, labels, IMAGE), mask)


def test_labels_on_media_positions_are_dropped():
    labels = IDS.copy()
    assert np.flatnonzero(~mask_from_labels(IDS, labels, IMAGE)).tolist() == [4, 5]


def test_labels_of_another_length_or_shifted_are_row_errors():
    with pytest.raises(RowFormatError, match="row 9: labels has 3 entries but input_ids has 17: give one label"):
        mask_from_labels(IDS, [1, 2, 3], IMAGE, row=9)
    shifted = np.concatenate([IDS[1:], [IGNORE]])
    with pytest.raises(RowFormatError, match=r"labels\[0\]=10 but input_ids\[0\]=1: labels must be the unshifted"):
        mask_from_labels(IDS, shifted, IMAGE)


def test_turn_boundaries_are_the_sorted_marker_starts():
    assert turn_boundaries(IDS, USER, MODEL).tolist() == [1, 7, 14]
    assert turn_boundaries(IDS).tolist() == []


def test_window_labels_ignore_prefix_and_context_and_keep_new_tokens():
    labels = np.array([IGNORE, IGNORE, 7, 8, 9, IGNORE, 11])
    # prefix of 1, context [2, 4), new tokens [4, 7)
    assert window_labels(labels, 2, 4, 7, 1).tolist() == [IGNORE, IGNORE, IGNORE, 9, IGNORE, 11]
    assert window_labels(labels, 0, 0, 3, 0).tolist() == [IGNORE, IGNORE, 7]
