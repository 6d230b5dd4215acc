"""Every notebook follows the house rules, so a new notebook cannot skip them."""
from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from cvm.runner import STEP_NOTEBOOKS

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_every_step_notebook_is_known() -> None:
    assert NOTEBOOKS, "no notebooks found"
    assert {p.name for p in NOTEBOOKS} <= set(STEP_NOTEBOOKS.values())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_title_parameters_and_no_outputs(path: Path) -> None:
    nb = nbformat.read(str(path), as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "first cell is a title"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    assert nb.cells.index(tagged[0]) == first_code + 1, "the parameters cell comes right after the imports"
    for line in tagged[0].source.splitlines():
        assert "#" in line, f"parameter without a comment: {line}"
        assert "=" not in line.split("#", 1)[1], f"papermill cannot parse a '=' inside the comment: {line}"
        node = ast.parse(line.split("#")[0]).body[0]
        assert isinstance(node, ast.AnnAssign), f"parameter without a type: {line}"
        try:
            ast.literal_eval(node.value)
        except ValueError:
            pytest.fail(f"derived value in the parameters cell: {line}")
    for names in ("config_path", "as_of", "run_dir", "seed"):
        assert names in tagged[0].source, f"every step takes the runner's parameter {names}"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "notebooks are committed without outputs"
    assert "write_summary" in nb.cells[-1].source, "the last cell writes the key figures"
