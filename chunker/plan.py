"""Plan windows: cut points outside media spans, overlap context, a repeated prefix, turn-aware ends."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, OversizeSpanError, PrefixError
from .spans import Spans


@dataclass(frozen=True)
class Window:
    """One window of a row: `[context_start, start)` is overlap context (no loss), `[start, end)` new tokens.

    Windows after the first are preceded by the row's prefix (`prefix_len` tokens) when one is used.
    """

    context_start: int
    start: int
    end: int

    @property
    def new_tokens(self) -> int:
        return self.end - self.start


def check_config(max_length: int, overlap: int, prefix_len: int) -> None:
    """Raise `ConfigError` for settings that can never make a window; the message says which to change."""
    if not isinstance(max_length, (int, np.integer)) or max_length < 2:
        raise ConfigError(
            f"max_length={max_length!r} must be an integer >= 2 (e.g. 2048): models shift labels, so a window "
            "trains no token it does not also hold the token before"
        )
    if not isinstance(overlap, (int, np.integer)) or overlap < 0:
        raise ConfigError(f"overlap={overlap!r} must be an integer >= 0 (0 means no context is repeated)")
    if overlap >= max_length:
        raise ConfigError(
            f"overlap={overlap} must be smaller than max_length={max_length}: a window must hold new tokens. "
            f"Use overlap <= {max(max_length // 4, 0)} or so"
        )
    if prefix_len < 0 or prefix_len >= max_length:
        raise ConfigError(
            f"the prefix repeated in every window is {prefix_len} tokens but max_length={max_length}: "
            f"raise max_length above {prefix_len} or set prefix='none'/'bos'"
        )


def plan_windows(
    n_tokens: int,
    spans: Spans,
    *,
    max_length: int,
    overlap: int = 0,
    prefix_len: int = 0,
    boundaries=None,
    loss_mask=None,
    min_fill: float = 0.5,
    row=None,
) -> list[Window]:
    """Cut `n_tokens` tokens into windows of at most `max_length` that never cut a media span.

    Args:
        n_tokens: length of the whole conversation.
        spans: its media spans (`find_image_spans`).
        max_length: the most tokens a window may hold, its prefix and context included.
        overlap: tokens of the previous window repeated as context (no loss); snapped forward so it
            never starts inside a span, so an image in the context is whole and comes with its pixels.
        prefix_len: the first `prefix_len` tokens (BOS, maybe the system turn) are repeated before
            every window after the first. Media inside the prefix come along with it.
        boundaries: sorted positions where a cut is preferred (turn starts); a window ends at the last
            one past `min_fill` of its room, else as late as the spans allow.
        loss_mask: bool per token; a window that would start on a supervised token with nothing before
            it (no prefix, no context) gets one token of context so the model can predict it. None means
            every token outside the media spans is supervised.
        min_fill: fraction of a window's room it fills before a turn boundary may end it.
        row: the row's name for error messages.

    Returns:
        list of `Window`; their `[start, end)` ranges partition `[0, n_tokens)`.

    Raises:
        ConfigError: max_length, overlap or a negative prefix_len that cannot work.
        OversizeSpanError: a span that cannot fit in any window (span + prefix > max_length), or a prefix
            holding media that leaves no room in a window (the row is longer than max_length).
        PrefixError: the prefix ends inside a span, or leaves no room (the row is longer than max_length).

    Example:
        >>> from chunker.spans import Spans
        >>> s = Spans(np.array([3]), np.array([7]), np.array([0]), np.array([4]))
        >>> [(w.context_start, w.start, w.end) for w in plan_windows(10, s, max_length=5, loss_mask=np.zeros(10, bool))]
        [(0, 0, 3), (3, 3, 8), (8, 8, 10)]
        >>> [(w.context_start, w.start, w.end) for w in plan_windows(10, s, max_length=6, overlap=2, prefix_len=1)]
        [(0, 0, 3), (3, 3, 8), (7, 8, 10)]
    """
    check_config(max_length, overlap, 0)
    if prefix_len < 0:
        raise ConfigError(f"prefix_len={prefix_len!r} must be >= 0")
    if n_tokens <= max_length:
        return [Window(0, 0, int(n_tokens))] if n_tokens > 0 else []
    starts = np.asarray(spans.starts, dtype=np.int64)
    ends = np.asarray(spans.ends, dtype=np.int64)
    _check_prefix(prefix_len, starts, ends, max_length, row)
    _check_oversize(starts, ends, max_length, prefix_len, row)
    bounds = np.asarray([] if boundaries is None else boundaries, dtype=np.int64)
    if len(bounds) and len(starts):
        k = np.searchsorted(starts, bounds, side="left") - 1
        bounds = bounds[(k < 0) | (bounds >= ends[np.maximum(k, 0)])]  # a cut inside a span is no cut
    supervised = None if loss_mask is None else np.asarray(loss_mask, dtype=bool)
    # the walk asks a few scalar questions per window: Python lists and bisect answer them faster than numpy
    starts_l, ends_l, bounds_l = starts.tolist(), ends.tolist(), bounds.tolist()

    def enclosing(pos):
        """Index of the span with start < pos < end, or -1."""
        k = bisect_left(starts_l, pos) - 1
        return k if k >= 0 and pos < ends_l[k] else -1

    def span_opens(pos):
        """True when a span starts at pos: its first token is media, never supervised, so needs no context."""
        k = bisect_left(starts_l, pos)
        return k < len(starts_l) and starts_l[k] == pos

    def last_cut(limit):
        k = enclosing(limit)
        return limit if k < 0 else starts_l[k]

    windows = []
    start = 0
    while start < n_tokens:
        if not windows:
            context, minimal, pre = 0, 0, 0
        else:
            pre = prefix_len
            minimal = start
            if pre == 0 and (supervised[start] if supervised is not None else not span_opens(start)):
                k = enclosing(start - 1)
                minimal = start - 1 if k < 0 else starts_l[k]
            context = min(_context_start(start, overlap, prefix_len, enclosing, ends_l), minimal)
        end = _window_end(start, context, pre, max_length, n_tokens, last_cut, bounds_l, min_fill, prefix_len)
        if end <= start and context < minimal:
            context = minimal
            end = _window_end(start, context, pre, max_length, n_tokens, last_cut, bounds_l, min_fill, prefix_len)
        if end <= start:
            raise _no_room(start, minimal, pre, max_length, starts, ends, enclosing, row)
        windows.append(Window(int(context), int(start), int(end)))
        start = end
    return windows


def _context_start(start, overlap, prefix_len, enclosing, ends):
    context = max(start - overlap, prefix_len, 0)
    context = min(context, start)
    k = enclosing(context)
    return context if k < 0 else int(min(ends[k], start))


def _no_room(start, minimal, pre, max_length, starts, ends, enclosing, row):
    """The error of a window that cannot hold its first token(s): the span it opens with, or the span its
    context must hold whole (the token before a supervised token lies in it)."""
    nxt = int(np.searchsorted(starts, start, side="left"))
    first = int(ends[nxt]) - start if nxt < len(starts) and starts[nxt] == start else 1
    need = pre + (start - minimal) + first
    k = enclosing(start - 1) if minimal < start else -1
    if k < 0 and first > 1:
        k = nxt
    if k < 0:
        raise ConfigError(f"max_length={max_length} leaves no room for a token after the {pre}-token prefix")
    s, e = int(starts[k]), int(ends[k])
    return OversizeSpanError(
        f"media span [{s}, {e}) of {e - s} tokens needs a window of {need} tokens with its prefix and the tokens "
        f"that must come with it, but max_length={max_length}: raise max_length to >= {need} or pass "
        "on_oversize='skip'",
        row=row, span=(s, e), span_len=e - s, needed=need,
    )


def _window_end(start, context, pre, max_length, n_tokens, last_cut, bounds, min_fill, prefix_len):
    room = max_length - pre - (start - context)
    if room <= 0:
        return start
    limit = start + room
    if limit >= n_tokens:
        return n_tokens
    end = last_cut(limit)
    if bounds:
        floor = start + int(min_fill * room)
        i = bisect_right(bounds, end) - 1
        if i >= 0 and bounds[i] > max(floor, start) and bounds[i] >= prefix_len:
            end = bounds[i]
    return end


def _check_prefix(prefix_len, starts, ends, max_length, row):
    if prefix_len >= max_length:
        held = np.flatnonzero(ends <= prefix_len)
        message = (
            f"the prefix repeated before every window is {prefix_len} tokens but max_length={max_length} leaves "
            f"no room after it: raise max_length to >= {prefix_len + 1}"
        )
        if len(held):
            k = int(held[0])
            raise OversizeSpanError(
                message + " or pass on_oversize='skip'", row=row, span=(int(starts[k]), int(ends[k])),
                span_len=int(ends[k] - starts[k]), needed=prefix_len + 1,
            )
        raise PrefixError(message + " or use a shorter prefix (prefix='bos' or 'none')", row=row)
    if prefix_len and len(starts):
        inside = (starts < prefix_len) & (ends > prefix_len)
        if inside.any():
            k = int(np.flatnonzero(inside)[0])
            raise PrefixError(
                f"the prefix of {prefix_len} tokens ends inside media span [{int(starts[k])}, {int(ends[k])}): "
                f"use a prefix that ends at {int(ends[k])} or later, or prefix='bos'",
                row=row,
            )


def _check_oversize(starts, ends, max_length, prefix_len, row):
    if not len(starts):
        return
    body = (starts >= prefix_len) if prefix_len else np.ones(len(starts), bool)
    need = (ends - starts) + np.where(starts > 0, prefix_len, 0)
    bad = np.flatnonzero(body & (need > max_length))
    if len(bad):
        k = int(bad[0])
        s, e, n = int(starts[k]), int(ends[k]), int(need[k])
        raise OversizeSpanError(
            f"media span [{s}, {e}) of {e - s} tokens plus the {prefix_len}-token prefix needs {n} tokens but "
            f"max_length={max_length}: raise max_length to >= {n} or pass on_oversize='skip'",
            row=row, span=(s, e), span_len=e - s, needed=n,
        )


# ---------------------------------------------------------------------- many rows at once


LOCKSTEP_WINDOWS = 64  # rows needing more windows than this are walked by `plan_windows` (one numpy step per window)


def plan_batch(
    offsets: np.ndarray,
    prefix_len: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    bounds: np.ndarray,
    supervised: np.ndarray,
    *,
    max_length: int,
    overlap: int = 0,
    min_fill: float = 0.5,
):
    """`plan_windows` for every row of a batch at once, walking all rows in lockstep (one window of each
    unfinished row per numpy step) on flat positions.

    Row r is `[offsets[r], offsets[r + 1])` of the flat batch; `starts`/`ends` are all rows' media spans, sorted,
    in flat positions (no span crosses a row); `bounds` the sorted flat cut points (`cut_points` with `offsets`);
    `supervised` the flat loss mask. The result is the scalar planner's for every row it vouches for
    (`tests/test_plan.py` compares them); a row whose walk would raise, or would need more than `LOCKSTEP_WINDOWS`
    windows, is left to `plan_windows` (`done[r]` False), which raises its own error.

    Returns:
        (row, context_start, start, end, done): int64 arrays of the windows, ordered by row then window, in flat
        positions, and per row whether it is planned here.

    Example:
        >>> w = plan_batch(np.array([0, 10, 13]), np.zeros(2, np.int64), np.array([3]), np.array([7]),
        ...                np.zeros(0, np.int64), np.zeros(13, bool), max_length=5)
        >>> [a.tolist() for a in w]
        [[0, 0, 0, 1], [0, 3, 8, 10], [0, 3, 8, 10], [3, 8, 10, 13], [True, True]]
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    prefix_len = np.asarray(prefix_len, dtype=np.int64)
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    n_rows = len(offsets) - 1
    lo, hi = offsets[:-1], offsets[1:]
    lengths = hi - lo
    done = np.ones(n_rows, dtype=bool)
    done &= (prefix_len >= 0) & (lengths <= LOCKSTEP_WINDOWS * max(max_length - overlap - prefix_len.max(initial=0), 1))
    long = lengths > max_length
    if len(starts):
        span_row = np.searchsorted(lo, starts, side="right") - 1
        p, s, e = prefix_len[span_row], starts - lo[span_row], ends - lo[span_row]
        # `_check_prefix` and `_check_oversize` of the rows that are cut: a failing row is the scalar planner's
        bad = ((p > 0) & (s < p) & (e > p)) | (((s >= p) | (p == 0)) & (e - s + np.where(s > 0, p, 0) > max_length))
        done[span_row[bad & long[span_row]]] = False
    done &= ~long | (prefix_len < max_length)
    if len(bounds) and len(starts):
        k = np.searchsorted(starts, bounds, side="left") - 1
        bounds = bounds[(k < 0) | (bounds >= ends[np.maximum(k, 0)])]  # a cut inside a span is no cut

    def enclosing_start(pos):
        """(inside a span, that span's start, its end) for positions strictly inside a span."""
        k = np.searchsorted(starts, pos, side="left") - 1
        kk = np.maximum(k, 0)
        inside = (k >= 0) & (pos < ends[kk]) if len(starts) else np.zeros(len(pos), dtype=bool)
        return inside, (starts[kk] if len(starts) else pos), (ends[kk] if len(starts) else pos)

    def window_end(start, context, pre, prefix, row_end, base):
        room = max_length - pre - (start - context)
        limit = start + room
        inside, s0, _ = enclosing_start(limit)
        end = np.where(inside, s0, limit)
        if len(bounds):
            floor = start + (min_fill * np.maximum(room, 0)).astype(np.int64)
            i = np.searchsorted(bounds, end, side="right") - 1
            cand = bounds[np.maximum(i, 0)]
            end = np.where((i >= 0) & (cand > np.maximum(floor, start)) & (cand >= base + prefix), cand, end)
        end = np.where(limit >= row_end, row_end, end)
        return np.where(room <= 0, start, end)

    rows = np.flatnonzero(done & long)
    short = np.flatnonzero(done & ~long & (lengths > 0))  # one window each, as `plan_windows` gives
    parts = [(short, lo[short], lo[short], hi[short], np.zeros(len(short), np.int64))]
    start, step = lo[rows], 0
    while len(rows):
        base, row_end, prefix = lo[rows], hi[rows], prefix_len[rows]
        if step == 0:
            context, pre, minimal = start.copy(), np.zeros(len(rows), np.int64), start
        else:
            pre = prefix
            inside, s0, _ = enclosing_start(start - 1)
            need = (pre == 0) & supervised[start]
            minimal = np.where(need, np.where(inside, s0, start - 1), start)
            c = np.minimum(np.maximum(start - overlap, base + prefix), start)
            inside, _, e0 = enclosing_start(c)
            c = np.where(inside, np.minimum(e0, start), c)
            context = np.minimum(c, minimal)
        end = window_end(start, context, pre, prefix, row_end, base)
        retry = (end <= start) & (context < minimal)
        if retry.any():
            context = np.where(retry, minimal, context)
            end = np.where(retry, window_end(start, context, pre, prefix, row_end, base), end)
        stuck = end <= start
        if stuck.any():
            done[rows[stuck]] = False
        parts.append((rows, context, start, end, np.full(len(rows), step + 1, np.int64)))
        keep = ~stuck & (end < row_end)
        rows, start, step = rows[keep], end[keep], step + 1
    row, context, start, end, order = (np.concatenate(x) for x in zip(*parts))
    keep = done[row]
    row, context, start, end, order = row[keep], context[keep], start[keep], end[keep], order[keep]
    sort = np.lexsort((order, row))
    return row[sort], context[sort], start[sort], end[sort], done
