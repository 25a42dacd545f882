"""WindowSplitter: one row in, one or more window rows out, for `Dataset.map(batched=True)` and friends."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import weakref
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .errors import (
    ChunkerError,
    ConfigError,
    EmptyConversationError,
    ImageCountError,
    InvalidTokenError,
    OversizeSpanError,
    RowFormatError,
)
from .labels import IGNORE, labels_from_mask, loss_mask, mask_from_labels, turn_boundaries, window_labels
from .media import TENSOR_STREAMS, check_counts, load_image, slice_plan, take_items
from .plan import check_config, plan_windows
from .spans import IMAGE, VIDEO, find_image_spans, group_spans, split_runs

PREFIXES = ("bos", "system", "none")
POLICIES = ("raise", "skip")
MASK_COLUMNS = ("assistant_masks", "assistant_mask")


@dataclass
class SplitStats:
    """What a splitter did: rows in, windows out, rows skipped by reason (summed over every process)."""

    rows: int = 0
    windows: int = 0
    unsupervised_windows: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list = field(default_factory=list)

    @property
    def skipped_rows(self) -> int:
        return sum(self.skipped.values())

    def as_dict(self) -> dict:
        return {"rows": self.rows, "windows": self.windows, "unsupervised_windows": self.unsupervised_windows,
                "skipped": dict(self.skipped), "examples": self.examples}


class WindowSplitter:
    """Split long multimodal rows into windows of at most `max_length` tokens that never cut a media span.

    Use it as a batched map function; it accepts conversational rows (TRL or Unsloth format) and
    pre-tokenized rows (`input_ids` + `labels` or an assistant mask + `images` or pixel tensors).

    Args:
        processor: the model's transformers processor (tokenizes conversations, gives the family grammar).
            May be None for pre-tokenized rows when `spec` is given.
        max_length: the most tokens a window may hold, prefix and context included.
        overlap: tokens of the previous window repeated as context (no loss) in the next.
        spec: an `ImageSpanSpec`; detected from `processor` when None.
        train_on: "assistant" (default) or "all"; used when a row brings no labels of its own.
        instruction_part, response_part: turn-marker strings overriding the family's (like Unsloth's).
        prefix: repeated before every window after the first: "bos" (default), "system" (BOS and the
            system turn) or "none". Families whose images live in a prefix (PaliGemma) always repeat it.
        on_oversize: "raise" (default) an `OversizeSpanError`, or "skip" the row and count it.
        on_error: "raise" (default) any row error, or "skip" the row and count it by reason.
        keep_pixels: for pre-tokenized rows with pixel tensors, slice and keep them in the window rows.
        min_fill: fraction of a window's room it fills before a turn start may end it.
        processor_kwargs: extra keywords for the processor call (e.g. {"do_pan_and_scan": True});
            give the collator the same ones so pixels match the token counts.
        image_tokens_from: how conversational rows get their image token counts. "pixels" (default) calls
            the processor on the decoded images; "sizes" reads only each image's size (its header) and
            expands the placeholders as the processor would (its own `replace_image_token`), then
            tokenizes with the tokenizer alone: the same input_ids and windows, without decoding or
            resizing pixels. Window rows then carry each image as the row gave it (path, bytes, dict or
            PIL image) instead of a decoded PIL image; a corrupt image body is not noticed.
        drop_unsupervised: leave out windows that train no token (e.g. a window holding only a user
            prompt and its images); they carry no loss, and a batch made only of them gives the model a
            NaN loss. Counted in `splitter.stats.unsupervised_windows`.

    Raises:
        ConfigError: settings that can never make a window, unknown policies; image_tokens_from="sizes"
            for a family whose counts cannot be computed exactly from sizes (e.g. PaliGemma).
        UnsupportedProcessorError: no family matches the processor and no spec was passed.

    Example:
        >>> splitter = WindowSplitter(processor, max_length=2048, overlap=128)       # doctest: +SKIP
        >>> windows = ds.map(splitter, batched=True, with_indices=True,               # doctest: +SKIP
        ...                  remove_columns=ds.column_names)
        >>> splitter.stats.skipped                                                    # doctest: +SKIP
        Counter()
    """

    def __init__(
        self,
        processor=None,
        max_length: int = 2048,
        overlap: int = 0,
        *,
        spec=None,
        train_on: str = "assistant",
        instruction_part=None,
        response_part=None,
        prefix: str = "bos",
        on_oversize: str = "raise",
        on_error: str = "raise",
        keep_pixels: bool = True,
        min_fill: float = 0.5,
        processor_kwargs: dict | None = None,
        image_tokens_from: str = "pixels",
        drop_unsupervised: bool = False,
    ):
        from .labels import TRAIN_ON

        check_config(max_length, overlap, 0)
        if train_on not in TRAIN_ON:
            raise ConfigError(f"train_on={train_on!r} must be one of {TRAIN_ON}")
        if prefix not in PREFIXES:
            raise ConfigError(f"prefix={prefix!r} must be one of {PREFIXES}")
        for name, value in (("on_oversize", on_oversize), ("on_error", on_error)):
            if value not in POLICIES:
                raise ConfigError(f"{name}={value!r} must be one of {POLICIES}")
        if processor is None and spec is None:
            raise ConfigError("pass a processor, or a spec (ImageSpanSpec) for pre-tokenized rows")
        if spec is None:
            from .families import spec_from_processor

            spec = spec_from_processor(processor)
        if instruction_part is not None or response_part is not None:
            spec = spec.with_turns(_marker(processor, instruction_part), _marker(processor, response_part))
        self.processor = processor
        self.spec = spec
        self.max_length = int(max_length)
        self.overlap = int(overlap)
        self.train_on = train_on
        self.prefix = prefix
        self.on_oversize = on_oversize
        self.on_error = on_error
        self.keep_pixels = keep_pixels
        self.min_fill = min_fill
        self.processor_kwargs = dict(processor_kwargs or {})
        if image_tokens_from not in ("pixels", "sizes"):
            raise ConfigError(f"image_tokens_from={image_tokens_from!r} must be one of ('pixels', 'sizes')")
        self.image_tokens_from = image_tokens_from
        self._expander = None
        if image_tokens_from == "sizes":
            from .families import size_expander

            self._expander = size_expander(processor, spec, self.processor_kwargs)
        self.drop_unsupervised = bool(drop_unsupervised)
        self.vocab_size = _vocab_size(processor)
        self._stats_dir = None
        self._seen = 0

    def __getstate__(self):
        # Copies sent to worker processes must write into the same folder as the original.
        self._ensure_stats_dir()
        return self.__dict__.copy()

    def _ensure_stats_dir(self) -> str:
        if self._stats_dir is None:
            self._stats_dir = tempfile.mkdtemp(prefix="chunker-stats-")
            weakref.finalize(self, _remove_stats_dir, self._stats_dir, os.getpid())
        return self._stats_dir

    # ------------------------------------------------------------------ public API

    def __call__(self, batch: dict, indices=None) -> dict:
        """Split a batch (dict of columns) into window rows (dict of columns); rows may be skipped per policy.

        Pre-tokenized batches that arrive as Arrow (the lazy batch `Dataset.map` passes, a `pyarrow.Table`)
        take the Arrow path (`chunker.fast`) and come back as a `pyarrow.Table` with the same windows.
        """
        from .fast import as_columns, split_arrow_batch

        fast = split_arrow_batch(self, batch, indices)
        if fast is not None:
            return fast
        batch = as_columns(batch)
        n = len(next(iter(batch.values()))) if batch else 0
        if indices is None:
            indices = range(self._seen, self._seen + n)
        self._seen += n
        out: dict[str, list] = {}
        counts, dropped, skipped, examples = 0, 0, Counter(), []
        for i, index in enumerate(indices):
            row = {k: v[i] for k, v in batch.items()}
            try:
                windows, n_dropped = self._split(row, int(index))
            except ChunkerError as exc:
                if not self._skips(exc):
                    raise
                skipped[type(exc).__name__] += 1
                examples.append({"row": int(index), "reason": str(exc)})
                continue
            counts += len(windows)
            dropped += n_dropped
            for w in windows:
                for key, value in w.items():
                    out.setdefault(key, []).append(value)
        self._record(n, counts, skipped, examples, dropped)
        if not out:
            out = {key: [] for key in ("input_ids", "labels", "attention_mask", "source_index")}
        return out

    def split_example(self, example: dict, index=None) -> list[dict]:
        """Split one example into its window rows.

        Args:
            example: a conversational or pre-tokenized row (see the class docstring).
            index: the row's position in its dataset; becomes `source_index` (errors name it too).

        Returns:
            list of window rows (dicts): input_ids, labels, attention_mask, the type-id column when the
            family has one, images (the window's subset) and sliced pixel tensors when the row had them,
            source_index, window_index, num_windows.

        Raises:
            RowFormatError and its subclasses: the row cannot be split; the message names it and the fix.
        """
        return self._split(example, index)[0]

    def _split(self, example: dict, index) -> tuple[list[dict], int]:
        """The example's window rows, and how many windows without loss were left out."""
        row = index if index is not None else example.get("source_index", example.get("id"))
        windows = self._windows(self._parse(example, row), row)
        if not self.drop_unsupervised:
            return windows, 0
        kept = [w for w in windows if (w["labels"][1:] != IGNORE).any()]
        for k, w in enumerate(kept):
            w["window_index"], w["num_windows"] = k, len(kept)
        return kept, len(windows) - len(kept)

    @property
    def stats(self) -> SplitStats:
        """Rows, windows and skipped rows by reason, summed over every process that ran this splitter."""
        stats = SplitStats()
        if self._stats_dir is None:
            return stats
        for path in sorted(glob.glob(os.path.join(self._stats_dir, "*.jsonl"))):
            with open(path) as f:
                for line in f:
                    rec = json.loads(line)
                    stats.rows += rec["rows"]
                    stats.windows += rec["windows"]
                    stats.unsupervised_windows += rec.get("unsupervised", 0)
                    stats.skipped.update(rec["skipped"])
                    stats.examples.extend(rec["examples"])
        stats.examples.sort(key=lambda e: e["row"])
        return stats

    def reset_stats(self) -> None:
        """Forget what earlier maps recorded."""
        for path in glob.glob(os.path.join(self._stats_dir or "", "*.jsonl")):
            os.remove(path)
        self._seen = 0

    # ------------------------------------------------------------------ parsing rows

    def _skips(self, exc: ChunkerError) -> bool:
        if isinstance(exc, OversizeSpanError):
            return self.on_oversize == "skip" or self.on_error == "skip"
        return self.on_error == "skip" and isinstance(exc, RowFormatError)

    def _record(self, rows, windows, skipped, examples, unsupervised=0):
        os.makedirs(self._ensure_stats_dir(), exist_ok=True)
        rec = {"rows": rows, "windows": windows, "skipped": dict(skipped), "examples": examples[:20],
               "unsupervised": unsupervised}
        with open(os.path.join(self._stats_dir, f"{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")

    def _parse(self, example: dict, row) -> dict:
        if "input_ids" in example and example["input_ids"] is not None:
            return self._parse_tokens(example, row)
        if "messages" in example and example["messages"] is not None:
            return self._parse_messages(example, row)
        raise RowFormatError(
            f"unknown row format with columns {sorted(example)}: expected 'messages' (TRL/Unsloth conversational, "
            "with images inline or in an 'images' column) or 'input_ids' with 'labels' or an assistant mask",
            row=row,
        )

    def _parse_tokens(self, example, row) -> dict:
        ids = _as_ids(example["input_ids"], self.vocab_size, row)
        tensors = {k: _as_array(example[k]) for k in TENSOR_STREAMS if example.get(k) is not None}
        images = example.get("images")
        images = list(images) if images is not None else None
        labels = example.get("labels")
        mask_col = next((c for c in MASK_COLUMNS if example.get(c) is not None), None)
        return {"ids": ids, "tensors": tensors, "images": images, "videos": example.get("videos"),
                "labels": labels, "assistant_mask": example.get(mask_col) if mask_col else None}

    def _parse_messages(self, example, row) -> dict:
        if self.processor is None:
            raise ConfigError("conversational rows need a processor to tokenize them")
        messages = example["messages"]
        if not messages:
            raise EmptyConversationError("the conversation has no messages: drop the row", row=row)
        messages, images = _collect_images(messages, example.get("images"), row)
        if self._expander is not None:  # image_tokens_from="sizes": no pixels, the tokenizer alone
            text = self.processor.apply_chat_template(messages, tokenize=False)
            text, tensors = self._expander(text, images, example.get("_base_dir"), row=row)
            tok = self.processor.tokenizer
            enc = tok(text, add_special_tokens=not _starts_with_bos(self.processor, text))
            ids = np.asarray(enc["input_ids"], dtype=np.int64)
            return {"ids": ids, "tensors": tensors, "images": images, "videos": None, "labels": None,
                    "assistant_mask": None, "from_messages": True}
        images = [load_image(im, example.get("_base_dir"), row=row) for im in images]
        text = self.processor.apply_chat_template(messages, tokenize=False)
        kwargs = {**self.processor_kwargs, "text": [text], "return_tensors": "np",
                  "add_special_tokens": not _starts_with_bos(self.processor, text)}
        if images:
            kwargs["images"] = [images]
        try:
            enc = self.processor(**kwargs)
        except ChunkerError:
            raise
        except (ValueError, IndexError) as exc:
            raise ImageCountError(
                f"the processor refused the row ({exc}); the row has {len(images)} images: give one image per "
                "image placeholder in messages",
                row=row,
            ) from exc
        ids = np.asarray(enc["input_ids"])[0].astype(np.int64)
        tensors = {k: np.asarray(enc[k]) for k in TENSOR_STREAMS if k in enc}
        if images and self.spec.group_crops and "num_crops" not in tensors:
            from .families import crops_per_image

            crops = crops_per_image(self.processor, self.spec, images, self.processor_kwargs)
            if crops is not None:
                tensors["num_crops"] = np.asarray(crops, dtype=np.int64)
        if self.spec.extra.get("batch_axis_pixels"):
            tensors = {k: v[0] if k in ("pixel_values", "pixel_attention_mask") else v for k, v in tensors.items()}
        return {"ids": ids, "tensors": tensors, "images": images, "videos": None, "labels": None,
                "assistant_mask": None, "from_messages": True}

    # ------------------------------------------------------------------ windows

    def _windows(self, p: dict, row) -> list[dict]:
        spec = self.spec
        ids = p["ids"]
        if len(ids) == 0:
            raise EmptyConversationError("input_ids is empty: drop the row", row=row)
        spans = find_image_spans(ids, spec, row=row)
        tensors = p["tensors"]
        if spec.group_crops and "num_crops" in tensors:
            spans = group_spans(spans, 1 + np.asarray(tensors["num_crops"]).reshape(-1))
        images = p["images"]
        if spec.extra.get("run_counts") and len(spans):
            spans = self._split_runs(spans, tensors, images, row)
        n_images = None if images is None or (p.get("from_messages") and not images) else len(images)
        n_videos = None if p["videos"] is None else len(p["videos"])
        check_media_counts(spans, n_images, n_videos, bool(tensors), row)
        plan = slice_plan(spec, tensors, spans, row=row) if tensors else {}
        check_counts(spec, tensors, spans, row=row)
        mask = self._loss_mask(p, ids, spans, row)
        labels = labels_from_mask(ids, mask)
        prefix_len = self._prefix_len(ids, spans)
        bounds = turn_boundaries(ids, spec.instruction_ids, spec.response_ids)
        wins = plan_windows(
            len(ids), spans, max_length=self.max_length, overlap=self.overlap, prefix_len=prefix_len,
            boundaries=bounds, loss_mask=mask, min_fill=self.min_fill, row=row,
        )
        image_rank = np.cumsum(spans.kinds == IMAGE) - 1
        video_rank = np.cumsum(spans.kinds == VIDEO) - 1
        in_prefix = spans.ends <= prefix_len
        out = []
        for k, w in enumerate(wins):
            pre = prefix_len if k else 0
            chosen = (spans.starts >= w.context_start) & (spans.ends <= w.end)
            if k:
                chosen |= in_prefix
            img_items = image_rank[chosen & (spans.kinds == IMAGE)]
            vid_items = video_rank[chosen & (spans.kinds == VIDEO)]
            win_ids = np.concatenate([ids[:pre], ids[w.context_start:w.end]])
            rec = {
                "input_ids": win_ids,
                "labels": window_labels(labels, w.context_start, w.start, w.end, pre),
                "attention_mask": np.ones(len(win_ids), dtype=np.int64),
            }
            if spec.type_ids_column:
                rec[spec.type_ids_column] = type_ids(win_ids, spec)
            if images is not None or p.get("from_messages"):
                rec["images"] = [images[i] for i in img_items] if images else []
            if p["videos"] is not None:
                rec["videos"] = [p["videos"][i] for i in vid_items]
            if plan and self.keep_pixels and not p.get("from_messages"):
                rec.update(take_items(tensors, plan, img_items, vid_items))
            rec["source_index"] = -1 if row is None else int(row)
            rec["window_index"] = k
            rec["num_windows"] = len(wins)
            out.append(rec)
        return out

    def _split_runs(self, spans, tensors, images, row):
        from .families import run_item_counts

        if "image_sizes" in tensors:
            sizes = np.asarray(tensors["image_sizes"]).reshape(-1, 2).tolist()
        elif images:
            sizes = [load_image(im, row=row).size[::-1] for im in images]
        else:
            return spans
        pixel = tensors["pixel_values"].shape[-2:] if "pixel_values" in tensors else None
        counts = run_item_counts(self.processor, self.spec, sizes, pixel)
        return spans if counts is None else split_runs(spans, counts, row=row)

    def _loss_mask(self, p, ids, spans, row):
        if p["labels"] is not None:
            return mask_from_labels(ids, _as_array(p["labels"]), spans, row=row)
        if p["assistant_mask"] is not None:
            m = _as_array(p["assistant_mask"]).astype(bool)
            if m.shape != ids.shape:
                raise RowFormatError(
                    f"the assistant mask has {m.size} entries but input_ids has {len(ids)}: give one per token",
                    row=row,
                )
            return m & loss_mask(ids, spans, train_on="all")
        return loss_mask(
            ids, spans, train_on=self.train_on, instruction_ids=self.spec.instruction_ids,
            response_ids=self.spec.response_ids, row=row,
        )

    def _prefix_len(self, ids, spans) -> int:
        spec = self.spec
        n = 0
        if spec.prefix_media and len(spans):
            lead = spans.ends[spans.starts <= _first_text(ids, spans)]
            n = int(lead.max()) if len(lead) else 0
            if n < len(ids) and spec.bos_id is not None and ids[n] == spec.bos_id:
                n += 1
            return n
        if self.prefix == "none":
            return 0
        if spec.bos_id is not None and ids[0] == spec.bos_id:
            n = 1
        if self.prefix == "system" and spec.instruction_ids:
            from .labels import find_marker

            first = find_marker(ids, spec.instruction_ids)
            if len(first) and first[0] > n and not (len(spans) and spans.starts.min() < first[0]):
                n = int(first[0])
        return n if n < self.max_length // 2 else (1 if n and ids[0] == spec.bos_id else 0)


def check_media_counts(spans, n_images, n_videos, has_tensors: bool, row) -> None:
    """Raise `ImageCountError` when a row's images or videos (None: no such column) disagree with its spans."""
    n_image = int((spans.kinds == IMAGE).sum())
    n_video = len(spans) - n_image
    if n_images is not None and n_images != n_image:
        raise ImageCountError(
            f"the row has {n_images} images but its text holds {n_image} image spans: give exactly one "
            "image per image placeholder, in order",
            row=row,
        )
    if n_videos is not None and n_videos != n_video:
        raise ImageCountError(
            f"the row has {n_videos} videos but its text holds {n_video} video spans: give exactly one "
            "video per video placeholder, in order",
            row=row,
        )
    if n_images is None and n_image and not has_tensors:
        raise ImageCountError(
            f"the text holds {n_image} image spans but the row has no 'images' column and no pixel tensors: "
            "add the images (in order) so each window can carry its own",
            row=row,
        )


def _remove_stats_dir(path: str, owner: int) -> None:
    """Remove a splitter's stats folder, only in the process that made it (workers share it)."""
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def type_ids(ids: np.ndarray, spec) -> np.ndarray:
    """The family's type-id column: 1 on image placeholders, 2 on video placeholders, else 0."""
    out = (ids == spec.image_token_id).astype(np.int64)
    if spec.video_token_id is not None:
        out[ids == spec.video_token_id] = 2
    return out


def _first_text(ids, spans) -> int:
    """Position of the first token outside the leading run of back-to-back spans."""
    pos = 0
    for s, e in zip(spans.starts.tolist(), spans.ends.tolist()):
        if s != pos:
            break
        pos = e
    return pos


def _starts_with_bos(processor, text: str) -> bool:
    """Whether the rendered template already holds BOS (then the tokenizer must not add another)."""
    bos = getattr(getattr(processor, "tokenizer", processor), "bos_token", None)
    return bool(bos) and text.startswith(bos)


def _marker(processor, part):
    if part is None:
        return None
    if isinstance(part, str):
        if processor is None:
            raise ConfigError("a turn marker given as text needs a processor to tokenize it; pass token ids instead")
        tok = getattr(processor, "tokenizer", processor)
        return tok(part, add_special_tokens=False)["input_ids"]
    return list(part)


def _vocab_size(processor):
    if processor is None:
        return None
    tok = getattr(processor, "tokenizer", processor)
    try:
        return len(tok)
    except TypeError:
        return None


def _as_array(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _as_ids(value, vocab_size, row) -> np.ndarray:
    arr = _as_array(value)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise RowFormatError(f"input_ids must be a flat list of token ids, got shape {arr.shape}", row=row)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        else:
            raise InvalidTokenError(
                f"input_ids holds non-integer values of dtype {arr.dtype} (e.g. {arr.ravel()[:3].tolist()}): "
                "token ids must be integers; tokenize the text first",
                row=row,
            )
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or (vocab_size is not None and arr.max() >= vocab_size)):
        bad = int(arr.min()) if arr.min() < 0 else int(arr.max())
        raise InvalidTokenError(
            f"token id {bad} is outside the vocabulary [0, {vocab_size}): the row was tokenized by another "
            "tokenizer; tokenize with this processor",
            row=row,
        )
    return arr


def _collect_images(messages, column, row):
    """Messages with image items reduced to {"type": "image"}, and the images in order (inline or column)."""
    inline, clean, placeholders = [], [], 0
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            items = []
            for item in content:
                if isinstance(item, dict) and item.get("type") == "image":
                    placeholders += 1
                    value = next((item.get(k) for k in ("image", "url", "path") if item.get(k) is not None), None)
                    if value is not None:
                        inline.append(value)
                    items.append({"type": "image"})
                elif isinstance(item, dict) and item.get("type") == "text":
                    items.append({"type": "text", "text": item.get("text") or ""})
                else:
                    items.append(item)
            msg = {**msg, "content": items}
        clean.append({k: v for k, v in msg.items() if v is not None})
    images = inline if inline else list(column or [])
    if inline and column:
        raise ImageCountError(
            "images are given both inline in messages and in the 'images' column: use one of the two", row=row
        )
    if len(images) != placeholders:
        raise ImageCountError(
            f"the messages hold {placeholders} image placeholders but {len(images)} images were given: give "
            "exactly one image per {'type': 'image'} item, in order",
            row=row,
        )
    return clean, images
