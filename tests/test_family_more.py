"""Families whose grammar chunker already knows, in processor classes of their own (`chunker.testing.families_f`).

- `MODELS`: tiny real models train on collated windows of a long multi-image conversation rendered by the checkpoint's
  real template (DeepSeek-VL, DeepSeek-VL-Hybrid, LightOnOCR; their windows are checked by the shared contract too), or
  of pre-tokenized rows (Video-LLaVA, Qianfan-OCR, Chameleon, Emu3, Granite 4 Vision: no real template vendored);
  naive truncation of the same row raises the model's own error while the whole row runs (the positive control).
- `PRETOKENIZED`: rows tokenized by the processor itself are split into windows that hold whole spans (open, N
  placeholders, close, N and the brackets read off the processor's source) and exactly their images' pixels, the
  reference being the image processor on each window image alone.
- Janus (learned) on conversation rows rendered by Janus-Pro-1B's real template; the vendored LightOnOCR and Janus
  templates against prompts independent sources wrote by hand; Video-LLaVA's `<video>` runs refused by name; Granite 4
  Vision counted by the LLaVA-NeXT adapter; and why Granite-Docling is still pending.
"""

from __future__ import annotations

import inspect
from functools import cache

import numpy as np
import pytest
import transformers
from model_checks import assert_cut_raises, assert_trains, conversation, forward_inputs, naive_cut, random_images
from packaging.version import Version
from PIL import Image

import chunker
from chunker.collator import WindowCollator
from chunker.families import adapter_for
from chunker.families.learned import Learned
from chunker.testing import build_model, build_processor

# test family -> (max_length of its windows, whether its rows come from its real chat template)
MODELS = {
    "deepseek_vl": (64, True),
    "deepseek_vl_hybrid": (64, True),
    "lighton_ocr": (56, True),
    "video_llava": (48, False),
    "qianfan_ocr": (32, False),
    "chameleon": (48, False),
    "emu3": (64, False),
    "granite4_vision": (48, False),
}
# test family -> (adapter name, learned?, the span's first and last tokens or None for a bare run, placeholder,
# placeholder count per image) for the processor's rows of `pretokenized`; counts read off each processor's source with
# this module's sizes (DeepSeek `num_image_tokens`; Chameleon `image_seq_length`; Video-LLaVA (28/7)^2 + 1 CLS - 1), or
# None where the test reads them off the processor's own output (Qianfan, Emu3)
PRETOKENIZED = {
    "deepseek_vl": ("deepseek_vl", False, None, "<image_placeholder>", [16, 16, 16]),
    "chameleon": ("chameleon", True, ("<racm3:break>", "<eoss>"), "<image>", [16, 16, 16]),
    "video_llava": ("video_llava", False, None, "<image>", [16, 16, 16]),
    "qianfan_ocr": ("qianfan_ocr", False, ("<img>", "</img>"), "<IMG_CONTEXT>", None),
    "emu3": ("emu3", False, ("<|image start|>", "<|image end|>"), "<image>", None),
}
# the README matrix's rows of this module (tools/families_matrix.py): written adapters proven on pre-tokenized rows,
# families a written adapter of another name covers (test family -> adapter), learned ones on pre-tokenized rows
WRITTEN = ("video_llava", "qianfan_ocr", "emu3")
WRITTEN_AS = {"granite4_vision": "llava_next"}
LEARNED = ("chameleon",)
MAX_LENGTH = 64
TRUNCATE = ("input_ids", "attention_mask")
# family -> the transformers release from which its model checks placeholders against features (before it, naive
# truncation trains silently on misplaced features: DeepseekVLHybridModel.forward of 5.17 masked_scatters unchecked)
SILENT = {"deepseek_vl_hybrid": "5.24"}
PARTS = ("vision|image_tower", "language_model", "aligner|projector|projection|connector")
# Chameleon's and Emu3's image features are the text embeddings of its VQ-VAE's discrete codes: no gradient reaches the VQ-VAE
# (its codes come from an argmin), so training moves the embeddings of those codes and the decoder layers
PARTS_OF = {"chameleon": ("embed_tokens", r"model\.layers"), "emu3": ("embed_tokens", r"model\.text_model\.layers")}


def images(sizes=((40, 30), (20, 60), (50, 50))):
    return random_images(sizes)


def placeholder(processor):
    return getattr(processor, "image_placeholder_token", None) or processor.image_token


@cache
def pretokenized(family):
    """The processor's own tokens of a text with three images, and its media tensors."""
    processor = build_processor(family)
    imgs = images()
    token = placeholder(processor)
    text = "".join(f"describe this picture {token} a cat sits on a mat next to a red ball. " for _ in imgs)
    enc = processor(text=[text], images=[imgs], return_tensors="np")
    ids = np.asarray(enc["input_ids"])[0]
    tensors = {k: np.asarray(v) for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    return processor, imgs, ids, tensors


@pytest.mark.parametrize("family", list(PRETOKENIZED))
def test_the_family_is_detected_with_its_grammar(family):
    processor, imgs, ids, tensors = pretokenized(family)
    name, learned, brackets, image, counts = PRETOKENIZED[family]
    adapter = adapter_for(processor)
    tok = processor.tokenizer
    assert adapter.name == name and isinstance(adapter, Learned) == learned
    spec = adapter.spec
    assert spec.image_token_id == tok.convert_tokens_to_ids(image)
    if brackets:
        assert (spec.open_ids, spec.close_ids) == tuple((tok.convert_tokens_to_ids(t),) for t in brackets)
    spans = chunker.find_image_spans(ids, spec)
    assert len(spans) == 3
    if family == "emu3":  # (h/8)·(w/8 + 1) of each resized size the processor reports
        counts = [(h // 8) * (w // 8 + 1) for h, w in tensors["image_sizes"].tolist()]
    if family == "qianfan_ocr":  # image_seq_length per patch the image processor cuts each image into
        counts = [len(processor.image_processor([im], return_tensors="np")["pixel_values"]) * processor.image_seq_length
                  for im in imgs]
    assert spans.counts.tolist() == counts


@pytest.mark.parametrize("family", list(PRETOKENIZED))
def test_pre_tokenized_windows_hold_whole_spans_and_their_own_pixels(family):
    processor, imgs, ids, tensors = pretokenized(family)
    _, _, brackets, image, _ = PRETOKENIZED[family]
    tok = processor.tokenizer
    splitter = chunker.WindowSplitter(processor, max_length=MAX_LENGTH, train_on="all")
    rows = splitter.split_example({"input_ids": ids, "labels": ids, "images": imgs, **tensors})
    assert len(rows) >= 2
    whole = chunker.find_image_spans(ids, splitter.spec)
    own_count = dict(zip(range(3), whole.counts.tolist()))
    image_id = tok.convert_tokens_to_ids(image)
    seen = []
    for row in rows:
        win = np.asarray(row["input_ids"])
        assert len(win) <= MAX_LENGTH
        order = [next(i for i, im in enumerate(imgs) if im is w) for w in row["images"]]
        assert int((win == image_id).sum()) == sum(own_count[i] for i in order)  # whole spans, no more, no less
        if brackets:
            opens, closes = (np.flatnonzero(win == tok.convert_tokens_to_ids(t)) for t in brackets)
            assert len(opens) == len(closes) == len(order) and (opens < closes).all()
        key = "pixel_values_images" if "pixel_values_images" in tensors else "pixel_values"
        if order:
            mine = np.asarray(row[key])
            alone = [np.asarray(processor.image_processor([imgs[i]], return_tensors="np")[key]) for i in order]
            at = 0
            for own in alone:  # each image's rows, cropped to its own size (a row's batch pads to its largest image)
                rows_of = own.reshape(-1, *own.shape[-3:])
                got = mine.reshape(-1, *mine.shape[-3:])[at: at + len(rows_of)]
                np.testing.assert_allclose(got[..., : rows_of.shape[-2], : rows_of.shape[-1]], rows_of, atol=1e-6)
                at += len(rows_of)
            assert at == len(mine.reshape(-1, *mine.shape[-3:]))
        seen += order
    assert sorted(set(seen)) == [0, 1, 2]


def test_a_video_llava_row_with_a_video_is_refused_by_name_not_cut():
    """`<video>` tokens may only lie inside a media span (videos are not proven here): a row holding a video run is a
    SpanError naming the stray token; its twin without the video splits."""
    processor, imgs, ids, tensors = pretokenized("video_llava")
    video = [processor.tokenizer.convert_tokens_to_ids("<video>")] * 8
    with_video = np.concatenate([ids[:5], video, ids[5:]])
    splitter = chunker.WindowSplitter(processor, max_length=MAX_LENGTH, train_on="all")
    with pytest.raises(chunker.SpanError, match="outside every media span"):
        splitter.split_example({"input_ids": with_video, "labels": with_video, "images": imgs, **tensors})
    assert splitter.split_example({"input_ids": ids, "labels": ids, "images": imgs, **tensors})


def test_granite4_vision_is_llava_next():
    """Granite 4 Vision's processor counts `<image>` runs as LLaVA-NeXT's does (`_get_number_of_features`): the
    LLaVA-NeXT adapter names it, and its count of each probe image is the processor's own."""
    processor, imgs, ids, tensors = pretokenized("granite4_vision")
    adapter = adapter_for(processor)
    assert adapter.name == "llava_next"
    alone = [int((np.asarray(processor(text=["x <image> y"], images=[[im]], return_tensors="np")["input_ids"])[0]
                  == processor.image_token_id).sum()) for im in imgs]
    spans = adapter.items(chunker.find_image_spans(ids, adapter.spec), tensors, imgs)
    assert spans.counts.tolist() == alone and len(set(alone)) > 1
    rows = chunker.WindowSplitter(processor, max_length=96, train_on="all").split_example(
        {"input_ids": ids, "labels": ids, "images": imgs, **tensors})
    assert len(rows) >= 2
    for row in rows:  # whole runs: each window holds exactly its images' own counts
        order = [next(i for i, im in enumerate(imgs) if im is w) for w in row["images"]]
        held = int((np.asarray(row["input_ids"]) == processor.image_token_id).sum())
        assert held == sum(alone[i] for i in order) and len(row["input_ids"]) <= 96


@cache
def setup(family):
    processor = build_processor(family)
    model = build_model(family, processor)
    max_length, templated = MODELS[family]
    imgs = random_images()
    if templated:
        messages = conversation(len(imgs), question="describe this", answer="a cat sits on a mat. " * 2)
        row = {"messages": messages, "images": imgs}
        text = processor.apply_chat_template(messages, tokenize=False)
        splitter = chunker.WindowSplitter(processor, max_length=max_length)
    else:
        text = "".join(f"describe this {placeholder(processor)} a cat sits on a mat. " for _ in imgs)
        ids = np.asarray(processor(text=[text], images=[imgs], return_tensors="np")["input_ids"])[0]
        row = {"input_ids": ids, "labels": ids, "images": imgs}
        splitter = chunker.WindowSplitter(processor, max_length=max_length, train_on="all")
    windows = splitter.split_example(row, index=3)
    return processor, model, text, imgs, windows


# families whose media the collator does not count yet (none now: Video-LLaVA's `pixel_values_images` are counted)
COLLATOR_GAPS: dict = {}


@pytest.mark.parametrize("family", MODELS)
def test_every_window_trains(family):
    processor, model, _, imgs, windows = setup(family)
    train_windows(family, processor, model, imgs, windows)


def test_video_llava_windows_train_when_its_processor_returns_pixel_values():
    """The twin of Video-LLaVA's collator gap: an image processor told `return_legacy_image_output=False` (transformers
    5.24 takes it; its model then takes `pixel_values`) gives pixels the collator counts, and every window trains."""
    processor, model, _, imgs, _ = setup("video_llava")
    if "pixel_values" not in inspect.signature(model.forward).parameters:
        pytest.skip(f"VideoLlavaForConditionalGeneration of transformers {transformers.__version__} takes only "
                    "pixel_values_images")
    new = {"return_legacy_image_output": False}
    text = "".join(f"describe this {processor.image_token} a cat sits on a mat. " for _ in imgs)
    enc = processor(text=[text], images=[imgs], return_tensors="np", **new)
    assert "pixel_values" in enc and "pixel_values_images" not in enc
    ids = np.asarray(enc["input_ids"])[0]
    splitter = chunker.WindowSplitter(processor, max_length=MODELS["video_llava"][0], train_on="all",
                                      processor_kwargs=new)
    windows = splitter.split_example({"input_ids": ids, "labels": ids, "images": imgs}, index=3)
    train_windows("video_llava", processor, model, imgs, windows, images_kwargs=new)


def train_windows(family, processor, model, imgs, windows, images_kwargs=None):
    assert len(windows) >= 3
    assert sum(len(w["images"]) for w in windows) >= len(imgs)
    collator = WindowCollator(processor, pad_to_multiple_of=8, images_kwargs=images_kwargs)
    trained = [w for w in windows if (np.asarray(w["labels"]) != -100).any()]
    assert len(trained) >= 3 and any(w["images"] for w in trained)
    assert all(len(w["input_ids"]) <= MODELS[family][0] for w in trained)
    assert_trains(model, (collator([w]) for w in trained), PARTS_OF.get(family, PARTS))


@pytest.mark.parametrize("family", list(MODELS))
def test_naive_truncation_of_the_same_row_raises_the_models_error(family):
    processor, model, text, imgs, _ = setup(family)
    whole = forward_inputs(model, processor(text=[text], images=[imgs], return_tensors="pt"))
    # no check in a SILENT model: the cut row's few placeholders silently take the first image's first features
    silent = family in SILENT and Version(transformers.__version__) < Version(SILENT[family])
    assert_cut_raises(model, naive_cut(whole, MODELS[family][0], TRUNCATE), whole, silent=silent)


def janus_processor():
    """Janus built with deepseek-community/Janus-Pro-1B's real template (the conversion script's)."""
    from chunker.testing._templates import vendored_template
    from chunker.testing.families_c import build_processor as build_c

    return build_c("janus", chat_template=vendored_template("deepseek-community--Janus-Pro-1B.jinja"))


def test_the_vendored_templates_render_what_independent_sources_wrote_by_hand():
    """LightOnOCR's template, for one image and no text, gives vLLM's hand-written LightOnOCR prompt; Janus-Pro's (the
    conversion script's) gives the prompt transformers' Janus processor test expects of the hub processor."""
    lighton = build_processor("lighton_ocr")
    one = [{"role": "user", "content": [{"type": "image"}]}]
    assert lighton.apply_chat_template(one, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system<|im_end|>\n<|im_start|>user\n<|image_pad|><|im_end|>\n<|im_start|>assistant\n")
    janus = janus_processor()
    text = lambda s: {"type": "text", "text": s}
    messages = [
        {"role": "user", "content": [text("Compare this image"), {"type": "image"}, text("with this image"),
                                     {"type": "image"}]},
        {"role": "assistant", "content": [text("The first image is an equation, the second is a pie chart.")]},
        {"role": "user", "content": [{"type": "image"},
                                     text("What about this third image? To which of the previous to is it more similar?")]},
    ]
    assert janus.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|User|>: Compare this image\n<image_placeholder>\nwith this image\n<image_placeholder>\n\n<|Assistant|>: The "
        "first image is an equation, the second is a pie chart.<｜end▁of▁sentence｜><|User|>: <image_placeholder>\nWhat "
        "about this third image? To which of the previous to is it more similar?\n\n<|Assistant|>:")


def test_janus_conversation_rows_with_its_real_template_hold_whole_spans_and_train_exactly_its_answers():
    """Janus (learned) split from conversation rows rendered by deepseek-community/Janus-Pro-1B's real template: every
    window holds whole `<begin_of_image> <image_placeholder>×N <end_of_image>` spans, and the supervised tokens are the
    answers' own tokens (tokenized here by the tokenizer alone)."""
    processor = janus_processor()
    tok = processor.tokenizer
    answers = ["a cat sits on a mat next to a red ball " * 3, "the quick brown fox jumps over the lazy dog " * 3]
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe this picture"}]},
        {"role": "assistant", "content": [{"type": "text", "text": answers[0]}]},
        {"role": "user", "content": [{"type": "text", "text": "and this one?"}, {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": answers[1]}]},
    ]
    imgs = images()[:2]
    rows = chunker.WindowSplitter(processor, max_length=48).split_example({"messages": messages, "images": imgs})
    assert len(rows) >= 3
    boi, eoi = tok.convert_tokens_to_ids("<begin_of_image>"), tok.convert_tokens_to_ids("<end_of_image>")
    trained = []
    for row in rows:
        win, labels = np.asarray(row["input_ids"]), np.asarray(row["labels"])
        opens, closes = np.flatnonzero(win == boi), np.flatnonzero(win == eoi)
        assert len(opens) == len(closes) == len(row["images"]) and (closes - opens == processor.num_image_tokens + 1).all()
        trained += labels[labels != -100].tolist()
    # the template strips each answer's trailing space and puts " " after "<|Assistant|>:"
    want = [t for a in answers for t in tok(" " + a.rstrip(), add_special_tokens=False)["input_ids"]]
    assert tok.decode(trained) == tok.decode(want)



def test_janus_with_its_default_system_prompt_is_refused_for_conversation_rows_by_name():
    """The converted checkpoint's processor has `use_default_system_prompt=True` (the conversion script's setting): its
    __call__ then puts a system prompt before the rendered text, so answers located in the rendering cannot be carried
    onto its tokens; the splitter says so (ConfigError) instead of shifting the labels. The twin without it splits."""
    processor = janus_processor()
    row = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe this"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "a cat sits on a mat " * 5}]}],
           "images": images()[:1]}
    assert chunker.WindowSplitter(processor, max_length=48).split_example(row)
    processor.use_default_system_prompt = True
    with pytest.raises(chunker.ConfigError, match="rewrites the conversation text"):
        chunker.WindowSplitter(processor, max_length=48).split_example(row)


def test_granite_docling_is_pending_because_its_one_tile_pages_have_no_global_block():
    """Granite-Docling's processor writes Idefics3's tile groups, but a page of one tile is `<fake_token_around_image>
    <row_1_col_1> <image>×S` with no closing global block. No adapter names it and the learner refuses it by name; the
    Idefics3 grammar recovers its multi-tile pages (the probe passes) yet refuses a one-tile page (a SpanError), which is
    why no adapter claims it."""
    from chunker.families.idefics import Idefics3
    from chunker.families.probe import check_grammar
    from chunker.testing.families_f import build_processor as build_f

    if not hasattr(transformers, "GraniteDoclingProcessor"):
        pytest.skip(f"transformers {transformers.__version__} has no GraniteDoclingProcessor (5.24 has it)")
    processor = build_f("granite_docling")
    with pytest.raises(chunker.UnsupportedProcessorError, match="GraniteDoclingProcessor"):
        adapter_for(processor)
    idefics = Idefics3(processor)
    check_grammar(idefics)  # the probe's images are several tiles each
    one_tile = processor(text=["x <image> y"], images=[[Image.new("RGB", (32, 32))]], return_tensors="np")
    ids = np.asarray(one_tile["input_ids"])[0]
    assert (ids == processor.tokenizer.convert_tokens_to_ids("<global-img>")).sum() == 0
    with pytest.raises(chunker.SpanError, match="never closed by a global image block"):
        chunker.find_image_spans(ids, idefics.spec)


def test_the_learner_refuses_a_bracket_with_text_inside_it_that_the_processor_names_otherwise():
    """Emu3's span is `<|image start|> H*W <|image token|> <image>×N <|extra_201|> <|image end|>`: the run of `<image>`
    sits between special tokens, but not the ones the processor names as the image's start and end, so a learned
    bracket would leave the size text outside the span. The learner refuses it by name (the written Emu3 adapter holds
    the whole span); Chameleon, whose named `<racm3:break>` / `<eoss>` are the run's own neighbours, is learned."""
    from chunker.families.learned import learn

    with pytest.raises(chunker.UnsupportedProcessorError, match=r"names \['<\|image start\|>'\] as an image's start"):
        learn(build_processor("emu3"))
    chameleon = build_processor("chameleon")
    spec = learn(chameleon).spec
    assert spec.open_ids == (chameleon.image_start_token_id,) and spec.close_ids == (chameleon.image_end_token_id,)
    assert adapter_for(build_processor("emu3")).spec.open_ids == (build_processor("emu3").tokenizer.convert_tokens_to_ids(
        "<|image start|>"),)
