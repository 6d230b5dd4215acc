"""Where the transaction aggregation runs: one small interface over DuckDB and Apache Spark.

`cvm.features` sends every statement of `features.SQL` through an `Engine`, which does two things: run one SQL string
and return a pandas DataFrame (`query`), and list a table's columns (`columns`). The SAME SQL strings run on both
engines; only the transport differs.

* `DuckDBEngine` wraps a DuckDB connection (the run database). Callers may keep passing a plain connection: `as_engine`
  wraps it.
* `SparkEngine` wraps a SparkSession in which `register_transactions` has registered the client's transactions file(s)
  (Parquet or CSV, local or on s3a:// / hdfs:// / abfss://) as a temp view, with the source config's column map,
  constants and the data step's row rules (typed columns; rows without customer_id, order_date or amount dropped;
  exact duplicate lines dropped). Only the aggregated result (one row per customer) comes back to the driver.

Spark is pinned to the DuckDB semantics the SQL relies on: `TIMESTAMP` means a timestamp without time zone
(`spark.sql.timestampType=TIMESTAMP_NTZ`) and the session time zone is UTC, so dates are never shifted.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import duckdb
import pandas as pd
import pyarrow as pa

from cvm.config import SourceConfig, SparkSettings
from cvm.contract import TRANSACTIONS
from cvm.errors import InputError
from cvm.sources import CSV_SUFFIXES, column_plan

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

#: Settings a `spark.conf` may change: no console progress bars in headless runs.
SPARK_DEFAULTS: dict[str, str] = {"spark.ui.showConsoleProgress": "false"}
#: Settings every cvm Spark session gets (the SQL's date semantics depend on them); a `spark.conf` cannot change them.
SPARK_FIXED: dict[str, str] = {"spark.sql.timestampType": "TIMESTAMP_NTZ", "spark.sql.session.timeZone": "UTC"}
#: read options the Spark engine understands; the others need the data step (pandas) to clean the file first
SPARK_READ_KEYS = {"sep", "encoding", "header"}
INSTALL_HINT = "pip install 'cvm[spark]'"
JAVA_HINT = "Java not found: the Spark engine needs a JDK 17+ (apt install default-jre-headless, or set JAVA_HOME)"
#: share of sampled rows whose order_date or amount may fail to parse before the file is judged unreadable
MAX_BAD_SHARE = 0.5
SAMPLE_ROWS = 1000


@runtime_checkable
class Engine(Protocol):
    """Runs one SQL statement into a DataFrame and lists a table's columns."""

    name: str

    def query(self, sql: str) -> pd.DataFrame:
        """The statement's result as a pandas DataFrame (dates and timestamps as naive datetime64[us])."""
        ...

    def columns(self, table: str) -> list[str]:
        """The table's or view's column names; InputError when it does not exist."""
        ...

    def close(self) -> None:
        """Release what the engine owns."""
        ...


@dataclass(frozen=True)
class DuckDBEngine:
    """A DuckDB connection as an Engine; `close` leaves the connection open (its owner closes it)."""

    con: duckdb.DuckDBPyConnection
    name: str = "duckdb"

    def query(self, sql: str) -> pd.DataFrame:
        return fetch(self.con.sql(sql))

    def columns(self, table: str) -> list[str]:
        try:
            return [r[0] for r in self.con.execute(f"DESCRIBE {table}").fetchall()]
        except duckdb.Error as exc:
            raise InputError(f"table '{table}' not found in the DuckDB connection: register it first "
                             f"(con.register('{table}', df) or CREATE VIEW).") from exc

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class SparkEngine:
    """A SparkSession as an Engine; `close` stops the session."""

    spark: SparkSession
    name: str = "spark"

    def query(self, sql: str) -> pd.DataFrame:
        return _arrow_to_pandas(self.spark.sql(sql).toArrow())

    def columns(self, table: str) -> list[str]:
        from pyspark.errors import AnalysisException

        try:
            return list(self.spark.table(table).columns)
        except AnalysisException as exc:
            raise InputError(f"table '{table}' not found in the Spark session: register it first "
                             f"(cvm.engine.register_transactions).") from exc

    def close(self) -> None:
        self.spark.stop()


def as_engine(con: duckdb.DuckDBPyConnection | Engine) -> Engine:
    """An Engine for a DuckDB connection or an Engine (returned as it is)."""
    if isinstance(con, duckdb.DuckDBPyConnection):
        return DuckDBEngine(con)
    if isinstance(con, Engine):
        return con
    raise InputError(f"expected a DuckDB connection or a cvm.engine Engine, got {type(con).__name__}.")


def fetch(rel: duckdb.DuckDBPyRelation) -> pd.DataFrame:
    """`rel.df()` with the text columns fetched through Arrow: the same frame (same dtypes), without one Python object
    per string. Measured on the 1M-customer run database: 20M transactions 37 s -> 2.3 s, contacts 3.0 s -> 0.3 s."""
    table = rel.to_arrow_table()
    text = {c for c, t in zip(rel.columns, rel.types) if str(t) == "VARCHAR"}
    if not text or table.num_rows == 0:
        return duckdb.from_arrow(table).df()
    rest = [c for c in rel.columns if c not in text]
    other = (duckdb.from_arrow(table.select(rest)).df() if rest
             else pd.DataFrame(index=pd.RangeIndex(table.num_rows)))
    return pd.DataFrame({c: table.column(c).to_pandas() if c in text else other[c] for c in rel.columns})


def _arrow_to_pandas(table: pa.Table) -> pd.DataFrame:
    """Arrow to pandas with DuckDB's types: dates and timestamps (any unit, any zone) as naive datetime64[us]."""
    fields = []
    for f in table.schema:
        if pa.types.is_date(f.type) or pa.types.is_timestamp(f.type):
            fields.append(pa.field(f.name, pa.timestamp("us")))
        else:
            fields.append(f)
    return table.cast(pa.schema(fields)).to_pandas()


def java_missing() -> str | None:
    """Why Java cannot be started (the message to show), or None when a `java` executable is found."""
    home = os.environ.get("JAVA_HOME")
    if home:
        return None if (Path(home) / "bin" / "java").is_file() else f"{JAVA_HINT}; JAVA_HOME={home} has no bin/java."
    return None if shutil.which("java") else f"{JAVA_HINT}."


def pyspark_installed() -> bool:
    """Whether PySpark can be imported."""
    return importlib.util.find_spec("pyspark") is not None


def require_spark() -> None:
    """InputError unless pyspark is installed and Java can be found."""
    if not pyspark_installed():
        raise InputError(f"engine: spark needs PySpark, which is not installed: {INSTALL_HINT}.")
    reason = java_missing()
    if reason:
        raise InputError(f"engine: spark: {reason}")


def spark_format(location: str) -> str:
    """'csv' for CSV-like names, else 'parquet' (files, folders of part files and lake paths); Excel is refused."""
    name = location.lower().rstrip("/")
    if name.endswith((".xlsx", ".xlsm", ".xls")):
        raise InputError(f"transactions: {location}: the Spark engine cannot read Excel; export it to Parquet or CSV.")
    return "csv" if name.endswith(CSV_SUFFIXES) else "parquet"


def check_spark_source(src: SourceConfig, location: str) -> None:
    """InputError when the transactions source uses options only the pandas reader understands."""
    spark_format(location)
    unsupported = sorted(set(src.read) - SPARK_READ_KEYS)
    if src.read.get("sep") in (r"\s+", "whitespace"):
        unsupported.append("sep: whitespace")
    if src.read.get("header", 0) not in (None, 0):
        unsupported.append(f"header: {src.read['header']}")
    if src.values:
        unsupported.append("values")
    if unsupported:
        raise InputError(f"sources.transactions: the Spark engine reads clean files and does not support "
                         f"{', '.join(unsupported)}; convert the file to Parquet with contract types (or with "
                         f"the data step) and drop these settings, or use engine: duckdb.")


def spark_session(settings: SparkSettings, app_name: str = "cvm-features") -> SparkSession:
    """A SparkSession on settings.master with settings.conf, plus the fixed settings the shared SQL relies on."""
    require_spark()
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(settings.master).appName(app_name)
    for key, value in {**SPARK_DEFAULTS, **settings.conf, **SPARK_FIXED}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    for key, value in SPARK_FIXED.items():  # an existing session ignores the builder's SQL settings
        spark.conf.set(key, value)
    return spark


def _text(col: Column, kind: str) -> Column:
    """Trimmed text, '' as missing; ids also lose a trailing '.0' (as the data step does)."""
    from pyspark.sql import functions as F

    text = F.trim(col.cast("string"))
    if kind == "id":
        text = F.regexp_replace(text, r"\.0$", "")
    return F.when(text != "", text)


def _typed(frame: DataFrame, name: str, col: Column) -> Column:
    """One contract column converted to its contract type (unparseable values become missing)."""
    kind = TRANSACTIONS.column(name).kind if name in TRANSACTIONS.names else "str"
    if kind in ("float", "int"):
        return col.try_cast("double")
    if kind == "date":
        dtype = dict(frame.select(col.alias("c")).dtypes)["c"]
        return col if dtype in ("timestamp", "timestamp_ntz") else col.try_cast("timestamp_ntz")
    return _text(col, kind)


def _check_sample(frame: DataFrame, location: str) -> None:
    """Fail early when order_date or amount do not parse in most of the first rows (rather than dropping them)."""
    from pyspark.sql import functions as F

    sample = frame.limit(SAMPLE_ROWS).agg(
        F.count(F.lit(1)).alias("n"),
        *[F.sum(F.when(F.col(c).isNull(), 1).otherwise(0)).alias(c) for c in ("order_date", "amount")]).first()
    if sample is None or sample["n"] == 0:
        raise InputError(f"transactions: {location} has no rows.")
    for col in ("order_date", "amount"):
        if sample[col] > MAX_BAD_SHARE * sample["n"]:
            raise InputError(f"transactions: column '{col}' in {location}: {sample[col]} of the first "
                             f"{sample['n']} rows are missing or do not parse; Spark reads ISO dates "
                             f"(YYYY-MM-DD[ HH:MM:SS]) and numbers with a '.' decimal: convert the file to Parquet.")


def register_transactions(spark: SparkSession, src: SourceConfig, location: str | None = None,
                          view: str = "transactions") -> None:
    """Register the transactions file(s) at `location` (default: the source's path) as the temp view `view`.

    Columns are renamed to contract names as the data step does (`cvm.sources.column_plan`, constants, amount from
    quantity x unit_price, one order per row when there is no order_id), typed, rows missing customer_id, order_date
    or amount dropped, and exact duplicate lines dropped. The cleaned view is persisted (memory, spilling to disk)
    because the knowledge step aggregates it several times.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    location = location or str(src.path)
    check_spark_source(src, location)
    if spark_format(location) == "csv":
        header = src.read.get("header", 0) is not None
        raw = spark.read.options(header=str(header).lower(), sep=src.read.get("sep", ","),
                                 encoding=src.read.get("encoding", "utf-8")).csv(location)
        if not header:
            raw = raw.toDF(*[re.sub(r"^_c(\d+)$", r"\1", c) for c in raw.columns])
    else:
        raw = spark.read.parquet(location)
    try:
        plan = column_plan(src, [c.strip() for c in raw.columns])
    except InputError as exc:
        raise InputError(f"Spark engine reading {location}: {exc}") from exc
    by_strip = {c.strip(): c for c in raw.columns}
    cols: dict[str, Any] = {name: raw[by_strip[file_col]] for name, file_col in plan.items()}
    cols.update({name: F.lit(value) for name, value in src.constants.items()})
    if "amount" not in cols:
        cols["amount"] = cols["quantity"].try_cast("double") * cols["unit_price"].try_cast("double")
    typed = [_typed(raw, name, col).alias(name) for name, col in cols.items()]
    extras = [raw[c].alias(c.strip()) for c in raw.columns if c.strip() not in plan.values() and c.strip() not in cols]
    frame = raw.select(*typed, *extras)
    _check_sample(frame, location)
    frame = frame.where(F.col("customer_id").isNotNull() & F.col("order_date").isNotNull()
                        & F.col("amount").isNotNull())
    if "order_id" in cols:
        frame = frame.distinct()
    else:  # as the data step: every row is its own order
        frame = frame.withColumn("order_id", F.concat(F.lit("row-"), F.monotonically_increasing_id().cast("string")))
    frame.persist(StorageLevel.MEMORY_AND_DISK).createOrReplaceTempView(view)


def spark_engine(src: SourceConfig, settings: SparkSettings) -> SparkEngine:
    """A SparkEngine on settings.master with the transactions (settings.transactions, else src.path) registered."""
    spark = spark_session(settings)
    register_transactions(spark, src, settings.transactions)
    return SparkEngine(spark)
