"""Locate assistant answers by rendering the model's own chat template.

Real checkpoints of one processor class ship different templates (llava-v1.6-mistral `[INST]`, -vicuna
`USER:/ASSISTANT:`, -34b ChatML) and a user may type any turn marker, so answers are not found by searching
for marker tokens. Instead the template itself says where each answer starts and ends: render the
conversation up to an answer with the generation prompt (what the model sees before it speaks), render it
up to and including the answer, and compare both with the rendering of the whole conversation::

    T = render(all messages)            <s>USER: hi ASSISTANT: Hello! USER: bye ASSISTANT: Bye.
    G = render(messages[:k], prompt)    <s>USER: hi ASSISTANT:
    A = render(messages[:k + 1])        <s>USER: hi ASSISTANT: Hello!
                                                              ^ start = lcp(T, G)
                                                                     ^ end = lcp(T, A)

(lcp: the length of the longest common prefix.) The character ranges become a token mask through the fast
tokenizer's offsets (`token_mask`). This module imports numpy only; `renderer` wraps a transformers tokenizer
or processor given by the caller.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import RowFormatError, TemplateError

# Lower-case alias -> the role chat templates know. `function_call` is an assistant turn (the model writes
# the call, so it is trained); `observation`, `ipython` and `function` carry a tool's result back, which is
# what templates call `tool`.
ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "chatbot": "assistant",
    "function_call": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
    "ipython": "tool",
    "function": "tool",
}


def normalize_messages(messages, row=None) -> list[dict]:
    """A copy of a conversation in the form chat templates expect.

    Roles are mapped through `ROLE_ALIASES`, case-insensitively (`human`/`gpt` -> `user`/`assistant`,
    `observation` -> `tool`, `function_call` -> `assistant`). ShareGPT keys `from`/`value` are read when
    `role`/`content` are absent and written back as `role`/`content`. In a content list, a bare string
    becomes a text item (templates skip items that are not dicts, so its text would vanish) and a text
    item whose text is None gets "". Other items (images, videos) are kept as the same objects. Other keys
    of a message (tool_calls, reasoning_content, ...) are kept; the input is never modified.

    Args:
        messages: a list of message dicts.
        row: the row's name for error messages.

    Returns:
        A new list of new message dicts.

    Raises:
        RowFormatError: `messages` is not a list, a message is not a dict, a role is missing or unknown, or
            content is neither a string, None nor a list of strings and dicts.

    Example:
        >>> user, answer = normalize_messages([
        ...     {"from": "Human", "value": ["hi", {"type": "image"}]},
        ...     {"role": "gpt", "content": "yo"},
        ... ])
        >>> user
        {'role': 'user', 'content': [{'type': 'text', 'text': 'hi'}, {'type': 'image'}]}
        >>> answer
        {'role': 'assistant', 'content': 'yo'}
    """
    if not isinstance(messages, (list, tuple)):
        raise RowFormatError(
            f"messages is a {type(messages).__name__}; expected a list of message dicts "
            "like [{'role': 'user', 'content': ...}, ...]",
            row=row,
        )
    return [_normalize_message(i, message, row) for i, message in enumerate(messages)]


def _normalize_message(i, message, row) -> dict:
    """One message of `normalize_messages`."""
    if not isinstance(message, dict):
        raise RowFormatError(
            f"message {i} is a {type(message).__name__}; expected a dict like {{'role': 'user', 'content': ...}}",
            row=row,
        )
    out = dict(message)
    role_key = "role" if "role" in out else "from"
    content_key = "content" if "content" in out or "value" not in out else "value"
    role = out.pop(role_key, None)
    content = out.pop(content_key, None)
    known = ROLE_ALIASES.get(role.lower()) if isinstance(role, str) else None
    if known is None:
        raise RowFormatError(
            f"message {i} has role {role!r}; accepted roles are user, assistant, system and tool, or one of the "
            f"aliases {sorted(ROLE_ALIASES)}; rename the role in your data (any letter case works)",
            row=row,
        )
    out["role"] = known
    out["content"] = _normalize_content(i, content, row)
    return out


def _normalize_content(i, content, row):
    """A message's content with bare strings as text items and None texts as ""."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, (list, tuple)):
        raise RowFormatError(
            f"message {i} has content of type {type(content).__name__}; expected a string or a list of items "
            "like {'type': 'text', 'text': ...} and {'type': 'image'}",
            row=row,
        )
    items = []
    for j, item in enumerate(content):
        if isinstance(item, str):
            item = {"type": "text", "text": item}
        elif not isinstance(item, dict):
            raise RowFormatError(
                f"content item {j} of message {i} is a {type(item).__name__}; expected a string or a dict like "
                "{'type': 'text', 'text': ...} or {'type': 'image'}",
                row=row,
            )
        elif item.get("type") == "text" and item.get("text") is None:
            item = {**item, "text": ""}
        items.append(item)
    return items


def answer_char_ranges(
    render: Callable[[list[dict], bool], str], messages: list[dict], *, text: str | None = None, row=None
) -> list[tuple[int, int]]:
    """Where each assistant answer lies in the rendered conversation, as character ranges.

    With T = render(messages, False), for the assistant message k:

    - start = the length of the longest common prefix of T and render(messages[:k], True). The
      generation prompt is what the model is given, not what it writes, so it is not part of the answer
      (Qwen3 Thinking's `<|im_start|>assistant\\n<think>\\n`, LLaVA's `ASSISTANT:`).
    - end = the length of the longest common prefix of T and A = render(messages[:k + 1], False): the
      answer runs as far as the conversation that ends with it agrees with the whole one. Where A parts
      from T inside the answer (templates that render the last assistant turn differently, e.g. Qwen3.5
      adds an empty `<think>` block only after the last user turn), the answer still ends where the longest
      tail of A that T continues with at that point ends.
    - Then trailing whitespace is dropped (the `\\n` after `<|im_end|>`, LLaVA's space before `USER:`): it
      is layout the template adds, not text the model must produce. End-of-turn text such as `<|im_end|>`,
      `</s>` or `<end_of_turn>` stays inside: the model must learn to stop (as TRL's assistant masks do).

    Fallbacks: if the template refuses messages[:k] with the generation prompt, start is taken from
    render(messages[:k], False) (the assistant header is then trained too); if it refuses both, or refuses
    messages[:k + 1] (e.g. a template that needs a user message in what it renders), that answer is not
    located and gets an empty range (start, start). Cost: at most 2 renders per assistant turn, plus T once.

    Args:
        render: `render(messages, add_generation_prompt) -> str`, the model's chat template (see `renderer`).
        messages: the conversation, roles already normalized (see `normalize_messages`).
        text: render(messages, False) when the caller has it already (it is rendered once per row).
        row: the row's name for error messages.

    Returns:
        One (start, end) per assistant message, in order; start == end where the answer could not be
        located or is empty. Ranges do not overlap.

    Raises:
        TemplateError: the template refused the whole conversation.

    Example:
        >>> def render(messages, add_generation_prompt):
        ...     text = "".join(f"{m['role'].upper()}: {m['content']} " for m in messages)
        ...     return text + ("ASSISTANT:" if add_generation_prompt else "")
        >>> msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "USER: ok"}]
        >>> full = render(msgs, False)
        >>> [full[s:e] for s, e in answer_char_ranges(render, msgs)]
        [' USER: ok']
    """
    try:
        full = render(messages, False) if text is None else text
    except Exception as exc:  # jinja raises whatever the template author wrote
        raise TemplateError(
            f"the chat template refused the conversation ({type(exc).__name__}: {exc}); fix the roles or content "
            "it rejects (most templates need alternating user/assistant turns after an optional system turn)",
            row=row,
        ) from exc
    return [_answer_range(render, messages, k, full) for k, m in enumerate(messages) if m.get("role") == "assistant"]


def _answer_range(render, messages, k, full) -> tuple[int, int]:
    """The (start, end) of assistant message k in `full`; see `answer_char_ranges`."""
    prompt = _try_render(render, messages[:k], True)
    if prompt is None:
        prompt = _try_render(render, messages[:k], False)
    # The conversation that ends with the last answer is T itself: render T only once.
    with_answer = full if k + 1 == len(messages) else _try_render(render, messages[: k + 1], False)
    if prompt is None or with_answer is None:
        start = common_prefix_len(full, prompt or "")
        return start, start
    start = common_prefix_len(full, prompt)
    agreed = common_prefix_len(full, with_answer)
    end = max(start, agreed + _tail_match(full, agreed, with_answer))
    while end > start and full[end - 1].isspace():
        end -= 1
    return start, end


def _try_render(render, messages, add_generation_prompt):
    """The rendering, or None where the template refuses these messages."""
    try:
        return render(messages, add_generation_prompt)
    except Exception:  # noqa: BLE001  (jinja raises whatever the template author wrote; any refusal means "no")
        return None


def common_prefix_len(a: str, b: str) -> int:
    """Length of the longest common prefix, by bisection on slices (memcmp, not a Python loop per char).

    Example:
        >>> common_prefix_len("<s>USER: hi ASSISTANT:", "<s>USER: hi ASSISTANT: ok")
        22
    """
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _tail_match(text: str, at: int, rendered: str) -> int:
    """Length of the longest tail of `rendered[at:]` that `text` continues with at `at` (0 if none)."""
    first = text[at : at + 1]
    cut = rendered.find(first, at) if first else -1
    while cut != -1:
        if text.startswith(rendered[cut:], at):
            return len(rendered) - cut
        cut = rendered.find(first, cut + 1)
    return 0


def token_mask(offsets, ranges) -> np.ndarray:
    """Which tokens lie in the character ranges: a token is in when its span is not empty (special tokens a
    tokenizer adds have (0, 0)) and it starts in a range [start, end), or holds a range's first character
    (a generation prompt that ends in a space: "Assistant: " + "the" tokenizes as "Assistant:" + " the", and
    " the" is the answer's first token, which must train).

    Args:
        offsets: (n, 2) character offsets of the tokens, as a fast tokenizer's `return_offsets_mapping` gives.
        ranges: (start, end) character ranges, e.g. from `answer_char_ranges`; empty ones select nothing.

    Returns:
        bool array of shape (n,).

    Example:
        >>> token_mask([(0, 0), (0, 3), (3, 5), (5, 9), (9, 12)], [(3, 9)]).tolist()
        [False, False, True, True, False]
        >>> token_mask([(0, 3), (3, 7), (7, 9)], [(4, 9)]).tolist()  # (3, 7) holds the answer's first character
        [False, True, True]
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    ranges = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
    tok_start, tok_end = offsets[:, 0], offsets[:, 1]
    if len(ranges) == 0:
        return np.zeros(len(offsets), dtype=bool)
    ranges = ranges[np.argsort(ranges[:, 0], kind="stable")]
    # The furthest end among ranges opened at or before a position decides whether it is covered, which
    # also holds when ranges touch or overlap.
    reach = np.maximum.accumulate(ranges[:, 1])
    last = np.searchsorted(ranges[:, 0], tok_start, side="right") - 1
    covered = (last >= 0) & (tok_start < reach[np.maximum(last, 0)])
    opens = ranges[ranges[:, 1] > ranges[:, 0], 0]  # a range that starts strictly inside a token
    nxt = np.searchsorted(opens, tok_start, side="right")
    straddles = (nxt < len(opens)) & (opens[np.minimum(nxt, max(len(opens) - 1, 0))] < tok_end) if len(opens) else False
    return (covered | straddles) & (tok_end > tok_start)


class TemplateRenderer:
    """`render(messages, add_generation_prompt) -> str` with a tokenizer's or processor's chat template.

    Picklable (it holds the tokenizer or processor and a dict), so `datasets.map` can ship it to workers
    and fingerprint it.
    """

    def __init__(self, processor_or_tokenizer, template_kwargs: dict):
        self.processor = processor_or_tokenizer
        self.template_kwargs = dict(template_kwargs)

    def __call__(self, messages, add_generation_prompt: bool) -> str:
        # Processors rewrite message["content"] in place (image_url items); the caller's dicts stay as given.
        return self.processor.apply_chat_template(
            [dict(m) for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **self.template_kwargs,
        )

    def __repr__(self) -> str:
        return f"TemplateRenderer({type(self.processor).__name__}, {self.template_kwargs!r})"


def renderer(processor_or_tokenizer, **template_kwargs) -> TemplateRenderer:
    """The `render` function `answer_char_ranges` needs, from a tokenizer or processor with a chat template.

    Args:
        processor_or_tokenizer: anything with transformers' `apply_chat_template(messages, tokenize=False,
            add_generation_prompt=...)`.
        **template_kwargs: passed to the template on every render (e.g. `enable_thinking=False`,
            `date_string="26 Jul 2024"`).

    Returns:
        A picklable `TemplateRenderer`.

    Example:
        >>> from chunker.testing._tokenizer import make_tokenizer
        >>> template = "{{ greeting }}{% for m in messages %}{{ m.content }}{% endfor %}"
        >>> tok = make_tokenizer(["<s>"], chat_template=template)
        >>> renderer(tok, greeting="> ")([{"role": "user", "content": "hi"}], True)
        '> hi'
    """
    return TemplateRenderer(processor_or_tokenizer, template_kwargs)
