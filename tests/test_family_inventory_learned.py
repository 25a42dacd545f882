"""The inventory's "learned" classes: each is learned (no adapter names it) from its real processor, and no class is in
two lists."""

from __future__ import annotations

import pytest

from chunker.families import adapter_for
from chunker.families.inventory import LEARNED, PENDING, inventory, written
from chunker.families.learned import Learned
from chunker.families.refused import REFUSED
from chunker.testing import build_processor

# inventory class -> the test family (chunker.testing) that builds its real processor
BUILT_BY = {"Glm4vProcessor": "glm4v"}


def test_learned_classes_are_in_no_other_list_and_each_is_built_here():
    assert not set(LEARNED) & (set(REFUSED) | set(PENDING) | set(written()))
    assert set(BUILT_BY) == set(LEARNED)
    assert {e.processor for e in inventory() if e.status == "learned"} == set(LEARNED)


@pytest.mark.parametrize("cls,family", sorted(BUILT_BY.items()))
def test_a_learned_class_is_learned_from_its_real_processor(cls, family):
    processor = build_processor(family)
    assert cls in [c.__name__ for c in type(processor).__mro__]
    assert isinstance(adapter_for(processor), Learned)
