"""vlm-chunker: split long multi-image conversations into windows that never cut an image span."""

from .errors import (
    ChunkerError,
    ConfigError,
    EmptyBatchError,
    EmptyConversationError,
    GrammarError,
    ImageCountError,
    ImageDecodeError,
    ImageTokenCountError,
    ImageTokenMismatchError,
    InvalidTokenError,
    NoSupervisionError,
    OversizeSpanError,
    PixelMismatchError,
    PrefixError,
    ProcessorError,
    RowFormatError,
    SourceError,
    SpanError,
    TemplateError,
    UnsupportedProcessorError,
)
from .pack import pack_windows
from .plan import Window, plan_windows
from .spans import Spans, find_image_spans
from .spec import ImageSpanSpec
from .splitter import SplitStats, WindowSplitter, drop_skipped

__version__ = "0.1.0"


def __getattr__(name):
    if name == "WindowCollator":
        from .collator import WindowCollator

        return WindowCollator
    raise AttributeError(f"module 'chunker' has no attribute {name!r}")


__all__ = [
    "ChunkerError",
    "ConfigError",
    "EmptyBatchError",
    "EmptyConversationError",
    "GrammarError",
    "ImageCountError",
    "ImageDecodeError",
    "ImageSpanSpec",
    "ImageTokenCountError",
    "ImageTokenMismatchError",
    "InvalidTokenError",
    "NoSupervisionError",
    "OversizeSpanError",
    "PixelMismatchError",
    "PrefixError",
    "ProcessorError",
    "RowFormatError",
    "SourceError",
    "SpanError",
    "Spans",
    "SplitStats",
    "TemplateError",
    "UnsupportedProcessorError",
    "Window",
    "WindowCollator",
    "WindowSplitter",
    "drop_skipped",
    "find_image_spans",
    "pack_windows",
    "plan_windows",
]
