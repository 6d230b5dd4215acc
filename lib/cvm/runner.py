"""Headless runs: execute the step notebooks with papermill into a fresh run folder, export reports, write a manifest.

A run folder is `output_dir/<name>/<as_of>_<timestamp>/`. A failed run is marked (`FAILED.txt`, manifest status
"failed") and never touches earlier runs; the `latest` link moves only when every step succeeded.

Each step's kernel is started one step ahead and imports the modules its notebook imports while the previous step
runs, so a step starts on a ready kernel (the notebook still runs every cell itself, in a fresh namespace).
"""
from __future__ import annotations

import ast
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from cvm.config import RunConfig
from cvm.errors import InputError
from cvm.sources import column_plan, read_header, sha256

if TYPE_CHECKING:
    from jupyter_client.manager import AsyncKernelManager

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
STEP_NOTEBOOKS = {"data": "00_data.ipynb", "knowledge": "01_knowledge.ipynb",
                  "personalisation": "02_personalisation.ipynb", "monitoring": "03_monitoring.ipynb"}
PACKAGES = ("pandas", "numpy", "scipy", "statsmodels", "scikit-learn", "duckdb", "pyarrow", "pandera", "papermill",
            "nbconvert", "matplotlib", "seaborn")


class RunFailed(RuntimeError):
    """A step failed; the message names the notebook and the cell."""


@dataclass
class RunResult:
    """Where a finished run is and what it produced."""

    run_dir: Path
    reports: dict[str, Path]
    timings: dict[str, float]
    windows: dict[str, list[float]]  # per step: notebook start, notebook end = report start, report end (epoch s)


def executed_notebook(run_dir: Path, step: str) -> Path:
    """Where the runner writes a step's executed notebook."""
    return run_dir / step / f"{step}.ipynb"


def preflight(config: RunConfig) -> dict[str, str]:
    """Check every source before any work: the file opens and has the required columns. Returns file hashes."""
    hashes = {}
    for table, src in config.sources.items():
        column_plan(src, read_header(src))
        hashes[table] = sha256(src.path)
    for what, path in (("offers", config.offers), ("contact_policy", config.contact_policy)):
        if path is not None and not path.is_file():
            raise InputError(f"{what}: file not found: {path}. Check '{what}' in {config.path}.")
    return hashes


def versions() -> dict[str, str]:
    """Python, platform and package versions, for the manifest."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("cvm", *PACKAGES):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def new_run_dir(config: RunConfig, now: datetime) -> Path:
    """A fresh folder for this run (never reuses an existing one)."""
    base = config.output_dir / config.name
    stamp = now.strftime("%Y%m%dT%H%M%S")
    run_dir = base / f"{config.as_of.isoformat()}_{stamp}"
    suffix = 1
    while run_dir.exists():
        run_dir = base / f"{config.as_of.isoformat()}_{stamp}-{suffix}"
        suffix += 1
    run_dir.mkdir(parents=True)
    return run_dir


def notebook_imports(notebook: Path) -> list[str]:
    """The modules a notebook imports, in order: `import a.b` gives a.b; `from cvm import x` gives cvm.x when x is a
    module of the library, else cvm; `from a import x` gives a."""
    import nbformat

    library = Path(__file__).resolve().parent
    found: list[str] = []
    for cell in nbformat.read(str(notebook), as_version=4).cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:  # IPython magics: the notebook's own run reports them
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = [f"cvm.{a.name}" for a in node.names
                        if node.module == "cvm" and (library / f"{a.name}.py").is_file()]
                found += subs or [node.module]
    return list(dict.fromkeys(found))


def warm_lines(modules: list[str]) -> str:
    """One line that imports `modules` and leaves no name behind (the kernel's startup line)."""
    return f"import importlib as _cvm_i; [_cvm_i.import_module(_cvm_m) for _cvm_m in {modules!r}]; del _cvm_i"


def start_kernel(notebook: Path) -> AsyncKernelManager:
    """A python3 kernel started in the notebooks folder that imports the notebook's modules as it starts (IPython's
    startup lines: `warm_lines`). Returns without waiting: the kernel gets ready while the previous step runs, and
    the notebook's first request waits for it."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    km = AsyncKernelManager(kernel_name="python3")
    # the same in-memory history as nbclient gives the kernels it starts (two kernels never share a history file)
    run_sync(km.start_kernel)(cwd=str(NOTEBOOKS), extra_arguments=[
        "--HistoryManager.hist_file=:memory:", f"--IPKernelApp.exec_lines={warm_lines(notebook_imports(notebook))}"])
    return km


def stop_kernel(km: AsyncKernelManager | None) -> None:
    """Shut a kernel down now (its memory goes before the next step's peak)."""
    from jupyter_core.utils import run_sync

    if km is not None and km.has_kernel:
        run_sync(km.shutdown_kernel)(now=True)


def step_parameters(config: RunConfig, step: str, run_dir: Path) -> dict:
    """What papermill injects: the config, the date, the run folder, the seed and the step's own parameters."""
    return {"config_path": str(config.path), "as_of": config.as_of.isoformat(), "run_dir": str(run_dir),
            "seed": config.seed, **config.params.get(step, {})}


def _logger(run_dir: Path) -> logging.Logger:
    log = logging.getLogger(f"cvm.run.{run_dir.name}")
    log.setLevel(logging.INFO)
    handler = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    for name in ("papermill", "nbclient"):
        logging.getLogger(name).addHandler(handler)
    return log


def _move_latest(run_dir: Path) -> None:
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name, target_is_directory=True)
    os.replace(tmp, link)


def run(config: RunConfig, now: datetime | None = None, progress: bool = True) -> RunResult:
    """Run the configured steps; raise RunFailed (after marking the folder) if any step fails."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from cvm.report import export_html

    steps = list(config.steps)
    if steps[0] != "data":
        steps = ["data", *[s for s in steps if s != "data"]]
    for step in steps:
        if not (NOTEBOOKS / STEP_NOTEBOOKS[step]).is_file():
            raise InputError(f"step '{step}' has no notebook ({NOTEBOOKS / STEP_NOTEBOOKS[step]}).")
    kernel, upcoming = None, start_kernel(NOTEBOOKS / STEP_NOTEBOOKS[steps[0]])  # it starts while files are hashed
    try:
        hashes = preflight(config)
        run_dir = new_run_dir(config, now or datetime.now())
        log = _logger(run_dir)
        manifest = {"status": "running", "config": config.as_dict(), "config_file": str(config.path),
                    "versions": versions(), "input_sha256": hashes, "steps": steps, "timings_s": {},
                    "windows": {}}
        manifest_path = run_dir / "manifest.json"
        manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        log.info("run %s: steps %s", run_dir, steps)
        reports: dict[str, Path] = {}
        overall = tqdm(steps, desc="playbook", unit="step", disable=not progress, file=sys.stdout)
        for index, step in enumerate(overall):
            overall.set_postfix_str(step)
            out_dir = run_dir / step
            out_dir.mkdir(exist_ok=True)
            executed = executed_notebook(run_dir, step)
            started, window = time.perf_counter(), [time.time()]
            kernel, upcoming = upcoming, None
            try:
                if index + 1 < len(steps):
                    upcoming = start_kernel(NOTEBOOKS / STEP_NOTEBOOKS[steps[index + 1]])
                pm.execute_notebook(str(NOTEBOOKS / STEP_NOTEBOOKS[step]), str(executed),
                                    parameters=step_parameters(config, step, run_dir), cwd=str(NOTEBOOKS),
                                    progress_bar=progress, kernel_name="python3", log_output=False, km=kernel)
                stop_kernel(kernel)
                window.append(time.time())
                reports[step] = export_html(executed, out_dir / "report.html")
                window.append(time.time())
            except PapermillExecutionError as exc:
                message = (f"step '{step}' failed in notebook {STEP_NOTEBOOKS[step]}, cell {exc.exec_count} "
                           f"(index {exc.cell_index}): {exc.ename}: {exc.evalue}")
                _fail(run_dir, manifest, manifest_path, message, log)
                raise RunFailed(message) from None
            except Exception as exc:  # noqa: BLE001 - any other failure is reported the same way
                message = f"step '{step}' failed ({STEP_NOTEBOOKS[step]}): {type(exc).__name__}: {exc}"
                _fail(run_dir, manifest, manifest_path, message, log)
                raise RunFailed(message) from None
            manifest["timings_s"][step] = round(time.perf_counter() - started, 2)
            manifest["windows"][step] = window
            log.info("step %s done in %.1f s", step, manifest["timings_s"][step])
    finally:
        stop_kernel(kernel)
        stop_kernel(upcoming)
    manifest["status"] = "succeeded"
    manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    _move_latest(run_dir)
    log.info("run succeeded")
    return RunResult(run_dir, reports, manifest["timings_s"], manifest["windows"])


def _fail(run_dir: Path, manifest: dict, manifest_path: Path, message: str, log: logging.Logger) -> None:
    manifest["status"] = "failed"
    manifest["error"] = message
    manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    (run_dir / "FAILED.txt").write_text(message + "\n", encoding="utf-8")
    log.error(message)
