"""Split raw conversations (messages + image files): the splitting share of the map, and token counts from sizes.

Each family's real processor is built offline (`chunker.testing.build_processor`); the rows are multi-turn
conversations with 1-8 JPEG images each, of mixed sizes (240p to 1600x1200, landscape and portrait), stored
as file paths the way TRL-style datasets keep them. Per family, the same rows are mapped twice:

- `image_tokens_from="pixels"` (default): the processor decodes, resizes and normalizes every image;
- `image_tokens_from="sizes"`: only each image's header is read, the placeholders are expanded from the size.

In the same run the splitter's public stages are timed: `parse` (chat template, image processing, tokenizing)
and `analyse` + `assemble` (spans, labels, plan, window rows); the rest of the map is `datasets` (batching, writing).
The splitting share is `analyse` + `assemble` over the whole map. The windows of both modes are checked identical.

    python benchmarks/bench_raw.py                  # 100 rows; qwen2_vl, gemma3, qwen2_vl at hub image sizes
    python benchmarks/bench_raw.py --smoke          # a few rows, seconds; checks the script, measures nothing
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._data import machine, table

# (width, height) of the image pool: common photo and screenshot sizes, both orientations
IMAGE_SIZES = [(320, 240), (640, 480), (800, 600), (1024, 768), (1280, 720), (480, 640), (720, 1280),
               (1000, 1000), (1600, 1200), (1200, 1600), (960, 540), (500, 375)]
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "describe", "this", "picture", "in", "detail", "what", "is", "shown", "in", "the", "image", "a", "cat", "sits", "on", "a", "mat", "next", "to", "a", "red", "ball", "compare", "the", "two", "images", "and", "say", "which", "one", "is", "brighter"]
MODES = ("pixels", "sizes")
# "<family>@hub": the family's offline processor at the hub checkpoint's image settings (Qwen2-VL: min_pixels
# 56x56, max_pixels 1280 merged tokens of 28x28), hundreds of tokens per image, split at 4k
VARIANTS = {"qwen2_vl@hub": ({"min_pixels": 56 * 56, "max_pixels": 1280 * 28 * 28}, 4096, 128)}
TOKEN_COLUMNS = ("input_ids", "labels", "attention_mask", "source_index", "window_index", "num_windows")


def make_images(folder: str, sizes, seed: int = 0) -> list[str]:
    """JPEG files of the given (width, height) sizes: smooth gradients with noise, like photos compress."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for k, (w, h) in enumerate(sizes):
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 127 // max(w + h, 1)], -1)
        noise = rng.integers(0, 40, size=(h, w, 3))
        path = os.path.join(folder, f"img_{k}_{w}x{h}.jpg")
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def make_rows(n_rows: int, image_paths: list[str], images=(1, 8), turns=(2, 5), seed: int = 0) -> list[dict]:
    """Multi-turn conversations with images (by path) spread over the user turns, answers of varied length."""
    rng = np.random.default_rng(seed)

    def sentence(lo, hi):
        return " ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi)))) + "."

    rows = []
    for _ in range(n_rows):
        n_turns = int(rng.integers(turns[0], turns[1] + 1))
        n_images = int(rng.integers(images[0], images[1] + 1))
        per_turn = np.bincount(rng.integers(0, n_turns, size=n_images), minlength=n_turns)
        messages, paths = [], []
        for t in range(n_turns):
            content = [{"type": "text", "text": sentence(8, 40)}]
            for _ in range(per_turn[t]):
                paths.append(image_paths[int(rng.integers(len(image_paths)))])
                content.insert(int(rng.integers(0, len(content) + 1)), {"type": "image"})
            messages.append({"role": "user", "content": content})
            messages.append({"role": "assistant", "content": [{"type": "text", "text": sentence(20, 120)}]})
        rows.append({"messages": messages, "images": paths})
    return rows


def timed(splitter, names=("parse", "analyse", "assemble")) -> dict:
    """Wrap the splitter's stages on this instance so each call adds its wall time to the returned dict."""
    spent = defaultdict(float)
    for name in names:
        stage = getattr(splitter, name)

        def wrapper(*args, _stage=stage, _name=name, **kwargs):
            t0 = time.perf_counter()
            try:
                return _stage(*args, **kwargs)
            finally:
                spent[_name] += time.perf_counter() - t0

        setattr(splitter, name, wrapper)
    return spent


def run_mode(family: str, mode: str, ds, out_dir: str, max_length: int, overlap: int, batch_size: int) -> tuple:
    """Map the rows with one splitter; (result dict, the mapped windows)."""
    from chunker import WindowSplitter
    from chunker.testing import build_processor

    options, max_length, overlap = VARIANTS.get(family, ({}, max_length, overlap))
    processor = build_processor(family.split("@")[0], **options)
    splitter = WindowSplitter(processor, max_length=max_length, overlap=overlap, image_tokens_from=mode)
    spent = timed(splitter)
    t0 = time.perf_counter()
    windows = ds.map(splitter, batched=True, batch_size=batch_size, with_indices=True,
                     remove_columns=ds.column_names, load_from_cache_file=False,
                     cache_file_name=os.path.join(out_dir, f"{family}-{mode}.arrow"))
    seconds = time.perf_counter() - t0
    n_tokens = int(sum(len(ids) for ids in windows.data.column("input_ids").to_pylist()))
    result = {"family": family, "mode": mode, "max_length": max_length, "seconds": seconds, "parse": spent["parse"],
              "windows": spent["analyse"] + spent["assemble"], "rows_out": len(windows), "tokens_out": n_tokens}
    return result, windows


def same_windows(a, b) -> None:
    """Raise AssertionError unless the two mapped window datasets hold the same windows and images."""
    assert len(a) == len(b), (len(a), len(b))
    for key in (*TOKEN_COLUMNS, *(c for c in ("token_type_ids", "mm_token_type_ids") if c in a.column_names)):
        assert a.data.column(key).to_pylist() == b.data.column(key).to_pylist(), key

    def paths(images):
        return [[im["path"] if isinstance(im, dict) else im for im in row] for row in images]

    assert paths(a.data.column("images").to_pylist()) == paths(b.data.column("images").to_pylist()), "images"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--families", default="qwen2_vl,gemma3,qwen2_vl@hub",
                        help=f"comma-separated chunker.testing families, or {sorted(VARIANTS)}")
    parser.add_argument("--max-length", type=int, default=256, help="for the small test processors")
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="a few rows and small images: checks the script runs")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    import datasets

    datasets.disable_progress_bars()
    families = [f for f in args.families.split(",") if f]
    sizes = IMAGE_SIZES
    if args.smoke:
        args.rows, families, sizes = 6, families[:1], [(64, 48), (40, 90), (120, 80)]
    tmp = tempfile.mkdtemp(prefix="bench-raw-")
    try:
        rows = make_rows(args.rows, make_images(tmp, sizes))
        ds = datasets.Dataset.from_list(rows)
        n_images = sum(len(r["images"]) for r in rows)
        results = []
        for family in families:
            mapped = {}
            for mode in MODES:
                result, mapped[mode] = run_mode(family, mode, ds, tmp, args.max_length, args.overlap,
                                                args.batch_size)
                results.append(result)
            same_windows(mapped["pixels"], mapped["sizes"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, args, n_images)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "rows": args.rows, "images": n_images, "results": results}, f, indent=1)
    return results


def report(results, args, n_images):
    print(f"# bench_raw: {args.rows} conversations, {n_images:,} images (JPEG files, {len(IMAGE_SIZES)} sizes "
          f"from 320x240 to 1600x1200), max_length={args.max_length} overlap={args.overlap} "
          f"(@hub: {VARIANTS['qwen2_vl@hub'][1]} / {VARIANTS['qwen2_vl@hub'][2]}), map batch_size={args.batch_size}")
    print(f"# {machine()}")
    rows = []
    for r in results:
        rest = r["seconds"] - r["parse"] - r["windows"]
        rows.append([r["family"], r["mode"], r["max_length"], f"{r['seconds']:.2f}", f"{args.rows / r['seconds']:.0f}",
                     f"{r['parse']:.2f}", f"{r['windows']:.3f}", f"{rest:.2f}",
                     f"{100 * r['windows'] / r['seconds']:.1f}%", r["rows_out"], f"{r['tokens_out']:,}"])
    print(table(rows, ["family", "image_tokens_from", "max_length", "map s", "rows/s", "parse s (template, images, tokenizer)",
                       "windows s (spans, plan, rows)", "rest s (datasets)", "splitting share", "windows",
                       "tokens out"]))
    print()
    checks = []
    by = {(r["family"], r["mode"]): r for r in results}
    for family in dict.fromkeys(r["family"] for r in results):
        pixels, sizes = by[(family, "pixels")], by[(family, "sizes")]
        for r in (pixels, sizes):
            share = 100 * r["windows"] / r["seconds"]
            checks.append([f"{family}: splitting share, {r['mode']}", f"{share:.1f}%", "<= 5%", _met(share <= 5)])
        speedup = pixels["seconds"] / sizes["seconds"]
        checks.append([f"{family}: pixels map / sizes map", f"{speedup:.1f}x", ">= 5x", _met(speedup >= 5)])
        checks.append([f"{family}: windows identical", "yes", "yes", "met"])  # main() asserted it
    print(table(checks, ["measure", "measured", "target", ""]))


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


if __name__ == "__main__":
    main()
