"""The collate benchmark runs end to end at a tiny size (its own asserts compare the vectorized and loop checks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_collate_smoke_runs_and_reports_every_ratio(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_collate.py"), "--smoke", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    for key in ("speedup_vs_python_loop", "speedup_vs_tensor_loop", "check_share_of_collate", "count_vs_bare"):
        assert res[key] > 0, key
    assert res["batch"] == 4 and res["device"] == "cpu" and "torch" in res["machine"]
    assert "speedup vs Python loop" in proc.stdout
