"""The inventory's "learned" classes: each is learned (no adapter names it) from its real processor, and no class is in
two lists."""

from __future__ import annotations

import pytest

from chunker.families import adapter_for
from chunker.families.inventory import LEARNED, PENDING, chat_processors, inventory, written
from chunker.families.learned import Learned
from chunker.families.refused import REFUSED
from chunker.testing import build_processor

# inventory class -> the test family (chunker.testing) that builds its real processor
BUILT_BY = {"Glm4vProcessor": "glm4v", "Glm46VProcessor": "glm46v", "Glm5NextProcessor": "glm5_next",
            "Lfm3VlProcessor": "lfm3_vl", "Cosmos3EdgeProcessor": "cosmos3_edge",
            "CohereCompassProcessor": "cohere_compass", "ChameleonProcessor": "chameleon",
            "JanusProcessor": "janus", "Gemma3nProcessor": "gemma3n", "MiniMaxM3VLProcessor": "minimax_m3_vl"}
# classes whose image processor has only a torchvision backend: built where torchvision loads
NEEDS_TORCHVISION = {"MiniMaxM3VLProcessor"}


def test_learned_classes_are_in_no_other_list_and_each_is_built_here():
    assert not set(LEARNED) & (set(REFUSED) | set(PENDING) | set(written()))
    assert set(BUILT_BY) == set(LEARNED)
    # a class the installed transformers lacks (LFM3-VL on 5.17) is in no row of its inventory
    assert {e.processor for e in inventory() if e.status == "learned"} == set(LEARNED) & set(chat_processors())


@pytest.mark.parametrize("cls,family", sorted(BUILT_BY.items()))
def test_a_learned_class_is_learned_from_its_real_processor(cls, family):
    if cls not in chat_processors():
        pytest.skip(f"the installed transformers has no {cls}")
    if cls in NEEDS_TORCHVISION:
        pytest.importorskip("torchvision", reason=f"{cls}'s image processor has only a torchvision backend")
    processor = build_processor(family)
    assert cls in [c.__name__ for c in type(processor).__mro__]
    assert isinstance(adapter_for(processor), Learned)
