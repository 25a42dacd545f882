"""Conversations to token ids and a loss mask: the processor tokenizes, the model's own chat template says
where the answers are.

One processor call per row gives the ids, the character offset of every token in the expanded text, and
where the processor replaced each media placeholder (`return_offsets_mapping`,
`return_text_replacement_offsets`). The answers are located by rendering the chat template
(`chunker.template.answer_char_ranges`) in the rendered text's coordinates; the replacement offsets carry
those character ranges into the expanded text, and the token offsets carry them onto tokens. No turn marker
is written by hand and no prefix is tokenized twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import (
    ChunkerError,
    ConfigError,
    EmptyConversationError,
    ImageCountError,
    ImageDecodeError,
    NoSupervisionError,
    ProcessorError,
    RowFormatError,
    TemplateError,
)
from .template import answer_char_ranges, common_prefix_len, normalize_messages, renderer, token_mask


@dataclass
class Encoded:
    """One tokenized conversation.

    Attributes:
        ids: int64 token ids of the whole conversation.
        mask: bool per token, True where the answer text lies (media not yet removed); None when every
            token trains (`train_on="all"`) or the caller's turn markers decide.
        system_end: token position where the system turn ends (the `prefix="system"` prefix), or None.
        tensors: the processor's media tensors for the row (numpy), e.g. pixel_values, image_grid_thw.
        images: the row's images in order, as the row gave them (PIL image, bytes, dict) with relative paths
            made absolute, so window rows point at the same images wherever they are read.
        audios: the row's audio items in order, as given (waveform, `{"array", "sampling_rate"}`, WAV path or
            bytes), for a family with audio; None for a family without.
    """

    ids: np.ndarray
    mask: np.ndarray | None
    system_end: int | None
    tensors: dict = field(default_factory=dict)
    images: list = field(default_factory=list)
    audios: list | None = None


class ConversationEncoder:
    """Tokenize conversational rows with the model's processor and locate answers with its chat template.

    Args:
        processor: the model's transformers processor (its tokenizer must be a fast one: offsets are needed).
        adapter: the family adapter (`chunker.families.adapter_for(processor)`).
        train_on: "assistant": the loss mask covers the answers the template renders for assistant
            messages; "all": no mask (every text token trains).
        tensor_keys: which processor outputs to keep as the row's media tensors.
        processor_kwargs: extra keywords for the processor call (e.g. {"do_pan_and_scan": True}).
        expander: a `SizeExpander` when image token counts come from image sizes (no pixels), else None.
        template_kwargs: extra keywords for `apply_chat_template` (e.g. {"enable_thinking": False}).

    Example:
        >>> enc = ConversationEncoder(processor, adapter_for(processor))                  # doctest: +SKIP
        >>> e = enc(messages, images, row=0)                                              # doctest: +SKIP
        >>> tokenizer.decode(e.ids[e.mask])                                               # doctest: +SKIP
        'The cat is on the mat.<|im_end|>'
    """

    def __init__(self, processor, adapter, *, train_on="assistant", tensor_keys=(), processor_kwargs=None,
                 expander=None, template_kwargs=None):
        if getattr(processor, "chat_template", None) is None and getattr(
                getattr(processor, "tokenizer", None), "chat_template", None) is None:
            raise ConfigError(
                f"{type(processor).__name__} has no chat template, so conversational rows cannot be rendered: set "
                "processor.chat_template to the checkpoint's template, or pass pre-tokenized rows (input_ids + labels)"
            )
        _check_text_kept(processor, adapter)
        self.processor = processor
        self.adapter = adapter
        self.train_on = train_on
        self.tensor_keys = tuple(tensor_keys)
        self.processor_kwargs = dict(processor_kwargs or {})
        self.expander = expander
        self.render = renderer(processor, **dict(template_kwargs or {}))
        self.source = _template_source(processor)

    def __call__(self, messages, images_column=None, *, row=None, base_dir=None, audios_column=None) -> Encoded:
        """Encode one conversation.

        Args:
            messages: the conversation (role aliases such as human/gpt/model are accepted).
            images_column: the row's `images` column when images are not inline.
            row: the row's name for errors.
            base_dir: folder that relative image paths are read from.
            audios_column: the row's `audios` column when audio items are not inline (families with audio).

        Returns:
            Encoded.

        Raises:
            EmptyConversationError, RowFormatError: no messages, unknown roles, video items, audio items for a
                family without audio.
            ImageCountError, ImageDecodeError: images or audio that disagree with the placeholders or cannot be
                read.
            TemplateError: the chat template refused the conversation.
            ProcessorError: the processor refused the row.
            NoSupervisionError: train_on="assistant" and the row would train no token.
        """
        if messages is None or len(messages) == 0:
            raise EmptyConversationError("the conversation has no messages: drop the row", row=row)
        messages = normalize_messages(messages, row=row)
        has_audio = self.adapter.spec.audio_token_id is not None
        messages, images, audios = collect_media(messages, images_column, row,
                                                 audios=(audios_column or []) if has_audio else None)
        text = self._render(messages, False, row)
        messages, text = self._content_as_text(messages, text, row)
        # the placeholder the template writes (Qianfan-OCR: `image_placeholder_token`, expanded to `image_token`s)
        token = getattr(self.processor, "image_placeholder_token", None) or getattr(self.processor, "image_token", None)
        if token and text.count(token) != len(images):
            raise ImageCountError(
                f"the chat template rendered {text.count(token)} image placeholders ({token!r}) for the row's "
                f"{len(images)} images (it may drop image items it does not expect): give exactly one image per "
                "{'type': 'image'} item, in order, in messages the template renders",
                row=row,
            )
        _check_audio_placeholders(self.processor, text, audios, row)
        images = [resolve_source(im, base_dir) for im in images]
        audios = None if audios is None else [resolve_source(a, base_dir) for a in audios]
        if self.expander is not None:
            if audios:
                raise RowFormatError(
                    f"the row holds {len(audios)} audio items but image_tokens_from='sizes' expands images only: "
                    "split rows with audio with image_tokens_from='pixels' (the default)", row=row,
                )
            text_expanded, replaced, tensors = self.expander(text, images, row=row)
            ids, offsets = self._tokenize(text_expanded)
        else:
            from .media import load_audio, load_image

            decoded = [load_image(im, row=row) for im in images]
            _check_image_sizes(decoded, row)
            rate = getattr(getattr(self.processor, "feature_extractor", None), "sampling_rate", None)
            waves = [load_audio(a, rate, row=row) for a in audios or ()]
            ids, offsets, replaced, tensors = self._process(text, decoded, row, waves)
        assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        ranges = self._answers(messages, text, row) if self.train_on == "assistant" else []
        shifted = _to_expanded(np.asarray(ranges, dtype=np.int64).reshape(-1, 2), replaced)
        mask = None
        if self.train_on == "assistant":
            shifted = _end_outside_specials(shifted, offsets, ids, self._special_ids)
            mask = token_mask(offsets, [tuple(r) for r in shifted.tolist()])
            if not mask.any():
                raise self._no_supervision(len(assistant), row)
        system_end = None
        if messages[0]["role"] == "system":
            end = common_prefix_len(text, self._render(messages[:1], False, row))
            system_end = int(_token_at(offsets, _to_expanded(np.array([[end, end]]), replaced)[:, 0])[0])
        return Encoded(ids, mask, system_end, tensors, images, audios)

    @property
    def _special_ids(self) -> np.ndarray:
        """Sorted ids of the tokenizer's special added tokens (chat markers, placeholders), found once."""
        if not hasattr(self, "_specials"):
            added = getattr(self.processor.tokenizer, "added_tokens_decoder", {}) or {}
            self._specials = np.asarray(sorted(i for i, t in added.items() if getattr(t, "special", False)), np.int64)
        return self._specials

    # ------------------------------------------------------------------ steps

    def _render(self, messages, add_generation_prompt, row) -> str:
        try:
            return self.render(messages, add_generation_prompt)
        except ChunkerError:
            raise
        except Exception as exc:  # jinja raises whatever a template author wrote
            raise TemplateError(
                f"the chat template of {self.source} refused the conversation (roles "
                f"{[m['role'] for m in messages]}): {exc}. Fix the row (e.g. roles must alternate user/assistant "
                "for this template) or pass on_error='skip'",
                row=row,
            ) from exc

    def _content_as_text(self, messages, text, row):
        """Messages whose content list the template printed as Python text (a template that writes
        `message['content']` as is, e.g. GLM-4.1V's) given again as one string, and the conversation rendered again.

        Raises:
            TemplateError: such a list holds media items (a string cannot carry them).
        """
        printed = [i for i, m in enumerate(messages) if isinstance(m.get("content"), list) and m["content"]
                   and str(m["content"]) in text]
        if not printed:
            return messages, text
        out = list(messages)
        for i in printed:
            items = messages[i]["content"]
            if any(not isinstance(it, dict) or it.get("type") != "text" for it in items):
                raise TemplateError(
                    f"the chat template of {self.source} prints the content of the {messages[i]['role']} message as "
                    f"Python text ({str(items)[:60]}...) instead of reading its items, so its media would never "
                    "reach the model: put the media in a message whose items this template reads (e.g. a user "
                    "turn), or give this message a string", row=row,
                )
            out[i] = {**messages[i], "content": "".join(it.get("text") or "" for it in items)}
        return out, self._render(out, False, row)

    def _answers(self, messages, text, row):
        return answer_char_ranges(self.render, messages, text=text, row=row)

    def _process(self, text, images, row, audio=()):
        kwargs = {**self.processor_kwargs, "text": [text], "return_tensors": "np",
                  "return_offsets_mapping": True, "return_text_replacement_offsets": True,
                  "add_special_tokens": not _starts_with_bos(self.processor, text)}
        if images:
            kwargs["images"] = [images]
        if audio:
            kwargs["audio"] = list(audio)
        try:
            enc = self.adapter.process(self.processor, **kwargs)
        except ChunkerError:
            raise
        except (ValueError, IndexError, TypeError, RuntimeError, ZeroDivisionError) as exc:
            raise ProcessorError(
                f"{type(self.processor).__name__} refused the row with {len(images)} images of sizes "
                f"{[im.size for im in images]} (width, height) and {len(audio)} audio items: {exc}. Fix or drop "
                "the media, or pass on_error='skip'",
                row=row,
            ) from exc
        if "offset_mapping" not in enc:
            raise ConfigError(
                f"{type(self.processor).__name__} returned no token offsets (return_offsets_mapping): its tokenizer "
                "must be a fast tokenizer (PreTrainedTokenizerFast) so answers can be located"
            )
        ids = np.asarray(enc["input_ids"])[0].astype(np.int64)
        offsets = np.asarray(enc["offset_mapping"])[0].astype(np.int64)
        replaced = (enc.get("text_replacement_offsets") or [[]])[0]
        tensors = {k: np.asarray(enc[k]) for k in self.tensor_keys if k in enc}
        return ids, offsets, replaced, self.adapter.row_tensors(tensors, images, self.processor_kwargs)

    def _tokenize(self, text):
        tok = self.processor.tokenizer
        enc = tok(text, add_special_tokens=not _starts_with_bos(self.processor, text), return_offsets_mapping=True)
        return np.asarray(enc["input_ids"], dtype=np.int64), np.asarray(enc["offset_mapping"], dtype=np.int64)

    def _no_supervision(self, n_assistant, row) -> NoSupervisionError:
        if not n_assistant:
            return NoSupervisionError(
                "the conversation has no assistant turn, so train_on='assistant' would train no token: drop the row, "
                "add the answer, pass on_error='skip' to count such rows, or train_on='all'",
                row=row,
            )
        return NoSupervisionError(
            f"the row has {n_assistant} assistant turns but none of their text became a supervised token under the "
            f"chat template of {self.source}: the answers are empty, or the template renders them somewhere the "
            "tokens cannot be traced to; pass instruction_part=/response_part= to mark answers by their turn "
            "markers, or on_error='skip'",
            row=row,
        )


def _check_text_kept(processor, adapter) -> None:
    """Refuse a processor that rewrites the text it is given beyond expanding placeholders (PaliGemma moves
    images first and puts BOS after them): the template's answer ranges could not be carried onto its tokens.

    The processor's ids for a short conversation with one image must be its tokenizer's ids of the rendered
    text with each placeholder replaced as the processor reports (`return_text_replacement_offsets`).

    Raises:
        ConfigError: they differ.
    """
    from PIL import Image

    text = renderer(processor)([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]},
                                {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}], False)
    special = not _starts_with_bos(processor, text)
    out = adapter.process(processor, text=[text], images=[[Image.new("RGB", (32, 32))]], add_special_tokens=special,
                          return_text_replacement_offsets=True, return_tensors="np")  # Ovis2 reads its grids as arrays
    expanded, last = [], 0
    for r in (out.get("text_replacement_offsets") or [[]])[0]:
        expanded += [text[last:r["span"][0]], r["replacement"]]
        last = r["span"][1]
    expanded = "".join(expanded) + text[last:]
    made = np.asarray(out["input_ids"]).reshape(-1).tolist()
    if made != processor.tokenizer(expanded, add_special_tokens=special)["input_ids"]:
        raise ConfigError(
            f"{type(processor).__name__} rewrites the conversation text it is given beyond expanding image "
            "placeholders, so the answers located in the rendered chat template cannot be carried onto its tokens: "
            "pass pre-tokenized rows with labels (e.g. the processor's own labels from suffix=...)"
        )


_OPENAI_ITEM = {"video": "video_url", "audio": "input_audio"}
_NOUN = {"video": "a video", "audio": "audio"}


def collect_media(messages, column, row, *, audios=None):
    """Messages with image (and audio) items reduced to {"type": "image"} ({"type": "audio"}), and the images and
    audio items in order (inline or column).

    Args:
        messages: normalized messages.
        column: the row's `images` column, or None.
        row: the row's name for errors.
        audios: the row's `audios` column ([] when none) for a family with audio; None for a family without
            audio, whose audio items are refused.

    Returns:
        (messages, images, audios); audios is None when `audios` is.

    Raises:
        ImageCountError: images (or audio) both inline and in the column, or another number than their items.
        RowFormatError: a video item (conversational video is not split yet; such an item would be dropped by
            most chat templates without a word), or an audio item for a family without audio.
    """
    inline, clean, placeholders = [], [], 0
    inline_audio, audio_items = [], 0
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, str):  # multimodal templates iterate content items; some drop a plain string
            content = [{"type": "text", "text": content}]
        if isinstance(content, list):
            items = []
            for item in content:
                kind = item.get("type") if isinstance(item, dict) else None
                if kind == "image":
                    placeholders += 1
                    value = next((item.get(k) for k in ("image", "url", "path") if item.get(k) is not None), None)
                    if value is not None:
                        inline.append(value)
                    items.append({"type": "image"})
                elif kind == "audio" and audios is not None:
                    audio_items += 1
                    value = next((item.get(k) for k in ("audio", "array", "path", "url") if item.get(k) is not None),
                                 None)
                    if value is not None:
                        inline_audio.append(value)
                    items.append({"type": "audio"})
                elif kind in ("video", "audio"):
                    raise RowFormatError(
                        f"the conversation holds {_NOUN[kind]} (a {{'type': {kind!r}}} item; in LLaMA-Factory, LLaVA "
                        f"and ShareGPT rows a <{kind}> placeholder, in OpenAI rows a {_OPENAI_ITEM[kind]} item): "
                        f"conversational rows with {kind} are not split yet (the chat template may drop the {kind} "
                        f"silently). Remove the {kind} and its placeholder, or "
                        + ("pass pre-tokenized rows with the processor's video tensors" if kind == "video" else
                           "split the rows without it: this model family takes no audio (Gemma 4 does)"),
                        row=row,
                    )
                elif kind == "text":
                    items.append({"type": "text", "text": item.get("text") or ""})
                else:  # Arrow gives every item every key of the column's struct; a None key is no key
                    items.append({k: v for k, v in item.items() if v is not None} if isinstance(item, dict) else item)
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
    if audios is None:
        return clean, images, None
    if inline_audio and audios:
        raise ImageCountError(
            "audio is given both inline in messages and in the 'audios' column: use one of the two", row=row
        )
    found = inline_audio if inline_audio else list(audios)
    if len(found) != audio_items:
        raise ImageCountError(
            f"the messages hold {audio_items} audio placeholders but {len(found)} audio items were given: give exactly "
            "one audio per {'type': 'audio'} item, in order",
            row=row,
        )
    return clean, images, found


def _check_audio_placeholders(processor, text, audios, row) -> None:
    """Refuse a rendering whose audio placeholders are not one per audio item (a template that drops audio items)."""
    token = getattr(processor, "audio_token", None)
    if audios is None or not token or text.count(token) == len(audios):
        return
    raise ImageCountError(
        f"the chat template rendered {text.count(token)} audio placeholders ({token!r}) for the row's {len(audios)} "
        "audio items (it may drop audio items it does not expect): give exactly one audio per {'type': 'audio'} "
        "item, in order, in messages the template renders",
        row=row,
    )


def resolve_source(value, base_dir=None):
    """An image source with a relative path made absolute against `base_dir` (other forms as given).

    Example:
        >>> resolve_source("cat.png", "/data"), resolve_source({"path": "a.png", "bytes": None}, "/d")["path"]
        ('/data/cat.png', '/d/a.png')
    """
    import os

    if isinstance(value, (str, os.PathLike)) and base_dir and not os.path.isabs(value):
        return os.path.join(base_dir, os.fspath(value))
    if isinstance(value, dict) and not value.get("bytes") and isinstance(value.get("path"), str) and base_dir \
            and not os.path.isabs(value["path"]):
        return {**value, "path": os.path.join(base_dir, value["path"])}
    return value


def _check_image_sizes(images, row) -> None:
    for k, im in enumerate(images):
        if min(im.size) < 1:
            raise ImageDecodeError(
                f"image {k} has size {im.size} (width, height): an empty image has no pixels to encode; fix or "
                "drop it, or pass on_error='skip'",
                row=row,
            )


def _end_outside_specials(ranges: np.ndarray, offsets: np.ndarray, ids: np.ndarray, specials: np.ndarray) -> np.ndarray:
    """Answer ranges whose end falls strictly inside a special token end before it: the rendering that ends with an
    answer can part from the whole conversation inside a marker both start alike (Phi-4's `<|end|><|endoftext|>` vs
    `<|end|><|user|>` agree on `<|`), and a special token is never partly an answer.

    Example:
        >>> _end_outside_specials(np.array([[0, 9]]), np.array([[0, 7], [7, 15]]), np.array([5, 9]), np.array([9]))
        array([[0, 7]])
    """
    if not len(ranges) or not len(specials) or not len(offsets):
        return ranges
    k = np.clip(np.searchsorted(offsets[:, 0], ranges[:, 1], side="right") - 1, 0, len(offsets) - 1)
    inside = (offsets[k, 0] < ranges[:, 1]) & (ranges[:, 1] < offsets[k, 1]) & np.isin(ids[k], specials)
    inside &= offsets[k, 0] >= ranges[:, 0]
    out = ranges.copy()
    out[inside, 1] = offsets[k[inside], 0]
    return out


def _to_expanded(positions: np.ndarray, replaced) -> np.ndarray:
    """Character positions of the rendered text carried into the processor's expanded text."""
    if not replaced or not positions.size:
        return positions
    old_end = np.array([r["span"][1] for r in replaced], dtype=np.int64)
    delta = np.cumsum([(r["new_span"][1] - r["new_span"][0]) - (r["span"][1] - r["span"][0]) for r in replaced])
    k = np.searchsorted(old_end, positions, side="right")
    return positions + np.concatenate([[0], delta])[k]


def _token_at(offsets: np.ndarray, chars: np.ndarray) -> np.ndarray:
    """Index of the first token whose text starts at or after each character position."""
    starts = np.where(offsets[:, 1] > offsets[:, 0], offsets[:, 0], -1)
    starts = np.maximum.accumulate(starts)
    return np.searchsorted(starts, chars, side="left")


def _starts_with_bos(processor, text: str) -> bool:
    """Whether the rendered template already holds BOS (then the tokenizer must not add another)."""
    bos = getattr(getattr(processor, "tokenizer", processor), "bos_token", None)
    return bool(bos) and text.startswith(bos)


def _template_source(processor) -> str:
    name = getattr(getattr(processor, "tokenizer", None), "name_or_path", "") or ""
    return f"{type(processor).__name__}" + (f" ({name})" if name else "")
