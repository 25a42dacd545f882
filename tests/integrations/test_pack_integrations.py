"""Packed windows in the trainers: TRL's SFTTrainer on `pack_windows` rows (padding-free), and Unsloth's collator
with `pack=True`. Real processors, real tiny models, the real trainer; Qwen2-VL (3-D rope positions per window)."""

from __future__ import annotations

import copy
import math
import os
import sys

import datasets
import pytest
import torch

import chunker
from chunker import WindowCollator, WindowSplitter
from chunker.testing import build_model, build_processor
from chunker.testing.demo import make_conversations

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_unsloth

MARKERS, unsloth_rows = test_unsloth.MARKERS, test_unsloth.unsloth_rows
unsloth = test_unsloth.unsloth  # the CPU-only unsloth_zoo fixture

MAX_LEN = 128


def _summed_loss(model, batch) -> torch.Tensor:
    """Summed token loss of a batch (labels shifted by one, -100 ignored), float64."""
    batch = {k: v.double() if isinstance(v, torch.Tensor) and torch.is_floating_point(v) else v for k, v in batch.items()}
    labels = batch.pop("labels")
    logits = model(**batch).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                             ignore_index=-100, reduction="sum")


def test_sft_trainer_trains_on_packed_windows_padding_free(tmp_path):
    trl = pytest.importorskip("trl")
    processor = build_processor("qwen2_vl")
    model = build_model("qwen2_vl", processor)
    ds = datasets.Dataset.from_list(make_conversations(8, seed=0, images_per_turn=(1, 2)))
    windows = ds.map(WindowSplitter(processor, max_length=MAX_LEN), batched=True, with_indices=True,
                     remove_columns=ds.column_names)
    packed = chunker.pack_windows(windows, max_length=2 * MAX_LEN)
    assert len(packed) < len(windows) / 1.5 and max(sum(s) for s in packed["segment_lengths"]) <= 2 * MAX_LEN
    collator = WindowCollator(processor, model=model, padding_free=True)
    seen = []

    def data_collator(rows):
        batch = collator(rows)
        seen.append(batch["input_ids"].shape)
        return batch

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = trl.SFTTrainer(
        model=model,
        args=trl.SFTConfig(output_dir=str(tmp_path), remove_unused_columns=False, max_length=None,
                           dataset_kwargs={"skip_prepare_dataset": True}, per_device_train_batch_size=2, max_steps=4,
                           learning_rate=5e-3, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                           report_to=[], use_cpu=True, seed=0),
        train_dataset=packed,
        processing_class=processor,
        data_collator=data_collator,
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert seen and all(shape[0] == 1 for shape in seen)  # one flattened row per batch: no padding at all
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p.detach(), before[n])]
    assert not unchanged, unchanged[:5]


def test_unsloth_collator_with_pack_trains_like_its_unpacked_batch(unsloth):
    """pack=True: fewer, fuller rows; the summed token loss of the packed batch equals the unpacked batch's (float64),
    and a few optimizer steps on packed batches change every parameter."""
    _, ours_cls = unsloth
    processor = build_processor("qwen2_vl")
    model = build_model("qwen2_vl", processor).double()
    rows = unsloth_rows(3, seed=1)
    kwargs = dict(max_seq_length=MAX_LEN, train_on_responses_only=True, **MARKERS["qwen2_vl"])
    plain = ours_cls(model, processor, **kwargs)(copy.deepcopy(rows))
    packed = ours_cls(model, processor, pack=True, **kwargs)(copy.deepcopy(rows))
    assert packed["input_ids"].shape[0] < plain["input_ids"].shape[0] and packed["input_ids"].shape[1] <= MAX_LEN
    assert "attention_mask" not in packed and packed["position_ids"].shape[0] == 4
    model.eval()
    with torch.no_grad():
        a, b = float(_summed_loss(model, plain)), float(_summed_loss(model, packed))
    assert abs(a - b) <= 1e-8 * abs(a), (a, b)

    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    collator = ours_cls(model, processor, pack=True, **kwargs)
    for step in range(3):
        optimizer.zero_grad()
        loss = model(**collator(copy.deepcopy(unsloth_rows(2, seed=step)))).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert not unchanged, unchanged[:5]
