"""Collator benchmark: the vectorized per-item media check vs a per-sample Python loop, and its share of collate.

Gemma-3-shaped grammar (`<start_of_image> <image_soft_token>x256 <end_of_image>`), B=32 rows of up to L=8192
tokens, right-padded. Every figure is measured side by side in one run and printed with the machine.

    .venv/bin/python benchmarks/bench_collate.py                 # CPU, B=32, L=8192
    .venv/bin/python benchmarks/bench_collate.py --device cuda   # the same on a GPU: host syncs, counting vs bare
    .venv/bin/python benchmarks/bench_collate.py --smoke         # tiny size, seconds (run by the test suite)

The check is what `WindowCollator` runs per batch: every image span's token count against its own image's
expected count, in order (`item_token_counts` + `check_item_counts`); the loops do the same per sample.
Targets (issue 3): vectorized check >= 20x faster than the per-sample Python loop; the check <= 2% of
collate time; on CUDA one host sync per batch and counting <= 2x a bare `(input_ids == token).sum(1)`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from chunker import ImageSpanSpec
from chunker.collator import WindowCollator
from chunker.ops import check_item_counts, count_image_tokens, item_token_counts

BOS, BOI, EOI, SOFT, TEXT = 2, 255999, 256000, 262144, 1000
PER_IMAGE = 256
SPEC = ImageSpanSpec(family="gemma3_shaped", kind="bracket", image_token_id=SOFT, open_ids=(BOI,), close_ids=(EOI,),
                     tokens_per_image=PER_IMAGE, type_ids_column="token_type_ids", bos_id=BOS)


def make_rows(batch: int, length: int, images: int, pixel_size: int, seed: int = 0) -> list[dict]:
    """Window rows of 0.75L..L tokens with `images` Gemma-3 image spans each, and their pixel tensors."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(batch):
        n = length if r == 0 else int(rng.integers(int(length * 0.75), length + 1))
        k = min(images, (n - 1) // (PER_IMAGE + 3))
        text = n - 1 - k * (PER_IMAGE + 2)
        cuts = np.sort(rng.integers(0, text + 1, k))
        words = rng.integers(TEXT, TEXT + 5000, text)
        parts, prev = [np.array([BOS])], 0
        for c in cuts:
            parts += [words[prev:c], np.array([BOI] + [SOFT] * PER_IMAGE + [EOI])]
            prev = c
        parts.append(words[prev:])
        ids = np.concatenate(parts).astype(np.int64)
        rows.append({
            "input_ids": ids, "labels": ids.copy(), "attention_mask": np.ones(len(ids), np.int64),
            "token_type_ids": (ids == SOFT).astype(np.int64),
            "pixel_values": torch.randn(k, 3, pixel_size, pixel_size),
            "source_index": r, "window_index": 0,
        })
    return rows


def vectorized_check(ids: torch.Tensor, expected: torch.Tensor, per_row: torch.Tensor, most: int, spec=SPEC):
    """What WindowCollator runs per batch: every span's count vs its own image's, in order; one host sync.

    `most` is the most images any row's media hold (known on the host); one more slot is listed per row.
    """
    seen = item_token_counts(ids, spec, max_items=most + 1)
    return check_item_counts(seen, (expected, per_row)).bad_rows


def loop_check_python(ids: torch.Tensor, expected: list[list[int]]):
    """The usual hand-written fix: per sample, walk the tokens in Python, count each image's soft tokens."""
    bad = []
    for r, row in enumerate(ids.tolist()):
        counts, inside = [], False
        for t in row:
            if t == BOI:
                counts.append(0)
                inside = True
            elif t == EOI:
                inside = False
            elif t == SOFT and inside:
                counts[-1] += 1
        if counts != expected[r]:
            bad.append(r)
    return bad


def loop_check_tensor(ids: torch.Tensor, expected: list[list[int]]):
    """A per-sample loop over tensor rows: each row's per-image counts by a cumsum at its closing brackets."""
    bad = []
    for r in range(ids.shape[0]):
        row = ids[r]
        ends = (row == EOI).nonzero().flatten()
        cum = torch.nn.functional.pad((row == SOFT).cumsum(0)[ends], (1, 0))
        if (cum[1:] - cum[:-1]).tolist() != expected[r]:
            bad.append(r)
    return bad


def timed(fn, repeats: int, device: str) -> float:
    """Median seconds of `fn()` over `repeats` runs (after one warm-up), synchronizing CUDA around each."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def count_syncs(fn) -> int:
    """Host syncs `fn` makes on CUDA, as counted by torch.cuda.set_sync_debug_mode('warn')."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def machine(device: str) -> str:
    import transformers

    gpu = f", {torch.cuda.get_device_name()}" if device == "cuda" else ""
    load = f", load {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs{load}, {torch.get_num_threads()} "
            f"torch threads{gpu}; python "
            f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")


def run(batch: int, length: int, images: int, pixel_size: int, repeats: int, device: str) -> dict:
    rows = make_rows(batch, length, images, pixel_size)
    collator = WindowCollator(spec=SPEC, pad_to_multiple_of=64)
    collated = collator(rows)
    ids = collated["input_ids"].to(device)
    per_image = [[PER_IMAGE] * int(r["pixel_values"].shape[0]) for r in rows]
    expected = torch.tensor([c for p in per_image for c in p], device=device)
    per_row = torch.tensor([len(p) for p in per_image], device=device)
    most = max(map(len, per_image))

    def check(t):
        return vectorized_check(t, expected, per_row, most)

    assert check(ids) == loop_check_python(ids.cpu(), per_image) == loop_check_tensor(ids, per_image) == []
    broken = ids.clone()
    broken[3 % batch, (broken[3 % batch] == SOFT).nonzero()[0]] = TEXT  # one soft token lost in row 3
    assert check(broken) == loop_check_python(broken.cpu(), per_image) == [3 % batch]
    # a soft token moved from the first image to the second of row 1: per-row totals agree, per-item do not
    moved = ids.clone()
    first_eoi = int((moved[1] == EOI).nonzero()[0])
    moved[1, first_eoi - 1], moved[1, first_eoi] = EOI, SOFT
    assert int((moved[1] == SOFT).sum()) == int((ids[1] == SOFT).sum())
    assert check(moved) == loop_check_python(moved.cpu(), per_image) == loop_check_tensor(moved, per_image) == [1]

    result = {"batch": batch, "length": int(ids.shape[1]), "images_per_row": images, "device": device,
              "machine": machine(device)}
    result["vectorized_check_s"] = timed(lambda: check(ids), repeats, device)
    result["bare_count_s"] = timed(lambda: (ids == SOFT).sum(1), repeats, device)
    result["count_image_tokens_s"] = timed(lambda: count_image_tokens(ids, SOFT), repeats, device)
    cpu_ids = ids.cpu()
    result["python_loop_s"] = timed(lambda: loop_check_python(cpu_ids, per_image), max(1, repeats // 5), "cpu")
    result["tensor_loop_s"] = timed(lambda: loop_check_tensor(ids, per_image), repeats, device)
    result["collate_s"] = timed(lambda: collator(rows), repeats, "cpu")
    result["speedup_vs_python_loop"] = result["python_loop_s"] / result["vectorized_check_s"]
    result["speedup_vs_tensor_loop"] = result["tensor_loop_s"] / result["vectorized_check_s"]
    result["check_share_of_collate"] = result["vectorized_check_s"] / result["collate_s"]
    result["count_vs_bare"] = result["count_image_tokens_s"] / result["bare_count_s"]
    if device == "cuda":
        result["host_syncs_per_batch"] = count_syncs(lambda: check(ids))
    return result


def image_collate(batch: int, length: int, images: int, image_px: int, repeats: int) -> dict:
    """The collate a training run does: window rows carry images, the collator makes their pixels.

    A real `Gemma3Processor` (offline tokenizer) at 256 tokens per image and `image_px` pixels a side
    (PaliGemma-224's ratio at the default 224), source images of 320x240; the check is timed on the very
    batch the collator built.
    """
    from PIL import Image
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    from chunker.testing import build_processor

    tiny = build_processor("gemma3")
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": image_px, "width": image_px},
                                                image_mean=[0.5] * 3, image_std=[0.5] * 3),
        tokenizer=tiny.tokenizer, image_seq_length=PER_IMAGE, chat_template=tiny.chat_template,
    )
    tok = processor.tokenizer
    boi, eoi, soft, bos = tok.convert_tokens_to_ids([tok.boi_token, tok.eoi_token, tok.image_token, tok.bos_token])
    rng = np.random.default_rng(1)
    pictures = [Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) for _ in range(8)]
    rows = []
    for r in range(batch):
        ids = [bos]
        for _ in range(images):
            ids += [boi] + [soft] * PER_IMAGE + [eoi]
        ids += [int(t) for t in rng.integers(10, 300, length - len(ids))]
        ids = np.asarray(ids, dtype=np.int64)
        rows.append({"input_ids": ids, "labels": ids, "attention_mask": np.ones(len(ids), np.int64),
                     "images": [pictures[(r + i) % 8] for i in range(images)], "source_index": r, "window_index": 0})
    collator = WindowCollator(processor)
    spec = collator.spec
    collated = collator(rows)
    expected, per_row = torch.full((batch * images,), PER_IMAGE), torch.full((batch,), images)

    def check():
        return vectorized_check(collated["input_ids"], expected, per_row, images, spec)

    assert check() == []
    collate_s = timed(lambda: collator(rows), repeats, "cpu")
    check_s = timed(check, max(repeats, 5), "cpu")
    return {"image_px": image_px, "images_per_batch": batch * images, "image_collate_s": collate_s,
            "image_check_s": check_s, "check_share_of_image_collate": check_s / collate_s}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--images", type=int, default=16, help="image spans per row (256 tokens each)")
    parser.add_argument("--pixel-size", type=int, default=64, help="side of the pixel tensors the rows carry")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--image-px", type=int, default=224, help="image side for the collate that makes pixels")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1, as in a DataLoader worker, where collators run)")
    parser.add_argument("--smoke", action="store_true", help="tiny size for the test suite")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch, args.length, args.images, args.pixel_size, args.repeats = 4, 1024, 2, 8, 3
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)
    res = run(args.batch, args.length, args.images, args.pixel_size, args.repeats, args.device)
    if args.device == "cpu":
        px = 32 if args.smoke else args.image_px
        res.update(image_collate(args.batch, args.length, args.images, px, 1 if args.smoke else 3))
    print(f"machine: {res['machine']}")
    print(f"B={res['batch']} L={res['length']} images/row={res['images_per_row']} device={res['device']}")
    print(f"{'measure':60s} {'value':>12s}")
    rows = [
        ("vectorized check (ms)", res["vectorized_check_s"] * 1e3),
        ("per-sample Python loop over tokens (ms)", res["python_loop_s"] * 1e3),
        ("per-sample loop over tensor rows (ms)", res["tensor_loop_s"] * 1e3),
        ("whole collate, pixel tensors in rows (ms)", res["collate_s"] * 1e3),
        ("speedup vs Python loop (x, target >= 20)", res["speedup_vs_python_loop"]),
        ("speedup vs tensor-row loop (x)", res["speedup_vs_tensor_loop"]),
        ("check share of collate (%, target <= 2)", 100 * res["check_share_of_collate"]),
        ("count_image_tokens / bare (ids==t).sum(1) (x)", res["count_vs_bare"]),
    ]
    if "image_collate_s" in res:
        rows += [
            (f"whole collate making pixels, {res['images_per_batch']} images of {res['image_px']}px (ms)",
             res["image_collate_s"] * 1e3),
            ("check share of that collate (%, target <= 2)", 100 * res["check_share_of_image_collate"]),
        ]
    if "host_syncs_per_batch" in res:
        rows.append(("host syncs per batch (target 1)", res["host_syncs_per_batch"]))
    for name, value in rows:
        print(f"{name:60s} {value:12.3f}")
    print(json.dumps(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
