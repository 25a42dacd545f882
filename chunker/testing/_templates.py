"""The checkpoints' real chat templates, vendored byte-exact in `tests/data/chat_templates/` (provenance in its
`SOURCES.md`), and the `chat_template=` option every builder of them takes."""

from __future__ import annotations

from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[2] / "tests" / "data" / "chat_templates"


def vendored_template(filename: str) -> str:
    """The vendored template `filename`, byte-exact.

    Raises:
        FileNotFoundError: the source tree's test data is not there (an installed wheel): pass `chat_template=`.
    """
    path = TEMPLATES / filename
    if not path.exists():
        raise FileNotFoundError(f"{path} is not installed with the package: pass chat_template= to build_processor")
    return path.read_bytes().decode("utf-8")


def chat_template_option(family: str, options: dict) -> str | None:
    """`options`' `chat_template` (None when absent), the builder's only option; any other is a ValueError."""
    chat_template = options.pop("chat_template", None)
    if options:
        raise ValueError(f"unknown options {sorted(options)} for family {family!r}: valid is chat_template")
    return chat_template
