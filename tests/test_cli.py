"""The `chunker` command end to end: demo, check, split, and one-line errors, run as a user runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chunker.cli import build_parser, main
from chunker.media import load_image
from chunker.sources import load_processor, load_rows
from chunker.testing.demo import make_conversations, write_jsonl, write_parquet

ROOT = Path(__file__).resolve().parent.parent
SIZES = ((56, 56), (84, 56), (56, 84))  # 4 or 6 placeholder tokens each with the demo processor
TEXT_ROW = json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "what is shown?"}]},
                                    {"role": "assistant", "content": [{"type": "text", "text": "a cat."}]}]})


def run_cli(*args, extra_env=None, timeout=300):
    """`python -m chunker ARGS` in a fresh process, offline, from the repository root."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "chunker", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env, check=False)


def last_line(text: str) -> str:
    """The last non-empty line (CI may print third-party FutureWarnings on stderr before ours)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Four long conversations as TRL JSONL, Unsloth JSONL and Parquet (bytes), plus the rows in memory."""
    folder = tmp_path_factory.mktemp("clean")
    rows = make_conversations(4, seed=3, sizes=SIZES)
    write_jsonl(rows, folder, name="data.jsonl")
    write_jsonl(rows, folder, name="unsloth.jsonl", layout="unsloth")
    write_parquet(rows, folder / "data.parquet")
    return {"dir": folder, "rows": rows}


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    """Rows 0-3 are good; row 4 names a missing image, row 5 has 2 placeholders but 1 image, row 6 holds an
    image whose span (64 tokens + 2 brackets) can never fit a 64-token window."""
    folder = tmp_path_factory.mktemp("dirty")
    good = make_conversations(4, seed=5, sizes=SIZES)
    missing, short, big = make_conversations(3, seed=6, sizes=SIZES, images_per_turn=(1, 1))
    short["messages"][1]["content"].insert(0, {"type": "image"})
    big["images"][0] = big["images"][0].resize((224, 224))
    path = write_jsonl([*good, missing, short, big], folder, name="data.jsonl")
    (folder / "images" / "data-4-0.png").unlink()
    return {"path": path, "good": good}


@pytest.fixture(scope="module")
def processor():
    return load_processor("demo")


def test_bundled_demo_processor_is_a_real_qwen2_vl_processor_equal_to_the_builder(processor):
    """The package data loads as the real Qwen2VLProcessor class and tokenizes exactly as the builder's processor,
    and its saved config names the real class (so plain AutoProcessor loads it wherever torchvision exists)."""
    from transformers import Qwen2VLProcessor

    from chunker.sources import DEMO_PROCESSOR_DIR
    from chunker.testing.families_b import build_processor

    assert isinstance(processor, Qwen2VLProcessor)
    config = json.loads((DEMO_PROCESSOR_DIR / "processor_config.json").read_text())
    assert config["processor_class"] == "Qwen2VLProcessor"
    assert config["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
    built = build_processor("qwen2_vl")
    row = make_conversations(1, seed=9, sizes=SIZES)[0]
    text = processor.apply_chat_template(row["messages"], tokenize=False)
    assert text == built.apply_chat_template(row["messages"], tokenize=False)
    ours = processor(text=[text], images=row["images"])
    theirs = built(text=[text], images=row["images"])
    assert np.array_equal(ours["input_ids"], theirs["input_ids"])
    assert np.array_equal(ours["image_grid_thw"], theirs["image_grid_thw"])


def test_demo_conserves_supervision_cuts_no_span_and_trains():
    """`chunker demo`: supervised tokens before == after, 0 spans cut, naive truncation breaks rows and the model
    raises on it, and the tiny model trains on the windows with finite, falling loss."""
    r = run_cli("demo", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    table = dict(re.findall(r"^(\S.*?)\s{2,}(\S+(?: of \d+)?)$", out, flags=re.MULTILINE))
    before = int(table["supervised tokens before"].replace(",", ""))
    after = int(table["supervised tokens after"].replace(",", ""))
    assert before == after > 0
    assert table["image spans cut"] == "0"
    assert int(table["windows out"]) > int(table["rows in"])
    broken = int(table["rows naive truncation at 512 breaks"].split(" of ")[0])
    assert broken >= 1
    assert "Image features and image tokens do not match" in out
    losses = [float(x) for x in re.findall(r"step \d+: loss ([0-9.naninf]+)", out)]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert "Traceback" not in r.stderr


def _truth(processor, row, n):
    """tokens, images and whether truncation at n cuts or drops an image span, computed from the processor alone."""
    text = processor.apply_chat_template(row["messages"], tokenize=False)
    ids = np.asarray(processor(text=[text], images=row["images"])["input_ids"][0])
    end = processor.tokenizer.convert_tokens_to_ids("<|vision_end|>")
    return len(ids), len(row["images"]), bool((np.flatnonzero(ids == end) + 1 > n).any())


def test_check_json_has_exact_keys_true_counts_and_exit_1_when_rows_break(clean, processor):
    """`check --json` prints exactly {"rows": [{index, tokens, images, breaks, windows}], "summary"}; the counts
    match the processor's own tokenization; exit code 1 because truncation at 128 breaks rows."""
    n = 128
    r = run_cli("check", clean["dir"] / "data.jsonl", "--processor", "demo", "--max-length", n, "--json")
    assert r.returncode == 1, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert set(out) == {"rows", "summary"}
    assert [row["index"] for row in out["rows"]] == [0, 1, 2, 3]
    for got, conv in zip(out["rows"], clean["rows"]):
        assert set(got) == {"index", "tokens", "images", "breaks", "windows"}
        tokens, images, breaks = _truth(processor, conv, n)
        assert (got["tokens"], got["images"], got["breaks"]) == (tokens, images, breaks)
        assert got["windows"] >= -(-tokens // n)
    s = out["summary"]
    assert s["rows_breaking"] == sum(row["breaks"] for row in out["rows"]) >= 1
    assert s["windows"] == sum(row["windows"] for row in out["rows"])
    assert s["max_length"] == n and s["rows"] == 4


def test_check_exits_0_when_nothing_breaks(clean):
    """The same data at a max_length above every row: no row breaks, one window each, exit code 0."""
    r = run_cli("check", clean["dir"] / "data.jsonl", "-p", "demo", "-n", 100_000, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)["rows"]
    assert [row["breaks"] for row in rows] == [False] * 4
    assert [row["windows"] for row in rows] == [1] * 4


def test_check_reads_trl_unsloth_and_parquet_rows_alike(clean, capsys):
    """TRL JSONL (image paths column), Unsloth JSONL (paths inline) and Parquet (image bytes) scan identically;
    the table output names the breaking rows and the summary."""
    results = []
    for name in ("data.jsonl", "unsloth.jsonl", "data.parquet"):
        code = main(["check", str(clean["dir"] / name), "-p", "demo", "-n", "128", "--json"])
        results.append((code, json.loads(capsys.readouterr().out)["rows"]))
    assert results[0] == results[1] == results[2]
    assert results[0][0] == 1
    code = main(["check", str(clean["dir"] / "data.jsonl"), "-p", "demo", "-n", "128"])
    text = capsys.readouterr().out
    assert code == 1
    assert "rows truncation would break" in text and "BREAKS" in text


def test_split_arrow_writes_windows_report_and_counts_skipped_rows_across_processes(dirty, tmp_path, processor):
    """`split --num-proc 2`: the save_to_disk windows reload; every window fits; the three bad rows are skipped and
    counted by reason in report.json (summed over both processes); report.png is a PNG; the supervised tokens
    of the good rows are all kept; the images are embedded as bytes."""
    import datasets

    from chunker import WindowSplitter

    out = tmp_path / "out"
    r = run_cli("split", dirty["path"], "-p", "demo", "-n", 64, "-k", 8, "--out", out, "--num-proc", 2)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["rows"] == 7
    assert report["skipped"] == {"ImageDecodeError": 1, "ImageCountError": 1, "OversizeSpanError": 1}
    windows = datasets.load_from_disk(str(out / "windows"))
    assert len(windows) == report["windows"] > 4
    lengths = [len(x) for x in windows["input_ids"]]
    assert max(lengths) <= 64 and report["window_length"]["p100"] == max(lengths)
    assert sorted(set(windows["source_index"])) == [0, 1, 2, 3]
    supervised = sum(int((np.asarray(x) != -100).sum()) for x in windows["labels"])
    whole = WindowSplitter(processor, max_length=1 << 30)
    full = sum(int((np.asarray(w["labels"]) != -100).sum()) for row in dirty["good"] for w in whole.split_example(row))
    assert report["supervised_tokens"] == supervised == full
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    raw = windows.cast_column("images", datasets.List(datasets.Image(decode=False)))["images"]
    assert all(im["bytes"] for row in raw for im in row)  # self-contained: no pointers to the source files
    assert "rows skipped" in r.stdout and "OversizeSpanError" in r.stdout


def test_split_parquet_reloads_with_the_windows_of_dataset_map(clean, tmp_path, processor):
    """`split --out-format parquet`: the Parquet file reloads with the same windows `Dataset.map(splitter)` makes."""
    import datasets

    from chunker import WindowSplitter

    out = tmp_path / "out"
    r = run_cli("split", clean["dir"] / "data.parquet", "-p", "demo", "-n", 128, "-k", 16, "--out", out,
                "--out-format", "parquet", "--no-plot")
    assert r.returncode == 0, r.stderr[-3000:]
    got = datasets.load_dataset("parquet", data_files=str(out / "windows.parquet"), split="train")
    ds = load_rows(str(clean["dir"] / "data.parquet"))
    ref = ds.map(WindowSplitter(processor, max_length=128, overlap=16), batched=True, with_indices=True,
                 remove_columns=ds.column_names)
    assert len(got) == len(ref) > 4
    for key in ("input_ids", "labels", "mm_token_type_ids", "source_index", "window_index", "num_windows"):
        assert got[key] == ref[key], key
    a, b = got[len(got) // 2]["images"], ref[len(ref) // 2]["images"]
    assert len(a) == len(b) and all(np.array_equal(np.asarray(load_image(x)), np.asarray(load_image(y)))
                                    for x, y in zip(a, b))
    assert (out / "report.json").exists() and not (out / "report.png").exists()


@pytest.mark.parametrize(
    "bad, good, expected",
    [
        ({"data": "missing.jsonl"}, {}, "does not exist"),
        ({"data": "table.csv"}, {}, "unknown type '.csv'"),
        ({"data": "some-org/some-dataset"}, {}, "hub is offline"),
        ({"processor": "empty-folder"}, {}, "cannot load a processor"),
        ({"overlap": "64"}, {}, "overlap=64 must be smaller than max_length=64"),
        ({"data": "empty.jsonl"}, {"data": "rows.jsonl"}, "empty.jsonl' holds no rows: the file is empty"),
        ({"data": "broken.jsonl"}, {"data": "rows.jsonl"}, "broken.jsonl' line 3 is not valid JSON (Expecting"),
        ({"data": "empty-folder"}, {}, "holds no .jsonl/.json/.parquet file"),
        ({"processor": "processor_config.json"}, {}, "is a file, not a folder"),
    ],
    ids=["missing-file", "unknown-suffix", "hub-offline", "not-a-processor", "overlap-too-large", "empty-jsonl",
         "malformed-jsonl-line", "folder-without-data", "processor-file"],
)
def test_errors_are_one_line_with_exit_2_and_the_happy_twin_runs(bad, good, expected, clean, tmp_path, capsys):
    """A bad argument ends in one line `chunker: error: ...` (the last line of stderr) and exit code 2, no
    traceback; the same command with that one argument corrected runs (exit 0 or 1)."""
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "processor_config.json").write_text("{}")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "broken.jsonl").write_text(f"{TEXT_ROW}\n\n{TEXT_ROW[:-1]},}}\n")  # line 3: a trailing comma
    (tmp_path / "rows.jsonl").write_text(f"{TEXT_ROW}\n\n{TEXT_ROW}\n")  # the same rows made valid; blank line skipped
    base = {"data": str(clean["dir"] / "data.jsonl"), "processor": "demo", "overlap": "8"}

    def argv(over):
        a = {**base, **over}
        data = a["data"] if a["data"] in (base["data"], "some-org/some-dataset") else str(tmp_path / a["data"])
        proc = a["processor"] if a["processor"] == "demo" else str(tmp_path / a["processor"])
        return ["check", data, "-p", proc, "-n", "64", "-k", a["overlap"]]

    r = run_cli(*argv(bad))
    assert r.returncode == 2, (r.stdout[-500:], r.stderr[-2000:])
    line = last_line(r.stderr)
    assert line.startswith("chunker: error: ") and expected in line, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert main(argv(good)) in (0, 1)
    capsys.readouterr()


def test_split_of_an_empty_jsonl_is_one_line_and_the_file_with_a_row_splits(tmp_path, capsys):
    """`split` on an empty JSONL file: one line naming it ('holds no rows'), exit 2, no traceback, no --out folder
    made; the same file holding one row splits."""
    data, out = tmp_path / "rows.jsonl", tmp_path / "out"
    data.write_text("")
    r = run_cli("split", data, "-p", "demo", "-n", 64, "--out", out)
    assert r.returncode == 2, (r.stdout[-500:], r.stderr[-2000:])
    line = last_line(r.stderr)
    assert line.startswith("chunker: error: ") and f"{str(data)!r} holds no rows" in line, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not out.exists()
    data.write_text(TEXT_ROW + "\n")
    assert main(["split", str(data), "-p", "demo", "-n", "64", "--out", str(out), "--no-plot"]) == 0
    assert json.loads((out / "report.json").read_text())["windows"] == 1
    capsys.readouterr()


def test_split_refuses_earlier_output_in_out_and_overwrite_replaces_it(clean, tmp_path, capsys):
    """A second `split` into the same --out: one line naming what is there and `--overwrite`, exit 2, nothing
    touched; with --overwrite it runs and replaces the earlier output (the arrow windows of the first run are
    gone, not left beside the new Parquet file)."""
    out = tmp_path / "out"
    argv = ["split", str(clean["dir"] / "data.jsonl"), "-p", "demo", "-n", "128", "--out", str(out), "--no-plot"]
    assert main(argv) == 0
    capsys.readouterr()
    first = (out / "report.json").read_text()
    r = run_cli(*argv, "--out-format", "parquet")
    assert r.returncode == 2, (r.stdout[-500:], r.stderr[-2000:])
    line = last_line(r.stderr)
    assert line == (f"chunker: error: --out {str(out)!r} already holds windows, report.json from an earlier split: "
                    "pass --overwrite to replace them, or choose another folder"), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert (out / "report.json").read_text() == first and not (out / "windows.parquet").exists()
    assert main([*argv, "--out-format", "parquet", "--overwrite"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "windows.parquet"]
    assert json.loads((out / "report.json").read_text())["format"] == "parquet"


def test_split_into_a_file_or_over_its_own_data_is_refused(clean, tmp_path, capsys):
    """--out naming a file, and --overwrite of an --out whose earlier windows are the DATA itself: one line each,
    exit 2 (the second would delete the data being split); the same commands into a fresh folder run."""
    taken = tmp_path / "taken.txt"
    taken.write_text("not a folder")
    base = ["-p", "demo", "-n", "128", "--no-plot", "--out-format", "parquet"]
    assert main(["split", str(clean["dir"] / "data.jsonl"), *base, "--out", str(taken)]) == 2
    assert last_line(capsys.readouterr().err) == (f"chunker: error: --out {str(taken)!r} is a file, not a folder: "
                                                  "choose a folder for the windows and report")
    out = tmp_path / "out"
    assert main(["split", str(clean["dir"] / "data.jsonl"), *base, "--out", str(out)]) == 0
    capsys.readouterr()
    windows = str(out / "windows.parquet")
    assert main(["split", windows, *base, "--out", str(out), "--overwrite"]) == 2
    assert "which --overwrite would delete: choose another --out" in last_line(capsys.readouterr().err)
    assert main(["split", windows, *base, "--out", str(tmp_path / "again")]) == 0
    capsys.readouterr()


def test_split_without_matplotlib_says_report_png_was_not_written_and_how_to_get_it(clean, tmp_path, capsys):
    """Where `import matplotlib` fails (a stand-in package on PYTHONPATH raises ImportError) `split` still runs,
    claims no report.png, and says in one line that it was not written and how to get it; with matplotlib
    importable the same command draws it and says nothing of the kind."""
    shim = tmp_path / "no-matplotlib"
    (shim / "matplotlib").mkdir(parents=True)
    (shim / "matplotlib" / "__init__.py").write_text('raise ImportError("matplotlib hidden by the test")\n')
    argv = ["split", str(clean["dir"] / "data.jsonl"), "-p", "demo", "-n", "128"]
    pythonpath = os.pathsep.join(filter(None, [str(shim), str(ROOT), os.environ.get("PYTHONPATH")]))
    r = run_cli(*argv, "--out", tmp_path / "bare", extra_env={"PYTHONPATH": pythonpath})
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "bare" / "report.json").exists() and not (tmp_path / "bare" / "report.png").exists()
    assert "report.png" not in r.stdout and "plot:" not in r.stdout
    assert last_line(r.stderr) == ('chunker: note: report.png was not written: matplotlib cannot be imported; '
                                   'pip install "vlm-chunker[report]" to draw it (or pass --no-plot)')
    assert main([*argv, "--out", str(tmp_path / "full")]) == 0
    out, err = capsys.readouterr()
    assert (tmp_path / "full" / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert f"plot:    {tmp_path / 'full' / 'report.png'}" in out and "not written" not in err


@pytest.mark.parametrize(
    "bad, good",
    [
        (["check", "DATA", "-p", "demo", "-n", "64", "--num-proc", "-1"], ["--num-proc", "1"]),
        (["check", "DATA", "-p", "demo", "-n", "64", "--show", "-3"], ["--show", "0"]),
        (["demo", "--rows", "0"], ["--rows", "1"]),
    ],
    ids=["negative-num-proc", "negative-show", "demo-without-rows"],
)
def test_counts_out_of_range_are_one_usage_line(bad, good, clean):
    """A count below its least value ends in argparse's one line naming the option and the value (exit 2), not in
    a traceback from deep in datasets or the demo; the least value itself parses."""
    bad = [str(clean["dir"] / "data.jsonl") if a == "DATA" else a for a in bad]
    r = run_cli(*bad)
    assert r.returncode == 2, (r.stdout[-500:], r.stderr[-2000:])
    line = last_line(r.stderr)
    assert line.startswith(f"chunker {bad[0]}: error: argument {bad[-2]}") and f"value: '{bad[-1]}'" in line, line
    assert "Traceback" not in r.stderr
    args = build_parser().parse_args([*bad[:-2], *good])
    assert getattr(args, good[0].lstrip("-").replace("-", "_")) == int(good[1])


@pytest.fixture(scope="module")
def public(tmp_path_factory):
    """LLaMA-Factory's mllm_demo.json and the LLaVA-Instruct records as published (tests/data/formats), with their
    images made here: the demo's next to the file, LLaVA's in an image folder of their own."""
    import shutil

    from PIL import Image

    folder = tmp_path_factory.mktemp("public")
    data = ROOT / "tests" / "data" / "formats"
    shutil.copy(data / "mllm_demo.json", folder / "mllm_demo.json")
    (folder / "ann").mkdir()
    shutil.copy(data / "llava_instruct.json", folder / "ann" / "llava.json")
    paths = ["mllm_demo_data/1.jpg", "mllm_demo_data/2.jpg", "mllm_demo_data/3.jpg", "images/000000033471.jpg",
             "images/000000033472.jpg", "images/part-000001/997bb945-628d-4724-b370-b84de974a19f.jpg"]
    for k, path in enumerate(paths):
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", SIZES[k % 3], (40 * k, 120, 90)).save(folder / path)
    return folder


def test_check_counts_llama_factory_rows_as_the_processor_does(public, processor, capsys):
    """`check` on mllm_demo.json as published: one image and the processor's own token count per row (the issue saw
    0 tokens and a refusal per row), computed here from the conversation typed in TRL form."""
    code = main(["check", str(public / "mllm_demo.json"), "-p", "demo", "-n", "48", "--json"])
    rows = json.loads(capsys.readouterr().out)["rows"]
    raw = json.loads((public / "mllm_demo.json").read_text())
    for got, row in zip(rows, raw, strict=True):
        head, *rest = row["messages"]
        conv = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                              "text": head["content"][7:]}]}, *rest],
                "images": [load_image(str(public / p)) for p in row["images"]]}
        tokens, images, breaks = _truth(processor, conv, 48)
        assert (got["tokens"], got["images"], got["breaks"]) == (tokens, images, breaks)
        assert got["windows"] >= 2
    assert code == (1 if any(r["breaks"] for r in rows) else 0)


def test_split_reads_llava_rows_from_an_image_dir_and_format_names_the_rows_format(public, tmp_path, capsys):
    """`split --format llava --image-dir DIR`: the LLaVA records' images are read from DIR and every row splits;
    without --image-dir the missing images are counted by name. `--format parquet` (the output format's old
    spelling) is one usage line pointing at --out-format, which writes the Parquet file."""
    data = str(public / "ann" / "llava.json")
    base = ["split", data, "-p", "demo", "-n", "40", "--no-plot"]
    assert main([*base, "--out", str(tmp_path / "a"), "--format", "llava", "--image-dir", str(public / "images")]) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert (report["rows"], report["skipped"], report["data_format"]) == (3, {}, "llava")
    assert report["windows"] > 3
    assert main([*base, "--out", str(tmp_path / "b")]) == 2  # every row skipped: no windows, a one-line error
    err = capsys.readouterr().err
    assert "no windows: all 3 rows were skipped {'ImageDecodeError': 3}" in last_line(err)
    r = run_cli(*base, "--out", tmp_path / "c", "--format", "parquet")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert last_line(r.stderr).endswith("'parquet' is an output format: --format names the rows' format (auto, trl, "
                                        "unsloth, llama_factory, llava, sharegpt, openai); write the windows as "
                                        "parquet with --out-format parquet")
    assert main([*base, "--out", str(tmp_path / "c"), "--image-dir", str(public / "images"),
                 "--out-format", "parquet"]) == 0
    assert (tmp_path / "c" / "windows.parquet").exists()
