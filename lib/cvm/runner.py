"""Headless runs: execute the step notebooks with papermill into a fresh run folder, export reports, write a manifest.

A run folder is `output_dir/<name>/<as_of>_<timestamp>/`. A failed run is marked (`FAILED.txt`, manifest status
"failed") and never touches earlier runs; the `latest` link moves only when every step succeeded.
"""
from __future__ import annotations

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

from tqdm import tqdm

from cvm.config import RunConfig
from cvm.errors import InputError
from cvm.sources import column_plan, read_header, sha256

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
    for step in overall:
        overall.set_postfix_str(step)
        out_dir = run_dir / step
        out_dir.mkdir(exist_ok=True)
        executed = executed_notebook(run_dir, step)
        started, window = time.perf_counter(), [time.time()]
        try:
            pm.execute_notebook(str(NOTEBOOKS / STEP_NOTEBOOKS[step]), str(executed),
                                parameters=step_parameters(config, step, run_dir), cwd=str(NOTEBOOKS),
                                progress_bar=progress, kernel_name="python3", log_output=False)
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
