"""The families added for issue 9 through Unsloth's collator (`ChunkingVisionDataCollator`), as Gemma 3 and
Qwen2-VL are in `tests/integrations/test_unsloth.py`: the stock collator's truncation breaks on long rows, ours
gives windows whose supervision is exactly the stock collator's on the untruncated rows, and they train.

Runs on the Unsloth set (transformers 5.17, unsloth_zoo 2026.10.9) and wherever unsloth_zoo imports.
"""

from __future__ import annotations

import copy

import pytest
from integrations.test_unsloth import MISMATCH, supervised, unsloth, unsloth_rows  # noqa: F401  (unsloth: a fixture)
from model_checks import assert_loss_falls
from test_family_models import needs_collator

from chunker.testing import build_model, build_processor

# test family -> Unsloth's train_on_responses_only markers for its real chat template
MARKERS = {
    "gemma4": {"instruction_part": "<|turn>user\n", "response_part": "<|turn>model\n"},
    # the vicuna template writes "USER: text"; a marker with the space would not match "ASSISTANT:" + " word" tokens
    "llava_next_video": {"instruction_part": "USER:", "response_part": "ASSISTANT:"},
}
MAX_LEN = 160


@pytest.fixture(scope="module")
def built():
    return {}


def family_of(built, name):
    if name not in built:
        processor = build_processor(name)
        built[name] = (processor, build_model(name, processor))
    return built[name]


@pytest.mark.parametrize("name", list(MARKERS))
def test_is_an_unsloth_collator_and_stock_truncation_breaks_where_ours_splits(unsloth, built, name):  # noqa: F811
    stock_cls, ours_cls = unsloth
    processor, model = family_of(built, name)
    rows = unsloth_rows(2)
    ours = ours_cls(model, processor, max_seq_length=MAX_LEN)
    assert isinstance(ours, stock_cls)
    with pytest.raises(ValueError, match=MISMATCH):  # the positive control: the processor's own count check
        stock_cls(model, processor, max_seq_length=MAX_LEN)(copy.deepcopy(rows))
    batch = ours(copy.deepcopy(rows))
    assert batch["input_ids"].shape[1] <= MAX_LEN and batch["input_ids"].shape[0] > len(rows)


@pytest.mark.parametrize("responses_only", [False, True], ids=["all", "responses_only"])
@pytest.mark.parametrize("name", list(MARKERS))
def test_supervision_equals_the_stock_collator_untruncated(unsloth, built, name, responses_only):  # noqa: F811
    stock_cls, ours_cls = unsloth
    processor, model = family_of(built, name)
    kwargs = dict(MARKERS[name], train_on_responses_only=True) if responses_only else {}
    ours = ours_cls(model, processor, max_seq_length=MAX_LEN, overlap=16, **kwargs)
    stock = stock_cls(model, processor, **kwargs)
    for row in unsloth_rows(2, seed=2):
        windows = ours([copy.deepcopy(row)])
        assert windows["input_ids"].shape[0] > 1
        assert supervised(windows) == supervised(stock([copy.deepcopy(row)]))


@pytest.mark.parametrize("name", [needs_collator(f) for f in MARKERS])
def test_windows_train_with_finite_falling_loss(unsloth, built, name):  # noqa: F811
    _, ours_cls = unsloth
    processor, model = family_of(built, name)
    model = copy.deepcopy(model)
    collator = ours_cls(model, processor, max_seq_length=MAX_LEN, overlap=16, **MARKERS[name],
                        train_on_responses_only=True)
    batch = collator(unsloth_rows(2, seed=1))
    assert_loss_falls(model, batch)
