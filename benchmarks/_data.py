"""Shared pieces of the benchmarks: Gemma-3-shaped pre-tokenized rows, timing, peak memory, machine notes."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from contextlib import contextmanager

import numpy as np

# Gemma 3 token ids (google/gemma-3-4b-it tokenizer): the span is
# "\n\n <start_of_image> <image_soft_token>x256 <end_of_image> \n\n".
BOS, NL, NLNL = 2, 107, 108
START_OF_TURN, END_OF_TURN = 105, 106
USER, MODEL = 2364, 4368
BOI, EOI, SOFT = 255999, 256000, 262144
TOKENS_PER_IMAGE = 256
IMAGE_BLOCK = np.array([NLNL, BOI, *([SOFT] * TOKENS_PER_IMAGE), EOI, NLNL], dtype=np.int64)
TEXT_LOW, TEXT_HIGH = 200, 250_000


def gemma3_spec():
    """The Gemma 3 grammar record with the real Gemma 3 ids (what `ImageSpanSpec.from_processor` gives)."""
    from chunker import ImageSpanSpec

    return ImageSpanSpec(
        family="gemma3", kind="bracket", image_token_id=SOFT, open_ids=(BOI,), close_ids=(EOI,),
        tokens_per_image=TOKENS_PER_IMAGE, type_ids_column="token_type_ids", bos_id=BOS,
        instruction_ids=(START_OF_TURN, USER, NL), response_ids=(START_OF_TURN, MODEL, NL), group_crops=True,
        extra={"pixel_rules": {"pixel_values": ("crops", 0)}},
    )


def gemma3_row(rng: np.random.Generator, n_tokens: int, n_images: int) -> dict:
    """One pre-tokenized Gemma-3-shaped conversation of about `n_tokens` tokens holding `n_images` images.

    Returns:
        {"input_ids", "labels" (-100 outside model answers), "attention_mask", "token_type_ids",
        "images" (file names, one per image span)} as numpy arrays / a list.
    """
    turns = max(1, min(n_images, 8))
    per_turn = np.bincount(rng.integers(0, turns, size=n_images), minlength=turns)
    text_budget = max(n_tokens - n_images * len(IMAGE_BLOCK) - 1 - 8 * turns, 2 * turns)
    shares = rng.dirichlet(np.ones(2 * turns)) * text_budget
    pieces, supervised = [np.array([BOS])], [np.zeros(1, bool)]

    def add(tokens, sup=False):
        pieces.append(np.asarray(tokens, dtype=np.int64))
        supervised.append(np.full(len(pieces[-1]), sup))

    for t in range(turns):
        add([START_OF_TURN, USER, NL])
        for _ in range(per_turn[t]):
            add(IMAGE_BLOCK)
        add(rng.integers(TEXT_LOW, TEXT_HIGH, size=max(int(shares[2 * t]), 1)))
        add([END_OF_TURN, NL, START_OF_TURN, MODEL, NL])
        add(rng.integers(TEXT_LOW, TEXT_HIGH, size=max(int(shares[2 * t + 1]), 1)), True)
        add([END_OF_TURN], True)
        add([NL])
    ids = np.concatenate(pieces)
    sup = np.concatenate(supervised)
    return {
        "input_ids": ids,
        "labels": np.where(sup, ids, -100),
        "attention_mask": np.ones(len(ids), dtype=np.int64),
        "token_type_ids": (ids == SOFT).astype(np.int64),
        "images": [f"img_{k}.jpg" for k in range(n_images)],
    }


def gemma3_table(n_rows: int, tokens=(4096, 32768), images=(1, 16), seed: int = 0):
    """A pyarrow Table of `n_rows` Gemma-3-shaped rows (lengths and image counts drawn uniformly)."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    rows = [gemma3_row(rng, int(rng.integers(tokens[0], tokens[1] + 1)), int(rng.integers(images[0], images[1] + 1)))
            for _ in range(n_rows)]
    cols = {}
    # the types `datasets` gives a tokenized dataset (input_ids int32, masks int8, labels int64)
    types = {"input_ids": np.int32, "labels": np.int64, "attention_mask": np.int8, "token_type_ids": np.int8}
    for key, dtype in types.items():
        flat = np.concatenate([r[key] for r in rows]).astype(dtype)
        offsets = np.concatenate([[0], np.cumsum([len(r[key]) for r in rows])]).astype(np.int32)
        cols[key] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
    cols["images"] = pa.array([r["images"] for r in rows], type=pa.list_(pa.string()))
    return pa.table(cols)


def gemma3_dataset(path: str, n_rows: int, **kwargs):
    """The rows of `gemma3_table` saved to `path` and loaded back memory-mapped, as users load datasets."""
    import datasets

    if not os.path.exists(os.path.join(path, "dataset_info.json")):
        datasets.Dataset(gemma3_table(n_rows, **kwargs)).save_to_disk(path)
    return datasets.load_from_disk(path)


@contextmanager
def timer(out: dict, key: str):
    """Record the wall time of the block in `out[key]` (seconds)."""
    t0 = time.perf_counter()
    yield
    out[key] = time.perf_counter() - t0


def rss_mb() -> float:
    """Resident memory of this process now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> None:
    """Restart the resident-memory high-water mark (`VmHWM`) from the current size, where Linux allows it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """The high-water mark of this process's resident memory, in MiB (`VmHWM`; it starts afresh at exec,
    unlike `ru_maxrss`, which a child inherits from its parent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    """One line naming the machine and the library versions the figures were measured with."""
    import datasets
    import pyarrow

    parts = [f"{platform.processor() or platform.machine()}", f"{os.cpu_count()} cores",
             f"Python {sys.version.split()[0]}", f"numpy {np.__version__}", f"pyarrow {pyarrow.__version__}",
             f"datasets {datasets.__version__}"]
    from importlib.metadata import PackageNotFoundError, version

    for name in ("transformers", "trl"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
        if model:
            parts[0] = model
    except OSError:
        pass
    return ", ".join(parts)


def table(rows: list[list], header: list[str]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
