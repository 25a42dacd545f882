"""Families whose image processor has only a torchvision backend: the tile grammars of Command A Vision
(`Cohere2VisionProcessor`) and Llama 4 (`Llama4Processor`), written in `chunker.families.tv_tiles`, and MiniMax-M3
(`MiniMaxM3VLProcessor`), a grid family whose bracket grammar is learned from its processor. Each is built offline with
its real image processor (`chunker.testing.families_tv`; the module skips without torchvision).

References come from the processor itself (its expansion of each image in `text_replacement_offsets`, mapped to tokens
by its own offsets; its output for an image alone; its image processor's pixels and aspect ratios for a window's images
alone), from the chat template rendering the conversation incrementally, or from ids read directly; never from
chunker's functions. Llama 4's template is the one transformers ships as its processor's default (vendored, see
`tests/data/chat_templates/SOURCES.md`); Command A Vision's and MiniMax-M3's are labelled stand-ins
(`families_tv.STAND_IN_TEMPLATE`, `families_tv.MINIMAX_STAND_IN_TEMPLATE`): no public copy of the checkpoints' was found.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from model_checks import MISMATCH, assert_cut_raises, assert_trains, naive_cut, random_images

import chunker
from chunker.collator import WindowCollator

pytest.importorskip("torchvision", reason="the image processors of Command A Vision, Llama 4 and MiniMax-M3 have only "
                                          "a torchvision backend")

from chunker.testing.families_tv import FAMILIES_TV, LEARNED_TV, build_model, build_processor

ALL = FAMILIES_TV + LEARNED_TV

# (height, width): a 2x2 grid of tiles and a thumbnail (global tile), one tile, a 1x3 grid and one, a 1x2 grid and one
SIZES = ((40, 60), (16, 16), (16, 40), (16, 30))
TILES = (5, 1, 4, 3)  # pixel rows of each image alone: the tile image processors' own, pinned
MAX_LENGTH = 64
ANSWERS = ("a cat sits on a mat next to a red ball. " * 2, "the quick brown fox jumps over the lazy dog.",
           "describe this picture in detail. answer briefly. " * 2)
# family -> (open, close, the placeholder the model fills, the other tokens only an image span holds)
TOKENS = {"cohere2_vision": ("<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", ("<|IMG_LINE_BREAK|>",)),
          "llama4": ("<|image_start|>", "<|image_end|>", "<|patch|>",
                     ("<|image|>", "<|tile_x_separator|>", "<|tile_y_separator|>")),
          "minimax_m3_vl": ("]<]start of image[>[", "]<]end of image[>[", "]<]image[>[", ())}
PARTS = {"cohere2_vision": ("vision_tower", "multi_modal_projector", "language_model"),
         "llama4": ("vision_model", "multi_modal_projector", "language_model"),
         "minimax_m3_vl": ("vision_tower", "multi_modal_projector", "language_model")}
PER_TILE = 4  # placeholders per tile: (16 / 4)² patches, pixel-shuffled 2x2


@cache
def processor(family):
    return build_processor(family)


def ids_of(family, *tokens):
    return [processor(family).tokenizer.convert_tokens_to_ids(t) for t in tokens]


def grammar_ids(family):
    """(open, close, placeholder, [the other span tokens]) ids."""
    open_, close, patch, others = TOKENS[family]
    return (*ids_of(family, open_, close, patch), ids_of(family, *others))


@cache
def images():
    return tuple(random_images(SIZES, seed=3))


def conversation():
    """Three turns: one image, then two images back to back, then one image after text."""
    image = {"type": "image"}
    users = [[image, {"type": "text", "text": "describe this picture"}],
             [image, image, {"type": "text", "text": "compare the two images"}],
             [{"type": "text", "text": "and this one?"}, image]]
    messages = []
    for user, answer in zip(users, ANSWERS):
        messages += [{"role": "user", "content": user},
                     {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return messages


def arrays(out):
    """A processor output's tensors as numpy arrays (Llama 4's bfloat16 pixels as float32, which holds them exactly)."""
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() if isinstance(v, torch.Tensor) else v
            for k, v in out.items()}


def process(family, text, imgs, **kwargs):
    return arrays(processor(family)(text=[text], images=list(imgs) or None, return_tensors="pt", **kwargs))


def image_processor(family, imgs):
    return processor(family).image_processor(list(imgs), return_tensors="pt")


@cache
def processed(family):
    """The processor's own output for the whole conversation, with its expansion of each image."""
    text = processor(family).apply_chat_template(conversation(), tokenize=False)
    return process(family, text, images(), return_text_replacement_offsets=True, return_offsets_mapping=True)


def expanded_spans(family):
    """(first token, end token) of each image as the processor expanded it: its replacement's characters mapped to
    tokens by the processor's own offsets (every image token is one token), in text order."""
    out = processed(family)
    starts = out["offset_mapping"][0][:, 0]
    return [(int(np.searchsorted(starts, r["new_span"][0])), int(np.searchsorted(starts, r["new_span"][1])))
            for r in out["text_replacement_offsets"][0]]


def own_tiles(family, image):
    """Pixel rows (tiles, and a thumbnail / global tile when there are several; MiniMax-M3: patches) the image processor
    makes of `image` alone."""
    return int(image_processor(family, [image])["pixel_values"].shape[0])


@cache
def alone_counts(family):
    """Placeholders the processor gives each image of `images()` alone."""
    placeholder = ids_of(family, TOKENS[family][2])[0]
    return [int((process(family, f"x {processor(family).image_token}", [im])["input_ids"][0] == placeholder).sum())
            for im in images()]


def literal(family, image):
    """The text an image expands to, written from the processor's grammar and the image processor's tiles (Command A
    Vision), aspect ratio (Llama 4) or grid (MiniMax-M3) for the image alone."""
    if family == "minimax_m3_vl":  # `image_token × (t·h·w / merge²)` in the processor's own bracket
        grid = image_processor(family, [image])["image_grid_thw"][0].tolist()
        return f"]<]start of image[>[{']<]image[>[' * (grid[0] * grid[1] * grid[2] // 4)}]<]end of image[>["
    if family == "cohere2_vision":
        tile = "<|IMG_PATCH|>" * PER_TILE + "<|IMG_LINE_BREAK|>"
        return f"<|START_OF_IMG|>{tile * own_tiles(family, image)}<|END_OF_IMG|>"
    rows, cols = image_processor(family, [image])["aspect_ratios"][0].tolist()
    patches = "<|patch|>" * PER_TILE
    grid = "".join("<|tile_x_separator|>".join([patches] * cols) + "<|tile_y_separator|>" for _ in range(rows))
    return f"<|image_start|>{grid if rows * cols > 1 else ''}<|image|>{patches}<|image_end|>"


def pre_tokenized(family):
    out = processed(family)
    ids = out["input_ids"][0]
    row = {"input_ids": ids, "labels": ids, "pixel_values": out["pixel_values"],
           "images": [f"image {k}" for k in range(len(SIZES))]}
    if "image_grid_thw" in out:
        row["image_grid_thw"] = out["image_grid_thw"]
    return row


# ---------------------------------------------------------------------- the grammar against the processor


def test_minimax_m3_is_learned_as_a_grid_bracket_and_a_broken_grammar_fails_the_probe():
    """No adapter names MiniMaxM3VLProcessor: its grammar is learned from its own output, the bracket it writes around
    `image_token × prod(image_grid_thw) / merge²`, with its model's `mm_token_type_ids` column."""
    from test_families import check_probe_and_twin

    from chunker.families import adapter_for
    from chunker.families.learned import Learned

    adapter = adapter_for(processor("minimax_m3_vl"))
    open_, close, image, _ = grammar_ids("minimax_m3_vl")
    assert isinstance(adapter, Learned) and adapter.count_rule == "grid" and adapter.merge_size == 2
    assert (adapter.spec.kind, adapter.spec.open_ids, adapter.spec.close_ids, adapter.spec.image_token_id) == (
        "bracket", (open_,), (close,), image)
    assert adapter.spec.type_ids_column == "mm_token_type_ids"
    check_probe_and_twin(processor("minimax_m3_vl"))


@pytest.mark.parametrize("family", FAMILIES_TV)
def test_detected_and_the_grammar_probe_passes_and_a_broken_grammar_fails_it(family):
    from test_families import check_probe_and_twin

    spec = chunker.ImageSpanSpec.from_processor(processor(family))
    open_, close, patch, others = grammar_ids(family)
    assert (spec.family, spec.kind, spec.open_ids, spec.close_ids, spec.image_token_id) == (
        family, "bracket", (open_,), (close,), patch)
    assert sorted(spec.body_ids) == sorted(others) and spec.tokens_per_tile == PER_TILE
    check_probe_and_twin(processor(family))


def test_the_vendored_llama4_template_is_the_processors_default_and_renders_its_turns():
    """The vendored file is, byte for byte, the template transformers ships as `Llama4Processor`'s default, and it
    renders a turn as `<|header_start|>role<|header_end|>\\n\\n content <|eot|>` after the BOS (hand-written)."""
    from transformers.models.llama4 import processing_llama4

    from chunker.testing._templates import vendored_template
    from chunker.testing.families_tv import LLAMA4_TEMPLATE

    assert vendored_template(LLAMA4_TEMPLATE) == processing_llama4.chat_template == processor("llama4").chat_template
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "a cat."}]}]
    assert processor("llama4").apply_chat_template(messages, tokenize=False) == (
        "<|begin_of_text|><|header_start|>user<|header_end|>\n\n<|image|>what is it?<|eot|>"
        "<|header_start|>assistant<|header_end|>\n\na cat.<|eot|>")


@pytest.mark.parametrize("family", ALL)
def test_each_span_is_the_processors_own_expansion_of_its_image(family):
    """The spans chunker finds are exactly the processor's replacements of the four images, each the literal text of
    the family's grammar for the tiles (grid) the image processor makes of that image alone, and the placeholder counts
    those of the processor on each image alone."""
    out = processed(family)
    ids = out["input_ids"][0]
    if family in FAMILIES_TV:
        assert [own_tiles(family, im) for im in images()] == list(TILES)
    replacements = [r["replacement"] for r in out["text_replacement_offsets"][0]]
    assert replacements == [literal(family, im) for im in images()]
    spans = chunker.find_image_spans(ids, chunker.ImageSpanSpec.from_processor(processor(family)))
    assert list(zip(spans.starts.tolist(), spans.ends.tolist())) == expanded_spans(family)
    assert spans.counts.tolist() == alone_counts(family)
    if family in FAMILIES_TV:
        assert alone_counts(family) == [PER_TILE * t for t in TILES]


@pytest.mark.parametrize("family", ALL)
def test_a_torn_image_is_refused_by_name_and_the_whole_row_is_found(family):
    """A row cut inside an image (its tiles without the closing token) is a named SpanError; the whole row gives one
    span per image."""
    ids = processed(family)["input_ids"][0]
    spec = chunker.ImageSpanSpec.from_processor(processor(family))
    end = expanded_spans(family)[0][1]
    with pytest.raises(chunker.SpanError, match="never closed"):
        chunker.find_image_spans(ids[: end - 3], spec)
    assert len(chunker.find_image_spans(ids, spec)) == len(SIZES)


# ---------------------------------------------------------------------- windows


@pytest.mark.parametrize("family", ALL)
@pytest.mark.parametrize("max_length", [MAX_LENGTH, 96])
def test_pre_tokenized_windows_keep_every_image_whole_with_exactly_its_own_pixel_rows(family, max_length):
    """Each window holds whole images only (every one opened, its tiles, closed) and the row's pixel rows of exactly
    those images (MiniMax-M3: and their `image_grid_thw` rows), equal to the image processor's output for the window's
    images alone."""
    imgs, spans = images(), expanded_spans(family)
    open_, close, patch, _ = grammar_ids(family)
    counts = [e - s for s, e in spans]
    windows = chunker.WindowSplitter(processor(family), max_length=max_length, train_on="all",
                                     keep_pixels=True).split_example(pre_tokenized(family))
    assert len(windows) >= 2
    seen = []
    for w in windows:
        ids = np.asarray(w["input_ids"])
        assert len(ids) <= max_length
        own = [int(n.split()[1]) for n in w["images"]]
        opens, closes = np.flatnonzero(ids == open_), np.flatnonzero(ids == close)
        assert len(opens) == len(closes) == len(own) and (opens < closes).all()
        assert [int(b - a + 1) for a, b in zip(opens, closes)] == [counts[i] for i in own]
        assert int((ids == patch).sum()) == sum(alone_counts(family)[i] for i in own)
        if own:
            alone = arrays(image_processor(family, [imgs[i] for i in own]))
            np.testing.assert_array_equal(np.asarray(w["pixel_values"]), alone["pixel_values"])
            if family == "minimax_m3_vl":
                np.testing.assert_array_equal(np.asarray(w["image_grid_thw"]), alone["image_grid_thw"])
        else:
            assert "pixel_values" not in w or not np.asarray(w["pixel_values"]).size
        seen += own
    assert sorted(set(seen)) == list(range(len(SIZES)))  # an image may come again whole as a window's context


@pytest.mark.parametrize("family", ALL)
def test_a_window_too_small_for_an_image_never_cuts_it(family):
    """The largest image (5 tiles: 27 tokens; MiniMax-M3: 42) cannot fit 3 tokens less: a named OversizeSpanError,
    never a cut; a window 13 tokens larger splits the row."""
    largest = max(e - s for s, e in expanded_spans(family))
    assert largest == (42 if family == "minimax_m3_vl" else 27)
    splitter = lambda n: chunker.WindowSplitter(processor(family), max_length=n, train_on="all")
    with pytest.raises(chunker.OversizeSpanError, match=f"of {largest} tokens"):
        splitter(largest - 3).split_example(pre_tokenized(family))
    assert splitter(largest + 13).split_example(pre_tokenized(family))


def reference_targets(family, messages, imgs):
    """Supervised tokens by incremental templating, on the processor's tokens: what each answer adds to the
    conversation before it with the generation prompt, less the whitespace-only tokens the template puts after the
    turn (the shared contract's rule, tests/test_families.py)."""
    render = lambda msgs, gen: processor(family).apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    whole = processed(family)["input_ids"][0]
    out, n_img = [], 0
    for k, msg in enumerate(messages):
        n_img += sum(c.get("type") == "image" for c in msg["content"])
        if msg["role"] != "assistant":
            continue
        prompt = process(family, render(messages[:k], True), imgs[:n_img])["input_ids"][0]
        full = process(family, render(messages[:k + 1], False), imgs[:n_img])["input_ids"][0]
        assert (full[:len(prompt)] == prompt).all() and (whole[:len(full)] == full).all()
        answer = full[len(prompt):]
        while not processor(family).tokenizer.decode(answer[-1:]).strip():  # layout after the turn: not trained
            answer = answer[:-1]
        out.append(answer)
    assert [a[-1] for a in out] == [processor(family).tokenizer.eos_token_id] * len(out)  # each answer ends its turn
    return np.concatenate(out)


@pytest.mark.parametrize("family", ALL)
@pytest.mark.parametrize("max_length,overlap", [(MAX_LENGTH, 0), (80, 16)])
def test_conversation_windows_train_every_answer_token_exactly_once(family, max_length, overlap):
    """From the conversation itself: windows of at most max_length carry exactly the images whose spans they hold,
    and their supervised tokens, in order, are the answers as the chat template renders them, each once."""
    messages, imgs = conversation(), images()
    counts = [e - s for s, e in expanded_spans(family)]
    open_, close, patch, others = grammar_ids(family)
    windows = chunker.WindowSplitter(processor(family), max_length=max_length, overlap=overlap).split_example(
        {"messages": messages, "images": imgs}, index=5)
    assert len(windows) >= 2
    trained = []
    for w in windows:
        ids, labels = np.asarray(w["input_ids"]), np.asarray(w["labels"])
        assert len(ids) <= max_length and w["source_index"] == 5
        own = [next(i for i, im in enumerate(imgs) if im is x) for x in w["images"]]
        opens, closes = np.flatnonzero(ids == open_), np.flatnonzero(ids == close)
        assert [int(b - a + 1) for a, b in zip(opens, closes)] == [counts[i] for i in own]
        assert not np.isin(labels, [open_, close, patch, *others]).any()
        trained.append(labels[1:][labels[1:] != -100])
    np.testing.assert_array_equal(np.concatenate(trained), reference_targets(family, messages, imgs))


# ---------------------------------------------------------------------- collator


def windows_from_conversation(family, max_length=MAX_LENGTH):
    return chunker.WindowSplitter(processor(family), max_length=max_length).split_example(
        {"messages": conversation(), "images": images()})


@pytest.mark.parametrize("family", ALL)
def test_the_collator_names_the_row_and_image_whose_span_disagrees_and_its_twin_collates(family):
    """Two windows whose first images are swapped (5 and 1 tiles: 20 and 4 placeholders; MiniMax-M3: 40 and 4) fail
    the per-item check, naming each row and its image; with their own images they collate, with the pixels the image
    processor makes of them."""
    with_images = [w for w in windows_from_conversation(family) if len(w["images"])]
    a = next(w for w in with_images if w["images"][0] is images()[0])
    b = next(w for w in with_images if w["images"][0] is images()[1])
    collator = WindowCollator(processor(family))
    swapped = [{**a, "images": [b["images"][0], *a["images"][1:]]}, {**b, "images": [a["images"][0], *b["images"][1:]]}]
    big, small = alone_counts(family)[:2]
    assert (big, small) == ((40, 4) if family == "minimax_m3_vl" else (20, 4))
    with pytest.raises(chunker.ImageTokenMismatchError, match=rf"row 0 \(source_index -1, window_index \d\): image 0: "
                                                             rf"{big} tokens \(its media need {small}\); row 1 "
                                                             rf"\(source_index -1, window_index \d\): image 0: {small} "
                                                             rf"tokens \(its media need {big}\)"):
        collator(swapped)
    batch = collator([a, b])
    own = image_processor(family, [*a["images"], *b["images"]])["pixel_values"]
    torch.testing.assert_close(batch["pixel_values"], own, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES_TV)
def test_the_collator_checks_pre_tokenized_pixel_rows_against_their_spans_and_its_twin_collates(family):
    """A pre-tokenized window carrying another window's pixel rows (the 5 of a 2x2-grid image for the 3 of its 1x2
    one) is refused by name: rows without per-image tile counts are checked tile by tile, and the two tiles past the
    span's three have none; with its own rows it collates, and they are the image processor's of its image."""
    windows = chunker.WindowSplitter(processor(family), max_length=MAX_LENGTH, train_on="all").split_example(
        pre_tokenized(family))
    last = next(w for w in windows if list(w["images"]) == ["image 3"])
    first = next(w for w in windows if list(w["images"]) == ["image 0"])
    bare = lambda w, pixels: {**{k: v for k, v in w.items() if k != "images"}, "pixel_values": pixels}
    collator = WindowCollator(processor(family))
    with pytest.raises(chunker.ImageTokenMismatchError, match=r"row 0 \(source_index -1, window_index \d\): image 3: "
                                                             r"no span in the text \(its media need 4 tokens\); image "
                                                             r"4: no span"):
        collator([bare(last, first["pixel_values"])])
    own = arrays(image_processor(family, [images()[3]]))["pixel_values"]
    np.testing.assert_array_equal(collator([bare(last, last["pixel_values"])])["pixel_values"].numpy(), own)


# ---------------------------------------------------------------------- a real tiny model


@pytest.mark.parametrize("family", ALL)
def test_the_tiny_model_trains_on_collated_windows_and_naive_truncation_fails(family):
    """The family's real model class runs forward and backward on the collated windows and its vision tower, projector
    and language model all change; the same row cut naively at MAX_LENGTH with all its pixels raises the model's own
    error, while the whole row runs (the positive control). Llama 4's pixels come bfloat16 (the checkpoint's dtype)
    and are cast for the float32 tiny model."""
    model = build_model(family, processor(family))
    collator = WindowCollator(processor(family), pad_to_multiple_of=8)
    windows = [w for w in windows_from_conversation(family, 96) if (np.asarray(w["labels"]) != -100).any()]
    assert any(len(w["images"]) for w in windows)
    batch = collator(windows)
    assert batch["pixel_values"].shape[0] == sum(own_tiles(family, im) for w in windows for im in w["images"])
    batch["pixel_values"] = batch["pixel_values"].float()
    assert_trains(model, [batch] * 2, PARTS[family])
    out = processed(family)
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
    whole = {k: torch.as_tensor(out[k]) for k in keys if k in out}
    assert_cut_raises(model, naive_cut(whole, MAX_LENGTH), whole, match=MISMATCH)
