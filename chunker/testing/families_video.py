"""Offline video of the families whose real video processor is built here (it needs torchvision): Gemma 4 (a video is
its frames, each `mm:ss <|image> <|video|>×n <image|>`) and LLaVA-NeXT-Video (a video is one `<video>` run), their real
processors with their real video processors (`families_c`, `video=True`), tiny real models, and deterministic frames.
"""

from __future__ import annotations

VIDEO_FAMILIES = ("gemma4", "llava_next_video")


def build_processor(family: str):
    """The real processor of `family` with its real video processor, built offline (`families_c`, `video=True`).

    Raises:
        ValueError: an unknown family.
        ImportError: torchvision is not installed (the video processors need it); `tests/test_family_video.py` builds
            these processors and skips without it.
    """
    from . import build_processor as build

    _check(family)
    return build(family, video=True)


def build_model(family: str, processor, seed: int = 0):
    """The family's real `*ForConditionalGeneration` with a tiny random config matching `processor` (its vision tower
    encodes the video frames too).

    Args:
        family: one of `VIDEO_FAMILIES`.
        processor: from `build_processor(family)`.
        seed: the weights are drawn under this seed (the global RNG is restored after).
    """
    from .families_c import build_model as build

    _check(family)
    return build(family, processor, seed=seed)


def video_frames(shapes, seed: int = 0) -> list:
    """Deterministic uint8 videos of random pixels, one `(frames, height, width, 3)` array per (frames, height, width).

    Example:
        >>> [v.shape for v in video_frames([(3, 24, 36), (2, 30, 30)])]
        [(3, 24, 36, 3), (2, 30, 30, 3)]
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (t, h, w, 3), dtype=np.uint8) for t, h, w in shapes]


def _check(family: str) -> None:
    if family not in VIDEO_FAMILIES:
        raise ValueError(f"unknown video family {family!r}: choose one of {VIDEO_FAMILIES}")
