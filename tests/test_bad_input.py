"""Bad input, end to end through `cvm run`: a clear message naming file, column and rows, a non-zero exit code, and
the last good run left exactly as it was."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cvm.cli import main

pytestmark = pytest.mark.notebook

GOOD = pd.DataFrame({"customer_id": ["A", "B", "C"], "order_id": ["1", "2", "3"],
                     "order_date": ["2025-01-02", "2025-02-03", "2025-03-04"], "amount": ["1.5", "2", "3"]})


def write(path: Path, frame: pd.DataFrame | None = None, raw: bytes | None = None) -> None:
    if raw is not None:
        path.write_bytes(raw)
    else:
        frame.to_csv(path, index=False)


CASES = {
    "misspelled column": (GOOD.rename(columns={"order_date": "order_dte"}), None, 2,
                          ["sales.csv", "'order_date'", "closest file column: 'order_dte'"]),
    "empty file": (None, b"", 2, ["sales.csv is empty"]),
    "unreadable encoding": (None, "customer_id,order_id,order_date,amount\nJos\xe9,1,2025-01-01,2\n".encode("cp1252"),
                            2, ["sales.csv cannot be read as utf-8", "read.encoding"]),
    "wrong type": (GOOD.assign(amount=["one", "two", "3"]), None, 1,
                   ["column 'amount' in file", "sales.csv", "2 of 3 values are not a float", "00_data.ipynb"]),
    "every row rejected": (GOOD.assign(customer_id=[None, None, None]), None, 1,
                           ["every one of the 3 rows of file", "missing customer_id: 3"]),
    "header only": (GOOD.head(0), None, 2, ["sales.csv has a header but no rows"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_clearly_and_keeps_the_last_good_run(case: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    sales = tmp_path / "sales.csv"
    write(sales, GOOD)
    config = tmp_path / "run.yaml"
    config.write_text("name: t\nas_of: 2025-06-30\noutput_dir: out\nsources:\n  transactions:\n"
                      "    path: sales.csv\nsteps: [data]\n")
    assert main(["run", "--config", str(config), "--quiet"]) == 0
    latest = tmp_path / "out" / "t" / "latest"
    good_run = latest.resolve()
    before = {p: p.read_bytes() for p in good_run.rglob("*") if p.is_file() and p.suffix != ".duckdb"}
    frame, raw, code, expected = CASES[case]
    write(sales, frame, raw)
    capsys.readouterr()
    assert main(["run", "--config", str(config), "--quiet"]) == code
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    assert latest.resolve() == good_run
    assert {p: p.read_bytes() for p in good_run.rglob("*") if p.is_file() and p.suffix != ".duckdb"} == before
