"""The `chunker` command: `demo`, `check` (preflight scan) and `split` (write the window dataset and a report).

Every `ChunkerError` ends the command with one line on stderr, `chunker: error: <message>`, and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .formats import FORMATS, check_format

EXIT_OK, EXIT_BREAKS, EXIT_ERROR = 0, 1, 2
DEMO_ROWS, DEMO_MAX_LENGTH, DEMO_OVERLAP, DEMO_STEPS = 8, 512, 64, 6
SPLIT_OUTPUTS = ("windows", "windows.parquet", "report.json", "report.png")  # what `split` writes into --out
OUT_FORMATS = ("arrow", "parquet")
REPORT_EXTRA = 'pip install "vlm-chunker[report]"'


def main(argv=None) -> int:
    """Run the command line; returns (and, as a script, exits with) the exit code.

    Exit codes: 0 success; 1 `check` found rows that truncation would break (or that cannot be split);
    2 an error (bad arguments, unreadable data or processor, a row that cannot be split).

    Example:
        >>> main(["check", "missing.jsonl", "--processor", "demo", "--max-length", "512"])  # doctest: +SKIP
        chunker: error: DATA 'missing.jsonl' does not exist: give a .jsonl/.parquet file, ...
        2
    """
    args = build_parser().parse_args(argv)
    _quiet_third_party(verbose=args.verbose)
    from .errors import ChunkerError

    try:
        return args.run(args)
    except ChunkerError as exc:
        print(f"chunker: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("chunker: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `chunker` command (sub-commands demo, check, split)."""
    parser = argparse.ArgumentParser(
        prog="chunker",
        description="Split long multi-image conversations into windows that never cut an image span.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="keep third-party warnings and logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,check,split}")

    demo = sub.add_parser("demo", help="split bundled long conversations and train a tiny model on the windows (offline)")
    demo.add_argument("--rows", type=_at_least(1), default=DEMO_ROWS, help="conversations to generate (default %(default)s)")
    demo.add_argument("--max-length", type=int, default=DEMO_MAX_LENGTH, help="window size in tokens (default %(default)s)")
    demo.add_argument("--overlap", type=int, default=DEMO_OVERLAP, help="context tokens repeated (default %(default)s)")
    demo.add_argument("--steps", type=_at_least(0), default=DEMO_STEPS,
                      help="optimizer steps of the tiny model (default %(default)s)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=run_demo)

    def data_args(p):
        p.add_argument("data", metavar="DATA", help="a .jsonl/.parquet file, a save_to_disk folder, or a hub dataset")
        p.add_argument("--processor", "-p", required=True, metavar="P",
                       help="a processor folder, a hub model id, or 'demo' (the bundled tiny Qwen2-VL processor)")
        p.add_argument("--max-length", "-n", type=int, required=True, metavar="N", help="window size in tokens")
        p.add_argument("--overlap", "-k", type=int, default=0, metavar="K", help="context tokens repeated (default 0)")
        p.add_argument("--num-proc", "-j", type=_at_least(1), default=None, metavar="J", help="worker processes")
        p.add_argument("--split", default="train", help="split of a DatasetDict folder or hub dataset (default train)")
        p.add_argument("--prefix", choices=("bos", "system", "none"), default="bos",
                       help="repeated before every window after the first (default bos)")
        p.add_argument("--train-on", choices=("assistant", "all"), default="assistant",
                       help="tokens that carry loss when rows bring no labels (default assistant)")
        p.add_argument("--format", "-f", type=_data_format, default="auto", metavar="F",
                       help=f"the rows' format: auto (recognize each row; default) or one of {', '.join(FORMATS)}")
        p.add_argument("--image-dir", metavar="DIR", default=None,
                       help="folder relative image paths are read from (default: the data file's folder)")

    check = sub.add_parser("check", help="preflight: which rows truncation at N would break, windows needed")
    data_args(check)
    check.add_argument("--json", action="store_true", help='print {"rows": [...], "summary": {...}} as JSON')
    check.add_argument("--show", type=_at_least(0), default=20, metavar="R", help="rows listed in the table (default 20)")
    check.set_defaults(run=run_check)

    split = sub.add_parser("split", help="write the window dataset and a report (table, report.json, report.png "
                                         "when matplotlib is installed)")
    data_args(split)
    split.add_argument("--out", "-o", required=True, metavar="DIR",
                       help="output folder; refused if it holds an earlier split's output, unless --overwrite")
    split.add_argument("--overwrite", action="store_true",
                       help="replace the windows and report an earlier split wrote into DIR")
    split.add_argument("--out-format", choices=OUT_FORMATS, default="arrow",
                       help="arrow: DIR/windows (save_to_disk); parquet: DIR/windows.parquet (default arrow)")
    split.add_argument("--on-oversize", choices=("skip", "raise"), default="skip",
                       help="rows with an image span longer than N (default skip, counted in the report)")
    split.add_argument("--on-error", choices=("skip", "raise"), default="skip",
                       help="rows that cannot be read or split (default skip, counted in the report)")
    split.add_argument("--no-plot", action="store_true", help=f"do not draw report.png (drawing needs {REPORT_EXTRA})")
    split.set_defaults(run=run_split)
    return parser


# ---------------------------------------------------------------------------------------------- check


def run_check(args) -> int:
    """`chunker check`: scan every row, print the table (or JSON); exit 1 when a row would break."""
    from .check import check_rows
    from .check import summary_rows as check_summary_rows
    from .report import format_table

    ds, splitter = _rows_and_splitter(args, on_oversize="raise", on_error="raise")
    result = check_rows(ds, splitter, num_proc=args.num_proc)
    s = result["summary"]
    if args.json:
        print(json.dumps(result))
    else:
        print(_row_table(result["rows"], args.show, s["max_length"]))
        print()
        print(format_table(check_summary_rows(s), title=f"check: {args.data}"))
        for e in s["errors"][:5]:
            print(f"row {e['index']}: {e['error']}")
        verdict = (
            f"{s['rows_breaking']} of {s['rows']} rows would break under truncation at {s['max_length']}: "
            f"run `chunker split` to make {s['windows']} windows instead"
            if s["rows_breaking"] else f"no row breaks under truncation at {s['max_length']}"
        )
        print("\n" + verdict)
    return EXIT_BREAKS if s["rows_breaking"] or s["unsplittable"] else EXIT_OK


def _row_table(rows, show, max_length) -> str:
    head = f"{'row':>6} {'tokens':>8} {'images':>6} {'truncation@' + str(max_length):>16} {'windows':>7}"
    lines = [head, "-" * len(head)]
    order = sorted(rows, key=lambda r: (not r["breaks"], r["index"]))[:show]
    for r in sorted(order, key=lambda r: r["index"]):
        lines.append(f"{r['index']:>6} {r['tokens']:>8} {r['images']:>6} {'BREAKS' if r['breaks'] else 'ok':>16} "
                     f"{r['windows']:>7}")
    if len(rows) > show:
        lines.append(f"... {len(rows) - show} more rows (breaking rows listed first; --json for all)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- split


def run_split(args) -> int:
    """`chunker split`: map the splitter over DATA, write the windows, print and write the report."""
    from .report import format_table, summary_rows, window_summary, write_report

    earlier = _earlier_outputs(args.out, overwrite=args.overwrite, data=args.data)
    ds, splitter = _rows_and_splitter(args, on_oversize=args.on_oversize, on_error=args.on_error)
    windows = ds.map(
        splitter, batched=True, with_indices=True, remove_columns=ds.column_names, num_proc=args.num_proc,
        load_from_cache_file=False, desc="splitting rows",
    )
    _make_out(args.out, earlier)
    from .splitter import SplitStats, drop_skipped

    stats = SplitStats.from_windows(windows)  # counted from the map's output: right across --num-proc workers
    windows = drop_skipped(windows) if stats.skipped else windows
    if not len(windows):
        from .errors import ChunkerError

        summary = window_summary(windows, stats, max_length=args.max_length)
        files = write_report(summary, args.out)
        first = summary["skipped_examples"][0]["reason"] if summary["skipped_examples"] else "no rows"
        raise ChunkerError(
            f"no windows: all {summary['rows']} rows were skipped {summary['skipped']} (first: {first}); "
            f"see {files['json']}"
        )
    windows = _embed_images(windows, num_proc=args.num_proc)
    if args.out_format == "parquet":
        target = os.path.join(args.out, "windows.parquet")
        windows.to_parquet(target)
    else:
        target = os.path.join(args.out, "windows")
        windows.save_to_disk(target)
    summary = window_summary(windows, stats, max_length=args.max_length)
    summary.update(data=args.data, processor=args.processor, overlap=args.overlap, output=target,
                   format=args.out_format, data_format=args.format)
    files = write_report(summary, args.out, windows=None if args.no_plot else windows)
    print(format_table(summary_rows(summary), title=f"split: {args.data}"))
    for e in summary["skipped_examples"][:5]:
        print(f"skipped row {e['row']}: {e['reason']}")
    print(f"\nwindows: {target}\nreport:  {files['json']}" + (f"\nplot:    {files['png']}" if files["png"] else ""))
    if files["png"] is None and not args.no_plot:  # write_report draws no PNG only when matplotlib cannot be imported
        print(f"chunker: note: report.png was not written: matplotlib cannot be imported; {REPORT_EXTRA} to draw it "
              "(or pass --no-plot)", file=sys.stderr)
    return EXIT_OK


def _earlier_outputs(out, *, overwrite, data):
    """The names of SPLIT_OUTPUTS already in `out`; a ConfigError, before any work, unless `overwrite` (and
    DATA is not one of them, which replacing would delete)."""
    from .errors import ConfigError

    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out!r} is a file, not a folder: choose a folder for the windows and report")
    earlier = [name for name in SPLIT_OUTPUTS if os.path.lexists(os.path.join(out, name))]
    if earlier and not overwrite:
        raise ConfigError(
            f"--out {out!r} already holds {', '.join(earlier)} from an earlier split: pass --overwrite to replace "
            "them, or choose another folder"
        )
    for name in earlier:
        old = os.path.realpath(os.path.join(out, name))
        if os.path.commonpath([old, os.path.realpath(data)]) == old:
            raise ConfigError(f"DATA {data!r} is the earlier {name} in --out {out!r}, which --overwrite would delete: "
                              "choose another --out")
    return earlier


def _make_out(out, earlier) -> None:
    """Create `out` and remove the earlier outputs --overwrite replaces (all of them, so none is left stale)."""
    import shutil

    from .errors import ConfigError

    try:
        os.makedirs(out, exist_ok=True)
        for name in earlier:
            path = os.path.join(out, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    except OSError as exc:
        raise ConfigError(f"cannot write into --out {out!r} ({exc.strerror}: {exc.filename}): choose a folder "
                          "you can write") from exc


def _embed_images(windows, *, num_proc=None):
    """Windows whose `images` are an Image column holding the image bytes, so the output does not point at
    the source files (which may not exist where training runs)."""
    import datasets
    from datasets.table import embed_table_storage

    if "images" not in windows.column_names:
        return windows
    feature = datasets.List(datasets.Image())
    if windows.features["images"] != feature:
        windows = windows.cast_column("images", feature)
    return windows.with_format("arrow").map(embed_table_storage, batched=True, num_proc=num_proc,
                                             desc="embedding images").with_format(None)


def _rows_and_splitter(args, *, on_oversize, on_error):
    from .sources import load_processor, load_rows
    from .splitter import WindowSplitter

    ds = load_rows(args.data, split=args.split)
    processor = load_processor(args.processor)
    splitter = WindowSplitter(
        processor, max_length=args.max_length, overlap=args.overlap, prefix=args.prefix, train_on=args.train_on,
        on_oversize=on_oversize, on_error=on_error, format=args.format,
        base_dir=None if args.image_dir is None else os.path.abspath(args.image_dir),
    )
    return ds, splitter


# ---------------------------------------------------------------------------------------------- demo


def run_demo(args) -> int:
    """`chunker demo`: generated long conversations through the bundled processor, splitting, then training."""
    import datasets
    import numpy as np

    from .check import check_rows
    from .report import format_table
    from .sources import load_processor, quiet_progress
    from .splitter import WindowSplitter
    from .testing.demo import make_conversations

    t0 = time.perf_counter()
    processor = load_processor("demo")
    rows = make_conversations(args.rows, seed=args.seed, turns=(6, 12), images_per_turn=(0, 3))
    ds = datasets.Dataset.from_list(rows)
    splitter = WindowSplitter(processor, max_length=args.max_length, overlap=args.overlap)
    whole = WindowSplitter(processor, max_length=1 << 30)
    with quiet_progress():
        scan = check_rows(ds, splitter)["summary"]
        full = ds.map(whole, batched=True, with_indices=True, remove_columns=ds.column_names)
        windows = ds.map(splitter, batched=True, with_indices=True, remove_columns=ds.column_names)
    before = _supervised(full["labels"])
    after = _supervised(windows["labels"])
    lengths = np.array([len(x) for x in windows["input_ids"]])
    cut = _spans_cut(windows, processor, splitter.spec)
    print(format_table([
        ("rows in", len(ds)),
        ("windows out", len(windows)),
        ("images", scan["images"]),
        ("images in windows", sum(len(x) for x in windows["images"])),
        ("tokens", scan["tokens"]),
        ("supervised tokens before", before),
        ("supervised tokens after", after),
        ("image spans cut", cut),
        (f"longest window (max_length {args.max_length})", int(lengths.max())),
        (f"rows naive truncation at {args.max_length} breaks", f"{scan['rows_breaking']} of {len(ds)}"),
    ], title="chunker demo: tiny Qwen2-VL processor, generated multi-image conversations"))
    print(f"\nnaive truncation: {_truncation_error(ds, processor, args.max_length)}")
    losses = _train(windows, processor, steps=args.steps, seed=args.seed)
    print("\ntraining a tiny Qwen2VLForConditionalGeneration on the windows (WindowCollator, AdamW):")
    for step, loss in enumerate(losses, 1):
        print(f"  step {step}: loss {loss:.4f}")
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    ok = before == after and cut == 0 and all(np.isfinite(losses))
    return EXIT_OK if ok else EXIT_ERROR


def _supervised(labels) -> int:
    import numpy as np

    return int(sum((np.asarray(x) != -100).sum() for x in labels)) if labels else 0


def _spans_cut(windows, processor, spec) -> int:
    """Windows whose image placeholders differ from what their own images need, counted independently.

    Each image's placeholder count comes from the processor's own size arithmetic
    (`_get_num_multimodal_tokens`), not from the splitter; a cut span shows as a difference.
    """
    import numpy as np

    from .errors import SpanError
    from .spans import find_image_spans

    cut = 0
    for ids, images in zip(windows["input_ids"], windows["images"]):
        ids = np.asarray(ids)
        try:
            spans = find_image_spans(ids, spec)
        except SpanError:
            cut += 1
            continue
        sizes = [(im.height, im.width) for im in images]
        need = processor._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"] if sizes else []
        cut += int(len(spans) != len(images) or list(spans.counts) != list(need))
    return cut


def _truncation_error(ds, processor, max_length) -> str:
    """What the model says to the first row that plain truncation breaks (the failure the splitter avoids)."""
    import torch

    from .testing.families_b import build_model

    row = ds[0]
    text = processor.apply_chat_template(row["messages"], tokenize=False)
    enc = processor(text=[text], images=row["images"], return_tensors="pt")
    cut = {k: v[:, :max_length] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v
           for k, v in enc.items()}
    model = build_model("qwen2_vl", processor)
    try:
        with torch.no_grad():
            model(**cut)
    except (ValueError, RuntimeError, IndexError) as exc:
        return f"row 0 cut at {max_length} tokens -> the model raises {type(exc).__name__}: {_one_line(exc)}"
    return f"row 0 cut at {max_length} tokens ran (no image span crossed the cut)"


def _train(windows, processor, *, steps, seed) -> list[float]:
    import torch

    from .collator import WindowCollator
    from .testing.families_b import build_model

    model = build_model("qwen2_vl", processor, seed=seed)
    collator = WindowCollator(processor)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed)).tolist()
    losses, batch_size = [], 4
    for step in range(steps):
        idx = [order[(step * batch_size + i) % len(order)] for i in range(batch_size)]
        loss = model(**collator([windows[i] for i in idx])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------------------------------------- plumbing


def _at_least(minimum: int):
    """An argparse type: an integer >= `minimum` (argparse turns the ValueError into a one-line usage error)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise ValueError(text)
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _data_format(text: str) -> str:
    """An argparse type: a row format name (`chunker.formats`); the output formats point at --out-format."""
    if text in OUT_FORMATS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is an output format: --format names the rows' format ({', '.join(('auto', *FORMATS))}); "
            f"write the windows as {text} with --out-format {text}"
        )
    try:
        return check_format(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _quiet_third_party(verbose: bool) -> None:
    """Keep stderr for our own messages: silence import-time warnings and logs of torch, torchao, transformers."""
    if verbose:
        return
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("torchao", "transformers", "datasets", "huggingface_hub", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import torch  # noqa: F401  (torch sets its loggers up on import; quiet them after)

    logging.getLogger("torch").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
