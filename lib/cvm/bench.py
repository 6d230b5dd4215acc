"""Whole-playbook benchmark (`cvm bench`, `make bench`): generate the demo retailer at several sizes, run every step
notebook through `cvm.runner.run`, reports included, and give each step of the playbook its wall time and peak RSS.

Time. Papermill records each executed cell's start and end (`metadata.papermill.start_time` / `end_time`); a cell's
step is its `bench:<key>` cell tag (labels in `rules/bench.yaml`), an untagged cell counts as "other <notebook>". The
runner records when each step's notebook call and report export start and end (`RunResult.windows`, also in the
manifest): from a notebook call's start to its first cell is "kernel startup", gaps between cells are papermill's
bookkeeping ("other <notebook>"), the exports are "report export" and the rest of `run` (pre-flight file hashes,
manifest) is "runner". The windows tile the run, so the lines add up to the total.

Memory and CPU. A background thread samples the resident set size (RSS) and CPU time of the whole process tree (this
process, the kernel and any other child) every `interval` seconds; a step's peak is the largest sample inside its time
windows (a window too short to hold a sample takes the larger of the samples just before and after it). The RSS of the
processes is summed, so pages they share count twice: an upper bound. CPU seconds per step (cumulative CPU
interpolated between samples) tell work from waiting when other jobs share the machine.

The demo is generated in a child process (its time and peak are reported, not counted), so its memory does not stay in
the benchmark's process; a folder generated earlier with the same size, seed and date is reused.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq

from cvm import runner
from cvm.config import config_for_data, parse_date, read_yaml
from cvm.errors import InputError
from cvm.runner import STEP_NOTEBOOKS, RunResult, executed_notebook

ROOT = Path(__file__).resolve().parents[2]
RULES_PATH = Path(__file__).parent / "rules" / "bench.yaml"
DEFAULT_CONFIG = ROOT / "configs" / "demo.yaml"
DEFAULT_WORK = ROOT / "bench" / "runs"
DEFAULT_RESULTS = ROOT / "bench" / "results.json"
DEFAULT_SIZES = (100_000, 1_000_000, 5_000_000)
TAG_PREFIX = "bench:"
KERNEL, EXPORT, RUNNER = "kernel startup", "report export", "runner"
FIXED_LINES = (KERNEL, EXPORT, RUNNER)
MEASURES = ("total_seconds", "peak_rss_mb")
MB = 1e6
CELL_COLUMNS = ["notebook", "cell", "step", "start", "end", "seconds", "code"]
DEMO_TABLES = ("customers.csv", "transactions.parquet", "loyalty.csv", "campaigns.csv", "contacts.parquet")


@dataclass(frozen=True)
class Window:
    """A stretch of wall time given to one step; start and end in seconds since the epoch."""

    step: str
    start: float
    end: float


@dataclass(frozen=True)
class Generation:
    """The demo retailer of one size: where, whether reused, how long generating it took, its peak RSS (MB)."""

    folder: Path
    reused: bool
    seconds: float
    peak_rss_mb: float
    transactions: int


@dataclass
class SizeResult:
    """One size: generation, per-step rows (step, seconds, cpu_seconds, peak_rss_mb, share, scaling_vs_previous),
    every cell, the totals, and the machine's load average (1, 5, 15 min) when the run ended."""

    customers: int
    seed: int
    generation: Generation
    steps: pd.DataFrame
    cells: pd.DataFrame
    total_seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    load_average: list[float]
    run_dir: Path | None


@dataclass
class BenchResult:
    """A whole benchmark: the machine, each size, and the targets checked."""

    machine: dict[str, Any]
    sizes: list[SizeResult]
    checks: pd.DataFrame
    created: str


# ----------------------------------------------------------------------------------------------------- rules, cells
def load_rules(path: Path = RULES_PATH) -> dict[str, Any]:
    """Step labels per cell tag key, the targets and display settings (`rules/bench.yaml` unless another file)."""
    rules = read_yaml(path, "benchmark rules (steps and targets)")
    if not isinstance(rules, dict) or not isinstance(rules.get("steps"), dict) or not rules["steps"]:
        raise InputError(f"{path}: needs a 'steps' mapping of cell tag keys to labels, e.g. 'rfm: RFM'.")
    for number, target in enumerate(rules.get("targets") or [], start=1):
        missing = {"name", "customers", "measure", "max"} - set(target)
        if missing or target["measure"] not in MEASURES:
            raise InputError(f"{path}: target #{number} needs name, customers, measure ({' or '.join(MEASURES)}) "
                             f"and max; missing {sorted(missing)} or unknown measure {target.get('measure')!r}.")
    return rules


def _epoch(stamp: str) -> float:
    moment = datetime.fromisoformat(stamp)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def cell_times(nb: nbformat.NotebookNode, notebook: str, labels: dict[str, str]) -> pd.DataFrame:
    """One row per executed code cell (CELL_COLUMNS): its step is its `bench:<key>` tag's label, else "other
    <notebook>"; start and end in epoch seconds from papermill's metadata. Cells that did not run are left out."""
    rows = []
    for index, cell in enumerate(nb.cells):
        times = cell.get("metadata", {}).get("papermill", {})
        if cell.cell_type != "code" or not times.get("start_time") or not times.get("end_time"):
            continue
        cell_id = cell.get("id", f"#{index}")
        keys = [t[len(TAG_PREFIX):] for t in cell.metadata.get("tags", []) if t.startswith(TAG_PREFIX)]
        if len(keys) > 1 or any(k not in labels for k in keys):
            raise InputError(f"notebook {notebook}, cell {cell_id}: benchmark tags {keys}; give a cell at most one "
                             f"'{TAG_PREFIX}<key>' tag with a key from rules/bench.yaml: {', '.join(labels)}.")
        start, end = _epoch(times["start_time"]), _epoch(times["end_time"])
        lines = [line for line in cell.source.splitlines() if line.strip()]
        rows.append({"notebook": notebook, "cell": cell_id, "step": labels[keys[0]] if keys else f"other {notebook}",
                     "start": start, "end": max(end, start), "seconds": max(end - start, 0.0),
                     "code": lines[0][:100] if lines else ""})
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


def notebook_windows(cells: pd.DataFrame, notebook: str, call_start: float, call_end: float) -> list[Window]:
    """Tile one notebook call: kernel startup up to the first cell, each cell's step, and "other <notebook>" for the
    gaps (papermill's bookkeeping and saving). Cell times are clipped into the call, so windows never overlap."""
    windows, cursor = [], call_start
    for row in cells.sort_values("start").itertuples(index=False):
        start = min(max(row.start, cursor), call_end)
        end = min(max(row.end, start), call_end)
        if start > cursor:
            windows.append(Window(KERNEL if not windows else f"other {notebook}", cursor, start))
        windows.append(Window(row.step, start, end))
        cursor = end
    if call_end > cursor:
        windows.append(Window(KERNEL if not windows else f"other {notebook}", cursor, call_end))
    return windows


def tile(run_start: float, run_end: float, windows: Sequence[Window]) -> list[Window]:
    """The windows clipped to [run_start, run_end] without overlaps, plus "runner" windows for every gap: their
    lengths add up to the run's wall time."""
    out, cursor = [], run_start
    for w in sorted(windows, key=lambda w: (w.start, w.end)):
        start, end = max(w.start, cursor), min(w.end, run_end)
        if end <= start:
            continue
        if start > cursor:
            out.append(Window(RUNNER, cursor, start))
        out.append(Window(w.step, start, end))
        cursor = end
    if run_end > cursor:
        out.append(Window(RUNNER, cursor, run_end))
    return out


# ------------------------------------------------------------------------------------------------------------ memory
def tree_usage(pid: int) -> list[tuple[tuple[int, float], int, float]]:
    """Per process of the tree rooted at pid: a key that survives pid reuse, RSS bytes, CPU seconds (user + system)
    so far."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in procs:
        try:
            with proc.oneshot():
                cpu = proc.cpu_times()
                found.append(((proc.pid, proc.create_time()), proc.memory_info().rss, cpu.user + cpu.system))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


class RssSampler:
    """Context manager: samples the RSS and CPU time of a process tree (default: this process) every `interval`
    seconds in a background thread, plus once on entry and once on exit. After exit read `times` (epoch s), `rss`
    (bytes, summed over the tree) and `cpu` (CPU seconds used so far by every process seen, ended ones included)."""

    def __init__(self, pid: int | None = None, interval: float = 0.1) -> None:
        self.pid = pid or os.getpid()
        self.interval = interval
        self._times: list[float] = []
        self._rss: list[int] = []
        self._cpu: list[float] = []
        self._seen: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        now = time.time()
        found = tree_usage(self.pid)
        self._seen.update({key: cpu for key, _, cpu in found})
        self._rss.append(sum(rss for _, rss, _ in found))
        self._cpu.append(sum(self._seen.values()))
        self._times.append(now)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def times(self) -> np.ndarray:
        """Sample times, epoch seconds, increasing."""
        return np.asarray(self._times, dtype=float)

    @property
    def rss(self) -> np.ndarray:
        """Sampled RSS of the tree, bytes."""
        return np.asarray(self._rss, dtype=float)

    @property
    def cpu(self) -> np.ndarray:
        """CPU seconds used by the tree up to each sample (never decreasing)."""
        return np.asarray(self._cpu, dtype=float)


def window_cpu(times: np.ndarray, cpu: np.ndarray, windows: Sequence[Window]) -> float:
    """CPU seconds used by the tree during the windows (cumulative CPU interpolated linearly between samples)."""
    if len(times) == 0:
        return math.nan
    return float(sum(np.interp(w.end, times, cpu) - np.interp(w.start, times, cpu) for w in windows))


def window_peak(times: np.ndarray, rss: np.ndarray, windows: Sequence[Window]) -> float:
    """Largest sample inside the windows; a window holding no sample takes the larger of the samples just before and
    after it. NaN without samples or windows."""
    if len(times) == 0 or not windows:
        return math.nan
    peak = -math.inf
    for w in windows:
        lo, hi = np.searchsorted(times, w.start, "left"), np.searchsorted(times, w.end, "right")
        inside = rss[lo:hi] if hi > lo else rss[max(lo - 1, 0):min(lo + 1, len(rss))]
        peak = max(peak, float(inside.max()))
    return peak


def step_table(windows: Sequence[Window], times: np.ndarray, rss: np.ndarray, cpu: np.ndarray) -> pd.DataFrame:
    """Per step, in order of first appearance with kernel startup, report export and runner last: wall seconds, CPU
    seconds of the tree, peak RSS in MB and share of the total wall time."""
    ordered = sorted(windows, key=lambda w: w.start)
    names = list(dict.fromkeys(w.step for w in ordered if w.step not in FIXED_LINES))
    names += [s for s in FIXED_LINES if any(w.step == s for w in windows)]
    total = sum(w.end - w.start for w in windows)
    rows = []
    for name in names:
        mine = [w for w in windows if w.step == name]
        seconds = sum(w.end - w.start for w in mine)
        rows.append({"step": name, "seconds": seconds, "cpu_seconds": window_cpu(times, cpu, mine),
                     "peak_rss_mb": window_peak(times, rss, mine) / MB,
                     "share": seconds / total if total > 0 else math.nan})
    return pd.DataFrame(rows, columns=["step", "seconds", "cpu_seconds", "peak_rss_mb", "share"])


# ------------------------------------------------------------------------------------------------ running the playbook
def attribute(result: RunResult, labels: dict[str, str]) -> tuple[list[Window], pd.DataFrame]:
    """Windows of every step's notebook (cells read from its executed copy) and report export, from the runner's
    record, and the cell table of all notebooks."""
    windows, frames = [], []
    for step, (start, executed, exported) in result.windows.items():
        notebook = Path(STEP_NOTEBOOKS[step]).stem
        cells = cell_times(nbformat.read(str(executed_notebook(result.run_dir, step)), as_version=4), notebook, labels)
        windows += [*notebook_windows(cells, notebook, start, executed), Window(EXPORT, executed, exported)]
        frames.append(cells)
    cells = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CELL_COLUMNS)
    return windows, cells


def _demo_matches(folder: Path, customers: int, seed: int, as_of: str) -> bool:
    truth = folder / "truth" / "truth.json"
    if not truth.is_file() or not all((folder / name).is_file() for name in DEMO_TABLES):
        return False
    try:
        found = json.loads(truth.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (found.get("n_customers"), found.get("seed"), found.get("as_of")) == (customers, seed, as_of)


def ensure_demo(folder: Path, customers: int, seed: int, as_of: str, interval: float = 0.1) -> Generation:
    """The demo retailer in `folder`: reused when its truth.json names the same size, seed and date and every table
    is there (time and peak of the first generation are kept in bench_generation.json), else generated in a child
    process, timed and its RSS sampled."""
    record = folder / "bench_generation.json"
    reused = _demo_matches(folder, customers, seed, as_of)
    if reused:
        seen = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
        seconds, peak = seen.get("seconds", math.nan), seen.get("peak_rss_mb", math.nan)
    else:
        shutil.rmtree(folder, ignore_errors=True)
        command = [sys.executable, "-m", "cvm.cli", "demo", "--customers", str(customers), "--out", str(folder),
                   "--seed", str(seed), "--as-of", as_of]
        with RssSampler(interval=interval) as sampler:
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            seconds = time.perf_counter() - start
        if done.returncode:
            raise InputError(f"demo generation of {customers:,} customers into {folder} failed: "
                             f"{(done.stderr or done.stdout).strip()[-500:]}")
        peak = float(sampler.rss.max()) / MB
        record.write_text(json.dumps({"seconds": seconds, "peak_rss_mb": peak}), encoding="utf-8")
    rows = pq.ParquetFile(folder / "transactions.parquet").metadata.num_rows
    return Generation(folder, reused, float(seconds), float(peak), int(rows))


def _remove_run(run_dir: Path) -> None:
    latest = run_dir.parent / "latest"
    if latest.is_symlink() and latest.resolve() == run_dir.resolve():
        latest.unlink()
    shutil.rmtree(run_dir)
    if not any(run_dir.parent.iterdir()):
        run_dir.parent.rmdir()


def bench_size(customers: int, seed: int = 42, work: Path = DEFAULT_WORK, config: Path = DEFAULT_CONFIG,
               keep: bool = False, interval: float = 0.1, rules: dict[str, Any] | None = None) -> SizeResult:
    """Generate (or reuse) the demo at one size and run the whole playbook on it through `cvm.runner.run`,
    attributing wall time and peak RSS to the steps. The run folder is deleted after reading unless keep."""
    from cvm.config import load_config

    rules = rules or load_rules()
    raw = read_yaml(config, "run configuration")
    as_of = parse_date((raw or {}).get("as_of"), f"{config}: as_of").isoformat()
    work = Path(work).resolve()
    generation = ensure_demo(work / "data" / f"demo_{customers}_seed{seed}", customers, seed, as_of, interval)
    path = config_for_data(Path(config), generation.folder, work / "output",
                           work / "configs" / f"bench_{customers}.yaml", f"bench_{customers}")
    run_config = load_config(path)
    with RssSampler(interval=interval) as sampler:
        start = time.time()
        result = runner.run(run_config, progress=False)
        end = time.time()
    windows, cells = attribute(result, rules["steps"])
    windows = tile(start, end, windows)
    times, rss = sampler.times, sampler.rss
    cells["peak_rss_mb"] = [window_peak(times, rss, [Window(c.step, c.start, c.end)]) / MB
                            for c in cells.itertuples(index=False)]
    steps = step_table(windows, times, rss, sampler.cpu)
    if not keep:
        _remove_run(result.run_dir)
    whole = [Window("run", start, end)]
    return SizeResult(customers, seed, generation, steps, cells, end - start, window_cpu(times, sampler.cpu, whole),
                      window_peak(times, rss, whole) / MB, [round(x, 2) for x in os.getloadavg()],
                      result.run_dir if keep else None)


def _add_scaling(current: SizeResult, previous: SizeResult | None) -> None:
    """Per step: (time ratio) / (customer ratio) against the previous size; 1 is linear, above 1 super-linear."""
    if previous is None:
        current.steps["scaling_vs_previous"] = math.nan
        return
    before = current.steps["step"].map(previous.steps.set_index("step")["seconds"])
    current.steps["scaling_vs_previous"] = (current.steps["seconds"] / before) / (current.customers / previous.customers)


def _measure(size: SizeResult, measure: str) -> float:
    return size.total_seconds if measure == "total_seconds" else size.peak_rss_mb


def check_targets(sizes: Sequence[SizeResult], targets: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per target: measured value (None when its size was not run), limit, met, and for ratio targets the
    steps whose own time ratio exceeds the limit (steps of at least one second)."""
    by_size = {s.customers: s for s in sizes}
    rows = []
    for target in targets:
        size, ref_size = by_size.get(int(target["customers"])), target.get("relative_to")
        ref = by_size.get(int(ref_size)) if ref_size is not None else None
        value, detail = None, ""
        if size is not None and (ref_size is None or ref is not None):
            value = _measure(size, target["measure"]) / (_measure(ref, target["measure"]) if ref else 1.0)
        if value is not None and ref is not None:
            steps = size.steps.set_index("step")["seconds"]
            ratios = steps / ref.steps.set_index("step")["seconds"].reindex(steps.index)
            worse = ratios[(ratios > float(target["max"])) & (steps >= 1.0)]
            detail = "; ".join(f"{step} {r:.1f}x" for step, r in worse.items())
        rows.append({"target": target["name"], "value": value, "limit": float(target["max"]),
                     "met": None if value is None else bool(value <= float(target["max"])), "detail": detail})
    return pd.DataFrame(rows, columns=["target", "value", "limit", "met", "detail"])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The machine and software the figures were measured on: CPU, cores, RAM, load, Python and package versions."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
            "ram_gib": round(ram / 2**30, 1), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "rss_source": f"psutil {psutil.__version__}", **runner.versions()}


def run_bench(sizes: Sequence[int] = DEFAULT_SIZES, seed: int = 42, work: Path = DEFAULT_WORK,
              config: Path = DEFAULT_CONFIG, keep: bool = False, interval: float = 0.1,
              rules: dict[str, Any] | None = None,
              on_size: Callable[[BenchResult], None] | None = None) -> BenchResult:
    """Benchmark the whole playbook at each size in turn; `on_size` gets the result so far after each size."""
    bad = [n for n in sizes if int(n) < 1]
    if not sizes or bad:
        raise InputError(f"bench: give one or more customer counts of at least 1 (got {list(sizes)}).")
    rules = rules or load_rules()
    result = BenchResult(machine(), [], check_targets([], rules.get("targets") or []),
                         datetime.now(UTC).isoformat(timespec="seconds"))
    for n in sizes:
        size = bench_size(int(n), seed, work, config, keep, interval, rules)
        _add_scaling(size, result.sizes[-1] if result.sizes else None)
        result.sizes.append(size)
        result.checks = check_targets(result.sizes, rules.get("targets") or [])
        if on_size is not None:
            on_size(result)
    return result


# ------------------------------------------------------------------------------------------------------------ output
def _plain(value: Any) -> Any:
    """JSON-ready: NaN and None as null, numpy scalars as Python numbers, paths as text."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value) if isinstance(value, Path) else value


def results_dict(result: BenchResult) -> dict[str, Any]:
    """The benchmark as plain data (what results.json holds)."""
    sizes = []
    for s in result.sizes:
        g = s.generation
        sizes.append({
            "customers": s.customers, "seed": s.seed, "transactions": g.transactions,
            "generation": {"seconds": g.seconds, "peak_rss_mb": g.peak_rss_mb, "reused": g.reused,
                           "folder": g.folder},
            "total_seconds": s.total_seconds, "cpu_seconds": s.cpu_seconds, "peak_rss_mb": s.peak_rss_mb,
            "load_average_at_end": s.load_average,
            "steps": s.steps.to_dict("records"),
            "cells": s.cells.drop(columns=["start", "end"]).to_dict("records"),
            "run_dir": s.run_dir,
        })
    return _plain({"created": result.created, "machine": result.machine, "sizes": sizes,
                   "targets": result.checks.to_dict("records"),
                   "notes": "seconds are wall time; peak RSS in MB (10^6 bytes) of the process tree (runner + "
                            "kernel), summed over processes; cpu_seconds: user + system CPU time of that tree; generation is not counted "
                            "in the totals"})


def write_results(result: BenchResult, path: Path = DEFAULT_RESULTS) -> Path:
    """Write results.json (see `results_dict`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results_dict(result), indent=2), encoding="utf-8")
    return path


def format_size(size: SizeResult, cells_shown: int = 8) -> str:
    """The printed table of one size: step, wall s, peak RSS MB, share, scaling against the previous size; the
    total; the slowest cells."""
    g = size.generation
    made = "reused, first generated in" if g.reused else "generated in"
    lines = [f"{size.customers:,} customers (seed {size.seed}, {g.transactions:,} transaction rows): demo {made} "
             f"{g.seconds:.1f} s, peak RSS {g.peak_rss_mb:,.0f} MB (not counted)",
             f"  {'step':<28}{'wall s':>9}{'CPU s':>9}{'peak RSS MB':>13}{'share':>8}{'scaling':>9}"]
    for row in size.steps.itertuples(index=False):
        scaling = "" if pd.isna(row.scaling_vs_previous) else f"{row.scaling_vs_previous:.2f}"
        lines.append(f"  {row.step:<28}{row.seconds:>9.1f}{row.cpu_seconds:>9.1f}{row.peak_rss_mb:>13,.0f}"
                     f"{row.share:>8.1%}{scaling:>9}")
    lines.append(f"  {'TOTAL':<28}{size.total_seconds:>9.1f}{size.cpu_seconds:>9.1f}{size.peak_rss_mb:>13,.0f}"
                 f"{1:>8.0%}")
    lines.append(f"  (CPU s: CPU time of runner + kernel; scaling: wall-time ratio / customer ratio against the "
                 f"previous size, 1 = linear; load average at the end {size.load_average})")
    lines.append("  slowest cells:")
    for row in size.cells.nlargest(cells_shown, "seconds").itertuples(index=False):
        lines.append(f"    {row.seconds:>7.1f} s  {row.notebook} {row.cell:<8} [{row.step}] {row.code}")
    if "peak_rss_mb" in size.cells:
        lines.append("  cells at the highest memory (peak RSS of runner + kernel while the cell ran):")
        for row in size.cells.nlargest(min(cells_shown, 4), "peak_rss_mb").itertuples(index=False):
            lines.append(f"    {row.peak_rss_mb:>7,.0f} MB {row.notebook} {row.cell:<8} [{row.step}] {row.code}")
    return "\n".join(lines)


def format_checks(checks: pd.DataFrame) -> str:
    """The targets, measured value and whether each is met ("not run" when its size was not benchmarked)."""
    lines = ["Targets:"]
    for row in checks.itertuples(index=False):
        if row.met is None or pd.isna(row.value):
            lines.append(f"  {'NOT RUN':<8} {row.target} (limit {row.limit:g})")
            continue
        lines.append(f"  {'MET' if row.met else 'MISSED':<8} {row.target}: {row.value:,.2f} (limit {row.limit:g})"
                     + (f"; steps over the limit: {row.detail}" if row.detail else ""))
    return "\n".join(lines)
