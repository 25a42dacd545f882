"""Hypothesis strategies for token-level conversations of every grammar kind, with an independent reference.

Each strategy draws a hand-made `ImageSpanSpec` modelled on a real family (scaled-down token counts) and a
conversation built token by token: BOS, an optional system turn, user turns with 0-4 media items (back to back,
at the very start, at the very end), assistant answers of varied length. While it emits tokens the generator
records what it emitted — which positions are supervised (assistant text and end-of-turn), where each media
item starts and ends, its placeholder count and its fake pixel rows — so the tests compare chunker's output with
a reference that no chunker code computed.

Text tokens are unique ids (TEXT + a counter), so a window's tokens can be mapped back to their positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from chunker.spec import ImageSpanSpec

IGNORE = -100
BOS, EOS, NL, EOT = 1, 2, 3, 4
TURN, USER, MODEL, SYSTEM = 10, 11, 12, 13
INSTRUCTION, RESPONSE, SYSTEM_MARK = (TURN, USER, NL), (TURN, MODEL, NL), (TURN, SYSTEM, NL)
IMG, VID, OPEN, CLOSE, BREAK, END, FAKE, GLOBAL = 20, 21, 22, 23, 24, 25, 26, 27
ROW_COL = {(r, c): 30 + 3 * (r - 1) + (c - 1) for r in (1, 2, 3) for c in (1, 2, 3)}
TEXT = 1000

FAMILIES = {
    "gemma3": "bracket",
    "gemma3_pan_and_scan": "bracket",
    "qwen2_vl": "bracket",
    "qwen3_vl": "bracket",
    "internvl": "bracket",
    "llava": "run",
    "llava_next": "run",
    "paligemma": "run",
    "pixtral": "terminated_run",
    "idefics3": "tiles",
}
KINDS = ("bracket", "run", "terminated_run", "tiles")


def families_of(kind: str) -> list[str]:
    """The modelled families whose spans are of grammar `kind`."""
    return [f for f, k in FAMILIES.items() if k == kind]


@dataclass
class Item:
    """One media item as the generator emitted it: span [start, end), placeholder count, its tensor rows."""

    start: int
    end: int
    stream: int  # 0 image, 1 video
    count: int
    name: str
    rows: dict = field(default_factory=dict)  # tensor key -> the rows this item owns


@dataclass
class Conversation:
    """A generated row and its reference (computed while emitting tokens, not by chunker)."""

    family: str
    kind: str
    spec: ImageSpanSpec
    ids: np.ndarray
    supervised: np.ndarray  # assistant answer tokens + end-of-turn
    marker_supervised: np.ndarray  # what response-marker masking gives: the whole assistant turn, media excluded
    type_ids: np.ndarray  # 1 image placeholder, 2 video placeholder, else 0
    items: list
    turn_starts: np.ndarray
    has_bos: bool
    system_end: int | None  # position of the first user marker when a system turn leads
    media_prefix: int  # PaliGemma: leading images + BOS, repeated in every window
    tensor_keys: tuple = ()
    max_length: int = 64
    overlap: int = 0
    prefix: str = "bos"
    train_from: str = "labels"  # "labels", "assistant_masks" or "markers"
    with_images: bool = True
    with_tensors: bool = False

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def starts(self) -> np.ndarray:
        return np.array([it.start for it in self.items], dtype=np.int64)

    @property
    def ends(self) -> np.ndarray:
        return np.array([it.end for it in self.items], dtype=np.int64)

    @property
    def expected_mask(self) -> np.ndarray:
        """The loss mask the splitter must use for this row (from its labels, mask column or turn markers)."""
        return self.marker_supervised if self.train_from == "markers" else self.supervised

    @property
    def expected_labels(self) -> np.ndarray:
        return np.where(self.expected_mask, self.ids, IGNORE)

    def images(self) -> list:
        return [it.name for it in self.items if it.stream == 0]

    def videos(self) -> list:
        return [it.name for it in self.items if it.stream == 1]

    def tensors(self) -> dict:
        """Fake but consistent pixel tensors: every row holds its item's number, so slices can be traced."""
        out = {}
        for key in self.tensor_keys:
            parts = [it.rows[key] for it in self.items if key in it.rows]
            out[key] = np.concatenate(parts) if parts else None
        return {k: v for k, v in out.items() if v is not None}

    def window_tensors(self, chosen) -> dict:
        """The tensors a window holding items `chosen` (indices into `items`) must carry."""
        out = {}
        full = self.tensors()
        for key, value in full.items():
            parts = [self.items[i].rows[key] for i in chosen if key in self.items[i].rows]
            out[key] = np.concatenate(parts) if parts else value[:0]
        return out

    def row(self) -> dict:
        """The pre-tokenized row handed to `WindowSplitter.split_example`."""
        r = {"input_ids": self.ids.tolist()}
        if self.train_from == "labels":
            r["labels"] = np.where(self.supervised, self.ids, IGNORE).tolist()
        elif self.train_from == "assistant_masks":
            r["assistant_masks"] = self.supervised.astype(np.int64).tolist()
        if self.with_images:
            r["images"] = self.images()
        if self.videos():
            r["videos"] = self.videos()
        if self.with_tensors:
            r.update(self.tensors())
        return r

    def prefix_upper(self) -> int:
        """The most tokens the splitter may repeat before each window (its prefix policy, bounded from above)."""
        if self.spec.prefix_media and self.media_prefix:
            return self.media_prefix
        if self.prefix == "none":
            return 0
        if self.prefix == "system" and self.system_end is not None:
            return self.system_end
        return int(self.has_bos)

    def max_span(self) -> int:
        return max((it.end - it.start for it in self.items), default=0)


class _Builder:
    """Appends tokens and records the reference while doing so."""

    def __init__(self):
        self.ids, self.sup, self.msup, self.types, self.items, self.turns = [], [], [], [], [], []
        self.text_id = TEXT
        self.in_answer = False
        self.counts = [0, 0]

    def tok(self, *ids, sup=False, type_id=0):
        for i in ids:
            self.ids.append(int(i))
            self.sup.append(sup)
            self.msup.append(self.in_answer and type_id == 0)
            self.types.append(type_id)

    def text(self, k, sup=False):
        for _ in range(k):
            self.tok(self.text_id, sup=sup)
            self.text_id += 1

    def marker(self, marker, turn):
        if turn:
            self.turns.append(len(self.ids))
        self.tok(*marker)

    def media(self, tokens, types, stream, count, rows):
        start = len(self.ids)
        for t, ty in zip(tokens, types):
            self.tok(t, type_id=ty)
        k = self.counts[stream]
        self.counts[stream] += 1
        name = f"{'image' if stream == 0 else 'video'}{k}"
        self.items.append(Item(start, len(self.ids), stream, count, name, rows))


def _rows(value, n, *shape, dtype=np.float32):
    return np.full((n, *shape), value, dtype=dtype)


@st.composite
def _family_spec(draw, family):
    """A hand-made spec for `family`, with scaled-down fixed counts, and its media emitter parameters."""
    turns = {"instruction_ids": INSTRUCTION, "response_ids": RESPONSE}
    if family in ("gemma3", "gemma3_pan_and_scan"):
        per = draw(st.integers(2, 12))
        spec = ImageSpanSpec(
            family="gemma3", kind="bracket", image_token_id=IMG, open_ids=(OPEN,), close_ids=(CLOSE,),
            tokens_per_image=per, type_ids_column="token_type_ids", bos_id=BOS, group_crops=True,
            extra={"pixel_rules": {"pixel_values": ("crops", 0)}}, **turns,
        )
        return spec, {"per": per, "crops": family == "gemma3_pan_and_scan"}
    if family in ("qwen2_vl", "qwen3_vl"):
        spec = ImageSpanSpec(
            family=family, kind="bracket", image_token_id=IMG, video_token_id=VID, open_ids=(OPEN,),
            close_ids=(CLOSE,), type_ids_column="mm_token_type_ids", bos_id=None,
            extra={"token_rule": "grid", "merge_size": 2,
                   "pixel_rules": {"pixel_values": ("grid", 0), "pixel_values_videos": ("grid", 0)}},
            **turns,
        )
        return spec, {"nested": family == "qwen3_vl"}
    if family == "internvl":
        per = draw(st.integers(2, 6))
        spec = ImageSpanSpec(
            family="internvl", kind="bracket", image_token_id=IMG, open_ids=(OPEN,), close_ids=(CLOSE,),
            tokens_per_tile=per, bos_id=None, extra={"pixel_rules": {"pixel_values": ("tiles", 0)}}, **turns,
        )
        return spec, {"per": per}
    if family == "llava":
        per = draw(st.integers(2, 16))
        spec = ImageSpanSpec(family="llava", kind="run", image_token_id=IMG, tokens_per_image=per, bos_id=BOS, **turns)
        return spec, {"per": per}
    if family == "llava_next":
        spec = ImageSpanSpec(family="llava_next", kind="run", image_token_id=IMG, bos_id=BOS, **turns)
        return spec, {}
    if family == "paligemma":
        per = draw(st.integers(2, 10))
        spec = ImageSpanSpec(
            family="paligemma", kind="run", image_token_id=IMG, tokens_per_image=per, bos_id=BOS,
            instruction_ids=(), response_ids=(NL,), prefix_media=True,
        )
        return spec, {"per": per}
    if family == "pixtral":
        spec = ImageSpanSpec(
            family="pixtral", kind="terminated_run", image_token_id=IMG, body_ids=(BREAK,), end_id=END,
            bos_id=BOS, **turns,
        )
        return spec, {}
    if family == "idefics3":
        per = draw(st.integers(1, 5))
        spec = ImageSpanSpec(
            family="idefics3", kind="tiles", image_token_id=IMG, open_ids=(FAKE,), global_id=GLOBAL,
            tile_ids=tuple(sorted(ROW_COL.values())), tokens_per_tile=per, bos_id=BOS,
            extra={"pixel_rules": {"pixel_values": ("tiles", 0), "pixel_attention_mask": ("tiles", 0)}}, **turns,
        )
        return spec, {"per": per}
    raise AssertionError(family)


TENSOR_KEYS = {
    "gemma3": ("pixel_values",),
    "gemma3_pan_and_scan": ("pixel_values", "num_crops"),
    "qwen2_vl": ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"),
    "qwen3_vl": ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"),
    "internvl": ("pixel_values",),
    "llava": ("pixel_values",),
    "llava_next": ("pixel_values", "image_sizes"),
    "paligemma": ("pixel_values",),
    "pixtral": ("pixel_values", "image_sizes"),
    "idefics3": ("pixel_values", "pixel_attention_mask"),
}


def _emit_media(draw, b: _Builder, family, params, video=False):
    """Append one media item of `family` to `b`, with the tensor rows it owns."""
    k = len(b.items)
    v = float(k + 1)
    if family.startswith("gemma3"):
        per = params["per"]
        crops = draw(st.integers(0, 2)) if params["crops"] else 0
        block = [OPEN] + [IMG] * per + [CLOSE]
        toks = list(block)
        for c in range(crops):
            toks += [NL, TEXT + 100_000 + 10 * k + c, NL] + block
        types = [1 if t == IMG else 0 for t in toks]
        rows = {"pixel_values": _rows(v, 1 + crops, 3, 2, 2)}
        if params["crops"]:
            rows["num_crops"] = np.array([crops], dtype=np.int64)
        b.tok(NL, NL)
        b.media(toks, types, 0, per * (1 + crops), rows)
        b.tok(NL, NL)
        return
    if family.startswith("qwen"):
        h, w = draw(st.sampled_from([2, 4, 6])), draw(st.sampled_from([2, 4]))
        if not video:
            count = h * w // 4
            toks = [OPEN] + [IMG] * count + [CLOSE]
            rows = {"pixel_values": _rows(v, h * w, 6), "image_grid_thw": np.array([[1, h, w]], dtype=np.int64)}
            b.media(toks, [1 if t == IMG else 0 for t in toks], 0, count, rows)
            return
        t = draw(st.integers(1, 3))
        per_frame = h * w // 4
        if params["nested"]:
            toks = [OPEN]
            for f in range(t):
                toks += [TEXT + 200_000 + 10 * k + f, OPEN] + [VID] * per_frame + [CLOSE]
            toks += [CLOSE]
        else:
            toks = [OPEN] + [VID] * (t * per_frame) + [CLOSE]
        rows = {
            "pixel_values_videos": _rows(v, t * h * w, 6),
            "video_grid_thw": np.array([[t, h, w]], dtype=np.int64),
            "second_per_grid_ts": np.array([0.5 * (k + 1)], dtype=np.float32),
        }
        b.media(toks, [2 if x == VID else 0 for x in toks], 1, t * per_frame, rows)
        return
    if family == "internvl":
        patches = draw(st.integers(1, 4))
        toks = [OPEN] + [IMG] * (params["per"] * patches) + [CLOSE]
        b.media(toks, [1 if t == IMG else 0 for t in toks], 0, params["per"] * patches,
                {"pixel_values": _rows(v, patches, 3, 2, 2)})
        return
    if family in ("llava", "paligemma"):
        per = params["per"]
        b.media([IMG] * per, [1] * per, 0, per, {"pixel_values": _rows(v, 1, 3, 2, 2)})
        return
    if family == "llava_next":
        count = draw(st.integers(2, 14))
        rows = {"pixel_values": _rows(v, 1, 2, 3, 2, 2), "image_sizes": np.array([[count * 10, 20]], dtype=np.int64)}
        b.media([IMG] * count, [1] * count, 0, count, rows)
        b.tok(NL)  # a variable run needs a separator: back-to-back runs would read as one image
        return
    if family == "pixtral":
        r, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
        toks = []
        for i in range(r):
            toks += [IMG] * c + [END if i == r - 1 else BREAK]
        rows = {"pixel_values": _rows(v, 1, 3, 2, 2), "image_sizes": np.array([[16 * r, 16 * c]], dtype=np.int64)}
        b.media(toks, [1 if t == IMG else 0 for t in toks], 0, r * c, rows)
        return
    if family == "idefics3":
        per = params["per"]
        r, c = draw(st.sampled_from([(0, 0), (1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (3, 3)]))
        toks = []
        for i in range(1, r + 1):
            for j in range(1, c + 1):
                toks += [FAKE, ROW_COL[(i, j)]] + [IMG] * per
            toks.append(NL)
        toks += ([NL] if r else []) + [FAKE, GLOBAL] + [IMG] * per + [FAKE]
        tiles = r * c + 1
        mask = np.zeros((tiles, 2, 2), dtype=bool)
        mask[:, 0, 0] = True
        mask[:, 1, 1] = bool(k % 2)
        rows = {"pixel_values": _rows(v, tiles, 3, 2, 2), "pixel_attention_mask": mask}
        b.media(toks, [1 if t == IMG else 0 for t in toks], 0, per * tiles, rows)
        return
    raise AssertionError(family)


@st.composite
def conversations(draw, kind=None, family=None, fits=None):
    """A `Conversation` of grammar `kind` (or of `family`), with max_length, overlap, prefix and label source.

    Args:
        kind: one of KINDS; a family of that kind is sampled. None samples every family.
        family: force one family.
        fits: True keeps every span (plus the prefix and one token) within max_length, False draws any
            max_length (oversize spans become likely), None picks True 85% of the time.
    """
    if family is None:
        family = draw(st.sampled_from(families_of(kind) if kind else list(FAMILIES)))
    spec, params = draw(_family_spec(family))
    b = _Builder()
    has_bos = spec.bos_id is not None
    system_end = None
    media_prefix = 0
    videos = family.startswith("qwen")

    def user_media(max_items):
        """0-4 media items mixed with user text, back to back at times."""
        n_items = draw(st.integers(0, max_items))
        for _ in range(n_items):
            b.text(draw(st.integers(0, 3)))
            _emit_media(draw, b, family, params, video=videos and draw(st.integers(0, 3)) == 0)
        b.text(draw(st.integers(0, 4)))

    if family == "paligemma":
        for _ in range(draw(st.integers(1, 3))):
            _emit_media(draw, b, family, params)
        b.tok(BOS)
        media_prefix = len(b.ids)
        b.text(draw(st.integers(1, 8)))
        b.marker((NL,), turn=True)
        b.in_answer = True
        b.text(draw(st.integers(0, 120)), sup=True)
        b.tok(EOS, sup=True)
        b.in_answer = False
    else:
        if has_bos:
            b.tok(BOS)
        if draw(st.booleans()) and draw(st.booleans()):
            user_media(2)  # media before any turn marker: a row that opens with an image
        if draw(st.booleans()):
            b.marker(SYSTEM_MARK, turn=False)
            b.text(draw(st.integers(1, 12)))
            b.tok(EOT, NL)
        n_turns = draw(st.integers(1, 4))
        for t in range(n_turns):
            if t == 0 and len(b.ids) > int(has_bos) and not b.items:
                system_end = len(b.ids)
            b.marker(INSTRUCTION, turn=True)
            user_media(4)
            last = t == n_turns - 1
            if last and draw(st.integers(0, 4)) == 0:
                if draw(st.booleans()):
                    _emit_media(draw, b, family, params)  # the row ends on a media item
                break
            b.tok(EOT, NL)
            b.marker(RESPONSE, turn=True)
            b.in_answer = True
            b.text(draw(st.integers(0, 60)), sup=True)
            if draw(st.integers(0, 9)) == 0:
                _emit_media(draw, b, family, params)  # media inside an answer: the text after it is trained
                b.text(draw(st.integers(1, 10)), sup=True)
            b.tok(EOT, sup=True)
            b.tok(NL)
            b.in_answer = False

    ids = np.array(b.ids, dtype=np.int64)
    sup = np.array(b.sup, dtype=bool)
    msup = np.array(b.msup, dtype=bool)
    for it in b.items:
        msup[it.start:it.end] = False
    conv = Conversation(
        family=family, kind=spec.kind, spec=spec, ids=ids, supervised=sup, marker_supervised=msup,
        type_ids=np.array(b.types, dtype=np.int64), items=b.items, turn_starts=np.array(b.turns, dtype=np.int64),
        has_bos=has_bos, system_end=system_end, media_prefix=media_prefix, tensor_keys=TENSOR_KEYS[family],
    )
    conv.prefix = draw(st.sampled_from(["bos", "system", "none"]))
    conv.train_from = draw(st.sampled_from(["labels", "assistant_masks", "markers"]))
    needs_grouping = family == "gemma3_pan_and_scan" and any(it.count > params["per"] for it in b.items)
    conv.with_tensors = needs_grouping or draw(st.booleans())
    conv.with_images = draw(st.booleans()) if conv.with_tensors else True
    if fits is None:
        fits = draw(st.integers(0, 99)) < 85
    low = max(2, conv.max_span() + conv.prefix_upper() + 1, media_prefix + 2) if fits else 2
    high = max(low, conv.n + 4)
    conv.max_length = draw(st.one_of(st.integers(low, min(high, low + 24)), st.integers(low, high)))
    conv.overlap = draw(st.one_of(st.just(0), st.integers(0, conv.max_length - 1)))
    # Rows that would train nothing, and rows whose system prefix would fill half of every window, are named
    # errors (NoSupervisionError, PrefixError; see test_errors.py); the properties are about rows that split.
    assume(conv.expected_mask[1:].any())
    system_first = conv.system_end is not None and not any(it.start < conv.system_end for it in conv.items)
    assume(not (conv.prefix == "system" and system_first and conv.n > conv.max_length
                and conv.system_end >= conv.max_length // 2))
    return conv


@st.composite
def plan_inputs(draw, kind=None):
    """A conversation and the keyword arguments of a direct `plan_windows` call over its reference spans.

    The prefix is any length that does not end inside a span; boundaries are the turn starts, random
    positions or none; the loss mask is the reference or None (every non-media token trainable).
    """
    conv = draw(conversations(kind=kind))
    spans = list(zip(conv.starts.tolist(), conv.ends.tolist()))
    cuts = [p for p in range(min(conv.n, conv.max_length)) if not any(s < p < e for s, e in spans)]
    prefix_len = draw(st.one_of(st.just(0), st.sampled_from(cuts)))
    if conv.media_prefix and conv.media_prefix < conv.max_length:
        prefix_len = draw(st.sampled_from([prefix_len, conv.media_prefix]))
    boundaries = draw(st.one_of(
        st.none(), st.just(conv.turn_starts),
        st.lists(st.integers(0, max(conv.n - 1, 0)), max_size=12).map(lambda x: np.array(sorted(set(x)), np.int64)),
    ))
    loss = draw(st.sampled_from([conv.supervised, None]))
    min_fill = draw(st.sampled_from([0.5, 0.0, 0.25, 0.9, 1.0]))
    kwargs = {"max_length": conv.max_length, "overlap": conv.overlap, "prefix_len": prefix_len, "boundaries": boundaries,
                  "loss_mask": loss, "min_fill": min_fill}
    return conv, kwargs
