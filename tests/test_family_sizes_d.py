"""Token counts from image sizes give the windows pixels give, for the written `chunker.testing.families_d` families (the
cases of `tests/test_image_sizes.py`, run on these processors with their real templates); a learned family, which has
no size recipe, refuses "sizes" by name and its twin with "pixels" splits."""

from __future__ import annotations

import pytest
from test_image_sizes import assert_same_windows, rows

from chunker import ConfigError, WindowSplitter
from chunker.testing import build_processor

WRITTEN = ("paddleocr_vl",)
LEARNED = ("glm4v",)


@pytest.mark.parametrize("family", WRITTEN)
def test_sizes_give_the_windows_of_pixels(family):
    processor = build_processor(family)
    pixels = WindowSplitter(processor, image_tokens_from="pixels", max_length=96, overlap=8)
    sizes = WindowSplitter(processor, image_tokens_from="sizes", max_length=96, overlap=8)
    split = 0
    for index, row in enumerate(rows()):
        want = pixels.split_example(row, index=index)
        assert_same_windows(want, sizes.split_example(row, index=index))
        split += len(want) > 1
    assert split >= 2


@pytest.mark.parametrize("family", LEARNED)
def test_a_learned_family_refuses_sizes_by_name_and_splits_from_pixels(family):
    processor = build_processor(family)
    with pytest.raises(ConfigError, match=f"image_tokens_from='sizes' cannot give the {family} family"):
        WindowSplitter(processor, image_tokens_from="sizes", max_length=96).split_example(rows()[0])
    assert len(WindowSplitter(processor, image_tokens_from="pixels", max_length=96).split_example(rows()[0])) > 1
