"""Command line: `cvm run` (the playbook, headless), `cvm demo` (generate the demo retailer) and `cvm demo-launch`
(simulate a plan's launch with the demo's truth, to close the loop plan -> launch -> monitoring -> next plan)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cvm.errors import InputError


def _run(args: argparse.Namespace) -> int:
    from cvm.config import load_config
    from cvm.runner import RunFailed, run

    config = load_config(args.config, as_of=args.as_of, steps=args.steps)
    try:
        result = run(config, progress=not args.quiet)
    except RunFailed as exc:
        print(f"\nRUN FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"\nRun folder: {result.run_dir}")
    for step, html in result.reports.items():
        print(f"  {step:<16} report: {html}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from cvm.demo import generate

    paths = generate(Path(args.out), n_customers=args.customers, seed=args.seed, as_of=args.as_of)
    print(f"Demo retailer ({args.customers:,} customers, seed {args.seed}) written to {Path(args.out).resolve()}:")
    for table, path in paths.items():
        print(f"  {table:<14} {path}")
    return 0


def _launch(args: argparse.Namespace) -> int:
    import pandas as pd

    from cvm.demo import load_truth, simulate_outcomes

    plan = pd.read_parquet(args.plan)
    campaigns = pd.read_parquet(Path(args.plan).with_name("plan_campaigns.parquet"))
    launched = simulate_outcomes(plan, load_truth(Path(args.truth)), seed=args.seed,
                                 campaigns=campaigns.rename(columns={"campaign_type": "type"}))
    launched = launched.drop(columns=["type", "true_p_control", "true_p_treated"])
    written = pd.concat([pd.read_parquet(args.history), launched]) if args.history else launched
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    written.to_parquet(args.out, index=False)
    treated = launched["group"] == "treatment"
    print(f"Simulated launch of {len(launched):,} planned contacts ({int(treated.sum()):,} treated) written to "
          f"{args.out}: conversion {launched.loc[treated, 'converted'].mean():.1%} treated vs "
          f"{launched.loc[~treated, 'converted'].mean():.1%} control.")
    return 0


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    top = argparse.ArgumentParser(prog="cvm", description="Customer Value Marketing playbook")
    sub = top.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run the playbook notebooks headless and export the reports")
    run_p.add_argument("--config", required=True, help="run configuration YAML (see README, Configuration)")
    run_p.add_argument("--as-of", help="analysis date YYYY-MM-DD (overrides the config)")
    run_p.add_argument("--steps", nargs="+", help="steps to run: data knowledge personalisation monitoring")
    run_p.add_argument("--quiet", action="store_true", help="no progress bars")
    run_p.set_defaults(func=_run)
    demo_p = sub.add_parser("demo", help="generate the synthetic demo retailer with its ground truth")
    demo_p.add_argument("--customers", type=int, default=5000, help="number of customers (1,000 to 5,000,000)")
    demo_p.add_argument("--out", default="data/demo", help="output folder")
    demo_p.add_argument("--seed", type=int, default=42, help="random seed")
    demo_p.add_argument("--as-of", default="2026-06-30", help="last day of the generated history")
    demo_p.set_defaults(func=_demo)
    launch_p = sub.add_parser("demo-launch", help="demo only: simulate a plan's launch with the generator's truth")
    launch_p.add_argument("--plan", required=True, help="contacts_plan.parquet written by the personalisation step")
    launch_p.add_argument("--truth", default="data/demo", help="demo folder holding truth/")
    launch_p.add_argument("--out", required=True, help="where to write the launched contacts with their outcomes")
    launch_p.add_argument("--history", help="earlier contacts to keep in front of the launched ones (e.g. the demo's)")
    launch_p.add_argument("--seed", type=int, default=7, help="random seed for the simulated responses")
    launch_p.set_defaults(func=_launch)
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input prints one clear line and exits 2."""
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        print(f"INPUT ERROR: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
