"""The headless runner: run folders, manifest, reports, `latest`, and failures that leave earlier runs intact."""
from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import nbformat
import pandas as pd
import psutil
import pytest
from cvm.cli import main
from cvm.config import load_config
from cvm.errors import InputError
from cvm.runner import RunFailed, notebook_imports, run, warm_lines

pytestmark = pytest.mark.notebook


@pytest.fixture()
def client(tmp_path: Path) -> Path:
    """A tiny client: a semicolon CSV with its own column names, a CRM with e-mails, and a config."""
    data = tmp_path / "client"
    data.mkdir()
    pd.DataFrame({"Kunde": ["K1", "K1", "K2", "K3", "", "K3"], "Beleg": ["1", "2", "3", "4", "5", "4"],
                  "Datum": ["03.01.2025", "04.02.2025", "05.02.2025", "06.03.2025", "07.03.2025", "06.03.2025"],
                  "Betrag": ["10,00", "20,50", "-5,00", "7,25", "1,00", "7,25"]}).to_csv(
        data / "umsatz.csv", sep=";", index=False)
    pd.DataFrame({"customer_id": ["K1", "K2", "K9"], "email": ["k1@client.de", "k2@client.de", "k9@client.de"],
                  "consent_email": ["ja", "nein", "ja"]}).to_csv(data / "crm.csv", index=False)
    (tmp_path / "run.yaml").write_text("""
name: tiny
as_of: 2025-03-31
output_dir: out
sources:
  transactions:
    path: client/umsatz.csv
    columns: {customer_id: Kunde, order_id: Beleg, order_date: Datum, amount: Betrag}
    read: {sep: ";", decimal: ",", date_format: "%d.%m.%Y"}
  customers:
    path: client/crm.csv
steps: [data]
""")
    return tmp_path / "run.yaml"


def _kernels_alive() -> list[psutil.Process]:
    """This process's kernel children still running (other children, such as a Spark JVM of an earlier test, aside)."""
    alive = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and "ipykernel_launcher" in " ".join(proc.cmdline()):
                alive.append(proc)
        except psutil.NoSuchProcess:
            continue
    return alive


def test_run_writes_reports_manifest_and_moves_latest(client: Path) -> None:
    result = run(load_config(client), now=datetime(2025, 4, 1, 6, 0), progress=False)
    run_dir = result.run_dir
    assert run_dir.name == "2025-03-31_20250401T060000"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and set(manifest["input_sha256"]) == {"transactions", "customers"}
    assert manifest["versions"]["duckdb"] and manifest["timings_s"]["data"] > 0
    start, executed, exported = manifest["windows"]["data"]  # notebook call, then report export (cvm bench)
    assert start < executed <= exported and exported - start <= manifest["timings_s"]["data"] + 0.1
    summary = json.loads((run_dir / "data" / "summary.json").read_text())
    tx = summary["tables"]["transactions"]
    assert (tx["rows_read"], tx["rows_kept"]) == (6, 4)
    assert tx["rejected_by_reason"] == {"missing customer_id": 1, "duplicate order line": 1}
    assert summary["silos"] == {"transactions + customers": 2, "transactions": 1, "customers": 1}
    html = (run_dir / "data" / "report.html").read_text()
    assert "load_and_validate" not in html, "client reports show no code"
    assert "k1@client.de" not in html and "@client.de" not in html, "client reports never show e-mail addresses"
    assert (run_dir / "data" / "charts" / "monthly_activity.png").stat().st_size > 1000
    assert (run_dir / "customer.duckdb").is_file()
    assert (run_dir.parent / "latest").resolve() == run_dir.resolve()


def test_same_config_gives_the_same_figures(client: Path) -> None:
    first = run(load_config(client), now=datetime(2025, 4, 1, 6, 0), progress=False).run_dir
    second = run(load_config(client), now=datetime(2025, 4, 1, 6, 0), progress=False).run_dir
    assert first != second, "a run never reuses a folder"
    assert (first / "data" / "summary.json").read_text() == (second / "data" / "summary.json").read_text()


def test_failed_run_is_marked_and_leaves_the_last_good_run_alone(client: Path) -> None:
    good = run(load_config(client), now=datetime(2025, 4, 1), progress=False).run_dir
    good_summary = (good / "data" / "summary.json").read_text()
    umsatz = client.parent / "client" / "umsatz.csv"
    frame = pd.read_csv(umsatz, sep=";", dtype=str)
    frame["Betrag"] = "zwölf"
    frame.to_csv(umsatz, sep=";", index=False)
    with pytest.raises(RunFailed) as err:
        run(load_config(client), now=datetime(2025, 4, 8), progress=False)
    message = str(err.value)
    assert "00_data.ipynb" in message and "cell" in message
    assert "column 'amount' in file" in message and "umsatz.csv" in message and "wrong type" in message
    failed = good.parent / "2025-03-31_20250408T000000"
    assert (failed / "FAILED.txt").read_text().startswith("step 'data' failed")
    assert json.loads((failed / "manifest.json").read_text())["status"] == "failed"
    assert (good.parent / "latest").resolve() == good.resolve()
    assert (good / "data" / "summary.json").read_text() == good_summary
    assert _kernels_alive() == [], "the failed step's kernel and the next one (started ahead) are shut down"


def test_bad_input_stops_before_any_run_folder(client: Path, capsys: pytest.CaptureFixture) -> None:
    text = client.read_text().replace("order_date: Datum", "order_date: Datun")
    client.write_text(text)
    with pytest.raises(InputError, match=r"no column 'Datun'.*Did you mean 'Datum'"):
        run(load_config(client), progress=False)
    assert not (client.parent / "out").exists()
    assert _kernels_alive() == [], "the kernel started while the files were checked is shut down"
    assert main(["run", "--config", str(client), "--quiet"]) == 2
    assert "INPUT ERROR" in capsys.readouterr().err


def test_notebook_imports_name_the_modules_to_load_ahead(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("import not_this"),
        nbformat.v4.new_code_cell("import cvm\nfrom cvm import customer_db as db, report\nimport os.path"),
        nbformat.v4.new_code_cell("from cvm.config import load_config\nfrom cvm import __version__\n%matplotlib inline"),
        nbformat.v4.new_code_cell("from . import nothing\nimport cvm"),
    ])
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(path))
    # the magic cell cannot be parsed and is left to the notebook's own run; `from cvm import __version__` gives cvm
    assert notebook_imports(path) == ["cvm", "cvm.customer_db", "cvm.report", "os.path"]


def test_the_warm_up_line_imports_and_binds_no_name() -> None:
    namespace: dict = {}
    exec(warm_lines(["json", "cvm.offers"]), namespace)  # noqa: S102 - the line the kernel runs at startup
    assert set(namespace) == {"__builtins__"}
    assert {"json", "cvm.offers"} <= set(sys.modules)

