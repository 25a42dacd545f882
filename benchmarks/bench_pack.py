"""Packing benchmark: padding share of packed vs unpacked windows, supervised tokens per batch, pack_windows vs TRL.

The long-conversation distribution of the other benchmarks (Gemma-3-shaped pre-tokenized rows of 4k-32k tokens
with 1-16 images, `benchmarks/_data.py`) is split at several `max_length`s. For each:

- unpacked: the windows in a shuffled order (a Trainer's random sampler), batches of `--batch` windows padded to
  their longest: the padding share is the padding over all the tokens of the padded batches;
- packed: `chunker.pack_windows(windows, pack_length)` (best fit decreasing) with `pack_length` the split's
  `max_length` times each `--pack-factors` entry, the packed rows shuffled, batches of `--batch` rows padded to their
  longest (padding-free batches, `WindowCollator(padding_free=True)`, have none by construction);
- supervised tokens per batch: tokens with a label, averaged over batches (the work a batch carries);
- time: `pack_windows` vs TRL's `pack_dataset(strategy="bfd")` on the same token columns (`input_ids`, `labels`,
  `attention_mask`, `token_type_ids`), in memory, best of `--repeat`.

    .venv/bin/python benchmarks/bench_pack.py                   # 400 rows, max_length 2048 / 4096 / 8192
    .venv/bin/python benchmarks/bench_pack.py --smoke           # a few rows, seconds (run by the test suite)

Target (issue 11): padding share of packed batches <= 5%.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._data import gemma3_spec, gemma3_table, machine, table

TOKEN_COLUMNS = ["input_ids", "labels", "attention_mask", "token_type_ids"]


def padding_share(lengths: np.ndarray, batch: int, seed: int = 0) -> float:
    """Padding over all tokens of batches of `batch` rows (shuffled) padded to their longest."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    lengths = lengths[order]
    padded = real = 0
    for a in range(0, len(lengths), batch):
        part = lengths[a:a + batch]
        padded += int(part.max()) * len(part)
        real += int(part.sum())
    return 1 - real / padded if padded else 0.0


def supervised_per_batch(ds, batch: int) -> float:
    """Tokens with a label per batch of `batch` rows (a packed row's first label of each window is not one)."""
    labels = ds.with_format("arrow")[:]["labels"].combine_chunks()
    supervised = int((labels.flatten().to_numpy(zero_copy_only=False) != -100).sum())
    if "segment_lengths" in ds.column_names:  # the collator drops each window's first label (never trained)
        starts = ds.with_format("arrow")[:]["segment_lengths"].combine_chunks()
        firsts = np.concatenate([[0], np.cumsum(starts.flatten().to_numpy())[:-1]])
        supervised -= int((labels.flatten().to_numpy(zero_copy_only=False)[firsts] != -100).sum())
    return supervised / max(1, int(np.ceil(len(labels) / batch)))


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run(rows: int, max_lengths, batch: int, repeat: int, tokens=(4096, 32768), factors=(1, 4)) -> list[dict]:
    import datasets
    import pyarrow.compute as pc

    import chunker

    datasets.disable_progress_bars()
    source = datasets.Dataset(gemma3_table(rows, tokens=tokens))
    results = []
    for max_length in max_lengths:
        splitter = chunker.WindowSplitter(spec=gemma3_spec(), max_length=max_length, overlap=0)
        windows = source.map(splitter, batched=True, batch_size=128, with_indices=True,
                             remove_columns=source.column_names, keep_in_memory=True)
        windows = chunker.drop_skipped(windows)
        lengths = pc.list_value_length(windows.with_format("arrow")[:]["input_ids"]).to_numpy()
        tokens_only = windows.select_columns(TOKEN_COLUMNS)
        for factor in factors:
            pack_length = max_length * factor
            packed = chunker.pack_windows(windows, max_length=pack_length)
            plengths = np.asarray([sum(s) for s in packed["segment_lengths"]])
            assert plengths.max() <= pack_length and plengths.sum() == lengths.sum()
            ours = best_of(lambda d=tokens_only, n=pack_length: chunker.pack_windows(d, max_length=n, batch_size=1000),
                           repeat)
            try:
                from trl import pack_dataset

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    trl_s = best_of(lambda d=tokens_only, n=pack_length: pack_dataset(
                        d, n, strategy="bfd", map_kwargs={"keep_in_memory": True}), repeat)
            except ImportError:
                trl_s = float("nan")
            results.append({
                "max_length": max_length, "pack_length": pack_length, "windows": len(windows),
                "packed_rows": len(packed), "tokens": int(lengths.sum()),
                "pad_unpacked": padding_share(lengths, batch), "pad_packed": padding_share(plengths, batch),
                "fill": float(plengths.sum()) / (len(packed) * pack_length),
                "sup_unpacked": supervised_per_batch(windows, batch),
                "sup_packed": supervised_per_batch(packed, batch),
                "pack_s": ours, "trl_s": trl_s,
            })
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--max-lengths", type=int, nargs="*", default=[2048, 4096, 8192])
    parser.add_argument("--pack-factors", type=int, nargs="*", default=[1, 4],
                        help="pack to the split's max_length times each of these")
    parser.add_argument("--batch", type=int, default=8, help="rows per batch (windows, or packed rows)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a few short rows, one repeat: checks the script")
    args = parser.parse_args(argv)
    tokens = (4096, 32768)
    if args.smoke:
        args.rows, args.max_lengths, args.repeat, tokens = 12, [1024, 2048], 1, (1500, 6000)
    print(machine())
    print(f"{args.rows} long conversations ({tokens[0]}-{tokens[1]} tokens, 1-16 images), batches of {args.batch} rows")
    results = run(args.rows, args.max_lengths, args.batch, args.repeat, tokens, args.pack_factors)
    rows = [[r["max_length"], r["pack_length"], f"{r['windows']:,}", f"{r['packed_rows']:,}", f"{r['pad_unpacked']:.1%}",
             f"{r['pad_packed']:.1%}", f"{r['fill']:.1%}", f"{r['sup_unpacked']:,.0f}", f"{r['sup_packed']:,.0f}",
             f"{r['pack_s']:.3f}", f"{r['trl_s']:.3f}", f"{r['trl_s'] / r['pack_s']:.2f}x"] for r in results]
    print(table(rows, ["split max_length", "pack length", "windows", "packed rows", "padding, unpacked", "padding, packed",
                       "packed rows' fill", "supervised / batch, unpacked", "supervised / batch, packed",
                       "pack_windows s", "TRL pack_dataset bfd s", "TRL / pack_windows"]))
    return results


if __name__ == "__main__":
    main()
