"""Every error chunker raises. Each names the row, what was seen, what was expected, and the fix."""

from __future__ import annotations


class ChunkerError(ValueError):
    """Base class of every error chunker raises (a `ValueError`, so existing handlers still catch it)."""


def _where(row) -> str:
    return "" if row is None else f"row {row}: "


class ConfigError(ChunkerError):
    """Arguments that cannot work together (max_length, overlap, prefix, policies)."""


class UnsupportedProcessorError(ChunkerError):
    """No family grammar matches the processor, and no spec was passed."""


class GrammarError(UnsupportedProcessorError):
    """The family grammar does not recover what the installed processor makes of a probe (spans, counts,
    pixel rows or type ids): transformers changed the family's expansion."""


class RowFormatError(ChunkerError):
    """A row has none of the accepted layouts, or its columns disagree (e.g. labels of another length)."""

    def __init__(self, message: str, row=None):
        self.row = row
        super().__init__(_where(row) + message)


class InvalidTokenError(RowFormatError):
    """Token ids that are not integers or lie outside the tokenizer's vocabulary."""


class SpanError(RowFormatError):
    """The media tokens of a row do not form well-made spans (unclosed or unopened bracket, stray token)."""


class ImageCountError(RowFormatError):
    """The row holds more or fewer media items than placeholders in its text."""


class ImageTokenCountError(RowFormatError):
    """A span holds another number of placeholder tokens than its media item needs."""


class PixelMismatchError(RowFormatError):
    """Pixel tensors or their companions do not match the row's spans."""


class OversizeSpanError(RowFormatError):
    """A media span (plus the prefix) is longer than max_length: it can never fit whole in a window."""

    def __init__(self, message: str, row=None, span=None, span_len=None, needed=None):
        self.span, self.span_len, self.needed = span, span_len, needed
        super().__init__(message, row=row)


class EmptyConversationError(RowFormatError):
    """A row with no tokens, or no messages."""


class PrefixError(RowFormatError):
    """The prefix repeated in every window leaves no room, or cuts a span."""


class ImageDecodeError(RowFormatError):
    """An image that cannot be opened or decoded."""


class NoSupervisionError(RowFormatError):
    """A row that would train no token: assistant turns whose answers became no supervised token, no assistant
    turn at all under train_on="assistant", or labels that are all -100."""


class TemplateError(RowFormatError):
    """The model's chat template refused to render the conversation (or a prefix of it)."""


class ProcessorError(RowFormatError):
    """The processor refused the row (an image of a shape it cannot take, text it cannot tokenize)."""


class ImageTokenMismatchError(ChunkerError):
    """Rows of a batch whose image tokens do not match their media; `bad_rows` lists them."""

    def __init__(self, message: str, bad_rows=()):
        self.bad_rows = list(bad_rows)
        super().__init__(message)


class EmptyBatchError(ChunkerError):
    """The collator was given no rows, or every row was dropped."""


class SourceError(ChunkerError):
    """A data or processor source (file, folder, hub name) that cannot be read."""
