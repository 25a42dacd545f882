"""The loss mask of a whole conversation, computed before any cut, and the labels of each window."""

from __future__ import annotations

import numpy as np

from .errors import ConfigError, RowFormatError
from .spans import Spans, media_mask

IGNORE = -100
TRAIN_ON = ("assistant", "all")


def find_marker(ids: np.ndarray, marker) -> np.ndarray:
    """Start positions of every occurrence of the token sequence `marker` in `ids` (vectorized).

    Example:
        >>> find_marker(np.array([1, 2, 3, 1, 2]), (1, 2)).tolist()
        [0, 3]
    """
    return find_markers(ids, [marker])[0]


def find_markers(ids: np.ndarray, markers) -> list[np.ndarray]:
    """`find_marker` of each of `markers`, with one pass over `ids` per distinct first token (turn markers
    usually share theirs: `<start_of_turn>user` and `<start_of_turn>model`).

    Example:
        >>> [a.tolist() for a in find_markers(np.array([9, 1, 9, 2, 9]), [(9, 1), (9, 2), ()])]
        [[0], [2], []]
    """
    first: dict[int, np.ndarray] = {}
    out = []
    for marker in markers:
        m = len(marker)
        if m == 0 or len(ids) < m:
            out.append(np.zeros(0, dtype=np.int64))
            continue
        head = int(marker[0])
        if head not in first:
            first[head] = np.flatnonzero(ids == head)
        found = first[head]
        found = found[found <= len(ids) - m]
        for j, tok in enumerate(marker[1:], 1):
            found = found[ids[found + j] == tok]
        out.append(found)
    return out


def loss_mask(ids, spans: Spans, *, train_on="assistant", instruction_ids=(), response_ids=(), row=None):
    """Which positions carry loss in the whole conversation, before any window is cut.

    Args:
        ids: token ids of the whole conversation.
        spans: its media spans; media positions never carry loss.
        train_on: "assistant" (tokens after each response marker up to the next instruction marker,
            the end-of-turn token included) or "all" (every non-media token).
        instruction_ids, response_ids: the family's turn markers (`ImageSpanSpec`).
        row: the row's name for error messages.

    Returns:
        bool array, True where the token is supervised.

    Raises:
        ConfigError: unknown `train_on`, or "assistant" without a response marker.

    Example:
        >>> from chunker.spans import Spans
        >>> loss_mask(np.array([9, 5, 1, 2, 9, 5, 3]), Spans.empty(), instruction_ids=(9,), response_ids=(5,)).tolist()
        [False, False, True, True, False, False, True]
    """
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    if train_on not in TRAIN_ON:
        raise ConfigError(f"train_on={train_on!r} must be one of {TRAIN_ON}")
    if train_on == "all":
        mask = np.ones(n, dtype=bool)
    else:
        if not response_ids:
            raise ConfigError(
                "train_on='assistant' needs the assistant turn marker: pass response_part='<the text that opens an "
                "assistant turn>' (and instruction_part for user turns), or train_on='all'"
            )
        answers, turns = find_markers(ids, [response_ids, instruction_ids])
        mask = _between(n, answers + len(response_ids), turns)
    return mask & ~media_mask(n, spans)


def _between(n, opens, closes) -> np.ndarray:
    last_open = np.full(n, -1, dtype=np.int64)
    last_close = np.full(n, -1, dtype=np.int64)
    opens = opens[opens < n]
    last_open[opens] = opens
    last_close[closes] = closes
    return np.maximum.accumulate(last_open) > np.maximum.accumulate(last_close)


def labels_from_mask(ids, mask) -> np.ndarray:
    """`ids` where `mask`, else -100."""
    return np.where(mask, np.asarray(ids, dtype=np.int64), IGNORE)


def mask_from_labels(ids, labels, spans: Spans, *, row=None) -> np.ndarray:
    """The loss mask a row's own labels give (labels == ids where supervised); media never carry loss.

    Raises:
        RowFormatError: labels of another length than input_ids, or a supervised label that is not the token.
    """
    return supervision_from_labels(ids, labels, spans, row=row)[0]


def supervision_from_labels(ids, labels, spans: Spans, *, row=None) -> tuple[np.ndarray, np.ndarray]:
    """(loss mask, labels) of a row that brings its own labels: the mask of `mask_from_labels`, and the labels
    it implies (`labels_from_mask`), which are the row's own labels array itself, not a copy, when no media
    position carried a label (the usual case: a pass over the tokens saved).

    Example:
        >>> from chunker.spans import Spans
        >>> one = Spans(np.array([1]), np.array([3]), np.zeros(1, int), np.ones(1, int))
        >>> ids, labels = np.array([4, 7, 7, 5]), np.array([-100, -100, -100, 5])
        >>> mask, out = supervision_from_labels(ids, labels, one)
        >>> mask.tolist(), out is labels
        ([False, False, False, True], True)
        >>> supervision_from_labels(ids, ids, one)[1].tolist()  # media labels are dropped: a new array
        [4, -100, -100, 5]
    """
    ids = np.asarray(ids)  # compared as they are: any integer widths compare exactly, without a widening copy
    labels = np.asarray(labels)
    if labels.shape != ids.shape:
        raise RowFormatError(
            f"labels has {labels.shape[0] if labels.ndim else 0} entries but input_ids has {len(ids)}: give one "
            "label per token (unshifted, -100 where no loss), as transformers models expect",
            row=row,
        )
    mask = labels != IGNORE
    wrong = labels != ids
    wrong &= mask  # in place: one temporary less over the tokens
    if wrong.any():
        at = int(np.argmax(wrong))
        raise RowFormatError(
            f"labels[{at}]={int(labels[at])} but input_ids[{at}]={int(ids[at])}: labels must be the unshifted "
            "input ids (or -100); the model shifts them itself",
            row=row,
        )
    hit = _spans_holding(mask, spans)
    for s, e in zip(spans.starts[hit].tolist(), spans.ends[hit].tolist()):  # media never carry loss
        mask[s:e] = False
    own = not hit.any() and np.issubdtype(labels.dtype, np.signedinteger)
    return mask, labels if own else labels_from_mask(ids, mask)


def _spans_holding(mask: np.ndarray, spans: Spans) -> np.ndarray:
    """Which spans hold a True position of `mask` (one reduction for all spans)."""
    if not len(spans):
        return np.zeros(0, dtype=bool)
    bounds = np.stack([spans.starts, spans.ends], axis=1).reshape(-1)
    padded = np.concatenate([mask, np.zeros(1, dtype=bool)])  # an end may equal len(mask)
    return np.logical_or.reduceat(padded, bounds)[::2] & (spans.ends > spans.starts)


def mask_edges(mask) -> np.ndarray:
    """Positions where supervision starts or stops (an answer's first token, the token after its last):
    preferred cut points, learned from the loss mask instead of from turn markers.

    Example:
        >>> mask_edges(np.array([False, True, True, False, False, True])).tolist()
        [1, 3, 5]
    """
    m = np.asarray(mask, dtype=bool)
    return np.flatnonzero(m[1:] != m[:-1]).astype(np.int64) + 1


def turn_boundaries(ids, instruction_ids=(), response_ids=()) -> np.ndarray:
    """Sorted positions where a user or assistant turn starts: preferred cut points."""
    ids = np.asarray(ids, dtype=np.int64)
    found = find_markers(ids, [m for m in (instruction_ids, response_ids) if m])
    return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


def window_labels(labels: np.ndarray, context_start: int, start: int, end: int, prefix_len: int) -> np.ndarray:
    """Labels of one window: -100 on prefix and context, the whole-conversation labels on new tokens."""
    out = np.full(prefix_len + end - context_start, IGNORE, dtype=np.int64)
    out[prefix_len + start - context_start:] = labels[start:end]
    return out
