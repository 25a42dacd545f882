"""Split time against rows (10k -> 100k) and row length (2k -> 128k tokens): both should be linear in tokens.

Rows are Gemma-3-shaped (one image per ~2k tokens); a pool of generated rows is repeated to reach each
size, and the splitter's Arrow path runs over in-memory Arrow batches of 1,000 rows (no disk writes), so
the figures are the splitter's own cost.

    python benchmarks/bench_scaling.py [--png scaling.png]
    python benchmarks/bench_scaling.py --smoke
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._data import gemma3_spec, gemma3_table, machine, table


def split_time(tbl, max_length: int, batch_size: int = 1000) -> tuple[float, int]:
    """Seconds to split every batch of `tbl` with the splitter (Arrow path), and the windows made."""
    from chunker import WindowSplitter

    splitter = WindowSplitter(spec=gemma3_spec(), max_length=max_length, overlap=128)
    windows = 0
    t0 = time.perf_counter()
    for start in range(0, tbl.num_rows, batch_size):
        out = splitter(tbl.slice(start, batch_size), list(range(start, min(start + batch_size, tbl.num_rows))))
        windows += out.num_rows
    return time.perf_counter() - t0, windows


def repeated(pool, n_rows: int):
    """`n_rows` rows cycling through `pool` (a pyarrow Table)."""
    import pyarrow as pa

    reps = -(-n_rows // pool.num_rows)
    return pa.concat_tables([pool] * reps).slice(0, n_rows).combine_chunks()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="*", default=[10_000, 30_000, 100_000])
    parser.add_argument("--row-tokens", type=int, default=2048, help="row length of the rows sweep")
    parser.add_argument("--lengths", type=int, nargs="*", default=[2048, 8192, 32768, 131072])
    parser.add_argument("--length-budget", type=int, default=32_000_000, help="tokens per point of the length sweep")
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--png", default=None, help="also draw the two sweeps into this PNG (needs matplotlib)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.lengths, args.length_budget = [200, 400], [2048, 8192], 200_000
    print(f"# bench_scaling: Gemma 3 grammar, max_length={args.max_length}, overlap=128, Arrow path, no disk writes")
    print(f"# {machine()}")

    pool = gemma3_table(min(200, max(args.rows)), tokens=(args.row_tokens, args.row_tokens), images=(1, 1), seed=1)
    row_points = []
    for n in args.rows:
        tbl = repeated(pool, n)
        tokens = len(tbl.column("input_ids").combine_chunks().values)
        seconds, windows = split_time(tbl, args.max_length)
        row_points.append((n, tokens, seconds, windows))
    print()
    print(table([[f"{n:,}", f"{t:,}", f"{s:.2f}", f"{t / s / 1e6:.1f}", f"{s / row_points[0][2] / (t / row_points[0][1]):.2f}"]
                 for n, t, s, w in row_points],
                ["rows", "tokens", "seconds", "Mtok/s", "time ratio / token ratio"]))

    len_points = []
    for length in args.lengths:
        n = max(args.length_budget // length, 1)
        pool = gemma3_table(min(n, 50), tokens=(length, length), images=(max(length // 2048, 1),) * 2, seed=2)
        tbl = repeated(pool, n)
        tokens = len(tbl.column("input_ids").combine_chunks().values)
        seconds, windows = split_time(tbl, args.max_length, batch_size=max(1, min(1000, 4_000_000 // length)))
        len_points.append((length, n, tokens, seconds, windows))
    print()
    print(table([[f"{L:,}", f"{n:,}", f"{t:,}", w, f"{s:.2f}", f"{t / s / 1e6:.1f}"] for L, n, t, s, w in len_points],
                ["row tokens", "rows", "tokens", "windows", "seconds", "Mtok/s"]))
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        ax[0].plot([p[0] for p in row_points], [p[2] for p in row_points], "o-")
        ax[0].set(xlabel="rows", ylabel="seconds", title=f"{args.row_tokens}-token rows")
        ax[1].plot([p[0] for p in len_points], [p[2] / p[1] * 1e6 for p in len_points], "o-")
        ax[1].set(xscale="log", xlabel="tokens per row", ylabel="seconds per 1M tokens", title="row length",
                  ylim=(0, None))
        fig.tight_layout()
        fig.savefig(args.png, dpi=100)
        print(f"\nplot written to {args.png}")
    return row_points, len_points


if __name__ == "__main__":
    main()
