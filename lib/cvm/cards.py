"""One-page HTML cards: a generic renderer (title, optional red banner, sections of key figures, tables or text)
and the campaign card of the monitoring step. Self-contained HTML (inline CSS), printable on one A4 page; every
value is HTML-escaped and tables are PII-masked (`cvm.report.mask_pii`)."""
from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cvm.report import mask_pii

CSS = """body{font-family:Helvetica,Arial,sans-serif;max-width:820px;margin:24px auto;color:#222;font-size:13px}
h1{font-size:20px;margin:0}.sub{color:#666;margin:2px 0 12px}h2{font-size:14px;border-bottom:1px solid #ccc;
margin:16px 0 6px;padding-bottom:2px}.banner{background:#c0392b;color:#fff;padding:8px;font-weight:bold;margin:8px 0}
.figs{display:flex;flex-wrap:wrap;gap:8px}.fig{border:1px solid #ddd;border-radius:4px;padding:6px 10px;min-width:150px}
.fig b{display:block;font-size:15px}.fig span{color:#666;font-size:11px}table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #eee;padding:3px 6px;text-align:right}td:first-child,th:first-child{text-align:left}
.decision{font-size:15px;font-weight:bold;padding:6px;background:#eef5ee;border-left:4px solid #2e7d32}
@media print{body{margin:0}}"""
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Section:
    """One block of a card: key figures (a mapping label -> value), a table (DataFrame) or a sentence (str)."""

    heading: str
    content: Mapping[str, Any] | pd.DataFrame | str


@dataclass(frozen=True)
class Card:
    """A one-page card: title, subtitle, an optional red banner, a decision line and sections."""

    title: str
    subtitle: str = ""
    sections: Sequence[Section] = field(default_factory=tuple)
    banner: str | None = None
    decision: str | None = None


def fmt(value: Any) -> str:
    """A value for a card: thousands separators, 4 significant digits for small numbers, '–' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:,.4g}"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d")
    return str(value)


def _section(section: Section) -> str:
    head = f"<h2>{html.escape(section.heading)}</h2>"
    content = section.content
    if isinstance(content, pd.DataFrame):
        shown = mask_pii(content)
        cells = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
                       for row in shown.itertuples(index=False))
        return f"{head}<table><tr>{cells}</tr>{rows}</table>"
    if isinstance(content, Mapping):
        figs = "".join(f'<div class="fig"><b>{html.escape(fmt(v))}</b><span>{html.escape(str(k))}</span></div>'
                       for k, v in content.items())
        return f'{head}<div class="figs">{figs}</div>'
    return f"{head}<p>{html.escape(str(content))}</p>"


def render(card: Card) -> str:
    """The card as a complete HTML page."""
    parts = [f"<h1>{html.escape(card.title)}</h1>"]
    if card.subtitle:
        parts.append(f'<p class="sub">{html.escape(card.subtitle)}</p>')
    if card.banner:
        parts.append(f'<div class="banner">{html.escape(card.banner)}</div>')
    if card.decision:
        parts.append(f'<div class="decision">{html.escape(card.decision)}</div>')
    parts += [_section(s) for s in card.sections]
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(card.title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")


def write(card: Card, folder: str | Path, name: str) -> Path:
    """Write `<folder>/<name>.html` (name made file-safe) and return the path."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{SAFE_NAME.sub('_', name)}.html"
    path.write_text(render(card), encoding="utf-8")
    return path


def _interval(low: Any, high: Any, scale: float = 1.0, spec: str = "") -> str:
    """'low to high' after scaling; `spec` a format spec (default: `fmt`)."""
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return "–"
    show = (lambda v: format(v, spec)) if spec else fmt
    return f"{show(float(low) * scale)} to {show(float(high) * scale)}"


def campaign_card(campaign: Mapping[str, Any], arms: pd.DataFrame, funnel: pd.DataFrame,
                  dilution: Mapping[str, Any] | None = None, srm: Mapping[str, Any] | None = None) -> Card:
    """The campaign card: set-up, funnel, lift with interval per arm, incremental revenue and margin, dilution,
    ROI and the recommendation. `arms` are the campaign's `monitoring.arm_table` rows, `funnel` its
    `monitoring.funnel` rows, `dilution` its `experiments.dilution` row, `srm` its `monitoring.srm` row."""
    setup = {"type": campaign.get("type"), "channel": campaign.get("channel"),
             "start": campaign.get("start_date"), "arms": len(arms),
             "treated contacts": int(arms["n_treated"].sum()) if len(arms) else 0,
             "control contacts": int(arms["n_control"].max()) if len(arms) else 0}
    if srm is not None:
        setup["control share observed / planned"] = (f"{srm['control_share_observed']:.1%} / "
                                                     f"{srm['control_share_planned']:.1%}")
        setup["sample-ratio p-value"] = srm["srm_p_value"]
    lift = pd.DataFrame({
        "arm": arms["arm"],
        "conversion treated %": arms["conversion_rate_treated"] * 100,
        "conversion control %": arms["conversion_rate_control"] * 100,
        "lift (points)": arms["conversion_lift_abs"] * 100,
        "95% interval (points)": [_interval(lo, hi, 100, "+.2f") for lo, hi in
                                  zip(arms["conversion_lift_abs_low"], arms["conversion_lift_abs_high"])],
        "p (Holm)": arms["p_value_adjusted"]})
    sections = [Section("Set-up", setup), Section("Conversion lift against the control group", lift)]
    if "incremental_revenue" in arms:
        value = pd.DataFrame({
            "arm": arms["arm"], "incremental revenue": arms["incremental_revenue"],
            "interval": [_interval(lo, hi) for lo, hi in zip(arms["incremental_revenue_low"],
                                                              arms["incremental_revenue_high"])],
            "incremental margin": arms.get("incremental_margin"),
            "net margin after discounts & costs": arms.get("incremental_margin_net")})
        sections.append(Section("Incremental revenue and margin", value))
    steps = [c for c in ("delivered", "opened", "clicked", "converted") if f"rate_{c}" in funnel]
    if len(funnel):
        table = funnel[["group", "arm", "contacts"]].copy()
        for s in [c for c in funnel.columns if c.startswith("rate_")]:
            table[s.removeprefix("rate_") + " %"] = funnel[s] * 100
        sections.append(Section("Funnel" + (f" ({' → '.join(steps)})" if steps else ""), table))
    if dilution is not None:
        sections.append(Section("Dilution and ROI", {
            "discount given": dilution.get("discount_cost"),
            "discount to customers who would have bought anyway": dilution.get("dilution_cost"),
            "contact cost": dilution.get("contact_cost"),
            "net incremental margin": dilution.get("net_incremental_margin"), "ROI": dilution.get("roi")}))
    decisions = "; ".join(f"{a}: {r}" for a, r in zip(arms["arm"], arms["recommendation"]))
    banner = None
    if srm is not None and bool(srm.get("srm_flag")):
        banner = ("Sample-ratio mismatch: the group sizes do not match the planned split; check the randomisation "
                  "before using these results.")
    return Card(title=f"{campaign.get('campaign_id')} · {campaign.get('name')}",
                subtitle=f"{campaign.get('type')} campaign on {campaign.get('channel')}", sections=sections,
                banner=banner, decision=f"Recommendation — {decisions}" if decisions else None)
