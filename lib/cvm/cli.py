"""Command line: `cvm run` (the playbook, headless), `cvm demo` (generate the demo retailer), `cvm demo-launch`
(simulate a plan's launch with the demo's truth, to close the loop plan -> launch -> monitoring -> next plan) and
`cvm bench` (the whole playbook's wall time and peak memory per step on the demo at several sizes)."""
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


def _bench(args: argparse.Namespace) -> int:
    from cvm import bench
    from cvm.runner import RunFailed

    rules = bench.load_rules()

    def show(result: bench.BenchResult) -> None:
        print(bench.format_size(result.sizes[-1], rules.get("slowest_cells_shown", 8)) + "\n", flush=True)
        bench.write_results(result, Path(args.results))

    print(f"Benchmark of the whole playbook at {', '.join(f'{n:,}' for n in args.customers)} customers "
          f"(work folder {Path(args.work).resolve()}):\n", flush=True)
    try:
        result = bench.run_bench(args.customers, seed=args.seed, work=Path(args.work), config=Path(args.config),
                                 keep=args.keep, interval=args.interval, rules=rules, on_size=show)
    except RunFailed as exc:
        print(f"\nBENCHMARK RUN FAILED: {exc}", file=sys.stderr)
        return 1
    print(bench.format_checks(result.checks))
    print(f"\nResults written to {Path(args.results).resolve()}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    from cvm.bench import DEFAULT_CONFIG, DEFAULT_RESULTS, DEFAULT_SIZES, DEFAULT_WORK

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
    bench_p = sub.add_parser("bench", help="benchmark the whole playbook on the demo retailer: wall time and peak "
                                           "memory per step, written to bench/results.json")
    bench_p.add_argument("--customers", type=int, nargs="+", default=list(DEFAULT_SIZES),
                         help="demo sizes to run, in order (default: 100000 1000000 5000000)")
    bench_p.add_argument("--seed", type=int, default=42, help="demo generator seed")
    bench_p.add_argument("--config", default=str(DEFAULT_CONFIG), help="run configuration to copy (demo.yaml)")
    bench_p.add_argument("--work", default=str(DEFAULT_WORK),
                         help="folder for generated demos (reused), configs and run folders")
    bench_p.add_argument("--results", default=str(DEFAULT_RESULTS), help="where to write the results JSON")
    bench_p.add_argument("--keep", action="store_true", help="keep the run folders (default: deleted after reading)")
    bench_p.add_argument("--interval", type=float, default=0.1, help="memory sampling interval, seconds")
    bench_p.set_defaults(func=_bench)
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
