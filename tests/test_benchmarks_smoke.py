"""The benchmark scripts still run: each with --smoke (tiny sizes, seconds). They time nothing here."""

from __future__ import annotations

import importlib.util
import os

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _script(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_split_smoke(capsys):
    """bench_split --smoke runs every in-process method on the same rows; chunker makes windows and the table prints."""
    pytest.importorskip("datasets")
    results = _script("bench_split").main(["--smoke"])
    for storage in ("disk", "memory"):
        assert {"identity", "chunker", "python_reference"} <= {m for s, m in results if s == storage}
        assert results[storage, "chunker"]["rows_out"] > results[storage, "identity"]["rows_out"]
    out = capsys.readouterr().out
    assert "disk: chunker / identity CPU time" in out and "| memory | chunker |" in out


def test_bench_scaling_smoke(capsys):
    """bench_scaling --smoke splits both sweeps; more rows make more windows."""
    rows, lengths = _script("bench_scaling").main(["--smoke"])
    assert rows[1][3] > rows[0][3] and all(p[4] >= p[1] for p in lengths)
    assert "row tokens" in capsys.readouterr().out


def test_bench_raw_smoke(capsys):
    """bench_raw --smoke maps raw conversations with image files in both image_tokens_from modes (the script
    itself asserts their windows are identical), times both splitter stages, and prints the table."""
    pytest.importorskip("datasets")
    results = _script("bench_raw").main(["--smoke"])
    assert [r["mode"] for r in results] == ["pixels", "sizes"]
    pixels, sizes = results
    assert pixels["rows_out"] == sizes["rows_out"] > 6 and pixels["tokens_out"] == sizes["tokens_out"]
    assert all(0 < r["windows"] < r["seconds"] and 0 < r["parse"] < r["seconds"] for r in results)
    out = capsys.readouterr().out
    assert "pixels map / sizes map" in out and "splitting share" in out


def test_bench_pack_smoke(capsys):
    """bench_pack --smoke splits, packs (every packed row within max_length, no token lost: the script asserts it),
    times pack_windows beside TRL's pack_dataset, and prints the table; packing never adds padding."""
    pytest.importorskip("datasets")
    results = _script("bench_pack").main(["--smoke"])
    assert [(r["max_length"], r["pack_length"]) for r in results] == [(1024, 1024), (1024, 4096), (2048, 2048),
                                                                         (2048, 8192)]
    for r in results:
        assert r["packed_rows"] < r["windows"] and r["pad_packed"] <= r["pad_unpacked"]
        assert r["pack_s"] > 0 and 0 < r["fill"] <= 1
    assert "padding, packed" in capsys.readouterr().out
