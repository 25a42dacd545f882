"""WindowSplitter: one row in, one or more window rows out, for `Dataset.map(batched=True)` and friends.

A row goes through three public stages, each usable on its own:

    parse(example, row)   -> Parsed     ids, label source, media (conversations: tokenized by the processor,
                                        answers located by rendering the model's chat template)
    analyse(parsed, row)  -> RowPlan    spans -> items -> loss mask -> prefix -> windows   (numpy core)
    assemble(plan, row)   -> [window rows]

The splitter holds configuration only: the same settings give the same `datasets` fingerprint, and what a
map did travels as data. A row skipped under `on_error="skip"` leaves one ledger row (`num_windows == 0`,
its `skip_reason`); `SplitStats.from_windows` counts rows, windows and skips from a map's output, and
`drop_skipped` removes the ledger rows before training (the collator drops them too, counted).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .errors import (
    ChunkerError,
    ConfigError,
    EmptyConversationError,
    ImageCountError,
    InvalidTokenError,
    NoSupervisionError,
    OversizeSpanError,
    PrefixError,
    RowFormatError,
)
from .formats import check_format, is_conversational, normalize_row
from .labels import (
    IGNORE,
    find_marker,
    find_markers,
    labels_from_mask,
    loss_mask,
    mask_edges,
    mask_from_labels,
    supervision_from_labels,
    window_labels,
)
from .media import TENSOR_STREAMS, check_counts, slice_plan, take_items
from .plan import check_config, plan_batch, plan_windows
from .sources import BASE_DIR_COLUMN
from .spans import AUDIO, IMAGE, VIDEO, Spans, batch_spans, find_image_spans, media_mask

PREFIXES = ("bos", "system", "none")
POLICIES = ("raise", "skip")
MASK_COLUMNS = ("assistant_masks", "assistant_mask")
INDEX_COLUMNS = ("source_index", "id")


def _one_torch_thread_in_forked_workers() -> None:
    """Run in every child forked after chunker was imported: one torch thread when torch is loaded.

    A process forked from one that ran torch's CPU kernels (a torchvision image processor in the grammar probe, for
    one) inherits torch's OpenMP pool without its threads, and its first parallel kernel waits for them forever:
    `Dataset.map(splitter, num_proc=2)` over conversations hung with torch 2.14.1 + torchvision (libgomp). Forked
    workers use one torch thread, as torch's own DataLoader workers do.
    """
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_one_torch_thread_in_forked_workers)


@dataclass
class SplitStats:
    """What a map with a splitter did, counted from its output: rows in, windows out, rows skipped by reason.

    Attributes:
        rows: input rows (rows with windows plus skipped rows).
        windows: window rows (ledger rows not included).
        unsupervised_windows: windows left out by `drop_unsupervised=True`.
        skipped: rows skipped under on_error/on_oversize="skip", by error class.
        examples: the first skipped rows, each {"row": source_index, "reason": message}.
    """

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

    @classmethod
    def from_windows(cls, windows, *, max_examples: int = 20) -> SplitStats:
        """Count what a split produced, from its output alone (right with num_proc, on cache hits, on Ray).

        Args:
            windows: the map's output: a `datasets.Dataset`, a dict of columns, or a list of window rows.

        Returns:
            SplitStats.

        Example:
            >>> SplitStats.from_windows({"source_index": [0, 0, 1], "num_windows": [2, 2, 0],
            ...                          "skip_reason": [None, None, "NoSupervisionError: no answer"],
            ...                          "dropped_windows": [1, 1, 0]}).as_dict()["skipped"]
            {'NoSupervisionError': 1}
        """
        cols = _columns(windows, ("source_index", "num_windows", "skip_reason", "dropped_windows", "window_index"))
        n_win = np.asarray(cols["num_windows"], dtype=np.int64)
        ledger = n_win == 0
        src = np.asarray(cols["source_index"], dtype=np.int64)
        stats = cls(rows=len(np.unique(src)) if len(src) else 0, windows=int((~ledger).sum()))
        if cols.get("dropped_windows") is not None and cols.get("window_index") is not None:
            first = np.asarray(cols["window_index"]) == 0
            stats.unsupervised_windows = int(np.asarray(cols["dropped_windows"])[first & ~ledger].sum())
        reasons = [r for r, skip in zip(cols.get("skip_reason") or [], ledger.tolist()) if skip]
        for s, reason in zip(src[ledger].tolist(), reasons):
            kind = (reason or "").split(":", 1)[0]
            stats.skipped[kind] += 1
            if len(stats.examples) < max_examples:
                stats.examples.append({"row": int(s), "reason": (reason or "").split(": ", 1)[-1]})
        return stats


def drop_skipped(windows):
    """The window rows of a split without its ledger rows (rows skipped under on_error="skip").

    Example:
        >>> ds = datasets.Dataset.from_dict({"input_ids": [[1], []], "num_windows": [1, 0]})   # doctest: +SKIP
        >>> len(drop_skipped(ds))                                                               # doctest: +SKIP
        1
    """
    if isinstance(windows, dict):
        keep = [i for i, n in enumerate(windows["num_windows"]) if n]
        return {k: [v[i] for i in keep] for k, v in windows.items()}
    if isinstance(windows, list):
        return [w for w in windows if w.get("num_windows")]
    return windows.filter(lambda n: np.asarray(n) > 0, input_columns="num_windows", batched=True)


@dataclass
class Parsed:
    """One row read and tokenized: what `analyse` needs.

    Attributes:
        ids: int64 token ids of the whole conversation.
        labels: the row's own labels (unshifted, -100 where no loss) or None.
        mask: a supervision mask from an assistant-mask column or from the chat template, or None.
        tensors: media tensors (numpy) of the row.
        images, videos: the row's media items (None: the row has no such column).
        system_end: token position where the system turn ends (conversations), or None.
        from_messages: the row was a conversation.
        spans: the row's spans when a caller found them already (the Arrow path finds a whole batch's at once
            with the same `find_image_spans`), else None.
        audios: the row's audio items (waveforms as given), None: the row has no such column.
    """

    ids: np.ndarray
    labels: np.ndarray | None = None
    mask: np.ndarray | None = None
    tensors: dict = field(default_factory=dict)
    images: list | None = None
    videos: list | None = None
    system_end: int | None = None
    from_messages: bool = False
    spans: Spans | None = None
    audios: list | None = None


@dataclass
class RowPlan:
    """One row analysed: its windows and what each carries.

    Attributes:
        ids, labels: the whole conversation's ids and labels (loss mask applied).
        prefix_len: tokens repeated before every window after the first.
        geometry: (k, 3) int64 (context_start, start, end) per window.
        image_items, video_items: per window, the indices of the media items it carries.
        slices: per tensor key, how to take each item's rows (see `media.slice_plan`).
        parsed: the parsed row (its media).
        audio_items: per window, the indices of the audio items it carries (None: the row has no audio spans).
    """

    ids: np.ndarray
    labels: np.ndarray
    prefix_len: int
    geometry: np.ndarray
    image_items: list
    video_items: list
    slices: dict
    parsed: Parsed
    audio_items: list | None = None


@dataclass
class TokenBatch:
    """Pre-tokenized rows as flat arrays with row offsets: the columnar input of `WindowSplitter.analyse_batch`.

    Attributes:
        ids: the flat token ids of all rows; row r is `ids[offsets[r]:offsets[r + 1]]`.
        offsets: int64 row offsets, from 0.
        labels, mask: (flat values, row offsets) of the labels / assistant-mask column, or None.
        n_images, n_videos: items per row in the images / videos column, or None (no such column).
        checked: the ids are known to be token ids of the vocabulary (checked once for the batch).
    """

    ids: np.ndarray
    offsets: np.ndarray
    labels: tuple | None = None
    mask: tuple | None = None
    n_images: np.ndarray | None = None
    n_videos: np.ndarray | None = None
    checked: bool = False

    def subset(self, rows: np.ndarray) -> TokenBatch:
        """The batch of the given rows only (their tokens copied into new flat arrays)."""
        if len(rows) == len(self.offsets) - 1:
            return self

        def pick(flat, offsets):
            lo, hi = offsets[rows], offsets[rows + 1]
            return flat[_ranges(lo, hi - lo)], np.r_[0, np.cumsum(hi - lo)].astype(np.int64)

        counts = lambda n: None if n is None else np.asarray(n)[rows]
        ids, offsets = pick(self.ids, self.offsets)
        return TokenBatch(ids, offsets, None if self.labels is None else pick(*self.labels),
                          None if self.mask is None else pick(*self.mask), counts(self.n_images),
                          counts(self.n_videos), self.checked)

    def row(self, i: int, row, vocab_size=None, spans: Spans | None = None) -> Parsed:
        """Row i as `Parsed` (zero-copy views), its ids checked unless the batch was.

        Raises:
            InvalidTokenError, RowFormatError: bad ids, an assistant mask of another length.
        """
        ids = self.ids[int(self.offsets[i]):int(self.offsets[i + 1])]
        if not self.checked:
            ids = _as_ids(ids, vocab_size, row)
        labels, mask = _view(self.labels, i), _view(self.mask, i)
        if mask is not None and len(mask) != len(ids):
            raise RowFormatError(
                f"the assistant mask has {len(mask)} entries but input_ids has {len(ids)}: give one per token",
                row=row,
            )
        return Parsed(ids, labels, None if mask is None else mask.astype(bool, copy=False),
                      images=None if self.n_images is None else [None] * int(self.n_images[i]),
                      videos=None if self.n_videos is None else [None] * int(self.n_videos[i]), spans=spans)


class BatchWindows(NamedTuple):
    """The windows of a pre-tokenized batch as arrays: what `WindowSplitter.analyse_columns` gives the Arrow path.

    Attributes:
        ids, labels: the batch's flat ids and labels (loss mask applied).
        offsets: row offsets into them.
        row: (W,) the batch row of each window, in row order then window order.
        geometry: (W, 3) flat (context_start, start, end) of each window.
        head: (W,) prefix tokens repeated before each window (0 for a row's first).
        items: the image items of every window, window after window, as indices into the batch's images.
        item_counts: (W,) how many of `items` each window holds.
        planned: batch row -> its `RowPlan` (or the error it is skipped for) for the rows `analyse_batch` did.
    """

    ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    row: np.ndarray
    geometry: np.ndarray
    head: np.ndarray
    items: np.ndarray
    item_counts: np.ndarray
    planned: dict

    @classmethod
    def empty(cls, batch: TokenBatch, planned: dict) -> BatchWindows:
        none = np.zeros(0, dtype=np.int64)
        return cls(batch.ids, batch.ids, batch.offsets, none, none.reshape(0, 3), none, none, none, planned)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of `arange(s, s + n)` for every (s, n), in one pass.

    Example:
        >>> _ranges(np.array([5, 0, 2]), np.array([2, 0, 3])).tolist()
        [5, 6, 2, 3, 4]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(np.asarray(starts, dtype=np.int64) - (ends - lengths), lengths) + np.arange(total)


@dataclass
class _Supervision:
    """What `analyse_batch` found over a batch's flat arrays: loss mask and labels (flat), which rows train,
    the flat cut points and where each row's begin in them."""

    mask: np.ndarray
    labels: np.ndarray
    trains: np.ndarray
    cuts: np.ndarray
    cut_at: np.ndarray


_NONE = np.zeros(0, dtype=np.int64)
_NONE.flags.writeable = False


class WindowSplitter:
    """Split long multimodal rows into windows of at most `max_length` tokens that never cut a media span.

    Use it as a batched map function; it accepts conversational rows (TRL, Unsloth, LLaMA-Factory / ms-swift,
    LLaVA, ShareGPT or OpenAI format, recognized per row; see `chunker.formats`) and pre-tokenized rows
    (`input_ids` + `labels` or an assistant mask + `images` or pixel tensors).

    Args:
        processor: the model's transformers processor (tokenizes conversations, renders its chat template,
            gives the family grammar). May be None for pre-tokenized rows when `spec` is given.
        max_length: the most tokens a window may hold, prefix and context included.
        overlap: tokens of the previous window repeated as context (no loss) in the next.
        spec: an `ImageSpanSpec`; detected from `processor` when None.
        train_on: "assistant" (default): conversations train on what the chat template renders for each
            assistant message (located by rendering, see `chunker.template`); "all": every text token.
            Rows with their own labels or assistant mask keep them.
        instruction_part, response_part: turn-marker strings (Unsloth's words) that decide the loss mask
            instead of the chat template: what follows a response marker up to the next instruction marker.
        prefix: repeated before every window after the first: "bos" (default), "system" (BOS and the
            system turn) or "none". Families whose images live in a prefix (PaliGemma) always repeat it.
        on_oversize: "raise" (default) an `OversizeSpanError`, or "skip" the row and count it.
        on_error: "raise" (default) any row error, or "skip" the row: it leaves a ledger row (`num_windows`
            0, `skip_reason`) that `SplitStats.from_windows` counts and `drop_skipped` removes.
        keep_pixels: for pre-tokenized rows with pixel tensors, slice and keep them in the window rows.
        min_fill: fraction of a window's room it fills before a turn edge may end it.
        processor_kwargs: extra keywords for the processor call (e.g. {"do_pan_and_scan": True});
            give the collator the same ones so pixels match the token counts.
        image_tokens_from: "pixels" (default) calls the processor on the decoded images; "sizes" reads only
            each image's size and expands the placeholders as the processor would (its own
            `replace_image_token`): the same input_ids and windows, without decoding pixels. Window rows then
            carry each image as the row gave it (path, bytes, dict or PIL image).
        drop_unsupervised: leave out windows that train no token (e.g. a window holding only a user
            prompt and its images); counted in each kept window's `dropped_windows` column.
        template_kwargs: extra keywords for `apply_chat_template` (e.g. {"enable_thinking": False}).
        format: the conversational rows' format: "auto" (default) recognizes each row; "trl", "unsloth",
            "llama_factory" (also ms-swift), "llava", "sharegpt" or "openai" forces one (see `chunker.formats`).
        base_dir: folder that relative media paths are read from (e.g. LLaVA's image folder); when None, a
            row's `_base_dir` column (which `chunker.sources.load_rows` adds: the data file's folder), else the
            working directory. The window rows carry the resolved (absolute) sources.

    Raises:
        ConfigError: settings that can never make a window, unknown policies or format; image_tokens_from="sizes"
            for a family whose counts cannot be computed exactly from sizes (e.g. PaliGemma).
        UnsupportedProcessorError: no family matches the processor and no spec was passed.
        GrammarError: the family grammar does not recover the processor's own output on a probe (checked
            once per processor when the splitter is built: this is how a changed transformers is noticed).

    Example:
        >>> splitter = WindowSplitter(processor, max_length=2048, overlap=128)       # doctest: +SKIP
        >>> windows = ds.map(splitter, batched=True, with_indices=True,               # doctest: +SKIP
        ...                  remove_columns=ds.column_names)
        >>> SplitStats.from_windows(windows).skipped                                  # doctest: +SKIP
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
        template_kwargs: dict | None = None,
        format: str = "auto",
        base_dir=None,
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
        if image_tokens_from not in ("pixels", "sizes"):
            raise ConfigError(f"image_tokens_from={image_tokens_from!r} must be one of ('pixels', 'sizes')")
        if processor is None and spec is None:
            raise ConfigError("pass a processor, or a spec (ImageSpanSpec) for pre-tokenized rows")
        self.adapter = None
        if processor is None:
            from .families import adapter_for_spec

            self.adapter = adapter_for_spec(spec)
        else:
            from .families import adapter_for
            from .families.probe import check_grammar

            if spec is None:
                self.adapter = adapter_for(processor)
                check_grammar(self.adapter, processor_kwargs)
                spec = self.adapter.spec
            else:
                self.adapter = _adapter_for_spec(processor, spec)
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
        self.image_tokens_from = image_tokens_from
        self.drop_unsupervised = bool(drop_unsupervised)
        self.template_kwargs = dict(template_kwargs or {})
        self.format = check_format(format)
        self.base_dir = None if base_dir is None else os.fspath(base_dir)
        self.vocab_size = _vocab_size(processor)
        self._encoder = None
        if image_tokens_from == "sizes":
            self._conversation_encoder()  # refuse a family without a sizes recipe now, not at the first row

    def __getstate__(self):
        # configuration only: the encoder is rebuilt from it on first use, so calling the splitter changes
        # neither its pickle nor its `datasets` fingerprint
        return {k: v for k, v in self.__dict__.items() if k != "_encoder"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._encoder = None

    # ------------------------------------------------------------------ map function

    def __call__(self, batch: dict, indices=None) -> dict:
        """Split a batch (dict of columns) into window rows (dict of columns).

        Args:
            batch: a dict of columns, or an Arrow batch (`pyarrow.Table` or the lazy batch `Dataset.map`
                passes); pre-tokenized Arrow batches take the Arrow path and come back as a `pyarrow.Table`.
            indices: the rows' positions in their dataset (`with_indices=True`); become `source_index`. When
                None, a `source_index` or `id` integer column is used.

        Raises:
            ConfigError: no indices and no index column (under `num_proc` the splitter cannot know where a
                batch lies in the dataset): map with `with_indices=True`.
        """
        from .fast import as_columns, split_arrow_batch

        fast = split_arrow_batch(self, batch, indices)
        if fast is not None:
            return fast
        batch = as_columns(batch)
        n = len(next(iter(batch.values()))) if batch else 0
        indices = self.row_indices(batch, indices, n)
        media = [k for k in ("images", "videos", "audios")
                 if k in batch or (k == "images" and is_conversational(batch))]
        rows = []
        for i, index in enumerate(indices):
            row = {k: v[i] for k, v in batch.items()}
            try:
                rows += self.split_example(row, int(index))
            except ChunkerError as exc:
                if not self.skips(exc):
                    raise
                rows.append(self.ledger_row(int(index), exc))
                if "images" in media and "images" not in batch:
                    # the row's images as it gave them: a map whose first batch is all skipped rows then types
                    # the column as the windows of later batches do (an all-null column could not take them)
                    rows[-1]["images"] = self._given_images(row, int(index))
        keys = list(self.ledger_row(0, ChunkerError()))
        at = keys.index("source_index")
        return _as_columns(rows, keys[:at] + media + keys[at:])

    def _given_images(self, example: dict, row) -> list | None:
        """The image sources a conversational row names (normalized, not decoded), or None when it cannot say."""
        try:
            conversation = normalize_row(example, format=self.format,
                                         base_dir=self.base_dir or example.get(BASE_DIR_COLUMN), row_index=row)
        except ChunkerError:
            return None
        images = conversation.get("images")
        return None if images is None else list(images)

    def row_indices(self, batch, indices, n: int) -> np.ndarray:
        """The rows' `source_index` values: `indices`, else an index column of the batch; else refuse."""
        if indices is not None:
            return np.asarray(list(indices) if isinstance(indices, range) else indices, dtype=np.int64).reshape(-1)
        for name in INDEX_COLUMNS:
            col = batch.get(name) if hasattr(batch, "get") else None
            if col is not None:
                try:
                    return np.asarray(col, dtype=np.int64).reshape(-1)
                except (TypeError, ValueError):
                    continue
        raise ConfigError(
            "the splitter was called without row indices and the batch has no integer 'source_index' or 'id' "
            "column, so the windows could not say which row they came from (under num_proc each process sees "
            "only its shard): map with ds.map(splitter, batched=True, with_indices=True)"
        )

    def split_example(self, example: dict, index=None) -> list[dict]:
        """Split one example into its window rows (parse, analyse, assemble).

        Args:
            example: a conversational or pre-tokenized row (see the class docstring).
            index: the row's position in its dataset; becomes `source_index` (-1 when None); errors name it.

        Returns:
            list of window rows (dicts): input_ids, labels, attention_mask, the type-id column when the
            family has one, images (the window's subset) and sliced pixel tensors when the row had them,
            source_index, window_index, num_windows, skip_reason (None), and dropped_windows when
            `drop_unsupervised`.

        Raises:
            RowFormatError and its subclasses: the row cannot be split; the message names it and the fix.
        """
        row = index if index is not None else example.get("source_index", example.get("id"))
        return self.assemble(self.analyse(self.parse(example, row), row), row)

    def skips(self, exc: ChunkerError) -> bool:
        """Whether the policies skip a row that raised `exc` (else it propagates)."""
        if isinstance(exc, OversizeSpanError):
            return self.on_oversize == "skip" or self.on_error == "skip"
        return self.on_error == "skip" and isinstance(exc, RowFormatError)

    def ledger_row(self, index: int, exc: ChunkerError) -> dict:
        """The row a skipped input row leaves in the output: no tokens, `num_windows` 0, the reason."""
        rec = {"input_ids": np.zeros(0, np.int64), "labels": np.zeros(0, np.int64),
               "attention_mask": np.zeros(0, np.int64)}
        if self.spec.type_ids_column:
            rec[self.spec.type_ids_column] = np.zeros(0, np.int64)
        rec.update(source_index=int(index), window_index=-1, num_windows=0,
                   skip_reason=f"{type(exc).__name__}: {exc}")
        if self.drop_unsupervised:
            rec["dropped_windows"] = 0
        return rec

    # ------------------------------------------------------------------ stage 1: parse

    def parse(self, example: dict, row) -> Parsed:
        """Read a row: tokenize a conversation (chat template + processor), or take pre-tokenized columns.

        Raises:
            RowFormatError and subclasses (TemplateError, ProcessorError, NoSupervisionError, ...).
        """
        if not isinstance(example, dict):
            raise RowFormatError(f"a row must be a dict of columns, got {type(example).__name__}", row=row)
        if example.get("input_ids") is not None:
            return self._parse_tokens(example, row)
        if is_conversational(example):
            return self._parse_messages(example, row)
        raise RowFormatError(
            f"unknown row format with columns {sorted(example)}: expected a conversation ('messages' in TRL, Unsloth, "
            "LLaMA-Factory or OpenAI format, or 'conversations' in LLaVA or ShareGPT format) or 'input_ids' with "
            "'labels' or an assistant mask",
            row=row,
        )

    def _parse_tokens(self, example, row) -> Parsed:
        ids = _as_ids(example["input_ids"], self.vocab_size, row)
        tensors = {k: _as_array(example[k]) for k in TENSOR_STREAMS if example.get(k) is not None}
        images = example.get("images")
        labels = example.get("labels")
        mask_col = next((c for c in MASK_COLUMNS if example.get(c) is not None), None)
        mask = None
        if mask_col:
            mask = _as_array(example[mask_col]).astype(bool)
            if mask.shape != ids.shape:
                raise RowFormatError(
                    f"the assistant mask has {mask.size} entries but input_ids has {len(ids)}: give one per token",
                    row=row,
                )
        audios = example.get("audios")
        return Parsed(ids, None if labels is None else _as_array(labels), mask, tensors,
                      None if images is None else list(images), example.get("videos"),
                      audios=None if audios is None else list(audios))

    def _parse_messages(self, example, row) -> Parsed:
        base_dir = self.base_dir or example.get(BASE_DIR_COLUMN)
        conversation = normalize_row(example, format=self.format, base_dir=base_dir, row_index=row)
        enc = self._conversation_encoder()(conversation["messages"], conversation["images"], row=row,
                                           base_dir=base_dir, audios_column=conversation.get("audios"))
        return Parsed(enc.ids, None, enc.mask, enc.tensors, enc.images, None, enc.system_end, True, audios=enc.audios)

    def _conversation_encoder(self):
        if self._encoder is None:
            if self.processor is None:
                raise ConfigError("conversational rows need a processor to tokenize them")
            from .encode import ConversationEncoder
            from .families import size_expander

            expander = None
            if self.image_tokens_from == "sizes":
                expander = size_expander(self.processor, self.adapter, self.processor_kwargs)
            markers = bool(self.spec.response_ids)
            self._encoder = ConversationEncoder(
                self.processor, self.adapter, train_on="all" if markers else self.train_on,
                tensor_keys=tuple(TENSOR_STREAMS), processor_kwargs=self.processor_kwargs, expander=expander,
                template_kwargs=self.template_kwargs,
            )
        return self._encoder

    # ------------------------------------------------------------------ stage 2: analyse

    def analyse(self, p: Parsed, row) -> RowPlan:
        """Spans, media items, loss mask, prefix and windows of one parsed row (the numpy core).

        Raises:
            SpanError, ImageCountError, ImageTokenCountError, PixelMismatchError: media that disagree.
            NoSupervisionError: the row would train no token.
            OversizeSpanError, PrefixError: no window can hold a span or the prefix.
        """
        spans, slices = self.media(p, row)
        mask, labels = self.supervision(p, spans, row)
        return self.plan(p, spans, slices, mask, labels, cut_points(p.ids, mask, self.spec), row)

    def analyse_batch(self, batch: TokenBatch, rows, *, spans: Spans | None = None) -> list:
        """`analyse` for every row of a pre-tokenized batch, with the token-wide work done once for the batch.

        The spans of all rows come from one `find_image_spans` call over the flat ids, and the loss mask, the
        labels and the cut points from one call each of the functions `analyse` uses, over the flat arrays;
        only the media checks and the plan run per row. A row the batch pass cannot vouch for (empty, training
        nothing, or any error in the batch's pass) goes through `analyse` alone, which raises its own error.

        Args:
            spans: the batch's flat spans when the caller found them already (`analyse_columns`), else None.

        Returns:
            per row, its `RowPlan`, or the `ChunkerError` it is skipped for under the policies.

        Raises:
            ChunkerError: a row's error that the policies do not skip.
        """
        n = len(batch.offsets) - 1
        found = batch_spans(self.spec, batch.ids, batch.offsets, spans=spans) if batch.checked else None
        parsed, media, failed = [None] * n, [None] * n, [None] * n
        for i in range(n):
            row = int(rows[i])
            try:
                parsed[i] = batch.row(i, row, self.vocab_size, None if found is None else found(i))
                if found is not None:
                    media[i] = self.media(parsed[i], row)
            except ChunkerError as exc:
                failed[i] = exc  # raised (or skipped) in row order below, as the row path would
        whole = self._batch_supervision(batch, media) if found is not None else None
        out = [None] * n
        for i in range(n):
            row = int(rows[i])
            try:
                if failed[i] is not None:
                    raise failed[i]
                if whole is None or not whole.trains[i]:
                    out[i] = self.analyse(parsed[i], row)
                    continue
                a, b = int(batch.offsets[i]), int(batch.offsets[i + 1])
                lo, hi = int(whole.cut_at[i]), int(whole.cut_at[i + 1])
                out[i] = self.plan(parsed[i], *media[i], whole.mask[a:b], whole.labels[a:b],
                                   whole.cuts[lo:hi] - a, row)
            except ChunkerError as exc:
                out[i] = self._skipped(exc)
        return out

    def _skipped(self, exc: ChunkerError) -> ChunkerError:
        if not self.skips(exc):
            raise exc
        return exc

    def analyse_columns(self, batch: TokenBatch, rows) -> BatchWindows:
        """`analyse_batch` as arrays: the windows of the rows the batch pass vouches for are planned all at once
        (`plan_batch`), with their media items, and only the other rows go through `analyse_batch`.

        The batch pass vouches for a row when its checks hold for the whole batch at once: ids of the vocabulary,
        image spans only (no videos or audio, items one per span, the family's count per image), as many images
        as spans, a supervised token, prefix "bos" or "none", and a plan `plan_batch` can walk. Any other row
        (an error to raise or skip, a prefix read from the system turn) takes `analyse_batch`, so errors and
        skips are its own, raised in row order.

        Returns:
            the batch's windows and, per row left to `analyse_batch`, its `RowPlan` or the error it was skipped for.

        Raises:
            ChunkerError: a row's error that the policies do not skip.
        """
        n = len(batch.offsets) - 1
        rows = np.asarray(rows)
        spans = None
        if batch.checked:
            try:
                spans = find_image_spans(batch.ids, self.spec)  # found once, for the batch pass and the row pass
            except ChunkerError:
                pass  # each row finds its own error
        vouched = self._vouched(batch, spans)
        if vouched is None:
            ok, windows = np.zeros(n, dtype=bool), None
        else:
            ok, windows = vouched
        rest = np.flatnonzero(~ok)
        whole = len(rest) == n  # the spans found stand for the rows left only when they are all of them
        planned = dict(zip(rest.tolist(), self.analyse_batch(batch.subset(rest), rows[rest],
                                                             spans=spans if whole else None))) if len(rest) else {}
        return windows._replace(planned=planned) if windows is not None else BatchWindows.empty(batch, planned)

    def _vouched(self, batch: TokenBatch, spans: Spans | None):
        """(rows the batch pass vouches for, their `BatchWindows`), or None when it vouches for none. `spans`: the
        batch's flat spans, None when they could not be found over the whole batch."""
        spec, adapter = self.spec, self.adapter
        if spans is None or spec.prefix_media or self.prefix == "system" or spec.audio_token_id is not None:
            return None
        offsets = batch.offsets
        n = len(offsets) - 1
        try:
            if adapter is not None and adapter.items(spans, {}, None) is not spans:
                return None  # the family groups or cuts spans into items: row by row
        except ChunkerError:
            return None
        if len(spans) and (spans.kinds != IMAGE).any():
            return None
        lengths = np.diff(offsets)
        span_row = np.searchsorted(offsets[:-1], spans.starts, side="right") - 1
        if len(spans) and (spans.ends > offsets[span_row + 1]).any():
            return None  # a span would join two rows: each row finds its own error
        n_span = np.bincount(span_row, minlength=n)
        ok = lengths > 0
        ok &= (batch.n_images == n_span) if batch.n_images is not None else n_span == 0
        if batch.n_videos is not None:
            ok &= batch.n_videos == 0
        per = spec.tokens_per_image
        if per and len(spans):
            bad = (spans.counts % per != 0) if spec.group_crops else spans.counts != per
            ok[span_row[bad]] = False
        whole = self._batch_supervision(batch, spans) if ok.any() else None
        if whole is None:
            return None
        ok &= whole.trains
        prefix = np.zeros(n, dtype=np.int64)
        if self.prefix == "bos" and spec.bos_id is not None and ok.any():
            at = np.flatnonzero(lengths > 0)
            prefix[at] = batch.ids[offsets[at]] == spec.bos_id
        row, context, start, end, done = plan_batch(
            offsets, prefix, spans.starts, spans.ends, whole.cuts, whole.mask, max_length=self.max_length,
            overlap=self.overlap, min_fill=self.min_fill,
        )
        ok &= done
        keep = ok[row]
        row, context, start, end = row[keep], context[keep], start[keep], end[keep]
        first = np.r_[True, row[1:] != row[:-1]] if len(row) else np.zeros(0, dtype=bool)
        head = np.where(first, 0, prefix[row])
        # per window, its items (`window_items`): spans inside it and, after a row's first, those in the prefix
        first_span = np.searchsorted(spans.starts, offsets[:-1], side="left")
        a = np.searchsorted(spans.starts, context, side="left") - first_span[row]
        b = np.maximum(np.searchsorted(spans.ends, end, side="right") - first_span[row], a)
        held = np.searchsorted(spans.ends, offsets[:-1] + prefix, side="right") - first_span
        pre = np.where(~first & (a > 0), np.minimum(held[row], a), 0)
        item_base = np.r_[0, np.cumsum(batch.n_images)][row] if batch.n_images is not None else np.zeros(len(row), np.int64)
        items = _ranges(np.stack([item_base, item_base + a], 1).ravel(), np.stack([pre, b - a], 1).ravel())
        windows = BatchWindows(batch.ids, whole.labels, offsets, row, np.stack([context, start, end], 1), head,
                               items, pre + b - a, {})
        return ok, windows

    def _batch_supervision(self, batch: TokenBatch, spans) -> _Supervision | None:
        """The loss mask, labels and cut points of a whole batch from its flat arrays, or None when the batch
        pass cannot stand for its rows (each row then goes through `analyse`). `spans`: the batch's flat spans, or
        per row its `media` result (None for a row that failed)."""
        spec = self.spec
        labels = batch.labels[0] if batch.labels is not None else None
        mask = batch.mask[0] if batch.mask is not None else None
        if labels is None and mask is None and spec.response_ids and self.train_on == "assistant":
            return None  # turn markers are read along each row: a flat pass would carry a turn into the next row
        for col in (batch.labels, batch.mask):
            if col is not None and not np.array_equal(col[1], batch.offsets):
                return None
        starts = batch.offsets[:-1]
        if not isinstance(spans, Spans):  # per row (spans, slices) or None: the flat spans of the rows found
            found = [(m[0].starts + a, m[0].ends + a, m[0].kinds, m[0].counts) for m, a in zip(spans, starts.tolist())
                     if m is not None]
            spans = Spans(*(np.concatenate(part) for part in zip(*found))) if found else Spans.empty()
        whole = Parsed(batch.ids, labels, None if mask is None else mask.astype(bool))
        try:
            loss, labels = self.supervision(whole, spans, None)
        except ChunkerError:
            return None
        lengths = np.diff(batch.offsets)
        rest = loss.copy()
        rest[starts[lengths > 0]] = False  # a row trains from its second token on (labels are shifted)
        trains = np.zeros(len(lengths), dtype=bool)
        if (lengths > 0).any():
            trains[lengths > 0] = np.logical_or.reduceat(rest, starts[lengths > 0])
        cuts = cut_points(batch.ids, loss, spec, offsets=batch.offsets)
        return _Supervision(loss, labels, trains, cuts, np.searchsorted(cuts, batch.offsets))

    def media(self, p: Parsed, row) -> tuple[Spans, dict]:
        """The row's media items (spans) and how to slice its tensors per item, checked against its media.

        Raises:
            EmptyConversationError: no tokens.
            SpanError, ImageCountError, ImageTokenCountError, PixelMismatchError: media that disagree.
        """
        if len(p.ids) == 0:
            raise EmptyConversationError("input_ids is empty: drop the row", row=row)
        spans = p.spans if p.spans is not None else find_image_spans(p.ids, self.spec, row=row)
        if self.adapter is not None:
            spans = self.adapter.items(spans, p.tensors, p.images, row=row)
        n_images = None if p.images is None or (p.from_messages and not p.images) else len(p.images)
        n_videos = None if p.videos is None else len(p.videos)
        check_media_counts(spans, n_images, n_videos, bool(p.tensors), row)
        check_audio_counts(spans, None if p.audios is None else len(p.audios), p.tensors, row)
        slices = slice_plan(self.spec, p.tensors, spans, row=row) if p.tensors else {}
        check_counts(self.spec, p.tensors, spans, row=row, expected=self._expected_items(p.tensors))
        return spans, slices

    def supervision(self, p: Parsed, spans: Spans, row) -> tuple[np.ndarray, np.ndarray]:
        """(loss mask, labels) of the whole conversation: `loss_mask`, and the labels it implies.

        Raises:
            NoSupervisionError, RowFormatError: see `loss_mask`.
        """
        if p.labels is not None:
            mask, labels = supervision_from_labels(p.ids, p.labels, spans, row=row)
            self._check_trains(mask, "its labels are all -100 (outside media)", row)
            return mask, labels
        mask = self.loss_mask(p, spans, row)
        return mask, labels_from_mask(p.ids, mask)

    def plan(self, p: Parsed, spans: Spans, slices: dict, mask, labels, cuts, row) -> RowPlan:
        """The windows of an analysed row and the media items each carries.

        Raises:
            OversizeSpanError, PrefixError: no window can hold a span or the prefix.
        """
        prefix_len = self.prefix_length(p, spans, row)
        wins = plan_windows(
            len(p.ids), spans, max_length=self.max_length, overlap=self.overlap, prefix_len=prefix_len,
            boundaries=cuts, loss_mask=mask, min_fill=self.min_fill, row=row,
        )
        geometry = np.array([(w.context_start, w.start, w.end) for w in wins], dtype=np.int64).reshape(-1, 3)
        audios = None
        if len(spans) and (spans.kinds == AUDIO).any():
            audios = window_items(spans.take(spans.kinds == AUDIO), geometry, prefix_len)
            spans = spans.take(spans.kinds != AUDIO)
        if len(spans) and (spans.kinds == VIDEO).any():
            images = window_items(spans.take(spans.kinds == IMAGE), geometry, prefix_len)
            videos = window_items(spans.take(spans.kinds == VIDEO), geometry, prefix_len)
        else:
            images = window_items(spans, geometry, prefix_len)
            videos = [_NONE] * len(geometry)
        return RowPlan(p.ids, labels, prefix_len, geometry, images, videos, slices, p, audios)

    def _expected_items(self, tensors):
        if self.adapter is None or not tensors:
            return None
        return {s: self.adapter.expected_item_tokens(tensors, s) for s in (IMAGE, VIDEO)}

    def loss_mask(self, p: Parsed, spans: Spans, row) -> np.ndarray:
        """Which positions of the whole conversation train, before any cut; media never train.

        Raises:
            NoSupervisionError: the row's labels, mask or answers leave no supervised token.
            RowFormatError: a pre-tokenized row without labels, mask or turn markers under train_on="assistant".
        """
        ids, spec = p.ids, self.spec
        if p.labels is not None:
            mask = mask_from_labels(ids, p.labels, spans, row=row)
            source = "its labels are all -100 (outside media)"
        elif p.mask is not None:
            mask = p.mask & ~media_mask(len(ids), spans)
            source = "its assistant mask marks no text token"
        elif spec.response_ids and self.train_on == "assistant":
            mask = loss_mask(ids, spans, train_on="assistant", instruction_ids=spec.instruction_ids,
                             response_ids=spec.response_ids, row=row)
            source = f"no response marker {list(spec.response_ids)} is followed by text"
        elif p.from_messages or self.train_on == "all":
            mask = ~media_mask(len(ids), spans)
            source = "it holds no text token"
        else:
            raise RowFormatError(
                "the pre-tokenized row has no 'labels' and no assistant mask, so nothing says which tokens are "
                "answers: add labels (unshifted, -100 where no loss) or 'assistant_masks', pass "
                "instruction_part=/response_part= turn markers, or train_on='all'",
                row=row,
            )
        self._check_trains(mask, source, row)
        return mask

    @staticmethod
    def _check_trains(mask, source: str, row) -> None:
        if not mask[1:].any():
            raise NoSupervisionError(
                f"the row would train no token: {source}. Drop it, fix its labels, or pass on_error='skip' to "
                "count such rows", row=row,
            )

    def prefix_length(self, p: Parsed, spans: Spans, row) -> int:
        """Tokens repeated before every window after the first (see `prefix`).

        Raises:
            PrefixError: prefix="system" and the system turn takes half a window or more, or cannot be found.
        """
        spec, ids = self.spec, p.ids
        if spec.prefix_media and len(spans):
            lead = spans.ends[spans.starts <= _first_text(ids, spans)]
            n = int(lead.max()) if len(lead) else 0
            if n < len(ids) and spec.bos_id is not None and ids[n] == spec.bos_id:
                n += 1
            return n
        if self.prefix == "none":
            return 0
        n = 1 if spec.bos_id is not None and ids[0] == spec.bos_id else 0
        if self.prefix == "bos":
            return n
        system = p.system_end
        if not p.from_messages:
            if not spec.instruction_ids:
                raise PrefixError(
                    "prefix='system' needs to know where the system turn ends: pre-tokenized rows need "
                    "instruction_part= (the text that opens a user turn); or use prefix='bos'", row=row,
                )
            first = find_marker(ids, spec.instruction_ids)
            system = int(first[0]) if len(first) and first[0] > n else None
        if system is None or (len(spans) and spans.starts.min() < system):
            return n  # no system turn before the first user turn (or media in it): BOS only
        if system >= self.max_length // 2 and len(ids) > self.max_length:
            raise PrefixError(
                f"prefix='system' would repeat the {system}-token system turn before every window, but that is half "
                f"of max_length={self.max_length} or more: shorten the system prompt, raise max_length, use "
                "prefix='bos', or pass on_error='skip'", row=row,
            )
        return max(system, n)

    # ------------------------------------------------------------------ stage 3: assemble

    def assemble(self, plan: RowPlan, row) -> list[dict]:
        """The window rows of an analysed row (takes by offsets; media subsets with every companion).

        With `drop_unsupervised`, windows that train no token are left out and counted in `dropped_windows`;
        a row left with none raises `NoSupervisionError`.
        """
        spec, ids, p = self.spec, plan.ids, plan.parsed
        out = []
        for k, (context, start, end) in enumerate(plan.geometry.tolist()):
            pre = plan.prefix_len if k else 0
            win_ids = np.concatenate([ids[:pre], ids[context:end]])
            rec = {
                "input_ids": win_ids,
                "labels": window_labels(plan.labels, context, start, end, pre),
                "attention_mask": np.ones(len(win_ids), dtype=np.int64),
            }
            if spec.type_ids_column:
                rec[spec.type_ids_column] = type_ids(win_ids, spec)
            images, videos = plan.image_items[k], plan.video_items[k]
            if p.images is not None or p.from_messages:
                rec["images"] = [p.images[i] for i in images] if p.images else []
            if p.videos is not None:
                rec["videos"] = [p.videos[i] for i in videos]
            audios = _NONE if plan.audio_items is None else plan.audio_items[k]
            if p.audios is not None:
                rec["audios"] = [p.audios[i] for i in audios]
            if plan.slices and self.keep_pixels and not p.from_messages:
                rec.update(take_items(p.tensors, plan.slices, images, videos, audios))
            out.append(rec)
        dropped = 0
        if self.drop_unsupervised:
            kept = [w for w in out if (w["labels"][1:] != IGNORE).any()]
            dropped = len(out) - len(kept)
            out = kept
        for k, rec in enumerate(out):
            rec["source_index"] = -1 if row is None else int(row)
            rec["window_index"] = k
            rec["num_windows"] = len(out)
            rec["skip_reason"] = None
            if self.drop_unsupervised:
                rec["dropped_windows"] = dropped
        return out


def window_items(spans: Spans, geometry: np.ndarray, prefix_len: int) -> list[np.ndarray]:
    """Per window, the indices of the items whose spans lie inside it (context included) and, after the first
    window, those inside the repeated prefix; in order.

    Example:
        >>> s = Spans(np.array([0, 5, 9]), np.array([2, 8, 12]), np.zeros(3, int), np.ones(3, int))
        >>> [w.tolist() for w in window_items(s, np.array([[0, 0, 5], [4, 5, 12]]), prefix_len=2)]
        [[0], [0, 1, 2]]
    """
    lo = np.searchsorted(spans.starts, geometry[:, 0], side="left")
    hi = np.searchsorted(spans.ends, geometry[:, 2], side="right")
    held = int(np.searchsorted(spans.ends, prefix_len, side="right"))
    out = []
    for k, (a, b) in enumerate(zip(lo.tolist(), hi.tolist())):
        if k and held and a > 0:
            out.append(np.concatenate([np.arange(min(held, a)), np.arange(a, max(a, b))]))
        else:
            out.append(np.arange(a, max(a, b)))
    return out


def _adapter_for_spec(processor, spec):
    """The adapter of the family the user's spec names, bound to the processor when it is of that family."""
    from .errors import UnsupportedProcessorError
    from .families import adapter_for, adapter_for_spec

    try:
        same = adapter_for(processor).name == spec.family
    except UnsupportedProcessorError:
        same = False
    return adapter_for_spec(spec, processor if same else None)


def check_media_counts(spans, n_images, n_videos, has_tensors: bool, row) -> None:
    """Raise `ImageCountError` when a row's images or videos (None: no such column) disagree with its spans."""
    n_image = int((spans.kinds == IMAGE).sum())
    n_video = int((spans.kinds == VIDEO).sum())
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


def type_ids(ids: np.ndarray, spec) -> np.ndarray:
    """The family's type-id column: 1 on image placeholders, 2 on video placeholders, 3 on audio placeholders
    (as the processors' `create_mm_token_type_ids`), else 0."""
    out = (ids == spec.image_token_id).astype(np.int64)
    if spec.video_token_id is not None:
        out[ids == spec.video_token_id] = 2
    if spec.audio_token_id is not None:
        out[ids == spec.audio_token_id] = 3
    return out


def check_audio_counts(spans, n_audios, tensors: dict, row) -> None:
    """Raise `ImageCountError` when a row's audio items (its `audios` column, None: no such column) or its audio
    features disagree with its audio spans, or its text holds audio spans with neither."""
    n_span = int((spans.kinds == AUDIO).sum())
    have = any(TENSOR_STREAMS.get(k) == AUDIO for k in tensors)
    if n_audios is not None and n_audios != n_span:
        raise ImageCountError(
            f"the row has {n_audios} audio items but its text holds {n_span} audio spans: give exactly one audio "
            "per audio placeholder, in order", row=row,
        )
    if n_audios is None and n_span and not have:
        raise ImageCountError(
            f"the text holds {n_span} audio spans but the row has no 'audios' column and no input_features: add the "
            "audio (in order) so each window can carry its own", row=row,
        )


def _as_columns(rows: list[dict], ledger_keys) -> dict:
    """Rows to columns; a ledger row gets None in the media columns windows carry (null aligns with any type,
    so a process whose rows were all skipped writes features that concatenate with the others')."""
    keys = next((list(r) for r in rows if r["num_windows"]), list(ledger_keys))
    return {k: [r.get(k) for r in rows] for k in keys}


def _columns(windows, names) -> dict:
    """The named columns of a split's output (a Dataset is read through its Arrow table, not row by row)."""
    if isinstance(windows, list):
        return {n: [w.get(n) for w in windows] if windows and n in windows[0] else None for n in names}
    table = getattr(getattr(windows, "data", None), "table", None)
    if table is not None and getattr(windows, "_indices", None) is None:
        return {n: (table.column(n).to_pylist() if n == "skip_reason" else table.column(n).to_numpy())
                if n in table.column_names else None for n in names}
    present = set(windows.column_names if hasattr(windows, "column_names") else windows)
    return {n: (list(windows[n]) if n in present else None) for n in names}


def _first_text(ids, spans) -> int:
    """Position of the first token outside the leading run of back-to-back spans."""
    pos = 0
    for s, e in zip(spans.starts.tolist(), spans.ends.tolist()):
        if s != pos:
            break
        pos = e
    return pos


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


def _view(col, i: int):
    if col is None:
        return None
    flat, offsets = col
    return flat[int(offsets[i]):int(offsets[i + 1])]


def cut_points(ids, mask, spec, *, offsets=None) -> np.ndarray:
    """Preferred cut points: where supervision starts or stops (`mask_edges`), and where a turn opens when the
    spec has turn markers (`instruction_ids`, `response_ids`).

    Args:
        ids, mask: one row's ids and loss mask, or the flat ids and mask of a batch of rows.
        spec: the grammar (its turn markers).
        offsets: the row offsets of a flat batch: the cut points of every row, in flat positions, with nothing
            found across two rows (an edge at a row's start, a marker that runs into the next row).

    Example:
        >>> from chunker import ImageSpanSpec
        >>> spec = ImageSpanSpec(family="custom", kind="bracket", image_token_id=7, open_ids=(5,), close_ids=(6,))
        >>> mask = np.array([0, 1, 1, 0, 1, 1], dtype=bool)
        >>> cut_points(np.arange(6), mask, spec).tolist(), cut_points(np.arange(6), mask, spec, offsets=[0, 4, 6]).tolist()
        ([1, 3, 4], [1, 3])
    """
    cuts = mask_edges(mask)
    markers = [m for m in (spec.instruction_ids, spec.response_ids) if m]
    if offsets is not None:
        offsets = np.asarray(offsets, dtype=np.int64)
        cuts = cuts[cuts != offsets[np.searchsorted(offsets, cuts, side="right") - 1]]
    if not markers:
        return cuts
    parts = [cuts]
    for marker, at in zip(markers, find_markers(ids, markers)):
        if offsets is not None:
            at = at[at + len(marker) <= offsets[np.searchsorted(offsets, at, side="right")]]
        parts.append(at)
    return np.unique(np.concatenate(parts))
