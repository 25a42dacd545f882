"""`load_rows` and `load_processor` on bad sources: each raises one `SourceError` naming the source, what was seen
and the fix, and each has a working twin (the same source made valid loads)."""

from __future__ import annotations

import json

import pytest

from chunker.errors import SourceError
from chunker.sources import DEMO_PROCESSOR_DIR, load_processor, load_rows

ROW = {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is shown?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "a cat."}]}]}
LINE = json.dumps(ROW)


@pytest.mark.parametrize("text", ["", "\n", "\n  \n\t\n"], ids=["empty", "one-blank-line", "blank-lines"])
def test_jsonl_without_rows_is_named_and_one_row_loads(text, tmp_path):
    """An empty (or blank-only) JSONL file: 'holds no rows', not datasets' StopIteration; with a row it loads."""
    path = tmp_path / "rows.jsonl"
    path.write_text(text)
    with pytest.raises(SourceError, match=r"'.*rows\.jsonl' holds no rows: the file is empty or only blank lines"):
        load_rows(str(path))
    path.write_text(text + LINE + "\n")
    assert len(load_rows(str(path))) == 1


def test_malformed_jsonl_line_names_file_line_and_parser_complaint_and_the_fixed_file_loads(tmp_path):
    """Line 4 (1-based, blank line 2 counted) is cut short: the error names the file, line 4, the parser's
    message and column, and the fix; with line 4 repaired the file loads, the blank line skipped."""
    path = tmp_path / "rows.jsonl"
    lines = [LINE, "", LINE, LINE[:25], LINE]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceError) as info:
        load_rows(str(path))
    message = str(info.value)
    assert message.startswith(f"{str(path)!r} line 4 is not valid JSON (")
    assert "(Unterminated string starting at: column 24; the line starts " in message
    assert "fix or delete that line" in message and "blank lines are skipped" in message
    lines[3] = LINE
    path.write_text("\n".join(lines) + "\n")
    ds = load_rows(str(path))
    assert len(ds) == 4
    assert ds[0]["messages"] == ROW["messages"]


def test_parquet_without_rows_is_named_and_one_row_loads(tmp_path):
    """A Parquet file with the right columns but no rows: 'holds no rows' (naming its columns); one row loads."""
    import datasets

    path = tmp_path / "rows.parquet"
    datasets.Dataset.from_list([ROW]).select([]).to_parquet(str(path))
    with pytest.raises(SourceError, match=r"holds no rows: the Parquet file has columns \[.messages.\] but no rows"):
        load_rows(str(path))
    datasets.Dataset.from_list([ROW]).to_parquet(str(path))
    assert len(load_rows(str(path))) == 1


def test_folder_without_data_or_rows_says_what_to_give_and_a_saved_dataset_loads(tmp_path):
    """A folder with neither a saved dataset nor a data file says so and what to give; a saved dataset without
    rows 'holds no rows'; once save_to_disk wrote rows into the folder, it loads."""
    import datasets

    folder = tmp_path / "data"
    folder.mkdir()
    with pytest.raises(SourceError, match="holds no .jsonl/.json/.parquet file: give a data file, or a folder"):
        load_rows(str(folder))
    datasets.Dataset.from_list([ROW]).select([]).save_to_disk(str(tmp_path / "no-rows"))
    with pytest.raises(SourceError, match="holds no rows: Dataset.save_to_disk wrote it from a dataset without rows"):
        load_rows(str(tmp_path / "no-rows"))
    datasets.Dataset.from_list([ROW, ROW]).save_to_disk(str(folder))
    assert len(load_rows(str(folder))) == 2


def test_processor_file_is_named_a_file_and_its_folder_loads():
    """A processor's config file given instead of its folder: 'is a file', naming the folder; the folder loads."""
    config = DEMO_PROCESSOR_DIR / "processor_config.json"
    with pytest.raises(SourceError, match=r"is a file, not a folder: .* \(e\.g\. '.*demo-processor'\)"):
        load_processor(str(config))
    assert type(load_processor(str(config.parent))).__name__.startswith("Qwen2VL")
