"""Where rows and processors come from: local files and folders, the hub when online, the bundled demo.

The CLI and scripts call `load_rows(DATA)` and `load_processor(P)`; both raise `SourceError` with one line
that says what was given, why it cannot be read, and what to give instead.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from .errors import SourceError

DEMO = "demo"
DEMO_PROCESSOR_DIR = Path(__file__).parent / "data" / "demo-processor"
BASE_DIR_COLUMN = "_base_dir"
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_rows(data: str, *, split: str = "train"):
    """Rows to split, as a `datasets.Dataset`, with relative image paths resolvable.

    Args:
        data: a local `.jsonl`/`.json`/`.parquet` file, a folder written by `Dataset.save_to_disk`
            (or a `DatasetDict` folder, whose `split` is used), or a hub dataset name when online.
            Rows are TRL format (`messages` with `{"type": "image"}` items plus an `images` column of
            paths relative to the file's folder, bytes, or images) or Unsloth format (images inline).
            Blank lines of a JSONL file are skipped, as JSON Lines readers do.
        split: the split of a `DatasetDict` folder or of a hub dataset.

    Returns:
        `datasets.Dataset` with a `_base_dir` column (the data's folder) so the splitter finds relative paths.

    Raises:
        SourceError: the path does not exist, has an unknown type, cannot be parsed (a JSONL file names its
            first bad line), holds no rows, or names a hub dataset that cannot be reached (offline); the
            message says what to give instead.

    Example:
        >>> ds = load_rows("conversations.jsonl")                            # doctest: +SKIP
        >>> ds.column_names                                                   # doctest: +SKIP
        ['messages', 'images', '_base_dir']
    """
    path = Path(data).expanduser()
    if path.is_dir():
        ds, base = _load_folder(path, split), path
    elif path.is_file():
        ds, base = _load_file(path), path.parent
    elif _looks_local(data):
        raise SourceError(
            f"DATA {data!r} does not exist: give a .jsonl/.parquet file, a save_to_disk folder, or a hub dataset name"
        )
    else:
        return _nonempty(_load_hub(data, split), data)
    ds = _nonempty(ds, data)
    if BASE_DIR_COLUMN not in ds.column_names:
        ds = ds.add_column(BASE_DIR_COLUMN, [str(base.resolve())] * len(ds))
    return ds


def load_processor(name: str):
    """A transformers processor from a local folder, a hub id when online, or `"demo"` (bundled).

    Processors whose class carries a video processor need torchvision to load through `AutoProcessor`;
    without it we load the same class with its image processor only, which is all splitting needs.

    Args:
        name: `"demo"`, a folder with `processor_config.json`/`preprocessor_config.json` and tokenizer files,
            or a hub model id.

    Returns:
        the processor.

    Raises:
        SourceError: the folder holds no processor, or the hub id cannot be reached (offline) or does not exist.

    Example:
        >>> processor = load_processor("demo")
        >>> type(processor).__name__.startswith("Qwen2VL")
        True
    """
    if name == DEMO:
        path = DEMO_PROCESSOR_DIR
        if not path.is_dir():
            raise SourceError(
                f"the bundled demo processor is missing from {path}: reinstall vlm-chunker, or run "
                "`python -m chunker.testing.make_demo_processor`"
            )
    else:
        path = Path(name).expanduser()
    if path.is_dir():
        return _processor_from_folder(path)
    if path.is_file():
        raise SourceError(
            f"processor {name!r} is a file, not a folder: give the folder processor.save_pretrained(DIR) wrote "
            f"(e.g. {str(path.parent)!r}), a hub model id, or 'demo'"
        )
    if _looks_local(name):
        raise SourceError(
            f"processor {name!r} does not exist: give a processor folder, a hub model id, or 'demo'"
        )
    try:
        return _processor_from_folder(name)
    except SourceError:
        raise
    except Exception as exc:  # the hub client raises many unrelated types; all mean "cannot load this id"
        raise SourceError(
            f"cannot load processor {name!r} from the hub ({_first_line(exc)}): check the id and your network, or "
            "give a local processor folder (processor.save_pretrained(DIR)) or 'demo'"
        ) from exc


def _processor_from_folder(path):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(path))
    except (ImportError, OSError, ValueError) as exc:
        if not _needs_video_backend(exc):
            raise _folder_error(path, exc) from exc
    return _image_only(path)


def _needs_video_backend(exc: BaseException) -> bool:
    """AutoProcessor failed on the video processor: torchvision missing, or no video config saved."""
    text = str(exc).lower()
    return "torchvision" in text or "video processor" in text or "video_preprocessor" in text


def _image_only(path):
    """The folder's processor class without its video processor (needs no torchvision)."""
    import json

    from transformers.models.auto.processing_auto import processor_class_from_name

    config = Path(path) / "processor_config.json"
    try:
        cls = processor_class_from_name(json.loads(config.read_text())["processor_class"])
        cls.get_attributes()
    except (OSError, KeyError, AttributeError, TypeError, ValueError) as exc:
        raise _folder_error(path, exc) from exc
    try:
        return _image_only_class(cls).from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise _folder_error(path, exc) from exc


@cache
def _image_only_class(cls):
    """A subclass of `cls` (same name, real class in its MRO) built without a video processor."""
    attributes = [a for a in cls.get_attributes() if a != "video_processor"]
    return type(cls.__name__, (cls,), {"get_attributes": classmethod(lambda c: list(attributes)), "__module__": __name__})


def _folder_error(path, exc) -> SourceError:
    return SourceError(
        f"cannot load a processor from {str(path)!r} ({_first_line(exc)}): give a folder written by "
        "processor.save_pretrained(DIR), a hub model id, or 'demo'"
    )


def _load_file(path: Path):
    import datasets

    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise SourceError(
            f"DATA {str(path)!r} has an unknown type {path.suffix or '(no suffix)'!r}: give a .jsonl, .json or .parquet "
            "file, or a save_to_disk folder"
        )
    try:
        with quiet_progress():
            return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # datasets wraps parse errors in several types; all mean "unreadable file"
        _explain_failed_load(path, builder)
        raise SourceError(
            f"cannot read {str(path)!r} as {path.suffix[1:]} ({_first_line(exc.__cause__ or exc)}): one JSON object "
            "per line with a 'messages' list (TRL or Unsloth format), or a Parquet file with those columns"
        ) from exc


def _explain_failed_load(path: Path, builder: str) -> None:
    """Raise the SourceError that says why datasets could not read `path`, where we can tell: no rows, or the first
    line of a JSONL file that is not JSON.

    Runs only after a failed load, so a good file is parsed once (by Arrow); a `.json` file may be one JSON
    document over many lines, so only `.jsonl` files are judged line by line.
    """
    if builder == "parquet":
        import pyarrow.parquet as pq

        try:
            meta = pq.read_metadata(path)
        except (OSError, ValueError):  # not a Parquet file at all: the caller's message says so
            return
        if meta.num_rows == 0:
            raise _no_rows(path, f"the Parquet file has columns {meta.schema.to_arrow_schema().names} but no rows")
        return
    import itertools
    import json

    with path.open(encoding="utf-8", errors="replace") as f:
        lines = ((number, line.rstrip("\r\n")) for number, line in enumerate(f, 1) if line.strip())
        first = next(lines, None)
        if first is None:
            raise _no_rows(path, "the file is empty or only blank lines")
        if path.suffix.lower() != ".jsonl":
            return
        for number, line in itertools.chain([first], lines):
            try:
                json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(
                    f"{str(path)!r} line {number} is not valid JSON ({exc.msg}: column {exc.colno}; the line "
                    f"starts {line.strip()[:60]!r}): fix or delete that line; JSONL holds one JSON object per line "
                    "(blank lines are skipped)"
                ) from None


def _no_rows(data, seen: str) -> SourceError:
    return SourceError(
        f"{str(data)!r} holds no rows: {seen}; give data with at least one conversation (one JSON object per line, "
        "each with a 'messages' list, TRL or Unsloth format)"
    )


def _nonempty(ds, data: str):
    """`ds`, or a SourceError when it has no rows (a dataset folder or hub dataset without rows)."""
    if not len(ds):
        raise _no_rows(data, f"the dataset has columns {ds.column_names} but no rows")
    return ds


def _load_folder(path: Path, split: str):
    import datasets

    if not any((path / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FILE_BUILDERS)
        raise SourceError(
            f"DATA folder {str(path)!r} was not written by Dataset.save_to_disk"
            + (f"; give one of its files instead, e.g. {str(files[0])!r}" if files else
               " and holds no .jsonl/.json/.parquet file: give a data file, or a folder written by save_to_disk")
        )
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # corrupt Arrow files surface as many types
        if _saved_without_rows(path):
            raise _no_rows(path, "Dataset.save_to_disk wrote it from a dataset without rows") from exc
        raise SourceError(f"cannot load the dataset folder {str(path)!r}: {_first_line(exc)}") from exc
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise SourceError(f"the dataset folder {str(path)!r} has splits {sorted(ds)}, not {split!r}: pick one")
        ds = ds[split]
    return ds


def _saved_without_rows(path: Path) -> bool:
    """A save_to_disk folder of a dataset with no rows (datasets writes no Arrow file for it, then cannot load it)."""
    import json

    try:
        return json.loads((path / "state.json").read_text())["_data_files"] == []
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _load_hub(name: str, split: str):
    import datasets

    if _offline():
        raise SourceError(
            f"DATA {name!r} is neither a local file nor folder, and the hub is offline (HF_HUB_OFFLINE): give a "
            ".jsonl/.parquet file or a save_to_disk folder"
        )
    try:
        with quiet_progress():
            return datasets.load_dataset(name, split=split)
    except Exception as exc:  # network, auth and missing-repo errors come in many types
        raise SourceError(
            f"cannot load hub dataset {name!r} ({_first_line(exc)}): check the name and your network, or give a "
            "local .jsonl/.parquet file or save_to_disk folder"
        ) from exc


def _looks_local(name: str) -> bool:
    """A name that can only mean a local path (a hub name is `owner/name` with no suffix or dots up front)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).suffix.lower() in FILE_BUILDERS


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class quiet_progress:
    """Silence datasets' progress bars and error logs while loading a source (the CLI draws its own bars, and
    a failed load ends in our one-line `SourceError`, not in datasets' log line before it)."""

    def __enter__(self):
        import datasets

        self._was = datasets.utils.logging.is_progress_bar_enabled()
        self._verbosity = datasets.utils.logging.get_verbosity()
        datasets.utils.logging.disable_progress_bar()
        datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)

    def __exit__(self, *exc):
        import datasets

        datasets.utils.logging.set_verbosity(self._verbosity)
        if self._was:
            datasets.utils.logging.enable_progress_bar()
