"""Report plumbing shared by every notebook: chart style, saved charts, masked tables, key figures, HTML export."""
from __future__ import annotations

import json
import math
import re
from datetime import date, datetime
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
PII_COLUMNS = ("email", "phone")


def setup() -> None:
    """One chart style for every notebook: readable when pasted into a slide."""
    sns.set_theme(style="whitegrid", context="notebook")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "axes.titlesize": 13, "axes.titleweight": "bold",
                         "figure.autolayout": False})
    pd.set_option("display.max_columns", 40)
    pd.set_option("display.width", 160)


def step_dir(run_dir: str | Path, step: str) -> Path:
    """`<run>/<step>/`, created."""
    out = Path(run_dir) / step
    out.mkdir(parents=True, exist_ok=True)
    return out


def chart(fig: Figure, out_dir: str | Path, name: str) -> Any:
    """Save a chart as `<out_dir>/charts/<name>.png` and return that PNG for display (the same image in the report
    and on the slide, whatever matplotlib backend the kernel has)."""
    from IPython.display import Image

    charts = Path(out_dir) / "charts"
    charts.mkdir(parents=True, exist_ok=True)
    path = charts / f"{name}.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    titles = [fig._suptitle.get_text()] if fig._suptitle is not None else []
    titles += [ax.get_title() for ax in fig.axes if ax.get_title()]
    return Image(filename=str(path), alt=titles[0] if titles else name.replace("_", " "))


def mask_pii(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy safe for a client report: e-mail and phone columns masked, and any address-like text in other columns."""
    out = frame.copy()
    for col in out.columns:
        if str(col).lower() in PII_COLUMNS:
            out[col] = out[col].map(_mask_value)
        elif out[col].dtype == object or isinstance(out[col].dtype, pd.StringDtype):
            out[col] = out[col].map(lambda v: EMAIL.sub("***@***", v) if isinstance(v, str) else v)
    return out


def _mask_value(value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return value
    if "@" in value:
        return value[0] + "***@***"
    return "***" + value[-2:]


def table(frame: pd.DataFrame, formats: dict[str, str] | None = None, max_rows: int = 30) -> Any:
    """A styled, PII-masked table for the report (numbers with thousands separators, shares as percentages)."""
    shown = mask_pii(frame.head(max_rows))
    formats = dict(formats or {})
    for col in shown.columns:
        if col in formats:
            continue
        values = shown[col]
        if pd.api.types.is_datetime64_any_dtype(values):
            whole_days = values.dropna().dt.normalize().eq(values.dropna()).all()
            pattern = "%Y-%m-%d" if whole_days else "%Y-%m-%d %H:%M"
            formats[col] = lambda v, p=pattern: v.strftime(p)
        elif pd.api.types.is_float_dtype(values):
            name = str(col)
            if "share" in name or name.startswith("pct_") or "rate" in name or "lift" in name:
                formats[col] = "{:+.1%}" if "lift" in name else "{:.1%}"
            elif _whole(values) and not name.startswith(("mean", "aov", "avg")):
                formats[col] = "{:,.0f}"
            else:
                formats[col] = "{:,.2f}"
        elif pd.api.types.is_integer_dtype(values):
            formats[col] = "{:,}"
    labels = [str(c).replace("_", " ") for c in shown.columns]
    return shown.style.format(formats, na_rep="–").hide(axis="index").relabel_index(labels, axis="columns")


def _whole(values: pd.Series) -> bool:
    """Whether every present value of a float column is a whole number (counts stored as floats)."""
    present = values.dropna().to_numpy(dtype=float)
    return bool(np.all(np.mod(present, 1) == 0))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (pd.Timestamp, datetime, date)):
        return value.isoformat()
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def write_summary(out_dir: str | Path, figures: dict[str, Any]) -> Path:
    """Write the step's key figures to `<out_dir>/summary.json` (plain JSON, sorted keys) and return the path."""
    path = Path(out_dir) / "summary.json"
    path.write_text(json.dumps(_plain(figures), indent=2, sort_keys=True), encoding="utf-8")
    return path


def export_html(notebook: str | Path, html: str | Path) -> Path:
    """Render an executed notebook as a client report: no code, no prompts, PII checked."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    shown = json.dumps([cell.get("outputs", []) for cell in nb.cells])
    found = EMAIL.findall(shown)
    if found:
        raise ValueError(f"{notebook}: the report would show {len(found)} e-mail address(es), e.g. {found[0][:3]}***; "
                         "mask them with cvm.report.table / mask_pii.")
    Path(html).write_text(body, encoding="utf-8")
    return Path(html)


def say(text: str) -> Any:
    """Show a sentence of interpretation as Markdown in the report."""
    from IPython.display import Markdown

    return Markdown(text)
