"""TRL's SFTTrainer trains on our windows with chunker.WindowCollator; TRL's own truncating collator breaks on them."""

from __future__ import annotations

import math

import datasets
import pytest

from chunker import WindowCollator, WindowSplitter
from chunker.integrations.trl import window_features
from chunker.testing import build_model, build_processor
from chunker.testing.demo import make_conversations

trl = pytest.importorskip("trl")

FAMILIES = ("qwen2_vl", "gemma3")
MAX_LEN = 128
MISMATCH = r"Mismatch in `image` token count|Image features and image tokens do not match"


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    processor = build_processor(request.param)
    return request.param, processor


def trl_dataset(n: int, seed: int = 0) -> datasets.Dataset:
    """Long multi-image conversations in TRL layout: messages with {"type": "image"} items + an images column."""
    return datasets.Dataset.from_list(make_conversations(n, seed=seed, images_per_turn=(1, 2)))


def unsloth_dataset(n: int, text_only_first: int, seed: int = 0) -> datasets.Dataset:
    """The same in Unsloth layout (images inline), the first `text_only_first` rows without any image."""
    rows = make_conversations(n, seed=seed, images_per_turn=(1, 2))
    out = []
    for r, row in enumerate(rows):
        it = iter(row["images"])
        messages = []
        for m in row["messages"]:
            content = [{"type": "image", "image": next(it)} if c["type"] == "image" else c for c in m["content"]]
            if r < text_only_first:
                content = [c for c in content if c["type"] != "image"]
            messages.append({**m, "content": content})
        out.append({"messages": messages})
    return datasets.Dataset.from_list(out)


def test_sft_trainer_trains_on_windows(family, tmp_path):
    """Several optimizer steps of SFTTrainer on the windows: every loss finite, the loss falls."""
    name, processor = family
    ds = trl_dataset(8)
    splitter = WindowSplitter(processor, max_length=MAX_LEN, overlap=16)
    windows = ds.map(splitter, batched=True, with_indices=True, remove_columns=ds.column_names)
    assert len(windows) > len(ds) and max(map(len, windows["input_ids"])) <= MAX_LEN
    config = trl.SFTConfig(
        output_dir=str(tmp_path),
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        per_device_train_batch_size=4,
        max_steps=6,
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
    )
    trainer = trl.SFTTrainer(
        model=build_model(name, processor),
        args=config,
        train_dataset=windows,
        processing_class=processor,
        data_collator=WindowCollator(processor),
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) < sum(losses[:2])


def test_trl_truncating_collator_breaks_on_the_same_rows(family):
    """Positive control: TRL's own vision collator with max_length truncation cannot collate these rows."""
    name, processor = family
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    model = build_model(name, processor)
    rows = list(trl_dataset(2))
    with pytest.raises(ValueError, match=MISMATCH):
        batch = DataCollatorForVisionLanguageModeling(processor, max_length=MAX_LEN)(rows)
        model(**batch)


def test_window_features_type_images_when_the_first_batch_has_none():
    """Inline images + an imageless first batch: plain map fails in Arrow; with window_features it keeps every image."""
    processor = build_processor("qwen2_vl")
    ds = unsloth_dataset(6, text_only_first=2)
    splitter = WindowSplitter(processor, max_length=MAX_LEN, overlap=16)
    expected = sum(len(w["images"]) for i in range(len(ds)) for w in splitter.split_example(ds[i], index=i))
    assert expected > 0
    kwargs = {"batched": True, "batch_size": 2, "with_indices": True, "remove_columns": ds.column_names}
    with pytest.raises(TypeError, match="to null"):
        ds.map(splitter, **kwargs)
    windows = ds.map(splitter, features=window_features(ds, splitter), **kwargs)
    assert windows.features["images"] == datasets.List(datasets.Image())
    assert sum(len(x) for x in windows["images"]) == expected


def test_trl_recipe_on_llava_rows_keeps_every_image_and_gives_the_canonical_windows(tmp_path):
    """The recipe on LLaVA-Instruct rows (an `image` path + from/value turns) whose first batch holds a text-only
    row: window_features types the new `images` column, the windows are those of the same rows in TRL form, and
    WindowCollator collates them."""
    from PIL import Image

    processor = build_processor("qwen2_vl")
    for k, size in enumerate(((56, 84), (84, 56)), 1):
        Image.new("RGB", size, (90 * k, 40, 160)).save(tmp_path / f"{k}.jpg")
    turns = [{"from": "human", "value": "<image>\nWhat is shown here, in a few words?"},
             {"from": "gpt", "value": "A red and white bus on a crowded street, with an advertisement on its back."},
             {"from": "human", "value": "Is it moving?"}, {"from": "gpt", "value": "Yes, it drives down the street."}]
    rows = [{"id": "t", "image": None, "conversations": [{"from": "human", "value": "Hello there, who are you?"},
                                                         {"from": "gpt", "value": "An assistant that sees images."}]},
            {"id": "a", "image": "1.jpg", "conversations": turns},
            {"id": "b", "image": "2.jpg", "conversations": turns}]
    ds = datasets.Dataset.from_list(rows)
    splitter = WindowSplitter(processor, max_length=32, overlap=4, base_dir=tmp_path)
    kwargs = {"batched": True, "batch_size": 1, "with_indices": True, "remove_columns": ds.column_names}
    windows = ds.map(splitter, features=window_features(ds, splitter), **kwargs)
    assert windows.features["images"] == datasets.List(datasets.Image())

    def trl(row):
        msgs = [{"role": {"human": "user", "gpt": "assistant"}[t["from"]], "content": t["value"]}
                for t in row["conversations"]]
        if row["image"]:
            msgs[0]["content"] = [{"type": "image"}, {"type": "text", "text": msgs[0]["content"][len("<image>"):]}]
        return {"messages": msgs, "images": [str(tmp_path / row["image"])] if row["image"] else []}

    want = [w for i, r in enumerate(rows) for w in splitter.split_example(trl(r), i)]
    assert windows["input_ids"] == [w["input_ids"].tolist() for w in want]
    assert windows["labels"] == [w["labels"].tolist() for w in want]
    assert sum(len(x) for x in windows["images"]) == sum(len(w["images"]) for w in want) >= 2
    batch = WindowCollator(processor)([windows[i] for i in range(len(windows))])
    assert batch["pixel_values"].shape[0] > 0
