"""Long multi-image conversations, generated offline, for the demo, the CLI tests and benchmarks.

Rows come in TRL format (`messages` with `{"type": "image"}` items plus an `images` column) and can be
written as JSONL with image files beside it (TRL or Unsloth layout) or as Parquet with image bytes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "describe", "this", "picture", "in", "detail", "what", "is", "shown", "image", "cat", "sits", "on", "mat", "next", "to", "red", "ball", "compare", "two", "images", "and", "say", "which", "one", "brighter", "answer", "briefly", "original", "crops", "help", "see", "better"]
QUESTIONS = ("describe this picture in detail.", "what is shown in the image?", "compare the two images.")


def make_image(rng: np.random.Generator, size: tuple[int, int]):
    """A PIL RGB image of `size` (width, height) with random coloured blocks."""
    from PIL import Image

    w, h = size
    blocks = rng.integers(0, 256, size=(max(h // 14, 1), max(w // 14, 1), 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((14, 14, 1), dtype=np.uint8))[:h, :w]
    pad = np.zeros((h, w, 3), dtype=np.uint8)
    pad[: pixels.shape[0], : pixels.shape[1]] = pixels
    return Image.fromarray(pad, "RGB")


def make_conversations(
    n_rows: int = 8,
    *,
    turns: tuple[int, int] = (4, 9),
    images_per_turn: tuple[int, int] = (0, 2),
    answer_words: tuple[int, int] = (20, 60),
    sizes=((56, 56), (84, 56), (56, 84), (112, 112)),
    system: bool = True,
    seed: int = 0,
) -> list[dict]:
    """Long multi-image conversations in TRL format: {"messages": [...], "images": [PIL images]}.

    Args:
        n_rows: how many conversations.
        turns: (min, max) user/assistant exchanges per conversation.
        images_per_turn: (min, max) images in each user turn.
        answer_words: (min, max) words in each assistant answer.
        sizes: image sizes (width, height) to draw from; multiples of 28 suit Qwen-VL processors.
        system: start every conversation with a system turn.
        seed: the same seed gives the same rows.

    Returns:
        list of rows; every `{"type": "image"}` item has one image in `images`, in order.

    Example:
        >>> rows = make_conversations(2, seed=1)
        >>> sorted(rows[0]), rows[0]["messages"][1]["role"]
        (['images', 'messages'], 'user')
    """
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_rows):
        messages, images = [], []
        if system:
            messages.append({"role": "system", "content": [{"type": "text", "text": "you are a helpful assistant."}]})
        for t in range(int(rng.integers(turns[0], turns[1] + 1))):
            k = int(rng.integers(images_per_turn[0], images_per_turn[1] + 1))
            content = [{"type": "image"} for _ in range(k)]
            content.append({"type": "text", "text": QUESTIONS[(t + k) % len(QUESTIONS)]})
            images += [make_image(rng, sizes[int(rng.integers(len(sizes)))]) for _ in range(k)]
            answer = " ".join(rng.choice(WORDS, size=int(rng.integers(answer_words[0], answer_words[1] + 1))))
            messages.append({"role": "user", "content": content})
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer + "."}]})
        rows.append({"messages": messages, "images": images})
    return rows


def write_jsonl(rows, folder, *, name: str = "data.jsonl", layout: str = "trl") -> Path:
    """Write rows as JSONL with each image saved as PNG under `folder/images/`, paths relative to `folder`.

    Args:
        rows: rows from `make_conversations`.
        folder: where to write; created when missing.
        name: the JSONL file name.
        layout: "trl" (an `images` column of paths) or "unsloth" (paths inline: {"type": "image", "image": path}).

    Returns:
        the JSONL path.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w") as f:
        for r, row in enumerate(rows):
            paths = []
            for k, image in enumerate(row["images"]):
                rel = f"images/{Path(name).stem}-{r}-{k}.png"
                image.save(folder / rel)
                paths.append(rel)
            f.write(json.dumps(_layout(row["messages"], paths, layout)) + "\n")
    return folder / name


def write_parquet(rows, path) -> Path:
    """Write rows as Parquet in TRL layout with images stored as PNG bytes ({"bytes", "path"} structs)."""
    import datasets

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({
        "messages": [{"role": datasets.Value("string"),
                      "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}]}],
        "images": datasets.Sequence(datasets.Image()),
    })
    data = {"messages": [_fill_text(r["messages"]) for r in rows], "images": [[_png(im) for im in r["images"]] for r in rows]}
    datasets.Dataset.from_dict(data, features=features).to_parquet(str(path))
    return path


def _layout(messages, paths, layout):
    if layout == "trl":
        return {"messages": messages, "images": paths}
    if layout != "unsloth":
        raise ValueError(f"layout={layout!r} must be 'trl' or 'unsloth'")
    it = iter(paths)
    inline = [
        {**m, "content": [{"type": "image", "image": next(it)} if c["type"] == "image" else c for c in m["content"]]}
        for m in messages
    ]
    return {"messages": inline}


def _fill_text(messages):
    return [{**m, "content": [{"type": c["type"], "text": c.get("text")} for c in m["content"]]} for m in messages]


def _png(image) -> dict:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}
