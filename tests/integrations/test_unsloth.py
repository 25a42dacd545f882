"""ChunkingVisionDataCollator against Unsloth's own UnslothVisionDataCollator, on real processors and tiny real models.

Runs on CPU: `unsloth_zoo` is imported with UNSLOTH_ZOO_DISABLE_GPU_INIT=1 inside a module fixture (not at
collection), and the triton / bitsandbytes stubs it installs in `sys.modules` are removed again afterwards so the
rest of the suite sees the real packages.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys

import pytest
from model_checks import assert_loss_falls

from chunker import ChunkerError, ConfigError, EmptyBatchError, OversizeSpanError
from chunker.testing import build_model, build_processor
from chunker.testing.demo import make_conversations

MARKERS = {
    "qwen2_vl": {"instruction_part": "<|im_start|>user\n", "response_part": "<|im_start|>assistant\n"},
    "gemma3": {"instruction_part": "<start_of_turn>user\n", "response_part": "<start_of_turn>model\n"},
}
FAMILIES = tuple(MARKERS)
MAX_LEN = 128
# What the stock path raises when truncation removes image tokens: the processor's own check
# (transformers' _check_special_mm_tokens), or the model's when a truncated batch reaches it.
MISMATCH = r"Mismatch in `image` token count|Image features and image tokens do not match"
STUBBED = ("triton", "bitsandbytes")


def _stubbed(name: str) -> bool:
    return any(name == s or name.startswith(s + ".") for s in STUBBED)


@pytest.fixture(scope="module")
def unsloth():
    """(UnslothVisionDataCollator, ChunkingVisionDataCollator), imported CPU-only; skips without unsloth_zoo."""
    saved_modules = {k: v for k, v in sys.modules.items() if _stubbed(k)}
    saved_path = list(sys.meta_path)
    saved_env = os.environ.get("UNSLOTH_ZOO_DISABLE_GPU_INIT")
    os.environ["UNSLOTH_ZOO_DISABLE_GPU_INIT"] = "1"
    try:
        try:
            from unsloth_zoo.vision_utils import UnslothVisionDataCollator
        except ImportError as exc:
            pytest.skip(f"unsloth_zoo is not importable here ({exc}); pip install unsloth_zoo to run these tests")
        import chunker.integrations.unsloth as module

        if not issubclass(module.ChunkingVisionDataCollator, UnslothVisionDataCollator):
            module = importlib.reload(module)  # first imported before unsloth_zoo was importable (doctest collection)
        yield UnslothVisionDataCollator, module.ChunkingVisionDataCollator
    finally:
        for k in [k for k in sys.modules if _stubbed(k)]:
            del sys.modules[k]
        sys.modules.update(saved_modules)
        sys.meta_path[:] = saved_path
        if saved_env is None:
            os.environ.pop("UNSLOTH_ZOO_DISABLE_GPU_INIT", None)
        else:
            os.environ["UNSLOTH_ZOO_DISABLE_GPU_INIT"] = saved_env


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    processor = build_processor(request.param)
    return request.param, processor, build_model(request.param, processor)


def unsloth_rows(n: int, seed: int = 0, **kwargs) -> list[dict]:
    """Long multi-image conversations in Unsloth's layout: PIL images inline in the messages."""
    rows = make_conversations(n, seed=seed, images_per_turn=(1, 2), **kwargs)
    out = []
    for row in rows:
        it = iter(row["images"])
        out.append(
            {
                "messages": [
                    {
                        **m,
                        "content": [
                            {"type": "image", "image": next(it)} if c["type"] == "image" else c for c in m["content"]
                        ],
                    }
                    for m in row["messages"]
                ]
            }
        )
    return out


def supervised(batch) -> list[int]:
    """The supervised target tokens of a batch, row after row, in order."""
    labels = batch["labels"]
    return labels[labels != -100].tolist()


def test_is_an_unsloth_vision_collator(unsloth, family):
    """Unsloth's trainer applies its vision settings only to instances of UnslothVisionDataCollator."""
    stock_cls, ours_cls = unsloth
    _name, processor, model = family
    collator = ours_cls(model, processor, max_seq_length=MAX_LEN)
    assert isinstance(collator, stock_cls)
    assert any(b.__name__ == "UnslothVisionDataCollator" for b in type(collator).__mro__)
    assert collator.max_seq_length == MAX_LEN and collator.splitter.max_length == MAX_LEN


def test_stock_collator_breaks_on_the_rows_ours_trains_on(unsloth, family):
    """Positive control: stock truncation of these rows fails with the image-token mismatch, ours gives a batch."""
    stock_cls, ours_cls = unsloth
    _name, processor, model = family
    rows = unsloth_rows(2)
    with pytest.raises(ValueError, match=MISMATCH):
        batch = stock_cls(model, processor, max_seq_length=MAX_LEN)(copy.deepcopy(rows))
        model(**batch)
    # Without the processor's check (rows tokenized untruncated, then cut as a trainer's max_length does),
    # the model's own check fails.
    full = stock_cls(model, processor)(copy.deepcopy(rows))
    cut = {
        k: (
            v[:, :MAX_LEN]
            if k in ("input_ids", "attention_mask", "labels", "token_type_ids", "mm_token_type_ids")
            else v
        )
        for k, v in full.items()
    }
    with pytest.raises(ValueError, match=MISMATCH):
        model(**cut)
    batch = ours_cls(model, processor, max_seq_length=MAX_LEN)(copy.deepcopy(rows))
    assert batch["input_ids"].shape[1] <= MAX_LEN
    assert batch["input_ids"].shape[0] > len(rows)  # each long example became several windows


def test_windows_train_with_finite_falling_loss(unsloth, family):
    """Forward + backward on our windows gives a finite loss, and a few optimizer steps lower it."""
    _, ours_cls = unsloth
    name, processor, model = family
    model = copy.deepcopy(model)
    collator = ours_cls(
        model, processor, max_seq_length=MAX_LEN, overlap=16, **MARKERS[name], train_on_responses_only=True
    )
    batch = collator(unsloth_rows(2, seed=1))
    assert_loss_falls(model, batch)


@pytest.mark.parametrize("responses_only", [False, True], ids=["all", "responses_only"])
def test_supervision_equals_the_stock_collator_untruncated(unsloth, family, responses_only):
    """Every token the stock collator supervises on the whole conversation is supervised once in our windows.

    With train_on_responses_only the same Unsloth masker decides; without it every text token is trained.
    """
    stock_cls, ours_cls = unsloth
    name, processor, model = family
    kwargs = dict(MARKERS[name], train_on_responses_only=True) if responses_only else {}
    ours = ours_cls(model, processor, max_seq_length=MAX_LEN, overlap=16, **kwargs)
    stock = stock_cls(model, processor, **kwargs)
    for row in unsloth_rows(3, seed=2):
        windows = ours([copy.deepcopy(row)])
        whole = stock([copy.deepcopy(row)])
        assert windows["input_ids"].shape[0] > 1
        assert supervised(windows) == supervised(whole)


def test_train_on_responses_only_masks_user_turns(unsloth, family):
    """With train_on_responses_only the user's question is never a target; without it, it is."""
    _, ours_cls = unsloth
    name, processor, model = family
    tok = processor.tokenizer
    question = tok("what is shown in the image?", add_special_tokens=False)["input_ids"]
    opener = tok.convert_tokens_to_ids(MARKERS[name]["instruction_part"].split("user")[0])
    rows = unsloth_rows(3, seed=3)

    def targets(**kwargs):
        return supervised(ours_cls(model, processor, max_seq_length=MAX_LEN, **kwargs)(copy.deepcopy(rows)))

    def holds(seq, sub):
        return any(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))

    masked = targets(train_on_responses_only=True, **MARKERS[name])
    assert masked and opener not in masked and not holds(masked, question)
    everything = targets()
    assert opener in everything and holds(everything, question)


def test_resize_is_applied_before_tokenizing(unsloth):
    """resize=(56, 56) gives every Qwen2-VL image a 4x4 patch grid; resize='max' keeps the larger images larger."""
    _, ours_cls = unsloth
    processor = build_processor("qwen2_vl")
    model = build_model("qwen2_vl", processor)
    rows = unsloth_rows(2, seed=4, sizes=((112, 112), (112, 56)))
    small = ours_cls(model, processor, max_seq_length=MAX_LEN, resize=(56, 56))(copy.deepcopy(rows))
    assert small["image_grid_thw"].tolist() == [[1, 4, 4]] * small["image_grid_thw"].shape[0]
    assert int((small["input_ids"] == processor.image_token_id).sum()) == 4 * small["image_grid_thw"].shape[0]
    large = ours_cls(model, processor, max_seq_length=MAX_LEN, resize="max")(copy.deepcopy(rows))
    assert int(large["image_grid_thw"].prod(-1).max()) == 64


def test_formatting_func_and_pad_to_multiple_of(unsloth, family):
    """formatting_func runs on each example first (here: unwraps a nested row); pad_to_multiple_of rounds up."""
    _, ours_cls = unsloth
    _name, processor, model = family
    trl_rows = make_conversations(2, seed=5, images_per_turn=(1, 2))

    def to_unsloth(row):
        it = iter(row["images"])
        return {
            "messages": [
                {
                    **m,
                    "content": [
                        {"type": "image", "image": next(it)} if c["type"] == "image" else c for c in m["content"]
                    ],
                }
                for m in row["messages"]
            ]
        }

    def formatting_func(example):
        return to_unsloth(example["conversation"])

    collator = ours_cls(
        model, processor, max_seq_length=MAX_LEN, formatting_func=formatting_func, pad_to_multiple_of=32
    )
    batch = collator([{"conversation": r} for r in trl_rows])
    assert batch["input_ids"].shape[1] % 32 == 0
    assert batch["input_ids"].shape[1] <= MAX_LEN
    reference = ours_cls(model, processor, max_seq_length=MAX_LEN)([to_unsloth(r) for r in trl_rows])
    assert supervised(batch) == supervised(reference) != []


def test_needs_max_seq_length(unsloth, family):
    _, ours_cls = unsloth
    _name, processor, model = family
    with pytest.raises(ConfigError, match="max_seq_length"):
        ours_cls(model, processor)


def test_oversize_image_raises_or_skips(unsloth):
    """An image span longer than max_seq_length is never cut: a named error, or the example is skipped."""
    _, ours_cls = unsloth
    processor = build_processor("gemma3")
    model = build_model("gemma3", processor)
    rows = unsloth_rows(2, seed=6)
    with pytest.raises(OversizeSpanError):
        ours_cls(model, processor, max_seq_length=12)(copy.deepcopy(rows))
    skipping = ours_cls(model, processor, max_seq_length=12, on_oversize="skip")
    with pytest.raises(EmptyBatchError), pytest.warns(UserWarning, match="skipped an example"):
        skipping(copy.deepcopy(rows))
    assert skipping.skipped == {"OversizeSpanError": 2}  # counted, never silent
    assert issubclass(EmptyBatchError, ChunkerError)


def test_llama_factory_llava_and_openai_examples_collate_as_their_trl_form(unsloth, tmp_path):
    """LLaMA-Factory rows as published (mllm_demo.json, paths relative to the data folder), LLaVA and OpenAI
    examples give the very batch their TRL form gives (the stock path's own layout); a LLaMA-Factory example with a
    <video> is refused by name, its twin without the video collates."""
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from chunker import RowFormatError

    _, ours_cls = unsloth
    processor = build_processor("qwen2_vl")
    model = build_model("qwen2_vl", processor)
    for k, size in enumerate(((56, 84), (84, 56), (56, 56)), 1):
        (tmp_path / "mllm_demo_data").mkdir(exist_ok=True)
        Image.new("RGB", size, (60 * k, 90, 200)).save(tmp_path / "mllm_demo_data" / f"{k}.jpg")
    demo = Path(__file__).parent.parent / "data" / "formats" / "mllm_demo.json"
    rows = json.loads(demo.read_text())[:3]
    first = str(tmp_path / "mllm_demo_data" / "1.jpg")

    def trl(row):
        head, *rest = row["messages"]
        text = head["content"].removeprefix("<image>")
        return {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
                             *[{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
                               for m in rest]],
                "images": [str(tmp_path / p) for p in row["images"]]}

    llava = {"image": "mllm_demo_data/1.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWho are they?"}, {"from": "gpt", "value": "Kane and Gretzka."}]}
    question = [{"type": "image"}, {"type": "text", "text": "\nWho are they?"}]
    llava_trl = {"messages": [{"role": "user", "content": question},
                              {"role": "assistant", "content": [{"type": "text", "text": "Kane and Gretzka."}]}],
                 "images": [first]}
    url = {"type": "image_url", "image_url": {"url": Path(first).as_uri()}}
    openai = {"messages": [{"role": "user", "content": [url, {"type": "text", "text": "\nWho are they?"}]},
                           {"role": "assistant", "content": [{"type": "text", "text": "Kane and Gretzka."}]}]}
    collator = ours_cls(model, processor, max_seq_length=40, overlap=4, base_dir=tmp_path)
    got = collator(copy.deepcopy([*rows, llava, openai]))
    want = collator([*(trl(r) for r in rows), llava_trl, copy.deepcopy(llava_trl)])
    assert got["input_ids"].shape[0] > 5 and set(got) == set(want)
    for key in got:
        assert np.array_equal(got[key].numpy(), want[key].numpy()), key
    video = {**rows[0], "messages": [{"role": "user", "content": "<video><image>Who are they?"},
                                     *rows[0]["messages"][1:]], "videos": ["a.mp4"], "id": 7}
    with pytest.raises(RowFormatError, match=r"row 7: the example holds 1 video item"):
        collator([video])
    assert collator([{**rows[0], "id": 7}])["input_ids"].shape[0] >= 1
