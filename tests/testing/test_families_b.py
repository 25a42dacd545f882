"""Offline processors and tiny models of families B produce each family's real token grammar and train.

For every family: the chat template renders the official turn markers and image placement; the processor
expands each image exactly as its source does (checked against an independent restatement of the rule and
against literal counts for the chosen image sizes); the tiny model trains on the batch; and a naive cut
inside the second image span trips the model's own check (or, where the installed model has none, is
shown to pass silently).
"""

from __future__ import annotations

import math
import re
from functools import cache

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from chunker.testing.families_b import (
    FAMILIES_B,
    build_model,
    build_processor,
    qwen_video_tokens,
)

QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
TILED = ("idefics3", "smolvlm")
SIZES = [(60, 90), (120, 60), (40, 40)]  # (height, width) of the three images
# Literal per-image facts for SIZES at the builders' small settings.
QWEN_GRIDS = [(1, 4, 6), (1, 8, 4), (1, 4, 4)]  # both patch 14 (factor 28) and patch 16 (factor 32)
TILE_ROWS_COLS = [(2, 2), (2, 1), (2, 2)]  # longest edge resized to 64, tiles of 32
INTERNVL_PATCHES = [3, 3, 1]  # tiles (+1 thumbnail when split), max_patches=4
# The models' common check (a regex; `kept` is the placeholder count left in input_ids).
MISMATCH = "Image features and image tokens do not match, tokens: (tensor\\()?{kept}\\)?, features: "

TEXT = {
    "qwen2_vl": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>describe this picture."
        "<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\na cat sits on a mat.<|im_end|>\n"
        "<|im_start|>user\nand this one?<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\na red ball.<|im_end|>\n"
    ),
    "qwen3_vl": (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>describe this picture."
        "<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\na cat sits on a mat.<|im_end|>\n"
        "<|im_start|>user\nand this one?<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\na red ball.<|im_end|>\n"
    ),
    "idefics3": (
        "<|begin_of_text|>User:<image>describe this picture.<image><end_of_utterance>\n"
        "Assistant: a cat sits on a mat.<end_of_utterance>\n"
        "User: and this one?<image><end_of_utterance>\n"
        "Assistant: a red ball.<end_of_utterance>\n"
    ),
    "smolvlm": (
        "<|im_start|>User:<image>describe this picture.<image><end_of_utterance>\n"
        "Assistant: a cat sits on a mat.<end_of_utterance>\n"
        "User: and this one?<image><end_of_utterance>\n"
        "Assistant: a red ball.<end_of_utterance>\n"
    ),
    "internvl": (
        "<|im_start|>user\n<IMG_CONTEXT>\ndescribe this picture.<IMG_CONTEXT>\n<|im_end|>\n"
        "<|im_start|>assistant\na cat sits on a mat.<|im_end|>\n"
        "<|im_start|>user\nand this one?<IMG_CONTEXT>\n<|im_end|>\n"
        "<|im_start|>assistant\na red ball.<|im_end|>\n"
    ),
}
TEXT["qwen2_5_vl"] = TEXT["qwen2_vl"]


def _version():
    from packaging.version import Version

    return Version(transformers.__version__).release[:2]


def _images():
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


def _messages():
    return [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "describe this picture."}, {"type": "image"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "a cat sits on a mat."}]},
        {"role": "user", "content": [{"type": "text", "text": "and this one?"}, {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a red ball."}]},
    ]


@cache
def _case(family):
    processor = build_processor(family)
    text = processor.apply_chat_template(_messages(), tokenize=False)
    batch = processor(text=text, images=_images(), return_tensors="pt")
    return processor, text, batch


@cache
def _model(family):
    processor, _, _ = _case(family)
    return build_model(family, processor)


def _expand(family, processor, text):
    """The processor-expanded prompt, restated from each family's source rule (independent of the processor)."""
    if family in QWEN:
        parts = text.split("<|image_pad|>")
        pads = ["<|image_pad|>" * (math.prod(g) // 4) for g in QWEN_GRIDS]
    elif family in TILED:
        parts = text.split("<image>")
        s = processor.image_seq_len
        pads = []
        for rows, cols in TILE_ROWS_COLS:
            grid = "".join(
                "".join(f"<fake_token_around_image><row_{r}_col_{c}>" + "<image>" * s for c in range(1, cols + 1))
                + "\n"
                for r in range(1, rows + 1)
            )
            pads.append(grid + "\n<fake_token_around_image><global-img>" + "<image>" * s + "<fake_token_around_image>")
    else:
        parts = text.split("<IMG_CONTEXT>")
        pads = ["<img>" + "<IMG_CONTEXT>" * processor.image_seq_length * n + "</img>" for n in INTERNVL_PATCHES]
    assert len(parts) == len(pads) + 1
    return parts[0] + "".join(p + rest for p, rest in zip(pads, parts[1:]))


def _per_image_counts(family, processor):
    if family in QWEN:
        return [math.prod(g) // 4 for g in QWEN_GRIDS]
    if family in TILED:
        return [(r * c + 1) * processor.image_seq_len for r, c in TILE_ROWS_COLS]
    return [processor.image_seq_length * n for n in INTERNVL_PATCHES]


@pytest.mark.parametrize("family", FAMILIES_B)
def test_chat_template_renders_official_turn_markers_and_image_placement(family):
    """The template text is exactly the official shape: turn markers, image placeholders where the images are."""
    _, text, _ = _case(family)
    assert text == TEXT[family]


@pytest.mark.parametrize("family", FAMILIES_B)
def test_processor_expands_each_image_exactly_as_its_source_rule(family):
    """input_ids equal the tokenized prompt expanded by the family's rule; counts per image are the literal ones."""
    processor, text, batch = _case(family)
    tok = processor.tokenizer
    ids = batch["input_ids"][0].tolist()
    expected = tok(_expand(family, processor, text), add_special_tokens=False)["input_ids"]
    assert ids == expected
    image_id = processor.image_token_id
    counts = _per_image_counts(family, processor)
    assert ids.count(image_id) == sum(counts)
    assert batch["attention_mask"].sum().item() == len(ids)


@pytest.mark.parametrize("family", QWEN)
def test_qwen_spans_companions_and_counts(family):
    """Qwen: vision_start, image_pad × grid.prod()/4, vision_end; flattened pixel rows; mm_token_type_ids 1 on pads."""
    processor, _, batch = _case(family)
    tok = processor.tokenizer
    ids = np.asarray(batch["input_ids"][0])
    start, end = tok.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"])
    grid = batch["image_grid_thw"]
    assert grid.tolist() == [list(g) for g in QWEN_GRIDS]
    starts, ends = np.flatnonzero(ids == start), np.flatnonzero(ids == end)
    counts = (grid.prod(-1) // processor.image_processor.merge_size**2).tolist()
    assert (ends - starts - 1).tolist() == counts
    for s, e in zip(starts, ends):
        assert (ids[s + 1 : e] == processor.image_token_id).all()
    patch = processor.image_processor.patch_size
    assert tuple(batch["pixel_values"].shape) == (int(grid.prod(-1).sum()), 3 * 2 * patch * patch)
    types = batch["mm_token_type_ids"][0].numpy()
    assert set(np.unique(types)) == {0, 1}
    assert (types == (ids == processor.image_token_id)).all()
    assert processor.image_token_id == tok.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert processor.video_token_id == tok.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    mm = processor._get_num_multimodal_tokens(image_sizes=SIZES)
    assert mm.num_image_tokens == counts
    assert mm.num_image_patches == grid.prod(-1).tolist()


@pytest.mark.parametrize("family", TILED)
def test_tiled_spans_and_per_row_zero_padded_pixels(family):
    """Idefics3/SmolVLM: tiles × image_seq_len tokens; pixel_values (B, max tiles, 3, 32, 32) zero padded per row."""
    processor, text, batch = _case(family)
    tok = processor.tokenizer
    ids = np.asarray(batch["input_ids"][0])
    fake, glob = tok.convert_tokens_to_ids(["<fake_token_around_image>", "<global-img>"])
    tiles = [r * c + 1 for r, c in TILE_ROWS_COLS]
    assert (ids == glob).sum() == len(tiles)
    assert (ids == fake).sum() == sum(t + 1 for t in tiles)  # one per tile, plus the closing one per image
    row_col = [t for t in tok.convert_ids_to_tokens(ids.tolist()) if t.startswith("<row_")]
    assert row_col == [
        f"<row_{r}_col_{c}>" for rows, cols in TILE_ROWS_COLS for r in range(1, rows + 1) for c in range(1, cols + 1)
    ]
    assert tuple(batch["pixel_values"].shape) == (1, sum(tiles), 3, 32, 32)
    assert tuple(batch["pixel_attention_mask"].shape) == (1, sum(tiles), 32, 32)
    if family == "idefics3":
        mm = processor._get_num_multimodal_tokens(image_sizes=SIZES)
        first, last = np.flatnonzero(ids == fake)[[0, tiles[0]]]
        assert mm.num_image_tokens[0] == last - first + 1  # first <fake> through the image's closing <fake>
        for size, n, (rows, cols) in zip(SIZES, tiles, TILE_ROWS_COLS):
            assert tuple(processor.image_processor.get_number_of_image_patches(*size, {})) == (n, rows, cols)
        assert mm.num_image_patches == tiles
    else:
        assert not hasattr(processor, "_get_num_multimodal_tokens")
    images = _images()
    two = processor(
        text=[text, "User:<image>and?<end_of_utterance>\n"],
        images=[images, images[1:2]],
        padding=True,
        return_tensors="pt",
    )
    pv, pam = two["pixel_values"], two["pixel_attention_mask"]
    assert tuple(pv.shape[:2]) == (2, sum(tiles))
    short = TILE_ROWS_COLS[1][0] * TILE_ROWS_COLS[1][1] + 1
    assert (pv[1, short:] == 0).all() and (pam[1, short:] == 0).all()
    assert (pv[1, :short] != 0).any(dim=(1, 2, 3)).all() and pam[1, :short].bool().all()


def test_internvl_spans_and_patch_rows():
    """InternVL: <img> <IMG_CONTEXT> × image_seq_length·patches </img>; pixel_values (Σ patches, 3, 56, 56)."""
    processor, _, batch = _case("internvl")
    tok = processor.tokenizer
    ids = np.asarray(batch["input_ids"][0])
    starts = np.flatnonzero(ids == processor.start_image_token_id)
    ends = np.flatnonzero(ids == processor.end_image_token_id)
    assert (ends - starts - 1).tolist() == [processor.image_seq_length * n for n in INTERNVL_PATCHES]
    assert processor.image_token_id == tok.context_image_token_id == tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert tuple(batch["pixel_values"].shape) == (sum(INTERNVL_PATCHES), 3, 56, 56)
    mm = processor._get_num_multimodal_tokens(image_sizes=SIZES)
    assert mm.num_image_patches == INTERNVL_PATCHES
    assert mm.num_image_tokens == [2 + processor.image_seq_length * n for n in INTERNVL_PATCHES]


@pytest.mark.parametrize("family", FAMILIES_B)
def test_tiny_model_trains_on_the_processed_batch(family):
    """Forward + backward of the tiny real model on the processor's batch gives a finite loss and finite grads."""
    _, _, batch = _case(family)
    model = _model(family)
    model.zero_grad()
    out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("family", FAMILIES_B)
def test_build_model_is_deterministic_in_seed(family):
    """Equal seeds give equal weights; another seed gives other weights."""
    processor, _, _ = _case(family)
    a, b, c = (build_model(family, processor, seed=s) for s in (0, 0, 1))
    pa, pb, pc = (torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def _cut_inside_second_span(family, processor, batch, into):
    """Text inputs cut `into` tokens after the start of the second image span; pixel inputs kept whole."""
    ids = batch["input_ids"][0]
    first = int(np.flatnonzero(ids.numpy() == processor.image_token_id)[0])
    counts = _per_image_counts(family, processor)
    media = np.flatnonzero(ids.numpy() == processor.image_token_id)
    cut = int(media[counts[0] + into - 1]) + 1  # keeps `into` placeholders of the second image
    assert first < cut < len(ids)
    text_keys = ("input_ids", "attention_mask", "mm_token_type_ids")
    return {k: (v[:, :cut] if k in text_keys else v) for k, v in batch.items()}, counts[0] + into


@pytest.mark.parametrize("family", QWEN + ("internvl",))
def test_cut_inside_an_image_span_raises_the_models_mismatch_error(family):
    """Positive control: a naive cut inside image 2, pixels kept, trips the model's feature/token count check."""
    processor, _, batch = _case(family)
    cut, kept = _cut_inside_second_span(family, processor, batch, into=3)
    total = sum(_per_image_counts(family, processor))
    with pytest.raises(ValueError, match=MISMATCH.format(kept=kept) + str(total)):
        _model(family)(**cut, labels=cut["input_ids"])


@pytest.mark.parametrize("family", TILED)
def test_tiled_cut_inside_an_image_raises_on_new_and_differs_by_family_on_old_transformers(family):
    """Positive control for Idefics3/SmolVLM, whose checks changed across versions.

    ≥ 5.24: both raise the common feature/token mismatch error. ≤ 5.17: SmolVLM checks only that the
    <image> count is whole tiles (a mid-tile cut raises, a cut between tiles trains silently) and Idefics3
    checks nothing (masked_scatter takes the first features: a mid-tile cut trains silently).
    """
    processor, _, batch = _case(family)
    model = _model(family)
    mid, kept = _cut_inside_second_span(family, processor, batch, into=processor.image_seq_len + 1)
    whole, _ = _cut_inside_second_span(family, processor, batch, into=processor.image_seq_len)
    version = _version()
    if version >= (5, 24):
        with pytest.raises(ValueError, match=MISMATCH.format(kept=kept)):
            model(**mid, labels=mid["input_ids"])
        with pytest.raises(ValueError, match=MISMATCH.format(kept=kept - 1)):
            model(**whole, labels=whole["input_ids"])
    elif version <= (5, 17) and family == "smolvlm":
        with pytest.raises(
            ValueError, match=re.escape("At least one sample has <image> tokens not divisible by patch_size.")
        ):
            model(**mid, labels=mid["input_ids"])
        assert torch.isfinite(model(**whole, labels=whole["input_ids"]).loss)
    elif version <= (5, 17):
        assert torch.isfinite(model(**mid, labels=mid["input_ids"]).loss)
    else:
        pytest.skip(f"tiled-model checks not recorded for transformers {transformers.__version__}")


def test_qwen2_video_tokens_follow_the_grid_rule():
    """Qwen2-VL video: <|vision_start|> <|video_pad|> × t·h·w/4 <|vision_end|>."""
    processor, _, _ = _case("qwen2_vl")
    tok = processor.tokenizer
    ids = qwen_video_tokens("qwen2_vl", processor, (2, 4, 6))
    assert tok.convert_ids_to_tokens(ids) == ["<|vision_start|>"] + ["<|video_pad|>"] * 12 + ["<|vision_end|>"]


def test_qwen3_video_tokens_have_timestamped_frame_groups_inside_an_outer_pair():
    """Qwen3-VL video: outer pair around per-group "<t.t seconds>" + inner vision_start/pads/vision_end."""
    processor, _, _ = _case("qwen3_vl")
    ids = qwen_video_tokens("qwen3_vl", processor, (2, 4, 4), fps=2.0)
    inner = "<|vision_start|>" + "<|video_pad|>" * 4 + "<|vision_end|>"
    # frames 0..3 at 2 fps, groups of two: mean times 0.25 s and 1.25 s, formatted with :.1f
    expected = "<|vision_start|><0.2 seconds>" + inner + "<1.2 seconds>" + inner + "<|vision_end|>"
    assert processor.tokenizer.decode(ids) == expected
    assert ids.count(processor.video_token_id) == 8
    with pytest.raises(ValueError, match="Qwen-VL family"):
        qwen_video_tokens("internvl", processor, (1, 2, 2))


def test_processor_assistant_mask_is_wrong_when_images_precede_the_answer_on_old_transformers():
    """With a {% generation %} template, the processor's assistant mask is right on ≥ 5.24, wrong (all 0) on ≤ 5.17."""
    from chunker.testing.families_b import _QWEN_CONTENT

    template = (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['role'] == 'assistant' %}{% generation %}" + _QWEN_CONTENT + "<|im_end|>{% endgeneration %}\n"
        "{% else %}" + _QWEN_CONTENT + "<|im_end|>\n{% endif %}{% endfor %}"
    )
    processor = build_processor("qwen2_vl", chat_template=template)
    images = _images()
    messages = _messages()
    it = iter(images)
    for message in messages:
        for part in message["content"]:
            if part["type"] == "image":
                part["image"] = next(it)
    out = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = np.asarray(out["input_ids"][0]), np.asarray(out["assistant_masks"][0])
    answered = processor.tokenizer.decode(ids[mask == 1])
    version = _version()
    if version >= (5, 24):
        assert answered == "a cat sits on a mat.<|im_end|>a red ball.<|im_end|>"
    elif version <= (5, 17):
        assert mask.sum() == 0
    else:
        pytest.skip(f"assistant-mask behaviour not recorded for transformers {transformers.__version__}")


@pytest.mark.parametrize("family", QWEN)
def test_qwen_without_mm_token_type_ids_raises_except_qwen2_5_which_runs_silently(family):
    """Qwen2-VL/Qwen3-VL refuse image inputs without mm_token_type_ids; Qwen2.5-VL runs (with other positions)."""
    _, _, batch = _case(family)
    model = _model(family)
    bare = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}
    if family == "qwen2_5_vl":
        with torch.no_grad():
            with_types = model(**batch).logits
            without = model(**bare).logits
        assert not torch.allclose(with_types, without)
    else:
        with pytest.raises(ValueError, match="but `mm_token_type_ids` is missing"):
            model(**bare)


@pytest.mark.parametrize("family", FAMILIES_B)
def test_grammar_record_finds_every_image_span_of_the_real_processor(family):
    """chunker's grammar record, built from the processor, finds each image span with the processor's own counts."""
    from chunker.spans import find_image_spans
    from chunker.spec import ImageSpanSpec

    processor, _, batch = _case(family)
    spec = ImageSpanSpec.from_processor(processor)
    assert spec.family == ("idefics3" if family == "smolvlm" else family)
    spans = find_image_spans(batch["input_ids"][0].numpy(), spec)
    assert list(map(int, spans.counts)) == _per_image_counts(family, processor)
    lengths = list(map(int, spans.ends - spans.starts))
    if family in QWEN:
        assert lengths == [n + 2 for n in processor._get_num_multimodal_tokens(image_sizes=SIZES).num_image_tokens]
    elif family != "smolvlm":  # SmolVLMProcessor has no _get_num_multimodal_tokens
        assert lengths == processor._get_num_multimodal_tokens(image_sizes=SIZES).num_image_tokens
