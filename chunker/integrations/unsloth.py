"""Unsloth: a vision data collator that splits over-length conversations into windows instead of truncating.

`ChunkingVisionDataCollator` is a subclass of `unsloth_zoo`'s `UnslothVisionDataCollator`, so Unsloth's trainer
recognises it and applies its vision settings. It renders, loads, resizes and labels every example exactly as
the stock collator does (the same chat template and `chat_template_kwargs`, `formatting_func`, image
extraction and `resize`, and the same response-only masker), but over the whole conversation; then it cuts the
conversation into windows of at most `max_seq_length` tokens that never cut an image span, each carrying
exactly its own images, and collates the windows with `chunker.WindowCollator`.

One example may become several window rows: the batch has at least as many rows as examples came in.

Using the collator needs `unsloth_zoo` (installed with `unsloth`); to use it without a GPU (CPU tests), set
`UNSLOTH_ZOO_DISABLE_GPU_INIT=1` before `unsloth_zoo` is first imported.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import ConfigError, EmptyBatchError, OversizeSpanError, RowFormatError
from ..media import TENSOR_STREAMS

try:
    from unsloth_zoo.vision_utils import UnslothVisionDataCollator
except ImportError as _exc:  # the module stays importable (docs, doctests); the class says what is missing
    _IMPORT_ERROR = str(_exc)

    class UnslothVisionDataCollator:
        def __init__(self, *args, **kwargs):
            raise ImportError(
                "ChunkingVisionDataCollator needs unsloth_zoo (pip install unsloth); on a machine without a GPU "
                f"set UNSLOTH_ZOO_DISABLE_GPU_INIT=1 before the first import of unsloth_zoo ({_IMPORT_ERROR})"
            )


IGNORE = -100
MEDIA_TYPES = ("image", "image_url")


class ChunkingVisionDataCollator(UnslothVisionDataCollator):
    """Unsloth's vision collator, splitting each long example into windows instead of truncating it.

    Where the stock collator cuts every conversation at `max_seq_length` (and a cut through or before an image
    makes the model fail with "Image features and image tokens do not match", or drops the rest of the
    conversation), this one keeps every token: an example longer than `max_seq_length` becomes several
    windows of at most `max_seq_length` tokens, none cutting an image span, each with only its own images.
    Labels are computed on the whole conversation first (image and padding tokens masked, then Unsloth's
    response-only masker when `train_on_responses_only`), so every supervised token is trained exactly once;
    `overlap` tokens of the previous window are repeated as unsupervised context.

    Args:
        model: the model (only `.config` and `.max_seq_length` are read), as for the stock collator.
        processor: the model's processor.
        max_seq_length: the most tokens a window holds; defaults to `model.max_seq_length`. Required.
        formatting_func, resize, ignore_index, train_on_responses_only, instruction_part, response_part,
            force_match, num_proc, completion_only_loss, pad_to_multiple_of, resize_dimension,
            snap_to_patch_size, last_response_only, chat_template_kwargs, mask_out_tokens: as for
            `UnslothVisionDataCollator`, with the same meaning.
        overlap: tokens of the previous window repeated (without loss) at the start of the next one.
        prefix: what every window after the first starts with: "bos" (default), "system" or "none"
            (see `chunker.WindowSplitter`).
        on_oversize: "raise" (default) when one image span cannot fit in `max_seq_length`, or "skip" the
            example (a batch whose every example is skipped raises `EmptyBatchError`).
        spec: an `ImageSpanSpec`, when the processor's family is not detected.
        format: the examples' format: "auto" (default) recognizes each example; TRL and Unsloth examples go
            through the stock collator's own handling, LLaMA-Factory / ms-swift, LLaVA, ShareGPT and OpenAI
            examples are rewritten to TRL's layout first (`chunker.formats`); or force one of those names.
        base_dir: folder relative image paths of rewritten examples are read from (else an example's
            `_base_dir` column, else the working directory).
        pack: pack the batch's windows into rows of `max_seq_length` (`chunker.pack.pack_rows`, best fit
            decreasing): fewer, fuller rows, each window still trained as if alone (positions restart per window,
            no attention across windows, see `chunker.collator.pack_positions`).

    Raises:
        ConfigError: no `max_seq_length` (on the call or the model), or settings no window can satisfy.
        ImportError: `unsloth_zoo` cannot be imported (not installed, or no GPU and no
            `UNSLOTH_ZOO_DISABLE_GPU_INIT=1`).

    Returns (on call):
        dict of tensors for the model's forward: input_ids, attention_mask, labels, pixel tensors and the
        family's companions (token_type_ids / mm_token_type_ids, image_grid_thw, ...). It has one row per
        window, so it may have more rows than examples were given: size `per_device_train_batch_size` and
        memory for `max_seq_length` tokens per row, as with the stock collator.

    Example:
        >>> collator = ChunkingVisionDataCollator(model, tokenizer, max_seq_length=2048,   # doctest: +SKIP
        ...     train_on_responses_only=True, instruction_part="<start_of_turn>user\\n",
        ...     response_part="<start_of_turn>model\\n", overlap=128)
        >>> trainer = SFTTrainer(model=model, train_dataset=dataset, processing_class=tokenizer,  # doctest: +SKIP
        ...     data_collator=collator, args=SFTConfig(remove_unused_columns=False,
        ...     dataset_text_field="", dataset_kwargs={"skip_prepare_dataset": True}, max_length=2048, ...))
    """

    def __init__(
        self,
        model,
        processor,
        max_seq_length=None,
        formatting_func=None,
        resize="min",
        ignore_index=IGNORE,
        train_on_responses_only=False,
        instruction_part=None,
        response_part=None,
        force_match=True,
        num_proc=None,
        completion_only_loss=True,
        pad_to_multiple_of=None,
        resize_dimension=0,
        snap_to_patch_size=False,
        last_response_only=False,
        chat_template_kwargs=None,
        mask_out_tokens=None,
        *,
        overlap: int = 0,
        prefix: str = "bos",
        on_oversize: str = "raise",
        spec=None,
        format: str = "auto",
        base_dir=None,
        pack: bool = False,
    ):
        from ..collator import WindowCollator
        from ..formats import check_format
        from ..splitter import WindowSplitter

        super().__init__(
            model,
            processor,
            max_seq_length=max_seq_length,
            formatting_func=formatting_func,
            resize=resize,
            ignore_index=ignore_index,
            train_on_responses_only=train_on_responses_only,
            instruction_part=instruction_part,
            response_part=response_part,
            force_match=force_match,
            num_proc=num_proc,
            completion_only_loss=completion_only_loss,
            pad_to_multiple_of=pad_to_multiple_of,
            resize_dimension=resize_dimension,
            snap_to_patch_size=snap_to_patch_size,
            last_response_only=last_response_only,
            chat_template_kwargs=chat_template_kwargs,
            mask_out_tokens=mask_out_tokens,
        )
        if not self.max_seq_length:
            raise ConfigError(
                "ChunkingVisionDataCollator needs max_seq_length (the most tokens a window holds): pass "
                "max_seq_length=... or load the model with FastVisionModel.from_pretrained(..., max_seq_length=...)"
            )
        markers = {}
        if train_on_responses_only:
            markers = {"instruction_part": instruction_part, "response_part": response_part}
        self.overlap = int(overlap)
        self.format = check_format(format)
        self.base_dir = None if base_dir is None else os.fspath(base_dir)
        # Labels come from Unsloth's own rules (computed in _full_row), so train_on only matters when a row
        # reaches the splitter without labels, which this collator never does.
        self.splitter = WindowSplitter(
            processor,
            max_length=self.max_seq_length,
            overlap=self.overlap,
            spec=spec,
            train_on="all",
            prefix=prefix,
            on_oversize=on_oversize,
            **markers,
        )
        self.pack = bool(pack)
        # packed rows: positions restart per window; Qwen-VL's 3-D positions from the model's own rope function
        self.window_collator = WindowCollator(processor, pad_to_multiple_of=pad_to_multiple_of,
                                              model=model if self.pack else None)

    def __call__(self, examples):
        """Split each example into windows and collate them into one batch (one row per window)."""
        if self.formatting_func is not None:
            examples = [self.formatting_func(example) for example in examples]
        rows, full_labels = [], []
        for example in examples:
            row = example.get("id", example.get("source_index")) if isinstance(example, dict) else None
            full = self._full_row(self._canonical(example, row))
            full_labels.append(full["labels"])
            try:
                rows.extend(self.splitter.split_example(full, index=row))
            except OversizeSpanError as exc:
                if self.splitter.on_oversize != "skip":
                    raise
                self._skip(exc)
        self._check_full_labels(full_labels)
        if not rows:
            raise EmptyBatchError(
                f"every one of the {len(examples)} examples of this batch was skipped (on_oversize='skip'): "
                "raise max_seq_length so their images fit"
            )
        if self.pack:  # the batch's windows packed into rows of max_seq_length, each window trained as if alone
            from ..pack import pack_rows

            rows = pack_rows(rows, self.max_seq_length)
        batch = self.window_collator(rows)
        if self.ignore_index != IGNORE:
            batch["labels"].masked_fill_(batch["labels"] == IGNORE, self.ignore_index)
        for key in ("pixel_values", "pixel_values_videos"):
            if key in batch:
                batch = self._cast_pixel_values_dtype_inplace(batch, key)
        return batch

    def _skip(self, exc) -> None:
        """Count an example skipped under on_oversize='skip' (`self.skipped`), warning once: never silent."""
        import warnings
        from collections import Counter

        self.skipped = getattr(self, "skipped", None) or Counter()
        if not self.skipped:
            warnings.warn(f"ChunkingVisionDataCollator skipped an example ({exc}); `collator.skipped` counts every "
                          "skip by reason. This warning is shown once.", stacklevel=3)
        self.skipped[type(exc).__name__] += 1

    def _canonical(self, example, row):
        """An example in LLaMA-Factory, LLaVA, ShareGPT or OpenAI format rewritten as a TRL row (messages with
        {"type": "image"} items + an `images` column of resolved sources, see `chunker.formats`); TRL and Unsloth
        examples as they are, so the stock collator's own handling applies to them unchanged.

        Raises:
            RowFormatError: the example's parts disagree, or it holds a video or audio (not split yet).
        """
        from ..formats import detect_format, is_conversational, normalize_row

        if not isinstance(example, dict) or not is_conversational(example):
            return example
        name = self.format if self.format != "auto" else detect_format(example, row_index=row)
        if name in ("trl", "unsloth"):
            return example
        base_dir = self.base_dir or example.get("_base_dir")
        out = normalize_row(example, format=name, base_dir=base_dir, row_index=row)
        for kind in ("videos", "audios"):
            if out.get(kind):
                raise RowFormatError(
                    f"the example holds {len(out[kind])} {kind[:-1]} item(s) (<{kind[:-1]}> placeholders): "
                    f"ChunkingVisionDataCollator splits image conversations only; remove the {kind[:-1]}s and their "
                    "placeholders, or leave such examples out",
                    row=row,
                )
        return {k: v for k, v in out.items() if k != "_base_dir"}

    def _full_row(self, example) -> dict:
        """The whole conversation as the stock collator would see it untruncated: ids, labels, images."""
        import torch

        if isinstance(example, dict) and "prompt" in example and "completion" in example:
            raise RowFormatError(
                "prompt/completion rows are not split by ChunkingVisionDataCollator: give each row as "
                "'messages' (prompt + completion turns) and pass train_on_responses_only=True"
            )
        messages = self._select_messages_or_raw(example)
        if len(messages) != 0:
            messages = self._validate_and_normalize_first_message(messages)
            if self.assistant_single_content:
                messages = self._collapse_assistant_content(messages)
            messages = self._clean_none_keys(messages)
        text = self._apply_chat_template(messages, example=example, tokenize=False, add_generation_prompt=False)
        images, videos, _ = self._extract_images_videos_for_example(example, messages)
        if len(videos):
            raise RowFormatError(
                "videos are not split by ChunkingVisionDataCollator yet: split such rows with "
                "chunker.WindowSplitter on pre-tokenized rows, or use the stock collator for them"
            )
        images = list(self._resize_images_inplace(images))
        kwargs = {"text": [text], "return_tensors": "pt", "add_special_tokens": False}
        if images:
            kwargs["images"] = [images]
        enc = self._call_processor(kwargs, bool(images))
        ids = enc["input_ids"]
        labels = ids.clone()
        labels[torch.isin(labels, self._get_padding_token_ids_on_device(labels.device))] = IGNORE
        labels[labels < 0] = IGNORE
        masker = getattr(self, "train_on_responses_only", None)
        if masker:
            labels.masked_fill_(masker({"input_ids": ids})["labels"].eq(IGNORE), IGNORE)
        row = {"input_ids": ids[0].numpy(), "labels": labels[0].numpy(), "images": images}
        # The pixels made here travel with the windows (sliced per window), so no image is processed twice.
        row.update({k: np.asarray(enc[k]) for k in TENSOR_STREAMS if k in enc})
        if self.splitter.spec.extra.get("batch_axis_pixels"):
            row.update({k: row[k][0] for k in ("pixel_values", "pixel_attention_mask") if k in row})
        return row

    def _check_full_labels(self, full_labels) -> None:
        """Unsloth's check that response markers were found, run on the whole conversations (never truncated)."""
        import torch

        if not getattr(self, "train_on_responses_only", None) or not full_labels:
            return
        width = max(len(x) for x in full_labels)
        padded = np.full((len(full_labels), width), IGNORE, dtype=np.int64)
        for i, x in enumerate(full_labels):
            padded[i, : len(x)] = x
        self._check_supervised(torch.from_numpy(padded), None)
