"""Vectorized per-item media checks on a padded batch (torch): the same results on CPU and CUDA tensors.

`item_token_counts` finds, in a whole `(B, L)` tensor, every media item's placeholder-token count (item
ends by the family grammar, counts as differences of a cumsum of the placeholder mask at the item ends);
`check_item_counts` compares each with what its own item's media need, in order, with exactly one host
sync (one `.cpu()` of a packed tensor). No Python loop over rows or tokens anywhere. The model's own check
in transformers 5.x compares batch totals only; these see an image in the wrong row and two images of a
row in the wrong order.

The item rule of each grammar kind (`ImageSpanSpec.kind`):

    bracket         an item ends at a close id at depth 0: a Qwen3-VL video (frame groups nested in an
                    outer pair) is one item; a Gemma 3 pan-and-scan crop is its own block (its own item).
                    Only videos nest: for a grammar without a video id every close ends an item
    run             with `tokens_per_image`: every that many placeholders of a run (a short tail ends its
                    run as a short item); without it (LLaVA-NeXT/OneVision) back-to-back images form one
                    run and the text cannot show where one ends: an item is a whole run, and the check
                    compares each run with the sum of the consecutive items it must hold ("merged")
    terminated_run  an item ends at `end_id` (Pixtral `[IMG_END]`)
    tiles           an item ends at the fake token closing its global-image block (Idefics3/SmolVLM)

A placeholder outside every span counts toward the next item (a mismatch there) or, after the last item,
toward `outside` (a span cut at the end of the row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .spec import ImageSpanSpec

STREAMS = ("image", "video")


def count_image_tokens(input_ids: torch.Tensor, token_ids) -> torch.Tensor:
    """Placeholder tokens in each row.

    Args:
        input_ids: `(B, L)` integer tensor (any device), or one row `(L,)`.
        token_ids: one id or a sequence of ids to count (e.g. the image id, or image and video ids).

    Returns:
        `(B,)` int64 tensor on the device of `input_ids`.

    Example:
        >>> count_image_tokens(torch.tensor([[1, 7, 7, 2], [7, 0, 0, 0]]), 7).tolist()
        [2, 1]
    """
    ids = _as_2d(input_ids)
    token_ids = [int(token_ids)] if isinstance(token_ids, (int, np.integer)) else [int(t) for t in token_ids]
    if not token_ids:
        return torch.zeros(ids.shape[0], dtype=torch.int64, device=ids.device)
    out = _count(ids == token_ids[0])
    for t in token_ids[1:]:
        out = out + _count(ids == t)
    return out


@dataclass(frozen=True)
class ItemCounts:
    """Media items of every row of a padded batch, found in the text (device tensors, one row per batch row).

    Attributes:
        counts: `(B, K)` int64; `counts[b, k]` is the placeholder-token count of the k-th media item of row b
            (images and videos interleaved as in the text); 0 past the row's items.
        video: `(B, K)` bool; the item holds the video id.
        num_items: `(B,)` items each row holds; may exceed K, items past K are not listed.
        image_tokens, video_tokens: `(B,)` placeholder tokens of each stream in the row.
        outside: `(B, 2)` image and video placeholders after the row's last item (a span cut at the end).
        merged: True when an item may hold several media items (a bracketless run of varying length).
        has_video: the grammar has a video id (else no item is a video).
    """

    counts: torch.Tensor
    video: torch.Tensor
    num_items: torch.Tensor
    image_tokens: torch.Tensor
    video_tokens: torch.Tensor
    outside: torch.Tensor
    merged: bool
    has_video: bool = False

    @property
    def listed(self) -> torch.Tensor:
        """`(B, K)` bool: slot k of row b holds an item."""
        k = torch.arange(self.counts.shape[1], device=self.counts.device)
        return k < self.num_items[:, None]

    def flat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row-major `(rows, counts, video)` of the listed items (a boolean selection: a host sync on CUDA).

        Example:
            >>> spec = ImageSpanSpec(family="custom", kind="bracket", image_token_id=7, open_ids=(5,), close_ids=(6,))
            >>> [t.tolist() for t in item_token_counts(torch.tensor([[5, 7, 6, 5, 7, 7, 6], [1, 5, 7, 6, 0, 0, 0]]), spec).flat()]
            [[0, 0, 1], [1, 2, 1], [False, False, False]]
        """
        listed = self.listed
        rows = torch.arange(listed.shape[0], device=listed.device)[:, None].expand_as(listed)
        return rows[listed], self.counts[listed], self.video[listed]


def item_token_counts(input_ids: torch.Tensor, spec: ImageSpanSpec, *, max_items: int | None = None) -> ItemCounts:
    """The placeholder-token count of every media item of every row, in order (whole-tensor torch ops).

    Args:
        input_ids: `(B, L)` integer tensor (any device), right-padded with an id that is not a media id.
        spec: the family grammar (`ImageSpanSpec.from_processor(processor)`).
        max_items: K, the items listed per row. None: the most items any row holds, which costs one host
            sync on CUDA; pass a bound (e.g. the most items any row's media hold, plus one) to avoid it.

    Returns:
        ItemCounts with `(B, K)` per-item counts.

    Example:
        >>> spec = ImageSpanSpec(family="custom", kind="bracket", image_token_id=7, open_ids=(5,), close_ids=(6,))
        >>> found = item_token_counts(torch.tensor([[5, 7, 6, 5, 7, 7, 6], [1, 5, 7, 6, 0, 0, 0]]), spec)
        >>> found.counts.tolist(), found.num_items.tolist()
        ([[1, 2], [1, 0]], [2, 1])
    """
    ids = _as_2d(input_ids)
    b, n = ids.shape
    if n >= 1 << _BITS:
        raise ValueError(f"rows of {n} tokens: item_token_counts counts rows of fewer than {1 << _BITS} tokens")
    image = ids == spec.image_token_id
    video = ids == spec.video_token_id if spec.video_token_id is not None else None
    k = int(max_items or 0)
    if n == 0:
        z = torch.zeros(b, dtype=torch.int64, device=ids.device)
        return ItemCounts(torch.zeros((b, k), dtype=torch.int64, device=ids.device),
                          torch.zeros((b, k), dtype=torch.bool, device=ids.device), z, z, z, torch.stack([z, z], 1),
                          spec.kind == "run" and not spec.tokens_per_image)
    ends = _ITEM_ENDS[spec.kind](ids, spec, image if video is None else image | video)
    # one int64 cumsum counts image placeholders, video placeholders and item ends at once, in three bit
    # fields (ends highest, so each row is sorted for searchsorted); bits spread by one multiply, in place
    code = image.to(torch.uint8) | (ends.to(torch.uint8) << 2)
    if video is not None:
        code |= video.to(torch.uint8) << 1
    cum = code.to(torch.int64).mul_(1 + (1 << _BITS - 1) + (1 << 2 * _BITS - 2)).bitwise_and_(_SPREAD).cumsum_(1)
    num_items = cum[:, -1] >> 2 * _BITS
    if max_items is None:
        k = int(num_items.max()) if b else 0
    rank = torch.arange(1, k + 1, device=ids.device).expand(b, k)
    end_at = torch.searchsorted(cum, (rank << 2 * _BITS).contiguous()).clamp_(max=n - 1)  # where item k ends
    listed = rank <= num_items[:, None]
    at = torch.nn.functional.pad(cum.gather(1, end_at), (1, 0))
    last = torch.where(num_items > 0, cum.gather(1, _last_end(cum, num_items))[:, 0], 0)
    total = cum[:, -1]
    image_counts = torch.where(listed, _field(at[:, 1:], 0) - _field(at[:, :-1], 0), 0)
    video_counts = torch.where(listed, _field(at[:, 1:], 1) - _field(at[:, :-1], 1), 0)
    outside = torch.stack([_field(total, 0) - _field(last, 0), _field(total, 1) - _field(last, 1)], 1)
    return ItemCounts(image_counts + video_counts, video_counts > 0, num_items, _field(total, 0), _field(total, 1),
                      outside, spec.kind == "run" and not spec.tokens_per_image, video is not None)


_BITS = 21  # bits of each packed count: rows of up to 2M tokens
_SPREAD = 1 | 1 << _BITS | 1 << 2 * _BITS  # the low bit of each field


def _field(packed: torch.Tensor, i: int) -> torch.Tensor:
    return (packed >> i * _BITS) & ((1 << _BITS) - 1)


def _last_end(cum, num_items):
    """Where the last item of each row ends (clamped into the row when it has none)."""
    return torch.searchsorted(cum, (num_items[:, None] << 2 * _BITS).contiguous()).clamp_(max=cum.shape[1] - 1)


def _bracket_ends(ids, spec, media):
    close = _isin(ids, spec.close_ids)
    if spec.video_token_id is None:  # image spans never nest: every close ends an item
        return close
    # Qwen3-VL nests a video's frame groups in an outer pair: an item ends at a close back at depth 0
    depth = _isin(ids, spec.open_ids).to(torch.int64).sub_(close.to(torch.int64)).cumsum_(1)
    return close & depth.logical_not()


def _run_ends(ids, spec, media):
    run_end = media & ~torch.nn.functional.pad(media[:, 1:], (0, 1))
    per = spec.tokens_per_image
    if not per:
        return run_end
    pos = torch.arange(ids.shape[1], device=ids.device, dtype=torch.int32).expand_as(ids)
    start = media & ~torch.nn.functional.pad(media[:, :-1], (1, 0))
    run_start = torch.where(start, pos, 0).cummax(1).values
    return run_end | (media & ((pos - run_start + 1) % per == 0))


def _terminated_run_ends(ids, spec, media):
    return ids == spec.end_id


def _tiles_ends(ids, spec, media):
    # the fake token closing a global block is the first fake after a global-image id
    pos = torch.arange(ids.shape[1], device=ids.device, dtype=torch.int32).expand_as(ids)
    fake = ids == spec.open_ids[0]
    last_global = torch.where(ids == spec.global_id, pos, -1).cummax(1).values
    last_fake = torch.nn.functional.pad(torch.where(fake, pos, -1).cummax(1).values[:, :-1], (1, 0), value=-1)
    return fake & (last_global > last_fake)


_ITEM_ENDS = {"bracket": _bracket_ends, "run": _run_ends, "terminated_run": _terminated_run_ends,
              "tiles": _tiles_ends}


class BadItem(NamedTuple):
    """One media item whose span and media disagree.

    Attributes:
        row: the batch row.
        stream: "image" or "video".
        item: the item's index among the row's items of its stream (its place in the row's `images`);
            for a run, its first item; None for tokens after the row's last span.
        seen: placeholder tokens of its span in the text, None when the text holds no span for it.
        expected: tokens its media need (for a run: up to the next item boundary), None when the row has
            no media for the span.
        run: the span is a run that may hold several back-to-back items (compared with sums of items).
    """

    row: int
    stream: str
    item: int | None
    seen: int | None
    expected: int | None
    run: bool = False

    def describe(self) -> str:
        name = f"{self.stream} {self.item}"
        if self.item is None:
            return f"{self.seen} {self.stream} tokens after the last {self.stream} span (a span cut at the end)"
        if self.seen is None:
            return f"{name}: no span in the text (its media need {self.expected} tokens)"
        if self.expected is None:
            return f"{name}: a span of {self.seen} tokens with no media"
        if self.run:
            return (f"{self.stream}s from {self.item} on: a run of {self.seen} tokens that does not end where "
                    f"one of them ends (the next {self.stream} ends after {self.expected})")
        return f"{name}: {self.seen} tokens (its media need {self.expected})"


@dataclass(frozen=True)
class ItemCheck:
    """The result of `check_item_counts` (host data).

    Attributes:
        bad_rows: rows with any bad item or a wrong number of items, ascending.
        bad_items: every bad item, row by row, images before videos, in text order.
        tokens, items: per stream ("image", "video"), `(seen, expected)` numpy arrays of `(B,)` per-row totals
            (seen items: spans, or runs).
    """

    bad_rows: list
    bad_items: list
    tokens: dict
    items: dict

    @property
    def ok(self) -> bool:
        return not self.bad_rows

    def items_of(self, row: int) -> list:
        """The bad items of `row`."""
        return [b for b in self.bad_items if b.row == row]

    def describe(self, row: int) -> str:
        """'image 0: 16 tokens (its media need 64); image 1: ...' for what row `row` fails."""
        parts = [b.describe() for b in self.items_of(row)]
        if not parts:
            parts = [f"{int(seen[row])} {stream} spans for {int(expected[row])} {stream}s"
                     for stream, (seen, expected) in self.items.items() if seen[row] != expected[row]]
        return "; ".join(parts)


def check_item_counts(seen: ItemCounts, image, video=None, *, merged: bool | None = None) -> ItemCheck:
    """Compare every media item's span with its own item's expected count, in order, with one host sync.

    The k-th image span of row b must hold exactly the tokens the k-th image of row b needs, and each row
    must hold as many spans as it has media items. With `merged` (a bracketless run of varying length
    may hold back-to-back images), a row with fewer runs than items passes when each run ends where one
    of its items ends and the runs cover them all; a row with as many runs as items is compared item by
    item (each run must then be one item).

    Args:
        seen: `item_token_counts(input_ids, spec, max_items=...)`; K must be at least the most items any
            row expects, plus one, for a row with extra spans to be caught.
        image: `(counts, per_row)`: `(N,)` tokens each image needs, rows after rows, and `(B,)` how many
            of them each row owns (tensors on the host or the batch's device, or sequences).
        video: the same for videos, or None when no row has videos.
        merged: compare runs with sums of consecutive items; default `seen.merged`.

    Returns:
        ItemCheck naming the bad rows and items.

    Raises:
        ValueError: expected counts of another number of rows, or (on the host) a `per_row` that does not
            add up to the number of counts.

    Example:
        >>> spec = ImageSpanSpec(family="custom", kind="bracket", image_token_id=7, open_ids=(5,), close_ids=(6,))
        >>> ids = torch.tensor([[5, 7, 6, 5, 7, 7, 6], [1, 5, 7, 6, 0, 0, 0]])
        >>> found = item_token_counts(ids, spec, max_items=3)
        >>> check_item_counts(found, ([1, 2, 1], [2, 1])).ok
        True
        >>> result = check_item_counts(found, ([2, 1, 1], [2, 1]))    # row 0's images in the wrong order
        >>> result.bad_rows, result.describe(0)
        ([0], 'image 0: 1 tokens (its media need 2); image 1: 2 tokens (its media need 1)')
    """
    merged = seen.merged if merged is None else bool(merged)
    device = seen.counts.device
    b = seen.counts.shape[0]
    listed = seen.listed
    active = (0, 1) if video is not None or seen.has_video else (0,)
    packs, want, bad, item, n_seen, runs = [], None, None, None, [], []
    for s in active:
        values, per_row = _expected((image, video)[s], b, device)
        is_s = listed & (seen.video == bool(s))
        w, bd, it, missing = _compare_items(seen.counts, is_s, values, per_row)
        if merged:
            run = is_s.sum(1) != per_row  # as many runs as items: each run must be one item
            mw, mbd, mit, mmissing = _compare_merged(seen.counts, is_s, values, per_row)
            w, bd, it = (torch.where(run[:, None], m, x) for m, x in ((mw, w), (mbd, bd), (mit, it)))
            missing = torch.where(run[_item_rows(values, per_row)[0]], mmissing, missing)
            runs.append(run)
        want = w if want is None else torch.where(is_s, w, want)
        bad = bd if bad is None else bad | bd
        item = it if item is None else torch.where(is_s, it, item)
        n_seen.append(is_s.sum(1))
        packs += [values, per_row, missing, _segment_sum(values, per_row)]
    rows = torch.stack([seen.num_items, *seen.outside.unbind(1), seen.image_tokens, seen.video_tokens, *n_seen, *runs])
    flat = [seen.counts, seen.video, want, bad, item, rows, *packs]
    host = torch.cat([t.reshape(-1).to(device=device, dtype=torch.int64) for t in flat]).cpu().numpy()  # the one sync
    return _report(host, [t.shape for t in flat], active, merged)


def _expected(given, b, device):
    if given is None:
        z = torch.zeros(b, dtype=torch.int64, device=device)
        return z[:0], z
    values, per_row = (torch.as_tensor(x, dtype=torch.int64).reshape(-1) for x in given)
    if per_row.shape[0] != b:
        raise ValueError(f"expected counts describe {per_row.shape[0]} rows, the batch has {b}")
    if per_row.device.type == "cpu" and int(per_row.sum()) != values.shape[0]:  # free on the host; trusted on a device
        raise ValueError(f"{values.shape[0]} expected counts for {int(per_row.sum())} items (the sum of per_row)")
    # host counts go to the device without a stream sync (the check's one sync is its result's .cpu())
    return values.to(device, non_blocking=True), per_row.to(device, non_blocking=True)


def _item_rows(values, per_row):
    """Row and rank within its row of every expected item (no sync: the output size is len(values))."""
    n = values.shape[0]
    rows = torch.repeat_interleave(torch.arange(per_row.shape[0], device=values.device), per_row, output_size=n)
    start = per_row.cumsum(0) - per_row
    return rows, torch.arange(n, device=values.device) - start[rows]


def _compare_items(counts, is_s, values, per_row):
    """Span k of a stream against item k of the same stream and row."""
    n = values.shape[0]
    rank = is_s.cumsum(1) - 1
    valid = is_s & (rank < per_row[:, None])
    index = torch.where(valid, (per_row.cumsum(0) - per_row)[:, None] + rank, n)
    want = torch.where(valid, torch.nn.functional.pad(values, (0, 1))[index], -1)
    rows, q = _item_rows(values, per_row)
    missing = q >= is_s.sum(1)[rows]
    return want, is_s & (counts != want), rank, missing


def _compare_merged(counts, is_s, values, per_row):
    """Runs against sums of consecutive items: each run ends on an item boundary, and the runs cover all."""
    n = values.shape[0]
    bounds = torch.nn.functional.pad(values.cumsum(0), (1, 0))  # bounds[i]: tokens before item i of the batch
    start, end = per_row.cumsum(0) - per_row, per_row.cumsum(0)
    base = bounds[start][:, None]
    mine = torch.where(is_s, counts, 0)
    before = base + mine.cumsum(1) - mine
    after = before + mine
    ends_on = torch.searchsorted(bounds[1:], after)  # the first item ending at or after the run's end
    aligned = (ends_on < end[:, None]) & (torch.nn.functional.pad(bounds[1:], (0, 1))[ends_on.clamp(max=n)] == after)
    first = torch.searchsorted(bounds[1:], before, right=True) - start[:, None]
    first = torch.minimum(first.clamp(min=0), per_row[:, None])
    reach = bounds[torch.minimum(ends_on + 1, end[:, None])]
    want = torch.where(per_row[:, None] > 0, (reach - before).clamp(min=0), -1)
    rows, _ = _item_rows(values, per_row)
    missing = bounds[1:] > (base[:, 0] + mine.sum(1))[rows]
    return want, is_s & ~aligned, first, missing


def _segment_sum(values, per_row):
    bounds = torch.nn.functional.pad(values.cumsum(0), (1, 0))
    end = per_row.cumsum(0)
    return bounds[end] - bounds[end - per_row]


def _report(host: np.ndarray, shapes: list, active: tuple, merged: bool) -> ItemCheck:
    sizes = np.cumsum([math.prod(shape) for shape in shapes])[:-1]
    counts, video, want, bad, item, rows, *packs = (p.reshape(s) for p, s in zip(np.split(host, sizes), shapes))
    b = rows.shape[1]
    num_items, outside_i, outside_v, tokens_i, tokens_v = rows[:5]
    zeros, none = np.zeros(b, dtype=np.int64), np.zeros(0, dtype=np.int64)
    seen = dict(zip(active, rows[5:5 + len(active)]))
    run = dict(zip(active, rows[5 + len(active):].astype(bool))) if merged else {}
    bad_items = []
    for r, k in zip(*np.nonzero(bad)) if bad.any() else ():
        s = int(video[r, k])
        expected = None if want[r, k] < 0 else int(want[r, k])
        bad_items.append(BadItem(int(r), STREAMS[s], int(item[r, k]), int(counts[r, k]), expected,
                                 bool(run[s][r]) if merged else False))
    tokens, items = {}, {}
    for s, stream in enumerate(STREAMS):
        values, per_row, missing, expected_tokens = (packs[4 * active.index(s):4 * active.index(s) + 4]
                                                     if s in active else (none, zeros, none, zeros))
        if missing.any():
            item_rows = np.repeat(np.arange(b), per_row)
            rank = np.arange(len(values)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
            bad_items += [BadItem(int(item_rows[i]), stream, int(rank[i]), None, int(values[i]),
                                  bool(run[s][item_rows[i]]) if merged else False)
                          for i in np.flatnonzero(missing)]
        outside = (outside_i, outside_v)[s]
        if outside.any():
            bad_items += [BadItem(int(r), stream, None, int(outside[r]), 0) for r in np.flatnonzero(outside)]
        tokens[stream] = ((tokens_i, tokens_v)[s], expected_tokens)
        items[stream] = (seen.get(s, zeros), per_row)
    bad_items.sort(key=lambda x: (x.row, x.stream != "image", x.item is None, x.item or 0))
    bad_rows = {x.row for x in bad_items}
    if not merged:  # a row with more spans than listed (past max_items)
        bad_rows |= set(np.flatnonzero(num_items != items["image"][1] + items["video"][1]).tolist())
    return ItemCheck(sorted(bad_rows), bad_items, tokens, items)


def segment_sum(values: torch.Tensor, lengths) -> torch.Tensor:
    """Sums of consecutive segments of `values` of the given `lengths` (prefix sums; empty segments give 0).

    Args:
        values: `(N,)` tensor.
        lengths: `(S,)` segment lengths summing to N.

    Returns:
        `(S,)` int64 tensor.

    Example:
        >>> segment_sum(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 3])).tolist()
        [1, 0, 9]
    """
    lengths = torch.as_tensor(lengths, dtype=torch.int64, device=values.device)
    return _segment_sum(values.to(torch.int64), lengths)


def _as_2d(input_ids) -> torch.Tensor:
    ids = torch.as_tensor(input_ids)
    return ids.unsqueeze(0) if ids.dim() == 1 else ids


def _count(mask: torch.Tensor) -> torch.Tensor:
    """True per row, as int64; summed in int32, which is ~3x faster than bool -> int64 on CPU."""
    return mask.sum(1, dtype=torch.int32).to(torch.int64)


def _isin(ids: torch.Tensor, values) -> torch.Tensor:
    out = ids == int(values[0])
    for v in values[1:]:
        out |= ids == int(v)
    return out


def segment_starts(lengths, width: int) -> torch.Tensor:
    """`(B, width)` bool: True where a segment (a packed window, or a row's padding) starts.

    Args:
        lengths: per row, a 1-D tensor (or sequence) of segment lengths laid end to end from position 0; what
            is left of the row after them (padding) starts one more segment.
        width: the padded row length.

    Example:
        >>> segment_starts([[3, 2], [4]], 6).int().tolist()
        [[1, 0, 0, 1, 0, 1], [1, 0, 0, 0, 1, 0]]
    """
    rows = [torch.as_tensor(seg, dtype=torch.int64).reshape(-1) for seg in lengths]
    counts = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    flat = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)
    row_of = torch.repeat_interleave(torch.arange(len(rows)), counts)
    first = torch.cumsum(torch.nn.functional.pad(counts, (1, 0))[:-1], 0)
    ends = torch.cumsum(flat, 0)
    begin = ends - flat - (ends - flat)[first][row_of] if len(flat) else flat  # start of each segment in its row
    out = torch.zeros((len(rows), width + 1), dtype=torch.bool)
    out[row_of, begin] = True
    totals = segment_sum(flat, counts)
    out[torch.arange(len(rows)), totals] = True  # the padding after the last segment is a segment of its own
    return out[:, :width]


def segment_positions(starts: torch.Tensor) -> torch.Tensor:
    """Positions that restart at 0 at every segment start: `(B, L)` int64 (any device).

    Example:
        >>> segment_positions(segment_starts([[3, 2], [4]], 6)).tolist()
        [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    """
    pos = torch.arange(starts.shape[1], device=starts.device).expand_as(starts)
    return pos - torch.where(starts, pos, 0).cummax(1).values


def mrope_image_positions(type_ids: torch.Tensor, starts: torch.Tensor, grid_thw, merge_size: int) -> torch.Tensor:
    """Qwen-VL 3-D rope positions `(3, B, L)` of rows whose segments each start at 0 (images only).

    Text tokens advance every axis by one; an image of grid (t, h, w) holds t·h·w/merge² tokens placed on the
    (t, h/merge, w/merge) grid from the position before it, and advances the position by max(h, w)/merge (the rule
    of `Qwen2VLModel.get_rope_index`, which the tests compare with). Whole-tensor torch, no loop over tokens.

    Args:
        type_ids: `(B, L)` `mm_token_type_ids` (1 on image placeholders; videos are not handled here).
        starts: `segment_starts(...)`: where each segment starts.
        grid_thw: `(N, 3)` grids of the batch's images, rows after rows.
        merge_size: the vision merger's spatial merge size.
    """
    b, n = type_ids.shape
    device = type_ids.device
    image = type_ids == 1
    prev = torch.nn.functional.pad(image[:, :-1], (1, 0)) & ~starts
    nxt = torch.nn.functional.pad(image[:, 1:], (0, 1)) & ~torch.nn.functional.pad(starts[:, 1:], (0, 1))
    item_start = image & ~prev
    item = (item_start.reshape(-1).cumsum(0) - 1).reshape(b, n).clamp_(min=0)
    grid = torch.as_tensor(grid_thw, dtype=torch.int64, device=device).reshape(-1, 3)
    if not len(grid):
        grid = torch.ones((1, 3), dtype=torch.int64, device=device)
    gh = grid[:, 1].div(merge_size, rounding_mode="floor")[item]
    gw = grid[:, 2].div(merge_size, rounding_mode="floor")[item]
    pos = torch.arange(n, device=device).expand(b, n)
    local = pos - torch.where(item_start, pos, 0).cummax(1).values
    advance = torch.where(image, torch.where(nxt, 0, torch.maximum(gh, gw)), 1)
    before = advance.cumsum(1) - advance
    seg_at = torch.where(starts, pos, 0).cummax(1).values
    start = before - before.gather(1, seg_at)
    t = torch.where(image, start + local // (gh * gw), start)
    h = torch.where(image, start + (local // gw) % gh, start)
    w = torch.where(image, start + local % gw, start)
    return torch.stack([t, h, w])
