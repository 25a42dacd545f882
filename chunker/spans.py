"""Find media spans in token ids: whole-array numpy, one span per media item, brackets included."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ChunkerError, ImageTokenCountError, SpanError
from .spec import ImageSpanSpec

IMAGE, VIDEO, AUDIO = 0, 1, 2


@dataclass(frozen=True)
class Spans:
    """Media spans of one row, in order; `ends` are exclusive.

    Attributes:
        starts, ends: int64 arrays of span boundaries (brackets included).
        kinds: 0 for an image, 1 for a video, 2 for an audio item (`IMAGE`, `VIDEO`, `AUDIO`).
        counts: placeholder tokens in each span (the features the item must supply).
    """

    starts: np.ndarray
    ends: np.ndarray
    kinds: np.ndarray
    counts: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def lengths(self) -> np.ndarray:
        return self.ends - self.starts

    def take(self, index) -> Spans:
        """The spans at `index` (a mask or integer array)."""
        return Spans(self.starts[index], self.ends[index], self.kinds[index], self.counts[index])

    @classmethod
    def empty(cls) -> Spans:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z.copy(), z.copy(), z.copy())


def find_image_spans(input_ids, spec: ImageSpanSpec, *, item_counts=None, row=None) -> Spans:
    """Locate every media item's span in `input_ids`.

    Args:
        input_ids: 1-D sequence of token ids (list, numpy array or CPU tensor).
        spec: the family grammar (`ImageSpanSpec.from_processor(processor)`).
        item_counts: placeholder tokens of each item, in order, for bracketless families whose
            back-to-back images form one run (LLaVA-NeXT/OneVision); see `split_runs`.
        row: the row's name for error messages (source index or id).

    Returns:
        Spans, one per media item (image, whole video, or audio item), brackets included, end exclusive, in
        text order. A family with audio (`spec.audio_token_id`) has its audio spans found as brackets of their
        own, beside the image grammar.

    Raises:
        SpanError: an unclosed or unopened bracket, or a placeholder outside any span.
        ImageTokenCountError: a run whose length is not a multiple of the fixed per-image count.

    Example:
        >>> spec = ImageSpanSpec(family="custom", kind="bracket", image_token_id=7, open_ids=(5,), close_ids=(6,))
        >>> s = find_image_spans([1, 5, 7, 7, 6, 5, 7, 6, 2], spec)
        >>> s.starts.tolist(), s.ends.tolist(), s.counts.tolist()
        ([1, 5], [5, 8], [2, 1])
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 1:
        raise SpanError(f"input_ids must be 1-D, got shape {ids.shape}", row=row)
    if not np.issubdtype(ids.dtype, np.integer):  # integer ids of any width compare as they are: no copy
        ids = ids.astype(np.int64)
    at = _Positions(ids)
    finder = _FINDERS[spec.kind]
    starts, ends = finder(ids, spec, row, at)
    spans = _with_counts(spec, starts, ends, at)
    if item_counts is not None and spec.kind == "run" and len(spans):
        spans = split_runs(spans, item_counts, row=row)
    if spec.audio_token_id is not None:
        spans = _with_audio(ids, spec, spans, row, at)
    _check_no_stray(ids, spec, spans, row, at)
    return spans


def group_spans(spans: Spans, sizes) -> Spans:
    """Merge consecutive spans into one item each: `sizes[k]` blocks make item k (an image and its crops).

    Example:
        >>> s = Spans(np.array([0, 5, 9]), np.array([3, 8, 12]), np.zeros(3, int), np.ones(3, int))
        >>> group_spans(s, [2, 1]).ends.tolist()
        [8, 12]
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.sum() != len(spans) or (sizes < 1).any():
        raise SpanError(f"cannot group {len(spans)} spans into items of {sizes.tolist()} blocks")
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    last = first + sizes - 1
    counts = np.add.reduceat(spans.counts, first) if len(first) else spans.counts[:0]
    return Spans(spans.starts[first], spans.ends[last], spans.kinds[first], counts)


def merge_spans(a: Spans, b: Spans) -> Spans:
    """The spans of `a` and `b` together, in text order (a family's images beside its grouped videos).

    Example:
        >>> one = lambda s, e: Spans(np.array(s), np.array(e), np.zeros(len(s), int), np.ones(len(s), int))
        >>> merge_spans(one([0, 9], [3, 12]), one([5], [8])).starts.tolist()
        [0, 5, 9]
    """
    merged = Spans(*(np.concatenate([x, y]) for x, y in zip((a.starts, a.ends, a.kinds, a.counts),
                                                             (b.starts, b.ends, b.kinds, b.counts))))
    return merged.take(np.argsort(merged.starts, kind="stable"))


def first_overlap(spans: Spans) -> int | None:
    """Index k of the first span that overlaps the next one (spans in text order), or None.

    Example:
        >>> one = lambda s, e: Spans(np.array(s), np.array(e), np.zeros(len(s), int), np.ones(len(s), int))
        >>> first_overlap(one([0, 2, 9], [3, 8, 12])), first_overlap(one([0, 5], [3, 8]))
        (0, None)
    """
    inside = np.flatnonzero(spans.starts[1:] < spans.ends[:-1])
    return int(inside[0]) if len(inside) else None


def split_runs(spans: Spans, item_counts, *, row=None) -> Spans:
    """Split placeholder runs (no brackets) into items of `item_counts` tokens each, in order.

    Back-to-back images of a bracketless family (LLaVA-NeXT, LLaVA-OneVision) form one run; the
    items' own token counts (from their sizes) tell where one ends.

    Raises:
        ImageTokenCountError: a run does not end where an item ends.

    Example:
        >>> s = Spans(np.array([2, 20]), np.array([12, 24]), np.zeros(2, int), np.array([10, 4]))
        >>> split_runs(s, [6, 4, 4]).starts.tolist()
        [2, 8, 20]
    """
    want = np.asarray(item_counts, dtype=np.int64)
    item_end = np.cumsum(want)
    run_end = np.cumsum(spans.counts)
    if len(want) == len(spans) and (want == spans.counts).all():
        return spans
    if item_end[-1:].tolist() != run_end[-1:].tolist() or not np.isin(run_end, item_end).all():
        raise ImageTokenCountError(
            f"image-token runs of {spans.counts.tolist()} tokens cannot be cut into images of {want.tolist()} "
            "tokens: the text and the images come from different processor settings; tokenize the whole "
            "conversation with this processor",
            row=row,
        )
    item_start = item_end - want
    run = np.searchsorted(run_end, item_start, side="right")
    run_start_cum = run_end - spans.counts
    starts = spans.starts[run] + (item_start - run_start_cum[run])
    return Spans(starts, starts + want, spans.kinds[run], want)


def media_mask(n: int, spans: Spans) -> np.ndarray:
    """True on every position of `n` that lies inside a media span (spans never overlap)."""
    mask = np.zeros(n, dtype=bool)
    for s, e in zip(spans.starts.tolist(), spans.ends.tolist()):  # a row holds few spans: slices beat a cumsum pass
        mask[s:e] = True
    return mask


def batch_spans(spec, flat, offsets, *, spans=None):
    """The spans of every row of a batch from ONE `find_image_spans` call over its flat ids (or `spans`, that call's
    result when the caller made it already): `row -> Spans`, or None when the batch is irregular (a span would join
    two rows, or the grammar finds an error) and each row must be found on its own, where it raises its own error.

    Example:
        >>> from chunker import ImageSpanSpec
        >>> from chunker.spans import batch_spans
        >>> spec = ImageSpanSpec(family="custom", kind="bracket", image_token_id=7, open_ids=(5,), close_ids=(6,))
        >>> rows = batch_spans(spec, np.array([1, 5, 7, 6, 5, 7, 7, 6, 2]), np.array([0, 4, 9]))
        >>> rows(0).starts.tolist(), rows(1).starts.tolist(), rows(1).counts.tolist()
        ([1], [0], [2])
    """
    n_rows = len(offsets) - 1
    if n_rows < 2:
        return None
    if spans is None:
        try:
            spans = find_image_spans(flat, spec)
        except ChunkerError:
            return None
    starts = np.asarray(offsets[:-1], dtype=np.int64)
    row = np.searchsorted(starts, spans.starts, side="right") - 1
    if len(spans) and (spans.ends > np.asarray(offsets, dtype=np.int64)[row + 1]).any():
        return None  # a span would join two rows (a run across the boundary, an unclosed bracket): row by row
    first = np.searchsorted(row, np.arange(n_rows + 1), side="left")

    def of(r: int) -> Spans:
        a, b = int(first[r]), int(first[r + 1])
        return Spans(spans.starts[a:b] - starts[r], spans.ends[a:b] - starts[r], spans.kinds[a:b], spans.counts[a:b])

    return of


class _Positions:
    """Positions of each structural id in one row, found once (one pass per id) and shared by the finder, the
    counts and the stray check."""

    def __init__(self, ids):
        self.ids, self.found = ids, {}

    def of(self, values) -> np.ndarray:
        parts = []
        for v in values:
            if v not in self.found:
                self.found[v] = np.flatnonzero(self.ids == v)
            parts.append(self.found[v])
        if not parts:
            return np.zeros(0, dtype=np.int64)
        return parts[0] if len(parts) == 1 else np.sort(np.concatenate(parts))


def _isin(ids, values) -> np.ndarray:
    if len(values) > 8:
        return np.isin(ids, np.asarray(values, dtype=np.int64))
    out = np.zeros(len(ids), dtype=bool)
    for v in values:  # a few ids: one comparison pass each beats np.isin's sort
        out |= ids == v
    return out


def _bracket(ids, spec, row, at, open_ids=None, close_ids=None, noun="an image"):
    # brackets are rare among tokens: find them once, then walk the depth over the brackets alone
    open_ids = spec.open_ids if open_ids is None else open_ids
    close_ids = spec.close_ids if close_ids is None else close_ids
    opens, closes = at.of(open_ids), at.of(close_ids)
    pos = np.concatenate([opens, closes])
    step = np.concatenate([np.ones(len(opens), np.int64), -np.ones(len(closes), np.int64)])
    order = np.argsort(pos, kind="stable")
    pos, step = pos[order], step[order]
    depth = np.cumsum(step)
    if len(depth) and depth.min() < 0:
        at = int(pos[np.argmax(depth < 0)])
        raise SpanError(
            f"closing media token {int(ids[at])} at position {at} has no opening token "
            f"(expected one of {list(open_ids)} before it): the row was cut or built by hand; "
            "tokenize the whole conversation without truncation",
            row=row,
        )
    if len(depth) and depth[-1] != 0:
        outer = pos[(step == 1) & (depth == 1)]
        raise SpanError(
            f"media span opened at position {int(outer[-1])} is never closed (expected one of "
            f"{list(close_ids)}): the row was truncated inside {noun}; tokenize without truncation",
            row=row,
        )
    starts = pos[(step == 1) & (depth == 1)]
    ends = pos[(step == -1) & (depth == 0)] + 1
    return starts, ends


def _run(ids, spec, row, at):
    ph = at.of(spec.media_ids)
    first = np.ones(len(ph), dtype=bool)
    first[1:] = ph[1:] != ph[:-1] + 1
    last = np.ones(len(ph), dtype=bool)
    last[:-1] = first[1:]
    starts, ends = ph[first], ph[last] + 1
    per = spec.tokens_per_image
    if per and len(starts):
        lengths = ends - starts
        bad = np.flatnonzero(lengths % per)
        if len(bad):
            b = int(bad[0])
            raise ImageTokenCountError(
                f"image-token run at [{int(starts[b])}, {int(ends[b])}) holds {int(lengths[b])} tokens, "
                f"not a multiple of {per} tokens per image: the row was cut inside an image or built with "
                "another processor; tokenize the whole conversation with this processor",
                row=row,
            )
        k = lengths // per
        starts = np.repeat(starts, k) + per * _ranks(k)
        ends = starts + per
    return starts, ends


def _ranks(k) -> np.ndarray:
    """0, 1, ..., k[i]-1 for every i, concatenated."""
    total = int(k.sum())
    offsets = np.repeat(np.cumsum(k) - k, k)
    return np.arange(total) - offsets


def _terminated_run(ids, spec, row, at=None):
    end = ids == spec.end_id
    inside = _isin(ids, (*spec.body_ids, *spec.media_ids)) | end
    before = np.concatenate([[False], inside[:-1]])
    after = np.concatenate([inside[1:], [False]])
    starts = np.flatnonzero(inside & (~before | np.concatenate([[False], end[:-1]])))
    ends = np.flatnonzero(end) + 1
    unterminated = np.flatnonzero(inside & ~after & ~end)
    if len(unterminated):
        at = int(unterminated[0])
        raise SpanError(
            f"image rows ending at position {at} are not closed by the end token {spec.end_id}: the row was "
            "truncated inside an image; tokenize the whole conversation without truncation",
            row=row,
        )
    return starts, ends


def _tiles(ids, spec, row, at=None):
    fake = spec.open_ids[0]
    is_fake = ids == fake
    nxt = np.concatenate([ids[1:], [-1]])
    openers = np.flatnonzero(is_fake & _isin(nxt, (*spec.tile_ids, spec.global_id)))
    globals_ = np.flatnonzero(ids == spec.global_id)
    per = spec.tokens_per_tile or 0
    ends = globals_ + per + 2
    if len(ends) and (ends[-1] > len(ids) or not (ids[np.minimum(ends - 1, len(ids) - 1)] == fake).all()):
        raise SpanError(
            f"a global image block does not end with {per} image tokens and the fake token {fake}: the row was "
            "truncated inside an image or tokens_per_tile is wrong; tokenize without truncation",
            row=row,
        )
    prev_end = np.concatenate([[0], ends[:-1]])
    pick = np.searchsorted(openers, prev_end, side="left")
    if len(ends) and ((pick >= len(openers)).any() or (openers[np.minimum(pick, len(openers) - 1)] > globals_ - 1).any()):
        raise SpanError("a global image block has no opening fake token before it", row=row)
    starts = openers[pick] if len(ends) else ends
    orphan = np.setdiff1d(openers, _covered(openers, starts, ends))
    if len(orphan):
        raise SpanError(
            f"image tiles opened at position {int(orphan[0])} are never closed by a global image block: the row "
            "was truncated inside an image; tokenize the whole conversation without truncation",
            row=row,
        )
    return starts, ends


def _covered(points, starts, ends) -> np.ndarray:
    k = np.searchsorted(starts, points, side="right") - 1
    ok = (k >= 0) & (points < ends[np.maximum(k, 0)]) if len(starts) else np.zeros(len(points), bool)
    return points[ok]


_FINDERS = {"bracket": _bracket, "run": _run, "terminated_run": _terminated_run, "tiles": _tiles}


def _with_counts(spec, starts, ends, at) -> Spans:
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    image = at.of((spec.image_token_id,))
    counts = np.searchsorted(image, ends) - np.searchsorted(image, starts)
    kinds = np.zeros(len(starts), dtype=np.int64)
    if spec.video_token_id is not None:
        video = at.of((spec.video_token_id,))
        videos = np.searchsorted(video, ends) - np.searchsorted(video, starts)
        kinds = (videos > 0).astype(np.int64)
        counts = counts + videos
    return Spans(starts, ends, kinds, counts)


def _with_audio(ids, spec, spans, row, at) -> Spans:
    """`spans` with the row's audio spans (`audio_open_ids ... audio_close_ids`, one per audio item; without audio
    brackets, each run of audio placeholders, which back-to-back items share) merged in, in text order; an audio span
    that overlaps another media span is a `SpanError`."""
    if spec.audio_open_ids:
        starts, ends = _bracket(ids, spec, row, at, spec.audio_open_ids, spec.audio_close_ids, "an audio item")
    else:
        pos = at.of((spec.audio_token_id,))
        gap = np.flatnonzero(np.diff(pos) != 1)
        starts = pos[np.concatenate([[0], gap + 1])] if len(pos) else pos
        ends = pos[np.append(gap, len(pos) - 1)] + 1 if len(pos) else pos
    if not len(starts):
        return spans
    audio = at.of((spec.audio_token_id,))
    counts = np.searchsorted(audio, ends) - np.searchsorted(audio, starts)
    merged = merge_spans(spans, Spans(starts, ends, np.full(len(starts), AUDIO, np.int64), counts))
    k = first_overlap(merged)
    if k is not None:
        raise SpanError(
            f"media spans [{int(merged.starts[k])}, {int(merged.ends[k])}) and [{int(merged.starts[k + 1])}, "
            f"{int(merged.ends[k + 1])}) overlap (an audio span inside an image or video span, or the reverse): "
            "audio taken from a video and interleaved with its frames (Qwen-Omni's load_audio_from_video), which is "
            "not split yet (pass the video's audio as its own audio item), or a row built by hand or edited "
            "(tokenize the whole conversation with this family's processor)",
            row=row,
        )
    return merged


def _check_no_stray(ids, spec, spans, row, at):
    stray = []
    for value in spec.structural_ids:  # each id's positions are sorted already: no merge needed
        pos = at.of((value,))
        held = np.searchsorted(pos, spans.ends) - np.searchsorted(pos, spans.starts)  # spans never overlap
        if int(held.sum()) == len(pos):
            continue  # all inside: found by searching the few span bounds in the positions, not the reverse
        k = np.searchsorted(spans.starts, pos, side="right") - 1
        inside = (k >= 0) & (pos < spans.ends[np.maximum(k, 0)]) if len(spans) else np.zeros(len(pos), bool)
        stray.append(pos[~inside])
    stray = np.sort(np.concatenate(stray)) if stray else np.zeros(0, np.int64)
    if len(stray):
        at = int(stray[0])
        raise SpanError(
            f"media token {int(ids[at])} at position {at} lies outside every media span (seen {len(stray)} such "
            "tokens): the row was cut inside an image or its spec is of another family; tokenize the whole "
            "conversation with this family's processor",
            row=row,
        )
