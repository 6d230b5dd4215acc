"""Benchmark the demo retailer generator: wall time, CPU time, peak RSS and rows written for --customers N.

Usage: .venv/bin/python bench/bench_demo.py --customers 1000000 [--out DIR] [--seed 42]
Without --out the files go to a temporary folder that is removed afterwards.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from cvm.demo import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_demo_"))
    try:
        start = time.perf_counter()
        paths = generate(out, n_customers=args.customers, seed=args.seed)
        seconds = time.perf_counter() - start
        usage = resource.getrusage(resource.RUSAGE_SELF)
        peak_mb, cpu = usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime
        rows = pq.ParquetFile(paths["transactions"]).metadata.num_rows
        contacts = pq.ParquetFile(paths["contacts"]).metadata.num_rows
        size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
        print(f"customers={args.customers:,} seconds={seconds:.1f} cpu_seconds={cpu:.1f} peak_rss_mb={peak_mb:,.0f} "
              f"transaction_rows={rows:,} rows_per_customer={rows / args.customers:.1f} contacts={contacts:,} "
              f"disk_mb={size_mb:,.0f}")
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
