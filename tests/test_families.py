"""The shared contract every family runs (in the manner of transformers' ProcessorTesterMixin).

Adding a family = one adapter in `chunker/families/` + one line in `CONTRACT` below. For each line, the family's
real processor (built offline) must be detected as that family, pass the grammar probe (and a broken grammar must
fail it: the positive control), give one span per image, and split a real conversation into windows whose
supervised tokens are exactly the answers located by incremental templating (a reference computed here, from
the processor and its template, not by chunker).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import chunker
from chunker.testing import FAMILIES, build_processor

# test family (a `chunker.testing` builder) -> the adapter it must be detected as
CONTRACT = {
    "gemma3": "gemma3",
    "paligemma": "paligemma",
    "llava": "llava",
    "llava_next": "llava_next",
    "llava_onevision": "llava_onevision",
    "pixtral": "pixtral",
    "mistral3": "pixtral",
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "idefics3": "idefics3",
    "smolvlm": "idefics3",
    "internvl": "internvl",
    "gemma4": "gemma4",
    "llava_next_video": "llava_next_video",
    "paddleocr_vl": "paddleocr_vl",
    "glm4v": "glm4v",
    "mllama": "mllama",
    "deepseek_vl": "deepseek_vl",
    "deepseek_vl_hybrid": "deepseek_vl_hybrid",
    "lighton_ocr": "lighton_ocr",
    "ovis2": "ovis2",
    "aria": "aria",
    "qwen3_5": "qwen3_vl",  # Qwen3VLProcessor, Qwen3.5-2B's real template (tests/test_family_shared.py)
    "qwen3_vl_moe": "qwen3_vl",  # Qwen3VLProcessor, the Qwen3-VL Instruct real template
}
# written adapters without a vendored real template, proven on pre-tokenized rows (tests/test_family_more.py)
PRETOKENIZED_ADAPTERS = {"video_llava", "qianfan_ocr", "emu3"}
PRETOKENIZED_ADAPTERS |= {"aya_vision", "idefics2"}  # tests/test_family_tiles.py
# written adapters whose processors need torchvision: the contract's checks run on them in their own test
TORCHVISION_ADAPTERS = {"qwen2_5_omni", "qwen3_omni_moe"}  # tests/test_family_omni.py
TORCHVISION_ADAPTERS |= {"phi4_multimodal"}  # tests/test_family_phi4mm.py
TORCHVISION_ADAPTERS |= {"cohere2_vision", "llama4"}  # tests/test_family_tv.py
# contract families no adapter names: their grammar is learned from the processor (`chunker.families.learned`)
LEARNED_CONTRACT = {"glm4v"}
# Families whose generation prompt ends in a space that the tokenizer merges into the answer's first token
# ("Assistant: " + "the" -> "Ġthe"): `chunker.template.token_mask` leaves that token unsupervised (it starts before the
# answer's characters) while the token-level reference trains it. Strict: the test fails once the two agree.
SIZES = [(64, 48), (32, 80), (96, 96), (48, 40)]
COLORS = ["red", "blue", "green", "white"]


@pytest.fixture(scope="module")
def processors():
    return {}


def processor_of(processors, family):
    if family not in processors:
        processors[family] = build_processor(family)
    return processors[family]


def images(n, offset=0):
    return [Image.new("RGB", SIZES[(i + offset) % 4], COLORS[(i + offset) % 4]) for i in range(n)]


def conversation(family):
    """Two user turns with images (two back to back, one at the end of a turn) and two long answers."""
    if family == "paligemma":
        return [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe this picture in detail"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a cat sits on a mat next to a red ball " * 16}]},
        ], 1
    answers = ["the quick brown fox jumps over the lazy dog " * 4, "a cat sits on a mat next to a red ball " * 5]
    if family not in PRINTS_CONTENT:
        answers = [[{"type": "text", "text": a}] for a in answers]
    return [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "compare the two images"}]},
        {"role": "assistant", "content": answers[0]},
        {"role": "user", "content": [{"type": "text", "text": "and what is shown in the image?"}, {"type": "image"}]},
        {"role": "assistant", "content": answers[1]},
    ], 3


# templates that print an assistant turn's content as is: answers are strings there (the reference renders the
# template; a list would render as Python text, which chunker gives the template again as a string:
# tests/test_template_content.py)
PRINTS_CONTENT = {"glm4v"}


def encode(processor, messages, imgs, **kwargs):
    text = processor.apply_chat_template(messages, tokenize=False, **kwargs)
    bos = processor.tokenizer.bos_token
    enc = processor(text=[text], images=[imgs] if imgs else None, return_tensors="np",
                    add_special_tokens=not (bos and text.startswith(bos)))
    return np.asarray(enc["input_ids"])[0], enc


def item_counts(processor, spec, imgs):
    """Per-image token counts of a bracketless family whose back-to-back images form one run, from the processor:
    each image alone in a one-image conversation; with several images LLaVA-OneVision gives every image the same
    count, so the row's image tokens are shared equally (None: the family's spans need no counts)."""
    if spec.kind != "run" or spec.tokens_per_image or not imgs:
        return None
    msg = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]
    alone = [int((encode(processor, msg, [im])[0] == spec.image_token_id).sum()) for im in imgs]
    if spec.family == "llava_onevision" and len(imgs) > 1:
        content = [{"type": "image"} for _ in imgs] + [{"type": "text", "text": "x"}]
        total = int((encode(processor, [{"role": "user", "content": content}], imgs)[0] == spec.image_token_id).sum())
        return [total // len(imgs)] * len(imgs)
    return alone


def reference_targets(processor, messages, imgs, **kwargs):
    """Supervised tokens by incremental templating, on tokens (independent of chunker's character ranges).

    An answer's tokens are what the conversation up to it adds to the conversation before it with the
    generation prompt (after their common prefix: some templates render the prompt slightly differently),
    less the whitespace-only tokens the template puts after the turn. `kwargs`: template keywords.
    """
    out, used = [], 0
    for k, msg in enumerate(messages):
        n_img = sum(1 for c in msg["content"] if isinstance(c, dict) and c.get("type") == "image")
        used += n_img
        if msg["role"] != "assistant":
            continue
        prompt, _ = encode(processor, messages[:k], imgs[: used], add_generation_prompt=True, **kwargs)
        full, _ = encode(processor, messages[: k + 1], imgs[: used], **kwargs)
        n = min(len(prompt), len(full))
        common = int(np.argmax(prompt[:n] != full[:n])) if (prompt[:n] != full[:n]).any() else n
        answer = full[common:].tolist()
        while answer and not processor.tokenizer.decode(answer[-1:]).strip():  # layout after the turn: not trained
            answer.pop()
        out.append(np.asarray(answer, dtype=np.int64))
    return np.concatenate(out)


def test_the_contract_covers_every_family_the_library_knows():
    from chunker.families import ADAPTERS

    assert set(CONTRACT) == set(FAMILIES)
    written = {v for f, v in CONTRACT.items() if f not in LEARNED_CONTRACT}
    assert written | PRETOKENIZED_ADAPTERS | TORCHVISION_ADAPTERS == {cls.name for cls in ADAPTERS}


@pytest.mark.parametrize("family", sorted(LEARNED_CONTRACT))
def test_learned_contract_families_have_no_written_adapter(processors, family):
    from chunker.families import ADAPTERS, adapter_for
    from chunker.families.learned import Learned

    assert isinstance(adapter_for(processor_of(processors, family)), Learned)
    assert CONTRACT[family] not in {cls.name for cls in ADAPTERS}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_is_detected_from_the_processor(processors, family):
    spec = chunker.ImageSpanSpec.from_processor(processor_of(processors, family))
    assert spec.family == CONTRACT[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_grammar_probe_passes_and_a_broken_grammar_fails_it(processors, family):
    """The probe runs the real processor on three images of different sizes; the adapter's grammar recovers it.
    The same adapter with its image id swapped for a text token's must fail (the probe can fail)."""
    check_probe_and_twin(processor_of(processors, family))


def check_probe_and_twin(processor):
    """The probe passes on `processor`'s adapter; the same adapter with its image id swapped for a text token's fails,
    naming the processor class."""
    from dataclasses import replace

    from chunker.families import adapter_for
    from chunker.families.probe import check_grammar

    check_grammar(adapter_for(processor))
    broken = adapter_for(processor)
    text_id = processor.tokenizer("cat", add_special_tokens=False)["input_ids"][0]
    broken.spec = replace(broken.spec, image_token_id=text_id)
    with pytest.raises(chunker.GrammarError, match=type(processor).__name__):
        check_grammar(broken)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_span_per_image_covering_every_image_token(processors, family):
    spec, spans, n = check_one_span_per_image(processor_of(processors, family), family)
    if spec.tokens_per_image and not spec.group_crops:
        assert spans.counts.tolist() == [spec.tokens_per_image] * n
    if n >= 2 and family != "paligemma":
        assert spans.ends[0] <= spans.starts[1]


def check_one_span_per_image(processor, family, **kwargs):
    """`family`'s conversation, rendered with template keywords `kwargs`, has one span per image covering every image
    token, in order (a grid family: each span the image's grid count). Returns (spec, spans, number of images)."""
    spec = chunker.ImageSpanSpec.from_processor(processor)
    messages, n = conversation(family)
    imgs = images(n)
    ids, enc = encode(processor, messages, imgs, **kwargs)
    spans = chunker.find_image_spans(ids, spec, item_counts=item_counts(processor, spec, imgs))
    assert len(spans) == n
    assert int(spans.counts.sum()) == int((ids == spec.image_token_id).sum())
    assert (spans.starts[1:] >= spans.ends[:-1]).all()
    if "image_grid_thw" in enc:
        merge = processor.image_processor.merge_size
        assert spans.counts.tolist() == (np.asarray(enc["image_grid_thw"]).prod(-1) // merge**2).tolist()
    return spec, spans, n


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("max_length,overlap", [(96, 0), (128, 16)])
def test_windows_of_a_real_conversation(processors, family, max_length, overlap):
    processor = processor_of(processors, family)
    messages, n = conversation(family)
    imgs = images(n)
    if family == "paligemma":
        # PaliGemma's own API: prompt + suffix; its labels are the reference.
        enc = processor(text=["describe this picture in detail"], images=[imgs],
                        suffix=[messages[1]["content"][0]["text"]], return_tensors="np")
        ids, labels = np.asarray(enc["input_ids"])[0], np.asarray(enc["labels"])[0]
        example, reference = {"input_ids": ids, "labels": labels, "images": imgs}, ids[labels != -100]
    else:
        ids, _ = encode(processor, messages, imgs)
        example = {"messages": messages, "images": imgs}
        reference = reference_targets(processor, messages, imgs)
    splitter = chunker.WindowSplitter(processor, max_length=max_length, overlap=overlap)
    spec = splitter.spec
    longest = int(chunker.find_image_spans(ids, spec).lengths.max())
    if longest + 2 > max_length:
        pytest.skip(f"{family}: an image span of {longest} tokens does not fit max_length={max_length}")
    rows = splitter.split_example(example, index=7)
    assert len(rows) >= 2, "the conversation must be long enough to need windows"
    trained = []
    for k, row in enumerate(rows):
        win = np.asarray(row["input_ids"])
        assert len(win) <= max_length
        window_images = list(row["images"])
        order = [next(i for i, orig in enumerate(imgs) if orig is im) for im in window_images]
        counts = item_counts(processor, spec, imgs)  # counted in the whole row (LLaVA-OneVision depends on it)
        spans = chunker.find_image_spans(win, spec, item_counts=None if counts is None else [counts[i] for i in order])
        assert len(spans) == len(window_images)
        assert order == sorted(order)
        labels = np.asarray(row["labels"])
        assert (labels[1:][labels[1:] != -100] == win[1:][labels[1:] != -100]).all()
        trained.append(labels[1:][labels[1:] != -100])
        assert row["source_index"] == 7 and row["window_index"] == k and row["num_windows"] == len(rows)
    trained = np.concatenate(trained)
    # PaddleOCR-VL's generation prompt ends in a space that the answer's first token swallows: that token is
    # supervised too (chunker.template.token_mask), as the reference trains it
    np.testing.assert_array_equal(trained, reference)


def test_gemma3_pan_and_scan_keeps_each_image_with_its_crops():
    """Each window holds whole crop groups: its image blocks are exactly 1 + crops of each of its images."""
    processor = build_processor("gemma3", pan_and_scan=True)
    imgs = [Image.new("RGB", (1024, 300), "red"), Image.new("RGB", (40, 40), "blue"), Image.new("RGB", (300, 900), "green")]
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "compare"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "the quick brown fox " * 30}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and this one?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a cat sits on a mat " * 30}]},
    ]
    splitter = chunker.WindowSplitter(processor, max_length=160, processor_kwargs={"do_pan_and_scan": True})
    rows = splitter.split_example({"messages": messages, "images": imgs}, index=0)
    own = processor.image_processor(imgs, do_pan_and_scan=True, return_tensors="np")
    crops = dict(zip(map(id, imgs), np.asarray(own["num_crops"]).tolist()))
    assert sorted(crops.values()) == [0, 3, 3]
    assert len(rows) >= 3
    seen = []
    for row in rows:
        blocks = chunker.find_image_spans(np.asarray(row["input_ids"]), splitter.spec)
        assert len(blocks) == sum(1 + crops[id(im)] for im in row["images"])
        seen += [id(im) for im in row["images"]]
    assert seen == list(map(id, imgs))


def test_gemma3_pan_and_scan_off_gives_one_block_per_image():
    processor = build_processor("gemma3", pan_and_scan=True)
    imgs = [Image.new("RGB", (1024, 300), "red")]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "a cat"}]}]
    splitter = chunker.WindowSplitter(processor, max_length=160)
    rows = splitter.split_example({"messages": messages, "images": imgs})
    assert len(chunker.find_image_spans(np.asarray(rows[0]["input_ids"]), splitter.spec)) == 1


def blip2_processor():
    """A real processor of a family chunker has no grammar for (BLIP-2: query tokens, no image span)."""
    from transformers import Blip2Processor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    from chunker.testing._tokenizer import make_tokenizer

    tok = make_tokenizer(["<unk>", "<pad>", "<image>"], named={"image_token": "<image>"}, unk_token="<unk>",
                         pad_token="<pad>")
    return Blip2Processor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tok,
                          num_query_tokens=4)


def test_unknown_processor_is_refused_naming_its_class_and_how_to_pass_a_spec():
    processor = blip2_processor()
    with pytest.raises(chunker.UnsupportedProcessorError, match="Blip2Processor.*spec=chunker.ImageSpanSpec"):
        chunker.WindowSplitter(processor, max_length=64)


def test_unknown_processor_splits_with_a_hand_made_spec():
    """The happy twin: the same processor with a spec of its own (a run of 4 query tokens per image)."""
    processor = blip2_processor()
    image = processor.tokenizer.convert_tokens_to_ids("<image>")
    spec = chunker.ImageSpanSpec(family="custom", kind="run", image_token_id=image, tokens_per_image=4)
    splitter = chunker.WindowSplitter(processor, max_length=8, spec=spec, train_on="all")
    text = [5, 6, 7, 8, 9]
    ids = [image] * 4 + text + [image] * 4 + text
    rows = splitter.split_example({"input_ids": ids, "images": ["a", "b"]}, index=0)
    assert len(rows) >= 2 and all(len(r["input_ids"]) <= 8 for r in rows)
    carried = [im for r in rows for im in r["images"]]  # an image may come again whole, as a window's context
    assert [im for k, im in enumerate(carried) if k == 0 or carried[k - 1] != im] == ["a", "b"]
    for r in rows:
        assert len(chunker.find_image_spans(np.asarray(r["input_ids"]), spec)) == len(r["images"])


@pytest.mark.parametrize("family,grid", [("qwen2_vl", (2, 4, 6)), ("qwen3_vl", (2, 4, 4))])
def test_a_qwen_video_is_one_span_between_images(processors, family, grid):
    """A video (Qwen3-VL: timestamped frame groups inside an outer pair) is one whole span, never split."""
    from chunker.testing.families_b import qwen_video_tokens

    processor = processor_of(processors, family)
    spec = chunker.ImageSpanSpec.from_processor(processor)
    tok = processor.tokenizer
    video = qwen_video_tokens(family, processor, grid, **({"fps": 2.0} if family == "qwen3_vl" else {}))
    image = tok.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>", "<|image_pad|>", "<|vision_end|>"])
    text = tok("a cat sits on a mat", add_special_tokens=False)["input_ids"]
    ids = np.asarray(text + image + video + text + image, dtype=np.int64)
    spans = chunker.find_image_spans(ids, spec)
    assert spans.kinds.tolist() == [0, 1, 0]
    assert spans.counts.tolist() == [2, video.count(spec.video_token_id), 2]
    assert (spans.starts[1], spans.ends[1]) == (len(text) + 4, len(text) + 4 + len(video))
    splitter = chunker.WindowSplitter(processor, max_length=len(video) + 2, prefix="none", train_on="all")
    rows = splitter.split_example({"input_ids": ids, "images": ["a", "b"], "videos": ["v"]}, index=0)
    holding = [r for r in rows if list(r["videos"])]
    assert holding, "the video must land in a window"
    for r in holding:  # as new tokens, or whole as the context a supervised token after it needs
        assert list(r["videos"]) == ["v"]
        assert chunker.find_image_spans(np.asarray(r["input_ids"]), spec).kinds.tolist().count(1) == 1
