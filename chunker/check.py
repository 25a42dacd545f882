"""Preflight: which rows plain truncation at max_length would break, and how many windows each row needs."""

from __future__ import annotations

from collections import Counter

import numpy as np

from .errors import ChunkerError
from .spans import find_image_spans

ROW_KEYS = ("index", "tokens", "images", "breaks", "windows")


class RowScanner:
    """A batched map function that measures rows instead of splitting them.

    For each row: its token count, media items, whether truncation at `splitter.max_length` would cut or
    drop a media span (the row "breaks": its text then holds fewer image tokens than its pixels have
    features), and how many windows the splitter makes of it (0 when it cannot be split).

    Args:
        splitter: the `WindowSplitter` whose processor, grammar and settings to measure with.

    Example:
        >>> scanned = ds.map(RowScanner(splitter), batched=True, with_indices=True,   # doctest: +SKIP
        ...                  remove_columns=ds.column_names)
        >>> scanned[0]                                                                # doctest: +SKIP
        {'index': 0, 'tokens': 1830, 'images': 6, 'breaks': True, 'windows': 3, 'cut': 1, 'dropped': 2, 'error': ''}
    """

    def __init__(self, splitter):
        self.splitter = splitter

    def __call__(self, batch: dict, indices=None) -> dict:
        """Measure a batch of rows; returns columns index, tokens, images, breaks, windows, cut, dropped, error."""
        n = len(next(iter(batch.values()))) if batch else 0
        indices = range(n) if indices is None else indices
        out = {k: [] for k in (*ROW_KEYS, "cut", "dropped", "error")}
        for i, index in enumerate(indices):
            rec = self.scan_row({k: v[i] for k, v in batch.items()}, int(index))
            for k, v in rec.items():
                out[k].append(v)
        return out

    def scan_row(self, row: dict, index: int) -> dict:
        """Measure one row (see the class docstring); a row the splitter refuses gets its error message."""
        sp = self.splitter
        rec = {"index": index, "tokens": 0, "images": 0, "breaks": False, "windows": 0, "cut": 0, "dropped": 0,
               "error": ""}
        try:
            parsed = sp.parse(row, index)
            ids = parsed.ids
            spans = find_image_spans(ids, sp.spec, row=index)
        except ChunkerError as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
            return rec
        n, limit = len(ids), sp.max_length
        rec["tokens"], rec["images"] = int(n), len(spans)
        rec["cut"] = int(((spans.starts < limit) & (spans.ends > limit)).sum())
        rec["dropped"] = int((spans.starts >= limit).sum())
        rec["breaks"] = bool(rec["cut"] or rec["dropped"])
        try:
            rec["windows"] = len(sp.analyse(parsed, index).geometry)
        except ChunkerError as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
        return rec


def check_rows(ds, splitter, *, num_proc=None) -> dict:
    """Scan every row of `ds` and summarise what plain truncation at `splitter.max_length` would do.

    Args:
        ds: a `datasets.Dataset` of conversational or pre-tokenized rows.
        splitter: a `WindowSplitter`; its max_length is the truncation length tested.
        num_proc: processes for `Dataset.map`.

    Returns:
        {"rows": [{"index", "tokens", "images", "breaks", "windows"}, ...], "summary": {...}} where the
        summary holds rows, rows_over_max_length, rows_breaking, images, images_cut, images_dropped,
        tokens, tokens_past_max_length, windows, max_tokens, max_length, unsplittable (reason -> count)
        and errors (first rows that cannot be read or split, with the message).

    Example:
        >>> result = check_rows(ds, WindowSplitter(processor, max_length=1024))     # doctest: +SKIP
        >>> result["summary"]["rows_breaking"]                                      # doctest: +SKIP
        7
    """
    import datasets

    was = datasets.utils.logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()
    try:
        scanned = ds.map(RowScanner(splitter), batched=True, with_indices=True, remove_columns=ds.column_names,
                         num_proc=num_proc, load_from_cache_file=False, keep_in_memory=True)
    finally:
        if was:
            datasets.utils.logging.enable_progress_bar()
    cols = scanned.to_dict()
    return {"rows": [{k: cols[k][i] for k in ROW_KEYS} for i in range(len(scanned))],
            "summary": summarise(cols, splitter.max_length)}


def summarise(cols: dict, max_length: int) -> dict:
    """The check summary from scanned columns (see `check_rows`)."""
    tokens = np.asarray(cols["tokens"], dtype=np.int64)
    errors = [(i, e) for i, e in zip(cols["index"], cols["error"]) if e]
    return {
        "rows": len(tokens),
        "rows_over_max_length": int((tokens > max_length).sum()),
        "rows_breaking": int(np.sum(cols["breaks"])),
        "images": int(np.sum(cols["images"])),
        "images_cut": int(np.sum(cols["cut"])),
        "images_dropped": int(np.sum(cols["dropped"])),
        "tokens": int(tokens.sum()),
        "tokens_past_max_length": int(np.maximum(tokens - max_length, 0).sum()),
        "windows": int(np.sum(cols["windows"])),
        "max_tokens": int(tokens.max()) if len(tokens) else 0,
        "max_length": int(max_length),
        "unsplittable": dict(Counter(e.split(":", 1)[0] for _, e in errors)),
        "errors": [{"index": int(i), "error": e} for i, e in errors[:20]],
    }


def summary_rows(summary: dict) -> list[tuple[str, object]]:
    """The (label, value) rows of the check table."""
    s = summary
    rows = [
        ("rows", s["rows"]),
        (f"rows over max_length {s['max_length']}", s["rows_over_max_length"]),
        ("rows truncation would break", s["rows_breaking"]),
        ("images", s["images"]),
        ("  cut by truncation", s["images_cut"]),
        ("  dropped by truncation", s["images_dropped"]),
        ("tokens", s["tokens"]),
        ("  lost to truncation", s["tokens_past_max_length"]),
        ("longest row (tokens)", s["max_tokens"]),
        ("windows after splitting", s["windows"]),
    ]
    if s["unsplittable"]:
        rows.append(("rows that cannot be split", sum(s["unsplittable"].values())))
        rows += [(f"  {k}", v) for k, v in s["unsplittable"].items()]
    return rows
