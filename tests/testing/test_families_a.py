"""The offline family builders of `chunker.testing.families_a` give the real grammar, train, and fail when cut.

For each family a two-turn conversation with three images goes through the real processor; the exact token
sequence is rebuilt by hand from the family's grammar and hand-computed counts, the tiny real model trains on it,
and a naive cut inside the second image span makes the model raise its own mismatch error (positive control).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from chunker.testing.families_a import FAMILIES_A, HIDDEN, build_model, build_processor, call_kwargs

# (width, height) of the three images: landscape, portrait, square.
SIZES = ((40, 30), (20, 50), (64, 64))
MESSAGES = [
    {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": "describe this picture"}, {"type": "image"}],
    },
    {"role": "assistant", "content": [{"type": "text", "text": "a cat sits on a mat"}]},
    {"role": "user", "content": [{"type": "text", "text": "and this one?"}, {"type": "image"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "a red ball"}]},
]
RENDERED = {
    "gemma3": "<bos><start_of_turn>user\n<start_of_image>describe this picture<start_of_image><end_of_turn>\n"
    "<start_of_turn>model\na cat sits on a mat<end_of_turn>\n<start_of_turn>user\nand this one?<start_of_image>"
    "<end_of_turn>\n<start_of_turn>model\na red ball<end_of_turn>\n",
    "paligemma": "<image><image><image>describe this picture\na cat sits on a mat<eos>and this one?\na red ball<eos>",
    "llava": "USER: <image>\n<image>\ndescribe this picture ASSISTANT: a cat sits on a mat USER: <image>\nand this one? "
    "ASSISTANT: a red ball ",
    "llava_next": "[INST] <image>\n<image>\ndescribe this picture [/INST] a cat sits on a mat</s> [INST] <image>\n"
    "and this one? [/INST] a red ball</s> ",
    "llava_onevision": "<|im_start|>user <image><image>\ndescribe this picture<|im_end|>\n<|im_start|>assistant \n"
    "a cat sits on a mat<|im_end|>\n<|im_start|>user <image>\nand this one?<|im_end|>\n<|im_start|>assistant \n"
    "a red ball<|im_end|>\n",
    "pixtral": "<s>[INST][IMG]describe this picture[IMG][/INST]a cat sits on a mat</s>[INST]and this one?[IMG][/INST]"
    "a red ball</s>",
    "mistral3": "<s>[SYSTEM_PROMPT]You are a helpful assistant.[/SYSTEM_PROMPT][INST][IMG]describe this picture[IMG]"
    "[/INST]a cat sits on a mat</s>[INST]and this one?[IMG][/INST]a red ball</s>",
}
# Image-token ids (the config's image_token_id) per image, computed by hand from each family's formula:
# Gemma 3 mm_tokens_per_image; PaliGemma / LLaVA (32/8)^2, (28/7)^2 (+CLS -1); LLaVA-NeXT base 16 + unpadded tiles
# + one newline per row (30x40 -> best pinpoint 56x56, 6 of 8 rows kept: 16+48+6 = 70; 50x20 -> 16+32+8 = 56;
# 64x64 -> 16+64+8 = 88); LLaVA-OneVision with several images in a row: 16 + 1 newline each;
# Pixtral (edge 16, 4 px) and Mistral 3 (edge 32, 8 px): rows x cols = 3x4, 4x2, 4x4.
COUNTS = {
    "gemma3": (16, 16, 16),
    "paligemma": (16, 16, 16),
    "llava": (16, 16, 16),
    "llava_next": (70, 56, 88),
    "llava_onevision": (17, 17, 17),
    "pixtral": (12, 8, 16),
    "mistral3": (12, 8, 16),
}
PIXTRAL_GRIDS = ((3, 4), (4, 2), (4, 4))
IMAGE_SIZES = {
    "llava_next": [[30, 40], [50, 20], [64, 64]],
    "llava_onevision": [[30, 40], [50, 20], [64, 64]],
    "pixtral": [[12, 16], [16, 8], [16, 16]],
    "mistral3": [[24, 32], [32, 16], [32, 32]],
}
PIXEL_SHAPES = {
    "gemma3": (3, 3, 32, 32),
    "paligemma": (3, 3, 32, 32),
    "llava": (3, 3, 28, 28),
    "llava_next": (3, 5, 3, 28, 28),
    "llava_onevision": (3, 1, 3, 28, 28),
    "pixtral": (3, 3, 16, 16),
    "mistral3": (3, 3, 32, 32),
}
TEXT_ID_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


def _images(sizes=SIZES):
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def _encode(processor, text: str, **kwargs):
    """Tokenize like `apply_chat_template(tokenize=True)`: no added bos when the template already wrote one."""
    tok = processor.tokenizer
    add = not (tok.bos_token and text.startswith(tok.bos_token))
    return processor(text=text, images=[_images()], return_tensors="pt", add_special_tokens=add, **kwargs)


def _expansion(family: str, processor, index: int) -> str:
    """The text one image placeholder becomes, written from the family's grammar."""
    tok = processor.tokenizer
    n = COUNTS[family][index]
    if family == "gemma3":
        return f"\n\n{tok.boi_token}{tok.image_token * n}{tok.eoi_token}\n\n"
    if family in ("pixtral", "mistral3"):
        rows, cols = PIXTRAL_GRIDS[index]
        return "[IMG_BREAK]".join(["[IMG]" * cols] * rows) + "[IMG_END]"
    return processor.image_token * n


def _expected_ids(family: str, processor) -> list[int]:
    tok = processor.tokenizer
    text = RENDERED[family]
    placeholder = tok.boi_token if family == "gemma3" else processor.image_token
    parts = text.split(placeholder)
    assert len(parts) == 4, f"{family}: the template wrote {len(parts) - 1} image placeholders, expected 3"
    expanded = parts[0] + "".join(_expansion(family, processor, i) + part for i, part in enumerate(parts[1:]))
    if family == "paligemma":  # the processor puts <bos> after the last image and "\n" at the end
        cut = expanded.rfind(processor.image_token) + len(processor.image_token)
        expanded = expanded[:cut] + tok.bos_token + expanded[cut:] + "\n"
    add = family in ("llava", "llava_next")  # their tokenizers add <bos>; the templates do not write it
    return tok(expanded, add_special_tokens=add)["input_ids"]


@pytest.fixture(scope="module", params=FAMILIES_A)
def family_setup(request):
    family = request.param
    processor = build_processor(family)
    return family, processor, _encode(processor, processor.apply_chat_template(MESSAGES, tokenize=False))


def _model_kwargs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


def test_chat_template_renders_official_turn_markers_and_image_placement(family_setup):
    """The template writes the official turn markers, bos and one placeholder per image, where the hub's does."""
    family, processor, _ = family_setup
    assert processor.apply_chat_template(MESSAGES, tokenize=False) == RENDERED[family]


def test_processor_expands_each_image_to_the_family_grammar(family_setup):
    """input_ids equal the hand-built sequence: span tokens, per-image counts, brackets, the text around them."""
    family, processor, batch = family_setup
    ids = batch["input_ids"][0].tolist()
    assert ids == _expected_ids(family, processor)
    bos = processor.tokenizer.bos_token_id
    assert ids.count(bos) == (0 if bos is None else 1)
    image_id = processor.tokenizer.image_token_id if family == "gemma3" else processor.image_token_id
    assert ids.count(image_id) == sum(COUNTS[family])
    assert batch["attention_mask"].shape == batch["input_ids"].shape
    assert int(batch["attention_mask"].sum()) == len(ids)


def test_processor_companion_tensors_have_the_family_shapes(family_setup):
    """pixel_values, image_sizes, batch_num_images and type ids come out with the shapes and values of the family."""
    family, processor, batch = family_setup
    assert tuple(batch["pixel_values"].shape) == PIXEL_SHAPES[family]
    if family in IMAGE_SIZES:
        assert batch["image_sizes"].tolist() == IMAGE_SIZES[family]
    else:
        assert "image_sizes" not in batch
    if family == "llava_onevision":
        assert batch["batch_num_images"].tolist() == [3]
    ids = batch["input_ids"][0]
    if family == "gemma3":
        assert "num_crops" not in batch
        soft = (ids == processor.tokenizer.image_token_id).long()
        assert torch.equal(batch["token_type_ids"][0], soft)
    elif family == "paligemma":
        assert batch["token_type_ids"].tolist() == [[0] * len(ids)]  # no suffix: everything is prefix
        assert bool((batch["labels"] == -100).all())
    else:
        assert "token_type_ids" not in batch and "mm_token_type_ids" not in batch


def test_tiny_model_trains_on_the_processed_conversation(family_setup):
    """Forward and backward of the tiny real model on the batch give a finite loss and gradients on the vision tower."""
    family, processor, batch = family_setup
    model = build_model(family, processor)
    loss = model(**_model_kwargs(batch), labels=batch["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss)
    vision_grads = [p.grad for n, p in model.named_parameters() if "vision" in n and p.grad is not None]
    assert vision_grads and any(bool(g.abs().sum() > 0) for g in vision_grads)


def test_cut_inside_second_image_span_raises_model_mismatch(family_setup):
    """Positive control: truncating the text inside image 2 while keeping every pixel input makes the model raise."""
    family, processor, batch = family_setup
    model = build_model(family, processor)
    image_id = model.config.image_token_id
    positions = (batch["input_ids"][0] == image_id).nonzero().flatten()
    first = COUNTS[family][0]
    cut = int(positions[first + 2]) + 1  # three image tokens of image 2 kept
    cut_batch = {k: (v[:, :cut] if k in TEXT_ID_COLUMNS else v) for k, v in _model_kwargs(batch).items()}
    with pytest.raises(ValueError, match="Image features and image tokens do not match") as err:
        model(**cut_batch, labels=cut_batch["input_ids"])
    tokens, features = map(int, re.search(r"tokens: (\d+), features: (\d+)", str(err.value)).groups())
    total = sum(COUNTS[family])
    assert tokens == first + 3
    # LLaVA / Pixtral / Mistral 3 multiply the rows by the hidden size of their 2-D feature tensor in the message
    assert features in (total, total * HIDDEN)


def test_build_model_is_seeded_and_every_weight_is_random():
    """Equal seeds give equal weights, other seeds differ, no multi-element parameter is constant (Gemma 3's
    projector starts at zero in transformers), and the global RNG is left as it was."""
    processor = build_processor("gemma3")
    state = torch.random.get_rng_state()
    a, b, c = (build_model("gemma3", processor, seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if pa.numel() > 1:
            assert not bool((pa == pa.flatten()[0]).all()), f"{name} is constant"
            assert not torch.equal(pa, pc), name
    assert float(a.model.multi_modal_projector.mm_input_projection_weight.detach().abs().sum()) > 0


def test_gemma3_pan_and_scan_adds_one_block_per_crop():
    """With pan-and-scan a 3:1 image gives the original plus 3 crops: 4 pixel rows and 4 bracketed blocks, wrapped in
    the processor's fixed sentences; without `do_pan_and_scan=True` on the call the class default switches it off."""
    processor = build_processor("gemma3", pan_and_scan=True)
    tok = processor.tokenizer
    text = "<bos><start_of_turn>user\n<start_of_image>hi<end_of_turn>\n"
    wide = _images([(768, 256)])
    plain = processor(text=text, images=[wide], add_special_tokens=False)
    assert len(plain["pixel_values"]) == 1
    out = processor(
        text=text,
        images=[wide],
        add_special_tokens=False,
        return_tensors="pt",
        **call_kwargs("gemma3", pan_and_scan=True),
    )
    assert tuple(out["pixel_values"].shape) == (4, 3, 32, 32)
    block = f"\n\n{tok.boi_token}{tok.image_token * 16}{tok.eoi_token}\n\n"
    expanded = text.replace(
        tok.boi_token,
        f"Here is the original image {block} and here are some crops to help you see better " + " ".join([block] * 3),
    )
    assert out["input_ids"][0].tolist() == tok(expanded, add_special_tokens=False)["input_ids"]
    assert int(out["token_type_ids"].sum()) == 4 * 16
    model = build_model("gemma3", processor)
    loss = model(**out, labels=out["input_ids"]).loss
    assert torch.isfinite(loss)


def _version() -> tuple[int, int]:
    return tuple(int(x) for x in transformers.__version__.split(".")[:2])


@pytest.mark.parametrize(
    ("family", "answer_text"),
    [("llava", " a cat sits on a mat  a red ball "), ("llava_onevision", "\na cat sits on a mat\na red ball")],
)
def test_processor_assistant_mask_is_wrong_up_to_5_17_and_right_in_5_24(family, answer_text):
    """Templates with `{% generation %}`: the processor's assistant mask marks the answers in 5.24 but marks the
    wrong tokens (LLaVA: image tokens) or none (OneVision) in 5.17, when images precede the answers."""
    if (5, 17) < _version() < (5, 24):
        pytest.skip("behaviour checked only on transformers <= 5.17 and >= 5.24")
    processor = build_processor(family)
    images = iter(_images())
    messages = [
        {
            "role": m["role"],
            "content": [{"type": "image", "image": next(images)} if c["type"] == "image" else c for c in m["content"]],
        }
        for m in MESSAGES
    ]
    out = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    mask = np.asarray(out["assistant_masks"]).reshape(-1).astype(bool)
    ids = np.asarray(out["input_ids"]).reshape(-1)
    marked = processor.tokenizer.decode(ids[mask])
    assert (marked == answer_text) == (_version() >= (5, 24)), repr(marked)
