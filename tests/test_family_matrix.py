"""The README's supported-families matrix is the one `tools/families_matrix.py` generates from the test registries."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_families_matrix_is_generated_from_the_registries():
    spec = importlib.util.spec_from_file_location("families_matrix", ROOT / "tools" / "families_matrix.py")
    matrix = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(matrix)
    readme = (ROOT / "README.md").read_text()
    assert matrix.BEGIN in readme and matrix.END in readme
    assert matrix.render(readme) == readme, "the families matrix is stale: run python tools/families_matrix.py"
    assert readme.count("| gemma4 |") == 1
