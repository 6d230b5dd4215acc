"""Glue of the monitoring step: from the run database to per-arm results, checks, trends, cards and feedback.

The statistics live in `cvm.experiments`; this module prepares the `contacts` table for them (outcomes chosen or
attributed from transactions, campaign attributes, launch week, segment, pre-period spend), chains them the way the
notebook presents them, writes the step's tables and turns the results into sentences and key figures.

Contacts without customer_id (anonymised exports) are measured on row identity; whatever needs a join (CUPED,
pre-period balance, segment from the knowledge table, attribution from transactions) is skipped and said so in
`Setup.notes`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Self

import duckdb
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyarrow as pa
import yaml
from matplotlib.figure import Figure
from scipy import stats

from cvm import customer_db
from cvm import experiments as ex
from cvm.config import RunConfig
from cvm.engine import fetch
from cvm.errors import InputError
from cvm.keys import isin_keys, key_positions, per_distinct, rows_at

RULES_PATH = Path(__file__).parent / "rules" / "monitoring.yaml"
FUNNEL = ("delivered", "opened", "clicked")
ANY_SEGMENT = "*"  # the segment value of feedback rows when no segment is known (read by cvm.uplift.load_priors)


def arm_headline(arms: pd.DataFrame) -> pd.DataFrame:
    """The per-arm results a client reads, one readable column each: counts, conversion rates, the lift and extra
    revenue with their 95% intervals, the Holm-adjusted p-value and the decision (the full table goes to Parquet)."""
    def pts(v: float) -> str:
        return "–" if pd.isna(v) else f"{v * 100:+.2f}"

    def money(v: float) -> str:
        return "–" if pd.isna(v) else f"{v:+,.0f}"

    return pd.DataFrame({
        "campaign": arms["campaign_id"], "arm": arms["arm"],
        "treated / control": [f"{t:,} / {c:,}" for t, c in zip(arms["n_treated"], arms["n_control"])],
        "conversion rate treated": arms["conversion_rate_treated"],
        "conversion rate control": arms["conversion_rate_control"],
        "lift, points (95% CI)": [f"{pts(v)} [{pts(lo)}, {pts(hi)}]" for v, lo, hi in zip(
            arms["conversion_lift_abs"], arms["conversion_lift_abs_low"], arms["conversion_lift_abs_high"])],
        "extra revenue (95% CI)": [f"{money(v)} [{money(lo)}, {money(hi)}]" for v, lo, hi in zip(
            arms["incremental_revenue"], arms["incremental_revenue_low"], arms["incremental_revenue_high"])]
        if "incremental_revenue" in arms else "–",
        "p (Holm)": arms["p_value_adjusted"], "decision": arms["decision"],
    })


def load_rules(path: str | Path | None = None) -> dict[str, Any]:
    """Monitoring settings (default `lib/cvm/rules/monitoring.yaml`)."""
    file = Path(path) if path else RULES_PATH
    rules = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    missing = {"design_shares", "targeting_words", "balance_p_value_below", "crm_balance_columns",
               "rolling_weeks"} - set(rules)
    if missing:
        raise InputError(f"{file}: missing keys {sorted(missing)}; copy them from {RULES_PATH}.")
    return rules


@dataclass
class Setup:
    """The prepared contacts and what could be measured on them."""

    contacts: pd.DataFrame       # one row per contact, with campaign attributes, launch_week, segment, pre-period
    campaigns: pd.DataFrame      # one row per measured campaign: name, type, channel, start_date, economics
    primary: str                 # binary outcome the decisions use
    value: str | None            # spend column, None when there is none
    secondary: list[str]         # other outcome columns, reported too
    has_ids: bool                # customer_id present: joins possible
    has_pre: bool                # pre-period spend from transactions available (CUPED, balance)
    segment_source: str | None   # where the segment comes from, None when unknown
    notes: list[str] = field(default_factory=list)  # what was skipped or assumed, in plain words


# ------------------------------------------------------------------------------------------------------- inputs

def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return con.sql(f"SELECT * FROM {table} LIMIT 0").columns


def read_tables(con: duckdb.DuckDBPyConnection) -> dict[str, pd.DataFrame | None]:
    """contacts and campaigns from the run database (None if absent). The customer-level tables (transactions,
    customer, customer_knowledge) stay in the database: `prepare` joins them to the contacts in SQL."""
    out = {n: fetch(con.table(n)) if customer_db.has_table(con, n) else None for n in ("contacts", "campaigns")}
    if out["contacts"] is None:
        raise InputError("customer database: table 'contacts' is missing. Add sources.contacts to the configuration "
                         "(the campaign tools' export or the personalisation step's contacts) and rerun the data step.")
    return out


class _CustomerTables:
    """transactions, customer and customer_knowledge joined to contact rows by customer_id in DuckDB SQL: the given
    frames (registered for the call), else the run database's tables. The first row of a customer counts.
    A context manager: it registers the contacts' keys and unregisters (and closes) what it opened."""

    KEYS = "_monitoring_contact_keys"

    def __init__(self, database: duckdb.DuckDBPyConnection | None, contacts: pd.DataFrame, date_col: str | None,
                 frames: Mapping[str, pd.DataFrame | None]) -> None:
        self.con = database if database is not None else duckdb.connect()
        self._owned = database is None
        self.n = len(contacts)
        self.names: dict[str, str] = {}   # table -> its name in SQL (none without customer ids)
        self._order: dict[str, str] = {}  # table -> column giving the row order (for "first row")
        self._registered: list[str] = []
        if "customer_id" not in contacts.columns or contacts["customer_id"].isna().all():
            return
        for table, frame in frames.items():
            if frame is not None:
                self.names[table], self._order[table] = f"_monitoring_{table}", "_pos"
                self._register(self.names[table], frame.assign(_pos=np.arange(len(frame))))
            elif database is not None and customer_db.has_table(database, table):
                self.names[table], self._order[table] = table, "rowid"
        if self.names:
            keys = {"_row": np.arange(self.n), "customer_id": pa.array(contacts["customer_id"].astype("string"))}
            if date_col is not None:
                keys["d"] = pa.array(pd.to_datetime(contacts[date_col]))
            self._register(self.KEYS, pa.table(keys))

    def _register(self, name: str, data: pd.DataFrame | pa.Table) -> None:
        self.con.register(name, data)
        self._registered.append(name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self._registered:
            self.con.unregister(name)
        if self._owned:
            self.con.close()

    def columns(self, table: str) -> list[str]:
        """The table's columns (empty when the table is absent)."""
        return [c for c in _columns(self.con, self.names[table]) if c != "_pos"] if table in self.names else []

    def windows(self, start_days: int, end_days: int) -> pd.DataFrame:
        """Per contact row: orders and spend of non-return transactions in [date + start_days, date + end_days)
        (0 and 0 without such orders)."""
        (first, last), = self.con.execute(f"SELECT MIN(d), MAX(d) FROM {self.KEYS}").fetchall()
        if first is None:
            return pd.DataFrame({"orders": np.zeros(self.n, dtype=np.int64), "spend": np.zeros(self.n)})
        lo, hi = first + timedelta(days=start_days), last + timedelta(days=end_days)
        is_return = "is_return" if "is_return" in self.columns("transactions") else "COALESCE(amount < 0, false)"
        found = self.con.execute(f"""
            SELECT k._row, COUNT(*) AS orders, COALESCE(SUM(t.amount), 0) AS spend
            FROM {self.KEYS} k
            JOIN (SELECT CAST(customer_id AS VARCHAR) AS customer_id, order_date, amount
                  FROM {self.names["transactions"]}
                  WHERE NOT {is_return} AND order_date >= ? AND order_date < ?) t
              ON t.customer_id = k.customer_id
             AND t.order_date >= k.d + to_days({int(start_days)}) AND t.order_date < k.d + to_days({int(end_days)})
            GROUP BY k._row""", [lo, hi]).fetchnumpy()
        orders, spend = np.zeros(self.n, dtype=np.int64), np.zeros(self.n)
        orders[found["_row"]], spend[found["_row"]] = found["orders"], found["spend"]
        return pd.DataFrame({"orders": orders, "spend": spend})

    def _first_rows(self, table: str, columns: Sequence[str]) -> str:
        """SQL for `columns` of each customer's first row in `table`, keyed by `_key` (the id as text)."""
        name, cols = self.names[table], ", ".join(f'"{c}"' for c in columns)
        (unique,), = self.con.execute(
            f"SELECT COUNT(*) = COUNT(DISTINCT CAST(customer_id AS VARCHAR)) FROM {name}").fetchall()
        if unique:
            return f"SELECT CAST(customer_id AS VARCHAR) AS _key, {cols} FROM {name}"
        firsts = ", ".join(f'first("{c}" ORDER BY {self._order[table]}) AS "{c}"' for c in columns)
        return f"SELECT CAST(customer_id AS VARCHAR) AS _key, {firsts} FROM {name} GROUP BY _key"

    def first_match(self, wanted: Mapping[str, Sequence[str]]) -> pd.DataFrame:
        """Per contact row, the `wanted` columns of the customer's first row in each table (NA without one)."""
        joins = "\n".join(f"LEFT JOIN ({self._first_rows(t, cols)}) j{i} ON j{i}._key = k.customer_id"
                          for i, (t, cols) in enumerate(wanted.items()))
        cols = ", ".join(f'j{i}."{c}"' for i, cs in enumerate(wanted.values()) for c in cs)
        found = fetch(self.con.sql(f"SELECT k._row, {cols} FROM {self.KEYS} k {joins}"))
        order = np.empty(self.n, dtype=np.intp)  # one result row per contact row (the joined rows are unique per key)
        order[found.pop("_row").to_numpy()] = np.arange(self.n)
        return rows_at(found, order)


def _check_attribution(contacts: pd.DataFrame, date_col: str) -> None:
    """Attribution needs customer ids and a date on every contact."""
    missing = [c for c in ("customer_id", date_col) if c not in contacts.columns]
    if missing or contacts["customer_id"].isna().all():
        raise InputError(f"contacts: outcomes must be attributed from transactions but column(s) "
                         f"{missing or ['customer_id']} are missing or empty ({len(contacts):,} rows). Supply the "
                         "outcome columns or the ids.")
    if contacts[date_col].isna().any():
        raise InputError(f"contacts: {int(contacts[date_col].isna().sum()):,} rows have no {date_col}; attribution "
                         "needs the contact date (or the campaign start_date).")


def attribute_outcomes(contacts: pd.DataFrame, transactions: pd.DataFrame, attribution_days: int, *,
                       date_col: str = "contact_date", binary: str = "converted", value: str = "revenue"
                       ) -> pd.DataFrame:
    """Contacts with `binary` (bought within `attribution_days` after the contact date) and `value` (net spend of
    those orders, returns excluded) attributed from transactions; needs customer_id and the date column."""
    _check_attribution(contacts, date_col)
    with _CustomerTables(None, contacts, date_col, {"transactions": transactions}) as tables:
        win = tables.windows(0, attribution_days)
    return contacts.assign(**{binary: (win["orders"].to_numpy() > 0).astype(float),
                              value: win["spend"].to_numpy(float)})


def _campaign_attributes(contacts: pd.DataFrame, campaigns: pd.DataFrame | None, margin_pct: float) -> pd.DataFrame:
    """One row per campaign of the contacts with name, type, channel, start_date, discount, cost, margin, share."""
    ids = pd.DataFrame({"campaign_id": pd.unique(contacts["campaign_id"].astype("string"))})
    cmp = (campaigns.assign(campaign_id=campaigns["campaign_id"].astype("string")).drop_duplicates("campaign_id")
           if campaigns is not None else pd.DataFrame({"campaign_id": pd.Series(dtype="string")}))
    out = ids.merge(cmp, on="campaign_id", how="left")
    first = contacts.groupby(contacts["campaign_id"].astype("string"))
    if "name" not in out:
        out["name"] = pd.NA
    out["name"] = out["name"].fillna(out["campaign_id"])
    out["type"] = out["type"].fillna("unknown") if "type" in out else "unknown"
    given = out["channel"] if "channel" in out else pd.Series(pd.NA, index=out.index)
    if "channel" in contacts.columns and given.isna().any():
        mode = first["channel"].agg(lambda s: s.mode().iloc[0] if s.notna().any() else pd.NA)
        given = given.fillna(out["campaign_id"].map(mode))
    out["channel"] = given.fillna("unknown")
    if "contact_date" in contacts.columns:
        starts = out["campaign_id"].map(first["contact_date"].min())
        out["start_date"] = out["start_date"].fillna(starts) if "start_date" in out else starts
    for col, default in (("discount_pct", 0.0), ("cost_per_contact", 0.0), ("margin_pct", margin_pct)):
        out[col] = pd.to_numeric(out[col], errors="coerce").fillna(default) if col in out else default
    for col in ("control_share", "targeting"):
        if col not in out:
            out[col] = np.nan if col == "control_share" else pd.NA
    if "targeting" in contacts.columns:
        out["targeting"] = out["targeting"].fillna(out["campaign_id"].map(first["targeting"].first()))
    return out


def _per_campaign(campaign_ids: pd.Series, attributes: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """`columns` of the campaign attributes (one row per campaign_id) on each contact row, NA where absent."""
    return rows_at(attributes[list(columns)], key_positions(campaign_ids, attributes["campaign_id"]))


def prepare(contacts: pd.DataFrame, *, as_of: date | str, campaigns: pd.DataFrame | None = None,
            transactions: pd.DataFrame | None = None, customer: pd.DataFrame | None = None,
            knowledge: pd.DataFrame | None = None, database: duckdb.DuckDBPyConnection | None = None,
            outcomes: Sequence[str] = (), primary_outcome: str = "", config_primary: str | None = None,
            value_outcome: str = "revenue", attribution_days: int = 14, pre_period_days: int = 90,
            margin_pct: float = 40.0) -> Setup:
    """Contacts ready for measurement: outcomes resolved (attributed from transactions when the primary outcome column
    is absent), campaign attributes merged, launch week, segment and pre-period spend added where possible.

    Primary outcome: `primary_outcome`, else the configuration's, else 'converted'. Contacts after `as_of` are left out.
    transactions, customer and knowledge (customer_knowledge) are joined by customer_id in DuckDB SQL; a frame not
    given is taken from `database` (the run database) when it holds that table, so it is never loaded into pandas.
    """
    for col in ("campaign_id", "group"):
        if col not in contacts.columns:
            raise InputError(f"contacts: column '{col}' is missing ({len(contacts):,} rows); map it in the "
                             "configuration (sources.contacts.columns or constants).")
    notes: list[str] = []
    frame = contacts.reset_index(drop=True)  # a new frame: with copy-on-write, changing it leaves `contacts` alone
    frame["campaign_id"] = frame["campaign_id"].astype("string")
    frame["group"] = per_distinct(frame["group"].astype("string"), lambda g: g.str.lower())
    arm = frame["arm"].astype("string") if "arm" in frame else pd.Series(pd.NA, index=frame.index, dtype="string")
    frame["arm"] = arm.fillna(frame["group"])
    has_ids = "customer_id" in frame.columns and frame["customer_id"].notna().any()
    if not has_ids:
        notes.append("The contacts carry no customer id (an anonymised export): each row is one customer; CUPED, "
                     "balance on customer attributes, segments from the knowledge step and attribution from "
                     "transactions need the id and are skipped.")
    cmp = _campaign_attributes(frame, campaigns, margin_pct)
    if "contact_date" not in frame.columns and "start_date" in cmp and cmp["start_date"].notna().all():
        frame["contact_date"] = _per_campaign(frame["campaign_id"], cmp, ["start_date"])["start_date"]
    dated = "contact_date" in frame.columns
    if dated:
        frame["contact_date"] = pd.to_datetime(frame["contact_date"])
        late = frame["contact_date"] > pd.Timestamp(as_of)
        if late.any():
            notes.append(f"{int(late.sum()):,} contacts dated after {as_of} are left out (outcomes not yet known).")
            frame = frame[~late].reset_index(drop=True)
        frame["launch_week"] = ex.period_bound(frame["contact_date"], "W-SUN", "start")
    else:
        notes.append("No contact date and no campaign start date: trends by launch week and the sequential weekly "
                     "looks are skipped.")
    primary = primary_outcome or config_primary or "converted"
    value = value_outcome or None
    frames = {"transactions": transactions, "customer": customer, "customer_knowledge": knowledge}
    with _CustomerTables(database, frame, "contact_date" if dated else None, frames) as tables:
        has_tx = "transactions" in tables.names
        if primary not in frame.columns:
            if not has_tx or not dated:
                raise InputError(f"contacts: the primary outcome column '{primary}' is missing ({len(frame):,} rows) "
                                 "and cannot be attributed from transactions (needs transactions, customer_id and a "
                                 "contact date). Map the outcome column or set primary_outcome.")
            _check_attribution(frame, "contact_date")
            win = tables.windows(0, attribution_days)
            value = value or "revenue"
            frame[primary] = (win["orders"].to_numpy() > 0).astype(float)
            frame[value] = win["spend"].to_numpy(float)
            notes.append(f"Outcomes attributed from transactions: '{primary}' = an order within {attribution_days} "
                         f"days after the contact, '{value}' = its net value.")
        if value is not None and value not in frame.columns:
            notes.append(f"No spend column '{value}': revenue, margin, dilution and ROI are not measured.")
            value = None
        secondary = [c for c in dict.fromkeys(outcomes) if c not in (primary, value) and c in frame.columns]
        secondary += [c for c in ("converted", "revenue")
                      if c in frame.columns and c not in (primary, value, *secondary)]
        per_row = _per_campaign(frame["campaign_id"], cmp,
                                ["type", "channel", "discount_pct", "margin_pct", "cost_per_contact"])
        frame["campaign_type"] = per_row["type"]
        if "channel" not in frame.columns:
            frame["channel"] = per_row["channel"]
        frame["channel"] = frame["channel"].astype("string").fillna("unknown")
        camp_disc = per_row["discount_pct"].where(frame["group"] == "treatment", 0.0)
        frame["discount_pct"] = (pd.to_numeric(frame["discount_pct"], errors="coerce").fillna(camp_disc)
                                 if "discount_pct" in frame.columns else camp_disc).astype(float)
        frame["margin_pct"] = per_row["margin_pct"].astype(float)
        frame["cost_per_contact"] = per_row["cost_per_contact"].astype(float)
        segment_source = None
        from_knowledge = "rfm_segment" in tables.columns("customer_knowledge")
        has_pre = has_tx and dated
        added = ["segment"] * from_knowledge + ["pre_spend", "pre_orders"] * has_pre
        keep = [c for c in load_rules()["crm_balance_columns"]
                if c in tables.columns("customer") and c not in frame.columns and c not in added]
        wanted = {t: cols for t, cols in (("customer_knowledge", ["rfm_segment"] * from_knowledge),
                                          ("customer", keep)) if cols}
        found = tables.first_match(wanted) if wanted else pd.DataFrame()
        if from_knowledge:
            frame["segment"] = found["rfm_segment"].fillna("unknown")
            segment_source = ("the knowledge step's RFM segment (customer_knowledge.rfm_segment), measured at the "
                              "analysis date, not at each contact date")
        elif "segment" in frame.columns:
            frame["segment"] = frame["segment"].astype("string").fillna("unknown")
            segment_source = "the contacts' own segment column"
        else:
            notes.append("No segment known (no customer_knowledge table from the knowledge step and no segment "
                         "column in the contacts): the segment breakdown is skipped and feedback is written for every "
                         "segment.")
        if has_pre:
            pre = tables.windows(-pre_period_days, 0)
            frame["pre_spend"] = pre["spend"].to_numpy(float)
            frame["pre_orders"] = pre["orders"].to_numpy(float)
        elif has_ids:
            notes.append("No transactions or contact dates: CUPED and the pre-period balance check are skipped.")
        if keep:
            frame = pd.concat([frame, found[keep]], axis=1)
    campaigns_out = cmp[cmp["campaign_id"].isin(frame["campaign_id"].unique())].reset_index(drop=True)
    return Setup(frame, campaigns_out, primary, value, secondary, has_ids, has_pre, segment_source, notes)


def from_run(con: duckdb.DuckDBPyConnection, config: RunConfig, *, primary_outcome: str = "",
             value_outcome: str = "revenue", attribution_days: int = 14, pre_period_days: int = 90,
             margin_pct: float = 40.0) -> Setup:
    """`prepare` on the run database's tables with the configuration's outcome settings (sources.contacts); the
    customer-level tables are joined to the contacts inside the database."""
    tables = read_tables(con)
    src = config.sources.get("contacts")
    return prepare(tables["contacts"], as_of=config.as_of, campaigns=tables["campaigns"], database=con,
                   outcomes=src.outcomes if src else (), primary_outcome=primary_outcome,
                   config_primary=src.primary_outcome if src else None, value_outcome=value_outcome,
                   attribution_days=attribution_days, pre_period_days=pre_period_days, margin_pct=margin_pct)


# ----------------------------------------------------------------------------------------------------- overview

def overview(setup: Setup) -> pd.DataFrame:
    """Per campaign: name, type, channel, start, arms, treated and control counts, funnel counts and revenue."""
    steps = [*[f for f in FUNNEL if f in setup.contacts.columns], setup.primary]
    value = [setup.value] if setup.value else []
    c = setup.contacts[list(dict.fromkeys(["campaign_id", "group", "arm", *steps, *value]))]
    treated = c["group"] == "treatment"
    agg = c.assign(_t=treated, _c=~treated).groupby("campaign_id").agg(
        n_treated=("_t", "sum"), n_control=("_c", "sum"))
    by_campaign = c[treated].groupby("campaign_id")
    arms = by_campaign["arm"].agg(lambda s: ", ".join(sorted(s.unique())))
    out = setup.campaigns[["campaign_id", "name", "type", "channel"]
                          + (["start_date"] if "start_date" in setup.campaigns else [])].copy()
    out["arms"] = out["campaign_id"].map(arms)
    out = out.merge(agg.reset_index(), on="campaign_id", how="left")
    sums = by_campaign[list(dict.fromkeys(steps + value))].sum()
    for col in steps:
        out[f"{col}_treated"] = out["campaign_id"].map(sums[col]).astype(float)
    if setup.value:
        out["revenue_treated"] = out["campaign_id"].map(sums[setup.value])
        out["revenue_control"] = out["campaign_id"].map(c[~treated].groupby("campaign_id")[setup.value].sum())
    return out


def funnel(setup: Setup) -> pd.DataFrame:
    """Per campaign and arm (control included): contacts, and counts and rates of every funnel step present."""
    c = setup.contacts
    steps = [f for f in FUNNEL if f in c.columns] + [setup.primary]
    work = c[["campaign_id", "arm", "group"]].copy()
    for s in steps:
        work[s] = pd.to_numeric(c[s], errors="coerce").astype(float)
    out = work.groupby(["campaign_id", "group", "arm"]).agg(contacts=("arm", "size"), **{
        s: (s, "sum") for s in steps}).reset_index()
    for s in steps:
        out[f"rate_{s}"] = out[s] / out["contacts"]
    return out.sort_values(["campaign_id", "group", "arm"], ascending=[True, False, True]).reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ arm results

def economics(setup: Setup) -> ex.Economics | None:
    """Margin, discount and contact cost per row (columns merged by `prepare`); None without a spend column."""
    if setup.value is None:
        return None
    return ex.Economics(margin_pct="margin_pct", discount_pct="discount_pct", cost_per_contact="cost_per_contact",
                        revenue_is_net=True)


def srm(setup: Setup, planned_control_share: float = 0.0) -> pd.DataFrame:
    """Sample-ratio check per campaign: observed control share vs the planned one (chi-square, `experiments.srm_table`).

    Planned share: the campaigns table's `control_share` when present, else `planned_control_share` when > 0, else
    the observed share rounded to the nearest design value of `rules/monitoring.yaml` (1/k splits, multiples of 5%),
    i.e. the design the data points to (50/50 for a two-group test near half). The arm check assumes the treated
    rows were split equally between the arms.
    """
    rules = load_rules()
    design = np.asarray(rules["design_shares"], dtype=float)
    given_shares = setup.campaigns.set_index("campaign_id")["control_share"]
    # contacts per campaign x group x arm in one grouping; the checks below work on these counts
    cells = setup.contacts.groupby(["campaign_id", "group", "arm"], dropna=False).size().rename("n").reset_index()
    rows = []
    for cid, part in cells.groupby("campaign_id"):
        is_c = (part["group"] == "control").to_numpy(dtype=bool, na_value=False)
        is_t = (part["group"] == "treatment").to_numpy(dtype=bool, na_value=False)
        n = part["n"].to_numpy()
        n_c, total = int(n[is_c].sum()), int(n.sum())
        n_t = total - n_c
        observed = n_c / total
        given = given_shares.get(cid, np.nan)
        if pd.notna(given) and 0 < float(given) < 1:
            plan, source = float(given), "campaigns.control_share"
        elif 0 < planned_control_share < 1:
            plan, source = planned_control_share, "notebook parameter planned_control_share"
        else:
            plan, source = float(design[np.argmin(np.abs(design - observed))]), "design share nearest the data"
        res = ex.srm_check({"control": n_c, "treatment": int(n[is_t].sum())}, {"control": plan, "treatment": 1 - plan})
        per_arm = part[is_t].groupby("arm")["n"].sum()
        arms = sorted(per_arm.index)
        arm_p = np.nan
        if len(arms) > 1:
            shares = {"__control__": plan, **{a: (1 - plan) / len(arms) for a in arms}}
            observed_cells = {"__control__": total - int(per_arm.sum()), **{a: int(per_arm[a]) for a in arms}}
            arm_p = ex.srm_check(observed_cells, shares).p_value
        rows.append({"campaign_id": cid, "n_treated": n_t, "n_control": n_c, "control_share_observed": observed,
                     "control_share_planned": plan, "planned_from": source, "srm_chi2": res.chi2,
                     "srm_p_value": res.p_value, "srm_arms_p_value": arm_p})
    out = pd.DataFrame(rows)
    limit = ex.load_rules()["srm_p_value_below"]
    out["srm_flag"] = (out["srm_p_value"] < limit) | (out["srm_arms_p_value"] < limit)
    return out


def _recommend(row: pd.Series, rules: Mapping[str, Any]) -> str:
    try:
        return ex.recommend(row, rules)
    except InputError:
        return "continue: no control conversions yet, so the power calculation cannot size the test; keep collecting"


def arm_table(setup: Setup, srm_table: pd.DataFrame, *, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0,
              cuped: bool = True) -> pd.DataFrame:
    """`experiments.arm_results` per campaign x arm against the campaign's shared control, with margin after
    discounts and contact costs, the CUPED estimate (pre-period spend, when available), the SRM p-value and the
    recommendation. p_value_adjusted: Holm across the arms of each campaign."""
    econ = economics(setup)
    res = ex.arm_results(setup.contacts, setup.primary, setup.value, by=("campaign_id", "arm"),
                         control_match=("campaign_id",), alpha=alpha, n_boot=n_boot if setup.value else 0, seed=seed,
                         economics=econ)
    if setup.value and cuped and setup.has_pre:
        adj = ex.arm_results(setup.contacts, setup.primary, setup.value, by=("campaign_id", "arm"),
                             control_match=("campaign_id",), alpha=alpha, n_boot=0, pre_period="pre_spend")
        res["incremental_revenue_cuped"] = adj["incremental_revenue"].to_numpy()
        res["incremental_revenue_cuped_low"] = adj["incremental_revenue_low"].to_numpy()
        res["incremental_revenue_cuped_high"] = adj["incremental_revenue_high"].to_numpy()
        res["cuped_variance_reduction"] = adj["cuped_variance_reduction"].to_numpy()
    if setup.value:
        res["incremental_revenue_boot_low"] = res["revenue_diff_boot_low"] * res["n_treated"]
        res["incremental_revenue_boot_high"] = res["revenue_diff_boot_high"] * res["n_treated"]
    res = res.merge(srm_table[["campaign_id", "srm_p_value"]], on="campaign_id", how="left")
    rules = ex.load_rules()
    res["recommendation"] = [_recommend(r, rules) for _, r in res.iterrows()]
    res["decision"] = res["recommendation"].str.split(":").str[0]
    return res


def _is_binary(values: pd.Series) -> bool:
    num = pd.to_numeric(values, errors="coerce")
    return bool(num.notna().all() and num.isin([0, 1]).all())


def secondary_results(setup: Setup, alpha: float = 0.05) -> pd.DataFrame:
    """Every secondary outcome per campaign x arm: rates (binary) or means (amounts) treated vs control, the
    difference with its interval (Newcomb / Welch) and p-values (Holm within campaign)."""
    frames = []
    for out in setup.secondary:
        if _is_binary(setup.contacts[out]):
            r = ex.arm_results(setup.contacts, out, by=("campaign_id", "arm"), control_match=("campaign_id",),
                               alpha=alpha, n_boot=0)
            part = pd.DataFrame({"treated": r["conversion_rate_treated"], "control": r["conversion_rate_control"],
                                 "diff": r["conversion_lift_abs"], "diff_low": r["conversion_lift_abs_low"],
                                 "diff_high": r["conversion_lift_abs_high"], "p_value": r["p_value"],
                                 "p_value_adjusted": r["p_value_adjusted"], "kind": "rate"})
        else:
            r = ex.arm_results(setup.contacts, setup.primary, out, by=("campaign_id", "arm"),
                               control_match=("campaign_id",), alpha=alpha, n_boot=0)
            adjusted = r.groupby("campaign_id")["p_value_revenue"].transform(lambda s: pd.Series(ex.holm(s), s.index))
            part = pd.DataFrame({"treated": r["revenue_per_customer_treated"],
                                 "control": r["revenue_per_customer_control"], "diff": r["revenue_diff"],
                                 "diff_low": r["revenue_diff_welch_low"], "diff_high": r["revenue_diff_welch_high"],
                                 "p_value": r["p_value_revenue"], "p_value_adjusted": adjusted, "kind": "mean"})
        frames.append(pd.concat([r[["campaign_id", "arm", "n_treated", "n_control"]], part], axis=1)
                      .assign(outcome=out))
    cols = ["campaign_id", "arm", "outcome", "kind", "n_treated", "n_control", "treated", "control", "diff",
            "diff_low", "diff_high", "p_value", "p_value_adjusted"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


# ------------------------------------------------------------------------------------------------- breakdowns

def breakdown(setup: Setup, dims: Sequence[str], alpha: float = 0.05) -> pd.DataFrame:
    """Extra value by `dims` (e.g. channel, segment, launch_week), arms of a campaign pooled.

    Each campaign x level cell is measured against the control rows of the same campaign and level; totals over
    campaigns add the cells' incremental conversions (and revenue) with a normal interval from the summed variances
    (half-width / z per cell), which treats campaigns as independent experiments. Cells without control rows are
    left out of the incremental figures and counted in `cells_without_control`.
    """
    dims = list(dims)
    missing = [d for d in dims if d not in setup.contacts.columns]
    if missing:
        raise InputError(f"breakdown: contacts have no column(s) {missing}; available: segment only with a segment "
                         "source, launch_week only with contact dates.")
    value = [setup.value] if setup.value else []
    data = setup.contacts[list(dict.fromkeys(["campaign_id", "group", *dims, setup.primary, *value]))]
    for d in dims:
        data[d] = data[d].astype("string").fillna("unknown") if d != "launch_week" else data[d]
    cells = ex.arm_results(data, setup.primary, setup.value, by=["campaign_id", *dims],
                           control_match=["campaign_id", *dims], alpha=alpha, n_boot=0)
    z = stats.norm.isf(alpha / 2)
    ok = cells["n_control"] > 0
    cells["_se_c"] = (cells["incremental_conversions_high"] - cells["incremental_conversions_low"]) / (2 * z)
    cells["_nt_ok"] = cells["n_treated"].where(ok, 0)
    agg = {"campaigns": ("campaign_id", "nunique"), "n_treated": ("n_treated", "sum"),
           "n_control": ("n_control", "sum"), "conversions_treated": ("conversions_treated", "sum"),
           "conversions_control": ("conversions_control", "sum"),
           "incremental_conversions": ("incremental_conversions", "sum"), "_v_c": ("_se_c", lambda s: (s ** 2).sum()),
           "_nt_ok": ("_nt_ok", "sum"), "cells_without_control": ("n_control", lambda s: int((s == 0).sum()))}
    if setup.value:
        cells["_se_r"] = (cells["incremental_revenue_high"] - cells["incremental_revenue_low"]) / (2 * z)
        agg.update(incremental_revenue=("incremental_revenue", "sum"), _v_r=("_se_r", lambda s: (s ** 2).sum()))
    out = cells.groupby(dims, dropna=False).agg(**agg).reset_index()
    out["conversion_rate_treated"] = out["conversions_treated"] / out["n_treated"]
    out["conversion_rate_control"] = (out["conversions_control"] / out["n_control"]).where(out["n_control"] > 0)
    for stem, var in (("incremental_conversions", "_v_c"), ("incremental_revenue", "_v_r")):
        if stem in out:
            half = z * np.sqrt(out[var])
            out[f"{stem}_low"], out[f"{stem}_high"] = out[stem] - half, out[stem] + half
    out["extra_conversions_per_1000"] = 1000 * out["incremental_conversions"] / out["_nt_ok"].where(out["_nt_ok"] > 0)
    if setup.value:
        out["extra_revenue_per_contact"] = out["incremental_revenue"] / out["_nt_ok"].where(out["_nt_ok"] > 0)
    return out.drop(columns=[c for c in out.columns if c.startswith("_")])


def breakdowns(setup: Setup, names: Sequence[str], alpha: float = 0.05) -> dict[str, pd.DataFrame]:
    """`breakdown` for each requested dimension that the data has ('week' means the launch week)."""
    out = {}
    for name in names:
        dim = "launch_week" if name == "week" else name
        if dim in setup.contacts.columns:
            out[dim] = breakdown(setup, [dim], alpha)
    return out


def breakdown_sentence(found: Mapping[str, pd.DataFrame], requested: Sequence[str]) -> str:
    """The best level of each breakdown, and the breakdowns the data could not give."""
    parts = []
    for dim, table in found.items():
        ok = table.dropna(subset=["extra_conversions_per_1000"])
        if len(ok):
            best = ok.loc[ok["extra_conversions_per_1000"].idxmax()]
            parts.append(f"by {dim}, **{_label(best[dim])}** brings the most extra conversions "
                         f"({best['extra_conversions_per_1000']:,.1f} per 1,000 contacts)")
    skipped = [n for n in requested if ("launch_week" if n == "week" else n) not in found]
    text = ("; ".join(parts) + ".") if parts else "No breakdown could be measured."
    return text[0].upper() + text[1:] + (f" Not available in this data: {', '.join(skipped)}." if skipped else "")


def stack_breakdowns(found: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """All breakdown tables in one long table (dimension, level, figures) for the database."""
    frames = [t.rename(columns={dim: "level"}).assign(dimension=dim, level=lambda f: f["level"].astype("string"))
              for dim, t in found.items()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def trend(setup: Setup, alpha: float = 0.05) -> pd.DataFrame:
    """Redemption and extra conversions by launch week and channel, with a rolling view over the last
    `rolling_weeks` launch weeks of the same channel (sums of conversions and contacts, not averages of rates);
    empty without launch dates."""
    if "launch_week" not in setup.contacts.columns:
        return pd.DataFrame()
    weekly = breakdown(setup, ["launch_week", "channel"], alpha).sort_values(["channel", "launch_week"])
    window = int(load_rules()["rolling_weeks"])
    roll = weekly.groupby("channel")[["incremental_conversions", "n_treated", "conversions_treated"]].transform(
        lambda s: s.rolling(window, min_periods=1).sum())
    weekly["redemption_rate"] = weekly["conversions_treated"] / weekly["n_treated"]
    weekly["rolling_redemption_rate"] = roll["conversions_treated"] / roll["n_treated"]
    weekly["rolling_extra_conversions_per_1000"] = 1000 * roll["incremental_conversions"] / roll["n_treated"]
    return weekly.reset_index(drop=True)


def sequential_looks(setup: Setup, as_of: date | str, alpha: float = 0.05) -> pd.DataFrame:
    """Weekly cumulative looks per campaign x arm with Lan-DeMets O'Brien-Fleming-type bounds
    (`experiments.sequential_monitor`); the planned size is the campaign's size at as_of (no separate plan)."""
    if "contact_date" not in setup.contacts.columns:
        return pd.DataFrame()
    c = setup.contacts[["campaign_id", "arm", "group", "contact_date", setup.primary]]
    treated, control = ((c["group"] == g).to_numpy(dtype=bool, na_value=False) for g in ("treatment", "control"))
    n_t = c[treated].groupby(["campaign_id", "arm"]).size().groupby(level="campaign_id").max()  # largest arm
    n_c = c[control].groupby("campaign_id").size()
    both = n_t.index.intersection(n_c.index)  # campaigns with treated and control rows
    if both.empty:
        return pd.DataFrame()
    if len(both) < c["campaign_id"].nunique(dropna=False):
        c = c[isin_keys(c["campaign_id"], both.to_series())]
    return ex.sequential_monitor(c, setup.primary, as_of, n_t[both].to_dict(), n_c[both].to_dict(),
                                 by=("campaign_id", "arm"), control_match=("campaign_id",), alpha=alpha)


# ---------------------------------------------------------------------------------------------- dilution, ROI

def targeting_class(campaigns: pd.DataFrame) -> pd.Series:
    """'targeted', 'diffusive' or NA per campaign: the `targeting` column, else words in the campaign name."""
    words = load_rules()["targeting_words"]

    def classify(text: Any) -> Any:
        if not isinstance(text, str):
            return pd.NA
        low = text.lower()
        for label in ("targeted", "diffusive"):
            if low == label or any(w in low for w in words[label]):
                return label
        return pd.NA

    by_column = campaigns["targeting"].map(classify)
    return by_column.fillna(campaigns["name"].map(classify)).astype("string")


def dilution_table(setup: Setup, by: Sequence[str] = ("campaign_id",)) -> pd.DataFrame:
    """`experiments.dilution` per campaign (or campaign x arm): dilution, net incremental margin, ROI; empty without
    a spend column."""
    econ = economics(setup)
    if econ is None:
        return pd.DataFrame()
    columns = ["campaign_id", "arm", "group", *by, setup.primary, setup.value, "margin_pct", "discount_pct",
               "cost_per_contact"]
    return ex.dilution(setup.contacts[list(dict.fromkeys(columns))], setup.primary, setup.value, econ, by=list(by),
                       control_match=("campaign_id",))


def roi_by(dilution: pd.DataFrame, campaigns: pd.DataFrame, column: str) -> pd.DataFrame:
    """Campaign dilution rows summed per campaign attribute (channel, type or targeting): ROI = net incremental
    margin / (contact cost + discount cost)."""
    if dilution.empty:
        return pd.DataFrame()
    attrs = campaigns.assign(targeting=targeting_class(campaigns))[["campaign_id", column]]
    data = dilution.merge(attrs, on="campaign_id", how="left")
    data[column] = data[column].astype("string").fillna("unknown")
    cols = ["n_treated", "redemptions", "discount_cost", "dilution_cost", "contact_cost", "incremental_margin",
            "net_incremental_margin"]
    out = data.groupby(column)[cols].sum().reset_index()
    out.insert(1, "campaigns", data.groupby(column)["campaign_id"].nunique().to_numpy())
    spend = out["contact_cost"] + out["discount_cost"]
    out["roi"] = (out["net_incremental_margin"] / spend).where(spend > 0)
    out["net_margin_per_contact"] = out["net_incremental_margin"] / out["n_treated"]
    return out


# --------------------------------------------------------------------------------------------------- balance

def balance_covariates(setup: Setup, extra: Sequence[str] = ()) -> list[str]:
    """Pre-assignment attributes to check: pre-period spend and orders, CRM attributes, and `extra` contacts columns
    (e.g. an anonymised export's own history columns)."""
    c = setup.contacts
    cols = ["pre_spend", "pre_orders"] if setup.has_pre else []
    cols += [x for x in load_rules()["crm_balance_columns"] if x in c.columns and setup.has_ids]
    missing = [x for x in extra if x not in c.columns]
    if missing:
        raise InputError(f"balance_columns {missing} are not contacts columns; available: {list(c.columns)}.")
    return list(dict.fromkeys(cols + list(extra)))


def _numbers_if_all_parse(column: pd.Series) -> pd.Series:
    """The column as floats when every non-empty value is a number (numbers written as text included), else as it
    is; text is parsed on its distinct values only."""
    present = column.dropna()
    if present.empty:
        return column
    if not pd.api.types.is_numeric_dtype(column):
        distinct = pd.Series(present.unique())
        if pd.to_numeric(distinct, errors="coerce").isna().any():
            return column
    return pd.to_numeric(column, errors="coerce").astype(float)


def balance(setup: Setup, covariates: Sequence[str]) -> pd.DataFrame:
    """`experiments.balance_table` per campaign, plus a p-value for each SMD (z = SMD / sqrt(1/n_t + 1/n_c)) and
    `red_flag` = |SMD| above the rules' limit AND p below `balance_p_value_below`."""
    if not covariates:
        return pd.DataFrame()
    data = setup.contacts[list(dict.fromkeys(["campaign_id", "group", *covariates]))]
    for col in covariates:
        data[col] = _numbers_if_all_parse(data[col])
    limit = load_rules()["balance_p_value_below"]
    table = ex.balance_table(data, list(covariates), by=["campaign_id"])
    table = table[(table["n_treated"] >= 2) & (table["n_control"] >= 2)].reset_index(drop=True)
    if table.empty:
        return pd.DataFrame()
    n_t, n_c = table.pop("n_treated").to_numpy(float), table.pop("n_control").to_numpy(float)
    table["p_value"] = 2 * stats.norm.sf(np.abs(table["smd"]) / np.sqrt(1 / n_t + 1 / n_c))
    table["red_flag"] = table["flag"] & (table["p_value"] < limit)
    return table


# --------------------------------------------------------------------------------------------------- feedback

def feedback(setup: Setup) -> pd.DataFrame:
    """Observed and shrunk response and uplift per segment x campaign type x discount (`experiments.feedback_priors`),
    in the prior-table layout `cvm.uplift.load_priors` reads.

    Control rows carry no discount, so each campaign's control rows are counted once for every discount level its
    arms offered (they are the counterfactual of each arm). Segment '*' when no segment is known.
    """
    c = setup.contacts
    by = ["segment", "campaign_type", "discount_pct"]
    data = c[["campaign_id", "campaign_type", "group", "discount_pct", setup.primary]].assign(
        segment=c.get("segment", ANY_SEGMENT), campaign_type=c["campaign_type"].astype("string"))
    counts = ex.cell_counts(data, setup.primary, ["campaign_id", *by])
    treated = counts[counts["treated"]]
    levels = treated[["campaign_id", "discount_pct"]].drop_duplicates()
    controls = counts[~counts["treated"]].drop(columns="discount_pct").merge(levels, on="campaign_id")
    out = ex.priors_from_counts(pd.concat([treated, controls], ignore_index=True), by)
    return out.dropna(subset=["rate_control", "rate_treated"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------------------- write out

def write_tables(con: duckdb.DuckDBPyConnection, out_dir: str | Path, frames: Mapping[str, pd.DataFrame]) -> list[Path]:
    """Each non-empty frame as a table of the run database (replaced) and as `<out_dir>/<name>.parquet`;
    `monitoring_feedback` also as `feedback_priors.parquet`."""
    written = []
    for name, frame in frames.items():
        if frame is None or frame.empty:
            continue
        file = "feedback_priors" if name == "monitoring_feedback" else name
        path = customer_db.write_table(con, name, frame, out_dir, file)
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------------- sentences

def _label(value: Any) -> str:
    return value.strftime("%Y-%m-%d") if isinstance(value, pd.Timestamp) else str(value)


def _money(x: float) -> str:
    return f"{x:,.0f}"


def notes_sentence(setup: Setup) -> str:
    """What the data allowed, in plain words (the outcome used, and every step skipped)."""
    head = (f"Decisions use the outcome **{setup.primary}**"
            + (f" and the spend column **{setup.value}**" if setup.value else " (no spend column)")
            + (f"; also reported: {', '.join(setup.secondary)}." if setup.secondary else "."))
    seg = f" Segments come from {setup.segment_source}." if setup.segment_source else ""
    return head + seg + (" " + " ".join(setup.notes) if setup.notes else "")


def overview_sentence(table: pd.DataFrame) -> str:
    """How many campaigns, arms and contacts are measured."""
    arms = int(table["arms"].fillna("").str.split(", ").map(len).sum())
    return (f"{len(table)} campaign(s) with {arms} treated arm(s): {int(table['n_treated'].sum()):,} treated and "
            f"{int(table['n_control'].sum()):,} control contacts.")


def lift_sentence(arms: pd.DataFrame) -> str:
    """Which arms created extra conversions (interval above zero) and the total extra value."""
    wins = arms[arms["conversion_lift_abs_low"] > 0]
    losses = arms[arms["conversion_lift_abs_high"] < 0]
    text = (f"{len(wins)} of {len(arms)} arm(s) converted confidently more than their control group, {len(losses)} "
            f"confidently less; together they brought {arms['incremental_conversions'].sum():,.0f} extra conversions")
    if "incremental_revenue" in arms:
        text += f" and {_money(arms['incremental_revenue'].sum())} extra revenue"
    if "incremental_margin_net" in arms:
        text += f" ({_money(arms['incremental_margin_net'].sum())} net margin after discounts and contact costs)"
    best = arms.loc[arms["conversion_lift_abs"].idxmax()] if len(arms) else None
    if best is not None:
        low, high = best["conversion_lift_abs_low"] * 100, best["conversion_lift_abs_high"] * 100
        text += (f". Largest lift: {best['campaign_id']} / {best['arm']}, {best['conversion_lift_abs'] * 100:+.2f} "
                 f"points ({low:+.2f} to {high:+.2f})")
    return text + ". p-values are Holm-adjusted across the arms of each campaign."


def srm_sentence(table: pd.DataFrame) -> str:
    """A red banner when any campaign's split differs from its plan, else a one-line all-clear."""
    bad = table[table["srm_flag"]]
    limit = ex.load_rules()["srm_p_value_below"]
    if len(bad):
        items = "; ".join(f"{r.campaign_id}: {r.control_share_observed:.1%} control vs {r.control_share_planned:.1%} "
                          f"planned (p = {min(r.srm_p_value, np.nan_to_num(r.srm_arms_p_value, nan=1)):.2g})"
                          for r in bad.itertuples())
        return (f'<div style="background:#c0392b;color:white;padding:8px;font-weight:bold">RED FLAG: the group '
                f"sizes do not match the plan in {len(bad)} campaign(s) — {items}. Their results are not reliable "
                "until the randomisation is checked.</div>")
    sources = ", ".join(sorted(table["planned_from"].unique()))
    return (f"Sample-ratio check passed for all {len(table)} campaign(s) (chi-square, alarm below p = {limit}; planned "
            f"control share from: {sources}).")


def balance_sentence(table: pd.DataFrame, setup: Setup) -> str:
    """A red banner when a pre-period attribute differs clearly between groups, else what was checked or skipped."""
    if table.empty:
        return ("Balance on pre-period attributes was not checked: " + ("the contacts carry no customer id and no "
                "balance_columns were named." if not setup.has_ids else "no pre-period attribute is available."))
    red = table[table["red_flag"]]
    if len(red):
        items = "; ".join(f"{r.campaign_id} {r.covariate} (SMD {r.smd:+.2f})" for r in red.head(5).itertuples())
        return (f'<div style="background:#c0392b;color:white;padding:8px;font-weight:bold">RED FLAG: treated and '
                f"control groups differ before the campaign on {len(red)} attribute(s): {items}.</div>")
    return (f"Groups are balanced before the campaigns: {int(table['flag'].sum())} of {len(table)} comparisons exceed "
            "the SMD limit, none of them beyond chance.")


def dilution_sentence(table: pd.DataFrame) -> str:
    """How much discount went to customers who would have bought anyway, and the net result."""
    if table.empty:
        return "Dilution and ROI need a spend column; they are not measured for this data."
    disc, dil = table["discount_cost"].sum(), table["dilution_cost"].sum()
    net = table["net_incremental_margin"].sum()
    spend = disc + table["contact_cost"].sum()
    share = f" ({dil / disc:.0%} of all discounts)" if disc > 0 else ""
    roi = f"; ROI {net / spend:.2f} per unit spent" if spend > 0 else ""
    return (f"{_money(dil)} of discount went to customers who would have bought anyway{share}. Net incremental "
            f"margin after discounts and contact costs: {_money(net)}{roi}.")


def targeting_sentence(table: pd.DataFrame) -> str:
    """Targeted vs diffusive on actual results, or what is needed to compare them."""
    known = table[table["targeting"] != "unknown"] if not table.empty else table
    if known.empty or known["targeting"].nunique() < 2:
        return ("Targeted and diffusive campaigns cannot be compared: add a `targeting` column (targeted|diffusive) "
                "to the campaigns table, or name the campaigns accordingly.")
    parts = [f"{r.targeting}: {r.net_margin_per_contact:,.2f} net margin per contact over {r.campaigns} campaign(s)"
             for r in known.itertuples()]
    return "; ".join(parts) + "."


def trend_sentence(weekly: pd.DataFrame) -> str:
    """The latest rolling extra conversions per channel."""
    if weekly.empty:
        return "No launch dates: no weekly trend."
    last = weekly.sort_values("launch_week").groupby("channel").tail(1)
    parts = [f"{r.channel} {r.rolling_extra_conversions_per_1000:,.1f}" for r in last.itertuples()]
    return ("Extra conversions per 1,000 contacts over the latest rolling window: " + ", ".join(parts) + ".")


def sequential_sentence(looks: pd.DataFrame) -> str:
    """How many arms crossed a stopping boundary at the latest weekly look."""
    if looks.empty:
        return "Weekly looks need contact dates; none are available."
    last = looks.groupby(["campaign_id", "arm"]).tail(1)
    counts = last["decision"].value_counts()
    return (f"At the latest weekly look, {int(counts.get('efficacy', 0))} arm(s) crossed the efficacy boundary, "
            f"{int(counts.get('harm', 0))} the harm boundary and {int(counts.get('continue', 0))} none. The "
            "boundaries use Lan-DeMets alpha spending with the O'Brien-Fleming-type function, so looking every week "
            "keeps the overall false-alarm rate at the chosen level.")


def recommendation_sentence(arms: pd.DataFrame) -> str:
    """Counts of stop / scale / continue / check set-up decisions."""
    counts = arms["decision"].value_counts()
    return "Recommendations: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "."


def feedback_sentence(table: pd.DataFrame) -> str:
    """What the next personalisation run will read."""
    return (f"{len(table):,} segment x campaign type x discount cells written as `monitoring_feedback`; small cells "
            "are shrunk toward their campaign type's rate (beta-binomial empirical Bayes).")


# ---------------------------------------------------------------------------------------------------- charts

def plot_breakdown(table: pd.DataFrame, dim: str) -> Figure:
    """Extra conversions per 1,000 contacts per level of `dim`, with the interval; the title names the best level."""
    data = table.dropna(subset=["extra_conversions_per_1000"]).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(data) + 1.8))
    nt = data["n_treated"].to_numpy(float)
    est = data["extra_conversions_per_1000"].to_numpy()
    low = 1000 * data["incremental_conversions_low"].to_numpy() / nt
    high = 1000 * data["incremental_conversions_high"].to_numpy() / nt
    labels = data[dim].map(_label)
    y = np.arange(len(data))[::-1]
    colours = np.where(low > 0, "tab:green", np.where(high < 0, "tab:red", "tab:grey"))
    ax.hlines(y, low, high, colors=colours, linewidth=2.5)
    ax.scatter(est, y, color=colours, zorder=3)
    ax.axvline(0, color="black", linewidth=1)
    ax.set_yticks(y, labels)
    ax.set_xlabel("extra conversions per 1,000 treated contacts (95% interval)")
    best = data.loc[np.argmax(est)] if len(data) else None
    ax.set_title(f"By {dim}: {_label(best[dim])} brings the most extra conversions" if best is not None
                 else f"By {dim}: no level with a control group")
    fig.tight_layout()
    return fig


def plot_trend(weekly: pd.DataFrame) -> Figure:
    """Rolling extra conversions per 1,000 contacts by launch week, one line per channel (weekly points as dots)."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for channel, part in weekly.groupby("channel"):
        line, = ax.plot(part["launch_week"], part["rolling_extra_conversions_per_1000"], marker="", label=channel)
        ax.scatter(part["launch_week"], part["extra_conversions_per_1000"], color=line.get_color(), alpha=0.5)
    ax.axhline(0, color="black", linewidth=1)
    ax.set_xlabel("launch week")
    ax.set_ylabel("extra conversions per 1,000 contacts")
    ax.legend(title="channel (line: rolling, dots: week)")
    last = weekly.sort_values("launch_week").groupby("channel").tail(1)
    top = last.loc[last["rolling_extra_conversions_per_1000"].idxmax()] if len(last) else None
    ax.set_title(f"{top['channel']} leads on extra conversions in the latest window" if top is not None
                 else "No launch weeks")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def plot_roi(dilution: pd.DataFrame, campaigns: pd.DataFrame) -> Figure:
    """Net incremental margin per campaign, split into what the discounts and contacts cost; title counts losers."""
    data = dilution.merge(campaigns[["campaign_id", "name"]], on="campaign_id").sort_values("net_incremental_margin")
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(data) + 1.8))
    y = np.arange(len(data))
    net = data["net_incremental_margin"].to_numpy()
    ax.barh(y, net, color=np.where(net > 0, "tab:green", "tab:red"), label="net incremental margin")
    ax.scatter(-data["dilution_cost"], y, color="black", marker="|", s=120, label="minus dilution (discount wasted)")
    ax.axvline(0, color="black", linewidth=1)
    ax.set_yticks(y, data["campaign_id"] + " " + data["name"].astype(str).str.slice(0, 22))
    ax.set_xlabel("currency, after discounts and contact costs")
    ax.legend(loc="best")
    ax.set_title(f"{int((net < 0).sum())} of {len(data)} campaigns lost money after discounts and contact costs")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------- summary

def _pair(row: Mapping[str, Any], low: str, high: str) -> list[Any]:
    return [row.get(low), row.get(high)]


def summary(setup: Setup, arms: pd.DataFrame, secondary: pd.DataFrame, srm_table: pd.DataFrame,
            balance_table: pd.DataFrame, dilution: pd.DataFrame, feedback_table: pd.DataFrame,
            cards: Sequence[Path] = ()) -> dict[str, Any]:
    """Key figures for summary.json: one entry per arm (the issue's keys) plus secondary outcomes and the checks."""
    entries = []
    for _, r in arms.iterrows():
        row = r.to_dict()
        sec = secondary[(secondary["campaign_id"] == row["campaign_id"]) & (secondary["arm"] == row["arm"])]
        entries.append({
            "campaign_id": row["campaign_id"], "arm": row["arm"], "n_treated": row["n_treated"],
            "n_control": row["n_control"], "conversion_rate_treated": row["conversion_rate_treated"],
            "conversion_rate_control": row["conversion_rate_control"],
            "conversion_lift_abs": row["conversion_lift_abs"],
            "conversion_lift_ci": _pair(row, "conversion_lift_abs_low", "conversion_lift_abs_high"),
            "conversion_lift_rel": row["conversion_lift_rel"],
            "revenue_per_customer_treated": row.get("revenue_per_customer_treated"),
            "revenue_per_customer_control": row.get("revenue_per_customer_control"),
            "incremental_conversions": row["incremental_conversions"],
            "incremental_revenue": row.get("incremental_revenue"),
            "incremental_revenue_ci": _pair(row, "incremental_revenue_low", "incremental_revenue_high"),
            "incremental_revenue_boot_ci": _pair(row, "incremental_revenue_boot_low", "incremental_revenue_boot_high"),
            "incremental_revenue_cuped": row.get("incremental_revenue_cuped"),
            "incremental_margin_net": row.get("incremental_margin_net"),
            "p_value": row["p_value"], "p_value_adjusted": row["p_value_adjusted"],
            "srm_p_value": row["srm_p_value"], "recommendation": row["recommendation"],
            "secondary": {s["outcome"]: {"kind": s["kind"], "treated": s["treated"], "control": s["control"],
                                         "diff": s["diff"], "diff_ci": [s["diff_low"], s["diff_high"]],
                                         "p_value": s["p_value"], "p_value_adjusted": s["p_value_adjusted"]}
                          for _, s in sec.iterrows()},
        })
    return {
        "primary_outcome": setup.primary, "value_outcome": setup.value, "secondary_outcomes": setup.secondary,
        "has_customer_ids": setup.has_ids, "cuped": bool("incremental_revenue_cuped" in arms),
        "segment_source": setup.segment_source, "notes": setup.notes,
        "n_campaigns": int(arms["campaign_id"].nunique()), "n_arms": len(arms), "arms": entries,
        "srm_flags": srm_table.loc[srm_table["srm_flag"], "campaign_id"].tolist(),
        "balance_red_flags": (int(balance_table["red_flag"].sum()) if not balance_table.empty else None),
        "net_incremental_margin": (float(dilution["net_incremental_margin"].sum()) if not dilution.empty else None),
        "dilution_cost": float(dilution["dilution_cost"].sum()) if not dilution.empty else None,
        "feedback_rows": len(feedback_table), "cards": [p.name for p in cards],
    }


def write_cards(out_dir: str | Path, setup: Setup, arms: pd.DataFrame, funnel_table: pd.DataFrame,
                dilution: pd.DataFrame, srm_table: pd.DataFrame) -> list[Path]:
    """One HTML campaign card per campaign in `<out_dir>/cards/<campaign_id>.html` (`cards.campaign_card`)."""
    from cvm import cards

    folder = Path(out_dir) / "cards"
    dil = dilution.set_index("campaign_id") if not dilution.empty else None
    checks = srm_table.set_index("campaign_id")
    paths = []
    for camp in setup.campaigns.to_dict("records"):
        cid = camp["campaign_id"]
        card = cards.campaign_card(camp, arms[arms["campaign_id"] == cid],
                                   funnel_table[funnel_table["campaign_id"] == cid],
                                   dil.loc[cid].to_dict() if dil is not None and cid in dil.index else None,
                                   checks.loc[cid].to_dict() if cid in checks.index else None)
        paths.append(cards.write(card, folder, str(cid)))
    return paths
