"""The README matrix's rows of the families proven only where torchvision loads are what their processors are.

`tools/families_matrix.py` states these rows (`chunker.testing.TORCHVISION_MATRIX`, and "video" for
`chunker.testing.families_video.VIDEO_FAMILIES`) so the table is the same with or without torchvision; here, where
torchvision loads, each row is checked against the family's real processor and the adapter chunker detects for it.
"""

from __future__ import annotations

import pytest

from chunker.families import adapter_for
from chunker.families.learned import Learned
from chunker.testing import TORCHVISION_MATRIX, build_processor
from chunker.testing.families_video import VIDEO_FAMILIES

pytest.importorskip("torchvision", reason="these processors' image or video processors need torchvision")


def modalities(adapter) -> str:
    """The modalities an adapter's grammar names, written as the matrix writes them (the learner probes images only,
    so a learned family claims no video)."""
    spec = adapter.spec
    video = spec.video_token_id is not None and not isinstance(adapter, Learned)
    return "image" + (", video" if video else "") + (", audio" if spec.audio_token_id is not None else "")


@pytest.mark.parametrize("family", sorted(TORCHVISION_MATRIX))
def test_each_stated_row_is_the_processor_and_the_adapter_chunker_detects(family):
    real, stated_modalities, grammar = TORCHVISION_MATRIX[family]
    processor = build_processor(family)
    assert real in [c.__name__ for c in type(processor).__mro__]
    adapter = adapter_for(processor)
    assert modalities(adapter) == stated_modalities
    if isinstance(adapter, Learned):
        assert grammar.startswith(f"learned ({adapter.count_rule} count")
    else:
        assert grammar.startswith(f"written (`{adapter.name}`")
    # the label of a stand-in template is there exactly when the test processor's template is not the checkpoint's
    assert ("stand-in" in grammar) == (family in {"cohere2_vision", "minimax_m3_vl"})


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_video_families_name_a_video_token_with_their_real_video_processor(family):
    """The matrix says "video" for these: with its real video processor the family's grammar has a video token (the
    windows and the tiny model are `tests/test_family_video.py`'s)."""
    from chunker.testing import families_video

    adapter = adapter_for(families_video.build_processor(family))
    assert adapter.spec.video_token_id is not None
    assert adapter.spec.video_token_id == adapter.processor.tokenizer.convert_tokens_to_ids(
        adapter.processor.video_token)
