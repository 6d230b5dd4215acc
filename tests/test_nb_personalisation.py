"""The personalisation notebook on the demo retailer, judged by the generator's TRUE response (`cvm.demo`)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from cvm.config import config_for_data, load_config
from cvm.contract import CONTACTS
from cvm.runner import run

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def plan_run(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data -> knowledge -> personalisation on the demo, with the generator truth for the oracle check."""
    out = tmp_path_factory.mktemp("plan")
    path = config_for_data(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml", demo_dir, out,
                           out / "demo.yaml")
    config = dataclasses.replace(load_config(path), steps=("data", "knowledge", "personalisation"))
    return run(config, progress=False).run_dir / "personalisation"


def test_demo_personalisation_step(plan_run: Path) -> None:
    """The policy (independent check: no violation), the LP bound, and the plan's own files."""
    out = plan_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy_violations"] == 0
    assert summary["n_contacted"] > 0 and summary["n_control"] > 0
    assert summary["lp_bound"] >= summary["expected_incremental_margin"] - 1e-6
    assert sum(c["n_treated"] for c in summary["campaigns"]) == summary["n_contacted"]
    assert sum(c["n_control"] for c in summary["campaigns"]) == summary["n_control"]
    contacts = pd.read_parquet(out / "contacts_plan.parquet")
    assert set(contacts.columns) <= set(CONTACTS.names)
    assert set(contacts["group"]) == {"treatment", "control"}
    assert len(contacts) == summary["n_contacted"] + summary["n_control"]
    lists = {p.name for p in (out / "target_lists").glob("*.csv")}
    assert lists and lists <= {"email.csv", "sms.csv", "post.csv", "phone.csv"}
    assert "email" not in pd.read_csv(out / "target_lists" / sorted(lists)[0]).columns
    assert len(list((out / "cards").iterdir())) == len(summary["campaigns"])
    html = (out / "report.html").read_text()
    assert "@example.com" not in html
    assert summary["oracle_true_incremental_margin"] > 0


@pytest.mark.xfail(strict=True, reason="issue 4 open: the plan earns about 0.3 of the oracle's true extra margin "
                                       "on the demo; the target is 0.9 (see the issue's notes)")
def test_plan_reaches_90_percent_of_the_oracle(plan_run: Path) -> None:
    """Known truth: the oracle plans with the generator's true P(convert | contacted / not) under the same policy and
    solver; the plan's TRUE incremental margin must reach 90% of the oracle's."""
    summary = json.loads((plan_run / "summary.json").read_text())
    assert summary["oracle_ratio"] >= 0.9, summary["oracle_ratio"]


def test_the_loop_plan_launch_monitor_next_plan(plan_run: Path, demo_dir: Path, tmp_path: Path) -> None:
    """Known truth, end to end: the plan is launched with the generator's true responses (cvm.demo.simulate_outcomes),
    the next weekly run monitors it against its control groups (the intervals cover the true uplift of the launched
    arms) and plans again with the observed response as priors (priors_from: run)."""
    import yaml

    from cvm.demo import load_truth, simulate_outcomes

    plan = pd.read_parquet(plan_run / "contacts_plan.parquet")
    campaigns = pd.read_parquet(plan_run / "plan_campaigns.parquet").rename(columns={"campaign_type": "type"})
    launched = simulate_outcomes(plan, load_truth(demo_dir), seed=11, campaigns=campaigns)
    history = pd.read_parquet(demo_dir / "contacts.parquet")
    contacts = pd.concat([history, launched.drop(columns=["type", "true_p_control", "true_p_treated"])])
    contacts.to_parquet(tmp_path / "contacts.parquet", index=False)
    raw = yaml.safe_load((plan_run.parents[2] / "demo.yaml").read_text())
    raw["sources"]["contacts"]["path"] = str(tmp_path / "contacts.parquet")
    raw["as_of"] = "2026-07-31"
    raw["output_dir"] = str(tmp_path / "out")
    raw["params"]["personalisation"].update({"truth_dir": "", "priors_from": "run"})
    (tmp_path / "week2.yaml").write_text(yaml.safe_dump(raw))
    config = dataclasses.replace(load_config(tmp_path / "week2.yaml"),
                                 steps=("data", "knowledge", "monitoring", "personalisation"))
    run_dir = run(config, progress=False).run_dir
    arms = {(a["campaign_id"], a["arm"]): a
            for a in json.loads((run_dir / "monitoring" / "summary.json").read_text())["arms"]}
    treated = launched[launched["group"] == "treatment"]
    truth = (treated["true_p_treated"] - treated["true_p_control"]).groupby([treated["campaign_id"], treated["arm"]])
    covered = [arms[key]["conversion_lift_ci"][0] <= value <= arms[key]["conversion_lift_ci"][1]
               for key, value in truth.mean().items() if arms[key]["n_control"] > 0]
    assert covered and sum(covered) >= 0.8 * len(covered), covered
    next_plan = json.loads((run_dir / "personalisation" / "summary.json").read_text())
    assert next_plan["prior_source"] == "feedback" and next_plan["policy_violations"] == 0
