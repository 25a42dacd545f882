"""Rows in the formats users' datasets come in, normalized to the one conversation form the splitter reads.

The canonical form is TRL's: a `messages` list of `{"role", "content"}` dicts whose content is a string or a
list of items (`{"type": "text", "text": ...}`, `{"type": "image"}`, `{"type": "video"}`, `{"type": "audio"}`),
plus `images` / `videos` / `audios` columns holding one source per item, in order. Unsloth rows (images inline
in their items) are canonical as they are. Every other format is recognized per row and rewritten:

=================  ==============================================================  ==============================
format             recognized by                                                   becomes
=================  ==============================================================  ==============================
``trl``            `messages` with `{"type": "image"}` items (+ `images` column)   itself (roles normalized)
``unsloth``        `messages` whose image items carry the image inline             itself (roles normalized)
``llama_factory``  `messages` with string content holding `<image>` / `<video>` /  items at each placeholder,
                   `<audio>` placeholders, `images` / `videos` / `audios` columns   sources from the columns
                   (LLaMA-Factory's and ms-swift's layout)
``llava``          `conversations` (`from` / `value`) and `image` (one path or a   the same, roles mapped
                   list), `<image>` in the values (LLaVA-Instruct, ShareGPT4V)
``sharegpt``       `conversations` and `images` (multi-image ShareGPT)             the same, roles mapped
``openai``         content items `image_url` / `input_image` / `video_url` /       `{"type": ...}` items, the
                   `input_audio` (OpenAI chat, vLLM)                               sources in the columns
=================  ==============================================================  ==============================

`messages` (or `conversations`) stored as a JSON string is decoded first, in every format.

Roles: `human` -> user, `gpt` -> assistant, `system` -> system; in ShareGPT rows `function_call` -> assistant
(the model writes the call, so it is trained like any answer) and `observation` -> tool (a tool's result that
comes back to the model: context, never trained). See `chunker.template.ROLE_ALIASES`.

Placeholders: the i-th `<image>` of the conversation (any role, in message order) is the i-th entry of the
row's images; the text around a placeholder is kept byte for byte (LLaVA's `"<image>\\nWhat is ..."` keeps its
`"\\n"`, as LLaMA-Factory trains it), empty pieces are left out. Relative paths are read from `base_dir`.

Nothing is dropped in silence: counts that disagree, an http(s) URL (chunker never downloads), a row with both
`image` and `images`, a `tools` column a chat template would not see: each is a named `RowFormatError` that
says which format the row looks like, what disagrees, and the fix. Video and audio items are normalized like
images; the splitter refuses video by name (conversational video is not split yet), and audio by name for a family
without audio (Gemma 4 and Gemma 3n split it: one whole span per audio item).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from urllib.parse import unquote, unquote_to_bytes, urlparse

from .errors import ConfigError, EmptyConversationError, ImageCountError, ImageDecodeError, RowFormatError

FORMATS = ("trl", "unsloth", "llama_factory", "llava", "sharegpt", "openai")
ALIASES = {"ms_swift": "llama_factory", "swift": "llama_factory", "sharegpt4v": "llava"}
NAMES = {
    "trl": "TRL (messages with {'type': 'image'} items and an 'images' column)",
    "unsloth": "Unsloth (messages with images inline in their items)",
    "llama_factory": "LLaMA-Factory / ms-swift (string content with <image> placeholders and an 'images' column)",
    "llava": "LLaVA-Instruct (an 'image' path and 'conversations' with from/value)",
    "sharegpt": "ShareGPT (multi-image 'conversations' with from/value and an 'images' column)",
    "openai": "OpenAI chat (image_url / input_audio content items)",
}
KINDS = ("image", "video", "audio")
COLUMNS = {"image": "images", "video": "videos", "audio": "audios"}
PLACEHOLDER = re.compile(r"<(image|video|audio)>")
OPENAI_ITEMS = {"image_url": "image", "input_image": "image", "video_url": "video", "input_audio": "audio"}
INLINE_KEYS = ("image", "video", "url", "path", "base64")
# Columns a conversion reads; everything else in the row is passed through unchanged.
CONSUMED = ("messages", "conversations", "image", "images", "video", "videos", "audios", "system", "tools")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def check_format(format: str) -> str:
    """The format name `format=` means ("auto" or one of `FORMATS`; aliases `ms_swift`, `swift`, `sharegpt4v`).

    Raises:
        ConfigError: an unknown name.

    Example:
        >>> check_format("ms_swift"), check_format("auto")
        ('llama_factory', 'auto')
    """
    name = ALIASES.get(format, format)
    if name != "auto" and name not in FORMATS:
        raise ConfigError(f"format={format!r} is not a known row format: use 'auto' (recognize each row) or one of "
                          f"{FORMATS} (aliases {sorted(ALIASES)})")
    return name


def is_conversational(row) -> bool:
    """Whether a row (or a batch of columns) holds a conversation: a `messages` or `conversations` value."""
    return any(row.get(k) is not None for k in ("messages", "conversations"))


def detect_format(row: dict, *, row_index=None) -> str:
    """Which of `FORMATS` a conversational row is in (see the module docstring for the rules).

    Args:
        row: one row (a dict of columns).
        row_index: the row's name for errors.

    Returns:
        one of `FORMATS`.

    Raises:
        RowFormatError: no `messages` or `conversations`, or one that is not a list (or JSON of one).

    Example:
        >>> detect_format({"messages": [{"role": "user", "content": "<image>What is it?"}], "images": ["a.png"]})
        'llama_factory'
        >>> detect_format({"image": "a.png", "conversations": [{"from": "human", "value": "<image>\\nHi"}]})
        'llava'
    """
    messages = _decoded(row, "messages", row_index)
    if messages is None:
        if _decoded(row, "conversations", row_index) is None:
            raise RowFormatError(
                f"unknown row format with columns {sorted(row)}: expected 'messages' or 'conversations' (TRL, Unsloth, "
                "LLaMA-Factory, LLaVA, ShareGPT or OpenAI rows) or 'input_ids' with 'labels' or an assistant mask",
                row=row_index,
            )
        return "llava" if _present(row.get("image")) or _present(row.get("video")) else "sharegpt"
    items = [item for m in messages if isinstance(m, dict) for item in _items(_content(m))]
    types = {item.get("type") for item in items}
    if types & set(OPENAI_ITEMS):
        return "openai"
    media = [item for item in items if item.get("type") in KINDS]
    if media:
        return "unsloth" if any(_inline(item) is not None for item in media) else "trl"
    if any(isinstance(m, dict) and isinstance(_content(m), str) and PLACEHOLDER.search(_content(m))
           for m in messages) or any(_present(row.get(c)) for c in ("images", "videos", "audios")):
        return "llama_factory"
    return "trl"


def normalize_row(row: dict, *, format: str = "auto", base_dir=None, row_index=None) -> dict:
    """A conversational row in the canonical form: `messages` (roles normalized, media as typed items) and the
    `images` (and, when the row has them, `videos` / `audios`) sources in item order.

    TRL and Unsloth rows keep their layout (images in the column or inline); other formats get typed items and
    columns. Relative paths in the columns are made absolute against `base_dir`; `data:` URLs become
    `{"bytes", "path": None}` dicts and `file://` URLs paths. Columns the conversion does not read (`id`, ...)
    are passed through.

    Args:
        row: one row (a dict of columns).
        format: "auto" (recognize the row) or one of `FORMATS` to force one.
        base_dir: folder relative media paths are read from (the data file's folder), or None.
        row_index: the row's name for errors.

    Returns:
        dict with `messages`, `images` (a list, maybe empty), `videos` / `audios` when the row has any, and the
        passed-through columns.

    Raises:
        RowFormatError: the row is in no known format, or its parts disagree (the message names the format it
            looks like and the fix); ImageCountError (a subclass): placeholders and media of other counts;
            ImageDecodeError (a subclass): an http(s) URL or a `data:` URL that is not valid base64.
        ConfigError: an unknown `format`.

    Example:
        >>> row = {"messages": [{"role": "user", "content": "<image>Who are they?"},
        ...                     {"role": "assistant", "content": "Kane and Gretzka."}],
        ...        "images": ["mllm_demo_data/1.jpg"]}
        >>> out = normalize_row(row, base_dir="/data")
        >>> out["messages"][0]
        {'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'Who are they?'}]}
        >>> out["images"]
        ['/data/mllm_demo_data/1.jpg']
    """
    name = check_format(format)
    if name == "auto":
        name = detect_format(row, row_index=row_index)
    _refuse_tools(row, name, row_index)
    if name in ("trl", "unsloth"):
        out = _canonical(row, name, base_dir, row_index)
    elif name == "openai":
        out = _from_openai(row, base_dir, row_index)
    else:
        out = _from_placeholders(row, name, base_dir, row_index)
    return {**{k: v for k, v in row.items() if k not in CONSUMED}, **out}


# ---------------------------------------------------------------------------------------------- formats


def _canonical(row, name, base_dir, row_index) -> dict:
    """TRL and Unsloth rows: roles normalized, media where the row has them (items inline, or the columns)."""
    from .template import normalize_messages

    messages = normalize_messages(_conversation(row, name, row_index), row=row_index)
    return _with_sources(messages, _media_columns(row, name, row_index), base_dir, row_index)


def _from_placeholders(row, name, base_dir, row_index) -> dict:
    """LLaMA-Factory, ms-swift, LLaVA and ShareGPT rows: `<image>`-style placeholders in string content."""
    from .template import normalize_messages

    messages = normalize_messages(_conversation(row, name, row_index), row=row_index)
    system = row.get("system")
    if isinstance(system, str) and system:
        messages = [{"role": "system", "content": system}, *messages]
    sources = _media_columns(row, name, row_index)
    found = dict.fromkeys(KINDS, 0)
    for m in messages:
        if isinstance(m["content"], str) and PLACEHOLDER.search(m["content"]):
            m["content"] = _split_placeholders(m["content"], found)
        elif isinstance(m["content"], list):
            for item in m["content"]:
                if isinstance(item, dict) and item.get("type") in KINDS:
                    found[item["type"]] += 1
    for kind in KINDS:
        given = len(sources[kind])
        if found[kind] != given:
            column = "image" if name == "llava" and kind == "image" and "image" in row else COLUMNS[kind]
            raise ImageCountError(
                f"the row looks like {NAMES[name]}, but its text holds {found[kind]} <{kind}> placeholder"
                f"{'s' * (found[kind] != 1)} and {column!r} gives {given} {kind}{'s' * (given != 1)}: put one "
                f"<{kind}> in the text where each {kind} goes, in order, and one path per placeholder in {column!r}"
                + (f" (or pass format='trl' if '<{kind}>' is meant as literal text)" if not given else ""),
                row=row_index,
            )
    return _with_sources(messages, sources, base_dir, row_index)


def _from_openai(row, base_dir, row_index) -> dict:
    """OpenAI chat rows: `image_url` / `input_image` / `video_url` / `input_audio` content items."""
    from .template import normalize_messages

    messages = normalize_messages(_conversation(row, "openai", row_index), row=row_index)
    sources = {kind: [] for kind in KINDS}
    columns = _media_columns(row, "openai", row_index)
    for i, m in enumerate(messages):
        if not isinstance(m["content"], list):
            continue
        items = []
        for item in m["content"]:
            kind = OPENAI_ITEMS.get(item.get("type")) if isinstance(item, dict) else None
            if kind is None:
                items.append({k: v for k, v in item.items() if v is not None} if isinstance(item, dict) else item)
                continue
            sources[kind].append(_openai_source(item, kind, i, row_index))
            items.append({"type": kind})
        m["content"] = items
    for kind in KINDS:
        if sources[kind] and columns[kind]:
            raise RowFormatError(
                f"the row looks like {NAMES['openai']} and has {kind} items with URLs, but also a {COLUMNS[kind]!r} "
                f"column: give each {kind} once, either as a URL item or as a {{'type': {kind!r}}} item with its "
                f"entry in {COLUMNS[kind]!r}",
                row=row_index,
            )
        sources[kind] = sources[kind] or columns[kind]
    return _with_sources(messages, sources, base_dir, row_index)


# ---------------------------------------------------------------------------------------------- parts


def _with_sources(messages, sources, base_dir, row_index) -> dict:
    """The canonical row: messages, `images` and the `videos` / `audios` a row has, every source resolved."""
    out = {"messages": messages, "images": [_resolve(v, base_dir, row_index) for v in sources["image"]]}
    for kind in ("video", "audio"):
        if sources[kind]:
            out[COLUMNS[kind]] = [_resolve(v, base_dir, row_index) for v in sources[kind]]
    return out


def _decoded(row, key, row_index):
    """row[key], a JSON string decoded; None when absent.

    Raises:
        EmptyConversationError: an empty conversation (checked first: it says more than any format rule).
        RowFormatError: a string that is not JSON of a list.
    """
    value = row.get(key)
    if isinstance(value, (list, tuple)) and not value:
        raise EmptyConversationError("the conversation has no messages: drop the row", row=row_index)
    if not isinstance(value, str):
        return value
    try:
        value = json.loads(value)
    except json.JSONDecodeError as exc:
        raise RowFormatError(
            f"{key!r} is a string that is not JSON ({exc.msg} at character {exc.pos}; it starts {value[:40]!r}): store "
            f"{key} as a list of messages, or as the JSON text of one",
            row=row_index,
        ) from None
    if not isinstance(value, list):
        raise RowFormatError(f"{key!r} holds JSON of a {type(value).__name__}; expected a list of messages",
                             row=row_index)
    if not value:
        raise EmptyConversationError("the conversation has no messages: drop the row", row=row_index)
    return value


def _conversation(row, name, row_index) -> list:
    first, second = ("conversations", "messages") if name in ("llava", "sharegpt") else ("messages", "conversations")
    messages = _decoded(row, first, row_index)
    if messages is None:
        messages = _decoded(row, second, row_index)
    if messages is None:
        raise RowFormatError(
            f"format={name!r} ({NAMES[name]}) needs a {first!r} column, but the row has columns {sorted(row)}: pass "
            "format='auto' to recognize each row, or the format the rows are in",
            row=row_index,
        )
    return messages


def _media_columns(row, name, row_index) -> dict:
    """A row's media sources by kind, in order: an `image` / `video` column (LLaVA's: one source or a list; ms-swift
    reads both names too) or the `images` / `videos` / `audios` column."""
    out = {}
    for kind in KINDS:
        single, column = row.get(kind) if kind != "audio" else None, row.get(COLUMNS[kind])
        if _present(single) and _present(column):
            raise RowFormatError(
                f"the row looks like {NAMES[name]} but has both {kind!r} and {COLUMNS[kind]!r}: keep one of the two "
                f"(LLaVA rows name their {kind} in {kind!r}, LLaMA-Factory and ShareGPT rows list them in "
                f"{COLUMNS[kind]!r})",
                row=row_index,
            )
        value = single if _present(single) else column
        out[kind] = [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]
    return out


def _split_placeholders(text: str, found: dict) -> list:
    """String content as items: a typed item at each placeholder, the text between kept as it is."""
    items, last = [], 0
    for match in PLACEHOLDER.finditer(text):
        if match.start() > last:
            items.append({"type": "text", "text": text[last:match.start()]})
        items.append({"type": match.group(1)})
        found[match.group(1)] += 1
        last = match.end()
    if last < len(text):
        items.append({"type": "text", "text": text[last:]})
    return items


def _openai_source(item, kind, message, row_index):
    """The source an OpenAI media item points at (a path, or a {"bytes", "path"} dict)."""
    if kind == "audio":
        audio = item.get("input_audio") or {}
        data = audio.get("data") if isinstance(audio, dict) else None
        return {"bytes": _b64(data or "", "input_audio", f"message {message}", row_index), "path": None,
                "format": audio.get("format") if isinstance(audio, dict) else None}
    value = item.get(item["type"])
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise RowFormatError(
            f"message {message} has a {item['type']!r} item without a URL ({item!r}): give "
            f"{{'type': {item['type']!r}, {item['type']!r}: {{'url': 'path, file:// or data: URL'}}}}",
            row=row_index,
        )
    return _url_source(url, message, row_index)


def _url_source(url: str, message, row_index):
    """A path or {"bytes", "path"} dict from a local path, `file://` URL or `data:` URL (`message`: where the URL
    was, for errors; None for a media column)."""
    where = "the row's media column" if message is None else f"message {message}"
    if url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        raw = _b64(data, "data: URL", where, row_index) if header.endswith(";base64") else unquote_to_bytes(data)
        return {"bytes": raw, "path": None}
    if url.startswith("file:"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise ImageDecodeError(f"{where} names {url!r}, a file on another host: give a local path",
                                   row=row_index)
        return unquote(parsed.path)
    if _SCHEME.match(url):
        raise ImageDecodeError(
            f"{where} points at {url[:100]!r}, a web address: chunker reads media from local files, bytes "
            "and data: URLs and never downloads (a split must not depend on the network, and training would fetch "
            "it again every epoch). Download the files and give their paths (absolute, or relative to the data "
            "file's folder) or file:// / data: URLs",
            row=row_index,
        )
    return url


def _b64(data: str, what: str, where: str, row_index) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(
            f"{where} has a {what} whose data is not valid base64 ({exc}; it starts {data[:30]!r}): "
            "encode the file's bytes with base64",
            row=row_index,
        ) from None


def _refuse_tools(row, name, row_index) -> None:
    tools = row.get("tools")
    if tools:
        raise RowFormatError(
            f"the row looks like {NAMES[name]} and has a 'tools' column ({str(tools)[:60]!r}), which the chat "
            "template would not see (it renders the messages only): drop the column, or write the tool "
            "descriptions into the system message",
            row=row_index,
        )


def _resolve(value, base_dir, row_index=None):
    """A media source with `file://` and `data:` URLs read, an http(s) URL refused, a relative path made absolute."""
    from .encode import resolve_source

    if isinstance(value, str):
        value = _url_source(value, None, row_index)
    return resolve_source(value, base_dir)


def _content(message: dict):
    return message.get("content") if message.get("content") is not None else message.get("value")


def _items(content) -> list:
    return [item for item in content if isinstance(item, dict)] if isinstance(content, list) else []


def _inline(item: dict):
    return next((item[k] for k in INLINE_KEYS if item.get(k) is not None), None)


def _present(value) -> bool:
    """A column value that holds something (Arrow gives absent columns as None; an empty list holds nothing)."""
    if value is None:
        return False
    if isinstance(value, (list, tuple)):
        return len(value) > 0
    return not (isinstance(value, str) and not value)
