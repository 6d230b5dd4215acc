"""The Spark engine (`engine: spark`): the same feature SQL on Spark gives the same per-customer table as DuckDB.

The DuckDB side is what a normal run aggregates: the transactions after the data step (`load_source` + `validate`).
The Spark side reads the same file directly (`cvm.engine.register_transactions`). The Spark tests share one local
session and are skipped only when Java is missing; the configuration checks run everywhere.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml

from cvm import engine, knowledge
from cvm.config import SourceConfig, SparkSettings, load_config
from cvm.demo import generate
from cvm.errors import InputError
from cvm.features import customer_features, holdout_purchases
from cvm.quality import validate
from cvm.sources import load_source

pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")
AS_OF = "2026-06-30"
TEST_CONF = {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "1", "spark.default.parallelism": "2",
             "spark.driver.memory": "1g"}
NO_JAVA = "Java not found: the Spark engine test needs a JDK (apt install default-jre-headless)"


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    """One local[2] session for the module, stopped at the end."""
    if engine.java_missing():
        pytest.skip(NO_JAVA)
    session = engine.spark_session(SparkSettings("local[2]", TEST_CONF), app_name="cvm-tests")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("spark_demo")
    generate(out, n_customers=2000, seed=11, as_of=AS_OF)
    return out


def _data_step(src: SourceConfig, as_of: str) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection holding the transactions as the data step leaves them."""
    con = duckdb.connect()
    con.register("transactions", validate("transactions", load_source(src), pd.Timestamp(as_of).date(),
                                          source=src.path, read=src.read).kept)
    return con


def _same(spark_table: pd.DataFrame, duck_table: pd.DataFrame) -> None:
    """Same rows, columns and dtypes; floats to 1e-9 relative (1e-12 absolute for values that should be 0)."""
    assert list(spark_table.columns) == list(duck_table.columns)
    assert len(spark_table) == len(duck_table) > 0
    pd.testing.assert_frame_equal(spark_table, duck_table, check_dtype=True, rtol=1e-9, atol=1e-12)


def test_demo_features_identical_on_both_engines(spark: object, demo: Path, tmp_path: Path) -> None:
    """Known truth: DuckDB's result on the data step's table. A config with `engine: spark` goes through the
    knowledge step's hook; features (orders basis, as the demo config) and holdout purchases must match exactly."""
    config_path = tmp_path / "spark.yaml"
    config_path.write_text(yaml.safe_dump({
        "name": "spark-demo", "as_of": AS_OF, "engine": "spark",
        "spark": {"master": "local[2]", "conf": TEST_CONF},
        "sources": {"transactions": {"path": str(demo / "transactions.parquet")}}}))
    config = load_config(config_path)
    con = _data_step(config.sources["transactions"], AS_OF)
    eng = knowledge.feature_engine(config, con)
    assert isinstance(eng, engine.SparkEngine)
    on_spark = customer_features(eng, AS_OF, time_unit="W", btyd_basis="orders")
    on_duckdb = customer_features(con, AS_OF, time_unit="W", btyd_basis="orders")
    _same(on_spark, on_duckdb)
    assert on_spark["customer_id"].is_unique and on_spark.filter(like="category_share_").shape[1] >= 2
    assert (on_spark["x"] > 0).sum() > 500  # a real repeat-buying base, not an empty comparison
    _same(holdout_purchases(eng, "2025-12-31", AS_OF), holdout_purchases(con, "2025-12-31", AS_OF))


def _nasty_csv(path: Path) -> SourceConfig:
    rows = [
        # Kunde, Beleg, Datum, Betrag, Warengruppe, Kanal, Rabatt, Filiale
        ("C1", "O1", "2024-01-10 09:00:00", "10.0", "music", "web", "0", "S1"),  # one-time buyer, two lines
        ("C1", "O1", "2024-01-10 09:00:00", "5.0", "books", "web", "0", "S1"),
        ("C2", "O3", "2024-01-01 10:00:00", "30.0", "books", "web", "0", "S1"),  # two first orders at one time:
        ("C2", "O2", "2024-01-01 10:00:00", "20.0", "music", "store", "0", "S2"),  # O2 (smaller id) is the first
        ("C2", "O4", "2024-02-01 12:00:00", "40.0", "music", "web", "10", "S1"),
        ("C2", "O4", "2024-02-01 12:00:00", "40.0", "music", "web", "10", "S1"),  # exact duplicate line: dropped
        ("C2", "O4", "2024-02-01 12:00:00", "40.0", "music", "web", "10", "S9"),  # another store: kept
        ("C2", "O5", "2024-02-05 12:00:00", "-10.0", "music", "web", "0", "S1"),  # a return on its own
        ("C2", "O6", "2024-03-01 12:00:00", "0", "books", "web", "0", "S1"),      # a free order is a purchase
        ("C3", "O7", "2024-02-10 12:00:00", "-15.0", "music", "store", "0", "S2"),  # only a return
        (" C4 ", "O9", "2024-01-10 11:00:00", "15.0", "games's", "web", "", "S1"),  # padded id, quote in a value
        ("C4", "O10", "2024-02-10 11:00:00", "7.0", "back\\slash", "web", "1", "S1"),  # backslash in a value
        ("", "O11", "2024-01-10 11:00:00", "99.0", "music", "web", "0", "S1"),     # no customer: rejected
        ("C5", "O12", "2024-01-10 11:00:00", "abc", "music", "web", "0", "S1"),    # amount not a number: rejected
        ("C5", "O13", "2024-04-02 12:00:00", "99.0", "music", "web", "0", "S1"),   # after as_of: ignored
    ]
    pd.DataFrame(rows, columns=["Kunde", "Beleg", "Datum", "Betrag", "Warengruppe", "Kanal", "Rabatt", "Filiale"]
                 ).to_csv(path, index=False)
    return SourceConfig("transactions", path, columns={
        "customer_id": "Kunde", "order_id": "Beleg", "order_date": "Datum", "amount": "Betrag",
        "category": "Warengruppe", "channel": "Kanal", "discount": "Rabatt"})


def test_mapped_csv_with_nasty_rows_identical(spark: object, tmp_path: Path) -> None:
    """Known truth: hand-computed values (C2's first order is O2 by the tie rule) and DuckDB on the data step's
    table. Column map, duplicates, rejected rows, padded ids, a quote and a backslash in category values."""
    src = _nasty_csv(tmp_path / "umsatz.csv")
    engine.register_transactions(spark, src, view="tx_nasty")
    eng = engine.SparkEngine(spark)
    con = _data_step(src, "2024-03-31")
    con.execute("CREATE VIEW tx_nasty AS SELECT * FROM transactions")
    on_spark = customer_features(eng, "2024-03-31", table="tx_nasty", time_unit="D", btyd_basis="orders")
    _same(on_spark, customer_features(con, "2024-03-31", table="tx_nasty", time_unit="D", btyd_basis="orders"))
    f = on_spark.set_index("customer_id")
    assert list(f.index) == ["C1", "C2", "C3", "C4"]
    assert f.loc["C2", "n_orders"] == 4 and f.loc["C2", "n_return_lines"] == 1
    assert f.loc["C2", "monetary_total"] == pytest.approx(30 + 20 + 80 - 10 + 0)
    assert f.loc["C2", "mean_repeat_value"] == pytest.approx((30 + 80 + 0) / 3)  # O3, O4, O6 after O2
    assert f.loc["C4", "category_share_games_s"] == pytest.approx(15 / 22)
    assert f.loc["C4", "category_share_back_slash"] == pytest.approx(7 / 22)
    assert f.loc["C3", "n_orders"] == 0 and np.isnan(f.loc["C3", "x"])


def _config(tmp_path: Path, **top: object) -> Path:
    data = tmp_path / "tx.parquet"
    if not data.exists():
        pd.DataFrame({"customer_id": ["A"], "order_id": ["1"], "order_date": ["2025-01-01"],
                      "amount": [1.0]}).to_parquet(data)
    raw = {"name": "t", "as_of": "2025-06-30", "sources": {"transactions": {"path": "tx.parquet"}}, **top}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_config_engine_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "java_missing", lambda: None)
    assert load_config(_config(tmp_path)).engine == "duckdb"
    config = load_config(_config(tmp_path, engine="spark", spark={
        "master": "spark://head:7077", "transactions": "s3a://lake/tx/",
        "conf": {"spark.executor.memory": "8g", "spark.sql.adaptive.enabled": True, "spark.executor.cores": 4}}))
    assert config.engine == "spark" and config.spark.master == "spark://head:7077"
    assert config.spark.transactions == "s3a://lake/tx/"
    assert config.spark.conf == {"spark.executor.memory": "8g", "spark.sql.adaptive.enabled": "true",
                                 "spark.executor.cores": "4"}
    assert config.as_dict()["spark"]["master"] == "spark://head:7077"
    local = load_config(_config(tmp_path, engine="spark", spark={"transactions": "lake/tx"}))
    assert local.spark.master == "local[2]" and local.spark.transactions == str((tmp_path / "lake" / "tx").resolve())


@pytest.mark.parametrize("top, message", [
    ({"engine": "sparc"}, "engine must be one of duckdb, spark"),
    ({"spark": {"master": "local[2]", "confs": {}}}, "Did you mean 'conf'"),
    ({"spark": ["local[2]"]}, "spark must be a mapping"),
    ({"spark": {"conf": {"spark.jars": ["a.jar"]}}}, "spark.conf must map Spark setting names to single values"),
])
def test_config_engine_errors(tmp_path: Path, top: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_config(_config(tmp_path, **top))


def test_spark_without_pyspark_or_java_or_with_pandas_only_options(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "pyspark_installed", lambda: False)
    with pytest.raises(InputError, match=r"pip install 'cvm\[spark\]'"):
        load_config(_config(tmp_path, engine="spark"))
    monkeypatch.setattr(engine, "pyspark_installed", lambda: True)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(InputError, match="Java not found.*JAVA_HOME"):
        load_config(_config(tmp_path, engine="spark"))
    monkeypatch.setattr(engine, "java_missing", lambda: None)
    path = _config(tmp_path, engine="spark")
    raw = yaml.safe_load(path.read_text())
    raw["sources"]["transactions"]["read"] = {"decimal": ",", "date_format": "%d.%m.%Y"}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match="does not support date_format, decimal"):
        load_config(path)
    with pytest.raises(InputError, match="cannot read Excel"):
        load_config(_config(tmp_path, engine="spark", spark={"transactions": "tx.xlsx"}))


def test_duckdb_connection_still_accepted_and_wrapped() -> None:
    con = duckdb.connect()
    assert isinstance(engine.as_engine(con), engine.DuckDBEngine)
    with pytest.raises(InputError, match="expected a DuckDB connection"):
        engine.as_engine("transactions.parquet")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="table 'transactions' not found in the DuckDB connection"):
        customer_features(con, AS_OF)
