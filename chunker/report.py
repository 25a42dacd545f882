"""What a split produced, measured on the window dataset's Arrow columns: a table, report.json and a PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PERCENTILES = (0, 50, 90, 99, 100)


def window_summary(windows, stats=None, *, max_length=None) -> dict:
    """Counts and window-length percentiles of a window dataset, computed on its Arrow columns (no row loop).

    Args:
        windows: a `datasets.Dataset` of window rows (`input_ids`, `labels`, `source_index`, optional `images`).
        stats: the splitter's `SplitStats` (rows in, rows skipped by reason); None to report windows only.
        max_length: the window limit used, echoed in the report.

    Returns:
        dict with rows, windows, skipped (reason -> count), skipped_examples, tokens, supervised_tokens,
        images, window_length (percentile -> tokens), windows_per_row (count -> rows), max_length.

    Example:
        >>> import datasets
        >>> ds = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4]], "labels": [[-100, 2, 3], [4]],
        ...                                  "source_index": [0, 0]})
        >>> s = window_summary(ds)
        >>> s["windows"], s["tokens"], s["supervised_tokens"], s["windows_per_row"]
        (2, 4, 3, {'2': 1})
    """
    lengths = window_lengths(windows)
    table = windows.data.table if len(windows) else None
    supervised = images = 0
    per_row = np.zeros(0, dtype=np.int64)
    if table is not None:
        import pyarrow.compute as pc

        labels = pc.list_flatten(table.column("labels"))
        supervised = int(pc.sum(pc.not_equal(labels, -100)).as_py() or 0)
        if "images" in table.column_names:
            images = int(pc.sum(pc.list_value_length(table.column("images"))).as_py() or 0)
        source = table.column("source_index").to_numpy()
        per_row = np.bincount(np.unique(source, return_inverse=True)[1])
    rows_in = stats.rows if stats is not None else len(per_row)
    counts = np.bincount(per_row) if len(per_row) else np.zeros(0, dtype=np.int64)
    return {
        "rows": rows_in,
        "windows": len(windows),
        "skipped": dict(sorted(stats.skipped.items())) if stats is not None else {},
        "skipped_examples": stats.examples[:10] if stats is not None else [],
        "tokens": int(lengths.sum()),
        "supervised_tokens": supervised,
        "images": images,
        "max_length": max_length,
        "window_length": percentiles(lengths),
        "windows_per_row": {str(k): int(c) for k, c in enumerate(counts) if c},
    }


def window_lengths(windows) -> np.ndarray:
    """Token count of every window (the Arrow list lengths of `input_ids`)."""
    if not len(windows):
        return np.zeros(0, dtype=np.int64)
    import pyarrow.compute as pc

    return pc.list_value_length(windows.data.table.column("input_ids")).to_numpy().astype(np.int64)


def percentiles(values) -> dict:
    """{"p0": min, "p50": median, ..., "p100": max} of `values` (integers), empty dict when there are none.

    Example:
        >>> percentiles([1, 2, 3, 4, 100])
        {'p0': 1, 'p50': 3, 'p90': 62, 'p99': 96, 'p100': 100}
    """
    values = np.asarray(values)
    if not values.size:
        return {}
    return {f"p{q}": round(float(np.percentile(values, q))) for q in PERCENTILES}


def format_table(rows, title=None) -> str:
    """A two-column text table of (label, value) pairs, values right-aligned.

    Example:
        >>> print(format_table([("rows", 3), ("windows", 12)], title="split"))
        split
        -----------
        rows      3
        windows  12
    """
    rows = [(str(k), _fmt(v)) for k, v in rows]
    left = max((len(k) for k, _ in rows), default=0)
    right = max((len(v) for _, v in rows), default=0)
    width = left + 2 + right
    lines = [title, "-" * max(width, len(title))] if title else []
    lines += [f"{k:<{left}}  {v:>{right}}" for k, v in rows]
    return "\n".join(lines)


def summary_rows(summary: dict) -> list[tuple[str, object]]:
    """The (label, value) rows of the split report table, skipped reasons one per line."""
    rows = [("rows in", summary["rows"]), ("windows out", summary["windows"])]
    skipped = summary["skipped"]
    rows.append(("rows skipped", sum(skipped.values())))
    rows += [(f"  {reason}", n) for reason, n in skipped.items()]
    rows += [
        ("tokens in windows", summary["tokens"]),
        ("supervised tokens", summary["supervised_tokens"]),
        ("images in windows", summary["images"]),
    ]
    lengths = summary["window_length"]
    if lengths:
        rows.append(("window length p0/p50/p90/p99/max", "/".join(str(v) for v in lengths.values())))
    return rows


def write_report(summary: dict, out_dir, *, windows=None) -> dict:
    """Write `report.json` (and `report.png` when `windows` is given and matplotlib is installed) into `out_dir`.

    Returns:
        {"json": path, "png": path or None}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    png = None
    if windows is not None:
        png = plot_histograms(window_lengths(windows), summary["windows_per_row"], out / "report.png",
                              max_length=summary.get("max_length"))
    return {"json": str(json_path), "png": None if png is None else str(png)}


def plot_histograms(lengths, windows_per_row: dict, path, *, max_length=None):
    """A PNG with two histograms: window lengths (tokens) and windows per input row. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.hist(np.asarray(lengths), bins=min(50, max(len(lengths), 1)), color="#4878a8")
    if max_length:
        ax1.axvline(max_length, color="#c44e52", linestyle="--", label=f"max_length {max_length}")
        ax1.legend()
    ax1.set(title="window length", xlabel="tokens", ylabel="windows")
    ks = sorted(int(k) for k in windows_per_row)
    ax2.bar(ks, [windows_per_row[str(k)] for k in ks], color="#55a868")
    ax2.set(title="windows per row", xlabel="windows", ylabel="rows")
    from matplotlib.ticker import MaxNLocator

    for axis in (ax1.yaxis, ax2.xaxis, ax2.yaxis):
        axis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _fmt(value) -> str:
    return f"{value:,}" if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else str(value)
