"""The whole-playbook benchmark: step attribution from papermill's cell times, the RSS/CPU windows, the targets, and
one end-to-end `cvm bench` on a tiny demo. No timing assertions: only that the parts tile the whole."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml

from cvm import bench
from cvm.bench import EXPORT, KERNEL, RUNNER, Generation, SizeResult, Window
from cvm.config import config_for_data
from cvm.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
LABELS = bench.load_rules()["steps"]
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


def _stamp(seconds: float, naive: bool = False) -> str:
    moment = T0 + timedelta(seconds=seconds)
    return (moment.replace(tzinfo=None) if naive else moment).isoformat()


def _cell(source: str, start: float | None, end: float | None, tags: list[str] | None = None,
          naive: bool = False) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    if tags:
        cell.metadata["tags"] = tags
    cell.metadata["papermill"] = {"start_time": None if start is None else _stamp(start, naive),
                                  "end_time": None if end is None else _stamp(end, naive)}
    return cell


def _executed() -> nbformat.NotebookNode:
    """A tiny executed notebook with fake papermill times (seconds after T0): a markdown title, an untagged import,
    the parameters, two RFM cells (one a tie at zero seconds), a CLV fit cell with naive (UTC) times, and a cell that
    never ran."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"),
                _cell("import cvm", 2.0, 3.0),
                _cell("seed: int = 1  # seed", 3.1, 3.1, ["parameters"]),
                _cell("# RFM scores\nscores = rfm()", 3.2, 5.2, ["bench:rfm"]),
                _cell("report.table(scores)", 5.3, 5.3, ["bench:rfm"]),
                _cell("\n# fit\nmodels = fit()", 5.5, 9.5, ["bench:clv_fit"], naive=True),
                _cell("never_ran()", None, None, ["bench:churn"])]
    return nb


def _epoch(seconds: float) -> float:
    return (T0 + timedelta(seconds=seconds)).timestamp()


def test_cells_get_their_tag_label_or_other_notebook() -> None:
    cells = bench.cell_times(_executed(), "01_knowledge", LABELS)
    assert cells["step"].tolist() == ["other 01_knowledge", "other 01_knowledge", "RFM", "RFM", "CLV fit"]
    assert cells["seconds"].round(6).tolist() == [1.0, 0.0, 2.0, 0.0, 4.0]
    assert cells.loc[4, "start"] == pytest.approx(_epoch(5.5)), "naive papermill times are UTC"
    assert cells.loc[2, "code"] == "# RFM scores" and cells.loc[4, "code"] == "# fit"


@pytest.mark.parametrize("tags", [["bench:rfm", "bench:churn"], ["bench:nonsense"]])
def test_unknown_or_double_bench_tags_are_refused(tags: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [_cell("x = 1", 0.0, 1.0, tags)]
    with pytest.raises(InputError, match="notebook 00_data, cell .*at most one 'bench:<key>'"):
        bench.cell_times(nb, "00_data", LABELS)


def test_notebook_windows_tile_the_call_with_kernel_startup_first() -> None:
    cells = bench.cell_times(_executed(), "01_knowledge", LABELS)
    windows = bench.notebook_windows(cells, "01_knowledge", _epoch(0.0), _epoch(10.0))
    assert windows[0] == Window(KERNEL, _epoch(0.0), _epoch(2.0))
    assert windows[-1].step == "other 01_knowledge" and windows[-1].end == _epoch(10.0)
    assert all(a.end <= b.start + 1e-9 for a, b in zip(windows, windows[1:])), "no overlaps"
    assert sum(w.end - w.start for w in windows) == pytest.approx(10.0)
    by_step = pd.DataFrame([(w.step, w.end - w.start) for w in windows]).groupby(0)[1].sum()
    assert by_step.to_dict() == pytest.approx({KERNEL: 2.0, "other 01_knowledge": 2.0, "RFM": 2.0, "CLV fit": 4.0})


def test_a_call_without_executed_cells_is_all_kernel_startup() -> None:
    empty = pd.DataFrame(columns=bench.CELL_COLUMNS)
    assert bench.notebook_windows(empty, "00_data", 1.0, 4.0) == [Window(KERNEL, 1.0, 4.0)]


def test_tile_fills_gaps_with_runner_and_clips_overlaps() -> None:
    windows = [Window("b", 5.0, 8.0), Window("a", 2.0, 6.0), Window(EXPORT, 9.0, 12.0)]
    tiled = bench.tile(0.0, 11.0, windows)
    assert [(w.step, w.start, w.end) for w in tiled] == [
        (RUNNER, 0.0, 2.0), ("a", 2.0, 6.0), ("b", 6.0, 8.0), (RUNNER, 8.0, 9.0), (EXPORT, 9.0, 11.0)]
    assert sum(w.end - w.start for w in tiled) == pytest.approx(11.0)


def test_window_peak_inside_between_and_outside_the_samples() -> None:
    times = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    rss = np.array([10.0, 50.0, 20.0, 20.0, 30.0])
    assert bench.window_peak(times, rss, [Window("s", 0.05, 0.25)]) == 50.0
    assert bench.window_peak(times, rss, [Window("s", 0.21, 0.29)]) == 20.0, "no sample inside: neighbours (tie)"
    assert bench.window_peak(times, rss, [Window("s", 0.31, 0.32)]) == 30.0, "no sample inside: larger neighbour"
    assert bench.window_peak(times, rss, [Window("s", -1.0, -0.5)]) == 10.0
    assert bench.window_peak(times, rss, [Window("s", 0.21, 0.29), Window("s", 0.0, 0.0)]) == 20.0
    assert math.isnan(bench.window_peak(times[:0], rss[:0], [Window("s", 0.0, 1.0)]))


def test_window_cpu_interpolates_the_cumulative_cpu() -> None:
    times = np.array([0.0, 1.0, 2.0])
    cpu = np.array([0.0, 1.0, 1.0])
    assert bench.window_cpu(times, cpu, [Window("s", 0.5, 1.5)]) == pytest.approx(0.5)
    assert bench.window_cpu(times, cpu, [Window("s", 0.0, 0.5), Window("s", 1.0, 2.0)]) == pytest.approx(0.5)


def test_step_table_orders_by_first_use_and_adds_up() -> None:
    windows = [Window(RUNNER, 0.0, 1.0), Window(KERNEL, 1.0, 2.0), Window("load/validate", 2.0, 5.0),
               Window("other 00_data", 5.0, 6.0), Window("load/validate", 6.0, 7.0), Window(EXPORT, 7.0, 8.0)]
    times = np.arange(0.0, 8.01, 0.5)
    rss = np.where((times >= 2.0) & (times <= 5.0), 3e9, 1e9)
    table = bench.step_table(windows, times, rss, times / 2)
    assert table["step"].tolist() == ["load/validate", "other 00_data", KERNEL, EXPORT, RUNNER]
    assert table.set_index("step")["seconds"].to_dict() == pytest.approx(
        {"load/validate": 4.0, "other 00_data": 1.0, KERNEL: 1.0, EXPORT: 1.0, RUNNER: 1.0})
    assert table.loc[0, "peak_rss_mb"] == 3000.0 and table.loc[4, "peak_rss_mb"] == 1000.0
    assert table["share"].sum() == pytest.approx(1.0) and table["cpu_seconds"].sum() == pytest.approx(4.0)


def test_tree_usage_sees_a_child_and_its_memory() -> None:
    """Known truth: a child process that holds 200 MB must show up in the tree with that RSS."""
    code = "import time; b = bytearray(200_000_000); b[::4096] = b'x' * len(b[::4096]); print('ok', flush=True); " \
           "time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ok"
        usage = bench.tree_usage(os.getpid())
        pids = {key[0]: rss for key, rss, _ in usage}
        assert os.getpid() in pids and child.pid in pids
        assert pids[child.pid] > 190e6
        assert all(cpu >= 0 for _, _, cpu in usage)
    finally:
        child.kill()
        child.wait()


def test_sampler_samples_in_the_background_and_keeps_cpu_of_ended_processes() -> None:
    with bench.RssSampler(interval=0.02) as sampler:
        subprocess.run([sys.executable, "-c", "sum(range(3_000_000))"], check=True)
        time.sleep(0.1)
    times, cpu = sampler.times, sampler.cpu
    assert len(times) >= 5 and np.all(np.diff(times) >= 0) and np.all(sampler.rss > 0)
    assert np.all(np.diff(cpu) >= -1e-9), "cumulative CPU never drops when the child ends"


def _size(n: int, total: float, steps: dict[str, float], peak: float = 1000.0) -> SizeResult:
    frame = pd.DataFrame({"step": list(steps), "seconds": list(steps.values())})
    return SizeResult(n, 42, Generation(Path("."), False, 1.0, 1.0, 20 * n), frame, pd.DataFrame(), total, total,
                      peak, [0.0, 0.0, 0.0], None)


def test_targets_met_missed_not_run_and_superlinear_steps() -> None:
    targets = bench.load_rules()["targets"]
    one = _size(1_000_000, 100.0, {"RFM": 50.0, "churn": 50.0}, peak=6500.0)
    checks = bench.check_targets([one], targets).set_index("target")
    assert checks["met"].tolist() == [True, False, None]
    five = _size(5_000_000, 600.0, {"RFM": 250.0, "churn": 350.0})
    ratio = bench.check_targets([one, five], targets).iloc[2]
    assert ratio["value"] == pytest.approx(6.0) and ratio["met"] is not None and not ratio["met"] and ratio["detail"] == "churn 7.0x"
    assert "NOT RUN" in bench.format_checks(checks.reset_index()) and "MISSED" in bench.format_checks(
        checks.reset_index())


def test_config_for_data_points_at_the_generated_data(tmp_path: Path) -> None:
    path = config_for_data(ROOT / "configs" / "demo.yaml", tmp_path / "data", tmp_path / "out",
                           tmp_path / "cfg" / "b.yaml", "bench_7")
    raw = yaml.safe_load(path.read_text())
    assert raw["name"] == "bench_7" and raw["output_dir"] == str(tmp_path / "out")
    assert raw["sources"]["transactions"]["path"] == str(tmp_path / "data" / "transactions.parquet")
    assert raw["params"]["personalisation"]["truth_dir"] == str(tmp_path / "data")
    assert Path(raw["offers"]).is_file() and Path(raw["contact_policy"]).is_file()


def test_demo_folder_is_reused_only_for_the_same_size_seed_and_date(tmp_path: Path) -> None:
    (tmp_path / "truth").mkdir()
    for name in bench.DEMO_TABLES:
        (tmp_path / name).write_text("")
    (tmp_path / "truth" / "truth.json").write_text(json.dumps({"n_customers": 10, "seed": 42, "as_of": "2026-06-30"}))
    assert bench._demo_matches(tmp_path, 10, 42, "2026-06-30")
    assert not bench._demo_matches(tmp_path, 11, 42, "2026-06-30")
    assert not bench._demo_matches(tmp_path, 10, 7, "2026-06-30")
    (tmp_path / "contacts.parquet").unlink()
    assert not bench._demo_matches(tmp_path, 10, 42, "2026-06-30")


def test_every_named_step_is_tagged_in_the_notebooks() -> None:
    used: dict[str, set[str]] = {}
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        nb = nbformat.read(str(path), as_version=4)
        for cell in nb.cells:
            for tag in cell.metadata.get("tags", []):
                if tag.startswith(bench.TAG_PREFIX):
                    used.setdefault(tag[len(bench.TAG_PREFIX):], set()).add(path.stem)
        if path.stem == "03_monitoring":
            assert all("bench:monitoring" in c.metadata.get("tags", []) for c in nb.cells if c.cell_type == "code")
    assert set(used) == set(LABELS)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(InputError, match="customer counts of at least 1"):
        bench.run_bench([0])


@pytest.mark.notebook
def test_cvm_bench_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The whole playbook at 2,000 customers: every named step has time, the parts add up to the total."""
    from cvm.cli import main

    results = tmp_path / "results.json"
    assert main(["bench", "--customers", "2000", "--work", str(tmp_path), "--results", str(results)]) == 0
    printed = capsys.readouterr().out
    assert "2,000 customers" in printed and "TOTAL" in printed and "Targets:" in printed
    found = json.loads(results.read_text())
    assert found["machine"]["cores"] >= 1 and found["machine"]["pandas"]
    (size,) = found["sizes"]
    steps = {row["step"]: row for row in size["steps"]}
    for step in [*LABELS.values(), KERNEL, EXPORT, RUNNER]:
        assert steps[step]["seconds"] > 0, step
    assert sum(row["seconds"] for row in size["steps"]) == pytest.approx(size["total_seconds"], rel=1e-9)
    assert size["peak_rss_mb"] >= max(row["peak_rss_mb"] for row in size["steps"]) > 0
    assert size["generation"]["seconds"] > 0 and not size["generation"]["reused"] and size["transactions"] > 0
    assert {c["notebook"] for c in size["cells"]} == {"00_data", "01_knowledge", "02_personalisation",
                                                       "03_monitoring"}
    assert size["run_dir"] is None and not any((tmp_path / "output").glob("*/*_*")), "run folder deleted"
