"""Reading clients' files: formats, column maps, value maps, and the early errors for files that cannot serve."""
from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from cvm.config import SourceConfig, load_config
from cvm.errors import InputError
from cvm.sources import column_plan, load_source, read_header

TX = pd.DataFrame({"Kunde": ["A1", "A2", "A3"], "Beleg": ["1", "2", "3"], "Datum": ["01.02.2025", "03.02.2025", "04.02.2025"],
                   "Betrag": ["10,50", "1.234,00", "-3,00"]})


def src(path: Path, table: str = "transactions", **kw) -> SourceConfig:
    return SourceConfig(table=table, path=path, **kw)


GERMAN_MAP = {"customer_id": "Kunde", "order_id": "Beleg", "order_date": "Datum", "amount": "Betrag"}


def test_semicolon_latin1_decimal_comma_csv(tmp_path: Path) -> None:
    path = tmp_path / "umsatz.csv"
    TX.assign(Kunde=["Ä1", "A2", "A3"]).to_csv(path, sep=";", index=False, encoding="latin-1")
    frame = load_source(src(path, columns=GERMAN_MAP, read={"sep": ";", "encoding": "latin-1"}))
    assert list(frame["customer_id"]) == ["Ä1", "A2", "A3"]
    assert list(frame["amount"]) == ["10,50", "1.234,00", "-3,00"]


@pytest.mark.parametrize("kind", ["csv.gz", "parquet", "xlsx"])
def test_other_formats_read_the_same(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"tx.{kind}"
    if kind == "csv.gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            TX.to_csv(handle, index=False)
    elif kind == "parquet":
        TX.to_parquet(path)
    else:
        with pd.ExcelWriter(path) as writer:
            pd.DataFrame({"x": [1]}).to_excel(writer, sheet_name="cover", index=False)
            TX.to_excel(writer, sheet_name="sales", index=False)
    read = {"sheet": "sales"} if kind == "xlsx" else {}
    frame = load_source(src(path, columns=GERMAN_MAP, read=read))
    assert list(frame["order_id"].astype(str)) == ["1", "2", "3"]
    assert len(frame) == 3


def test_unmapped_contract_columns_found_by_name_case_insensitive(tmp_path: Path) -> None:
    plan = column_plan(src(tmp_path / "x.csv"), ["Customer_ID", "ORDER_ID", "order_date", "Amount", "other"])
    assert plan == {"customer_id": "Customer_ID", "order_id": "ORDER_ID", "order_date": "order_date",
                    "amount": "Amount"}


def test_missing_required_column_suggests_closest(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        column_plan(src(tmp_path / "tx.csv"), ["customer_id", "order_id", "orderdate", "amount"])
    message = str(err.value)
    assert "tx.csv" in message and "'order_date'" in message and "closest file column: 'orderdate'" in message


def test_misspelled_mapped_column_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no column 'Custmer'.*Did you mean 'Customer'"):
        column_plan(src(tmp_path / "tx.csv", columns={"customer_id": "Custmer"}),
                    ["Customer", "order_id", "order_date", "amount"])


def test_amount_may_come_from_quantity_and_price(tmp_path: Path) -> None:
    plan = column_plan(src(tmp_path / "x.csv"), ["customer_id", "order_id", "order_date", "quantity", "unit_price"])
    assert "amount" not in plan and {"quantity", "unit_price"} <= set(plan)


def test_empty_file_and_header_only(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match=r"empty.csv is empty"):
        read_header(src(empty))
    header_only = tmp_path / "header.csv"
    header_only.write_text("customer_id,order_id,order_date,amount\n")
    with pytest.raises(InputError, match=r"header.csv has a header but no rows"):
        load_source(src(header_only))


def test_wrong_encoding_says_which_setting(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("customer_id,order_id,order_date,amount\nJos\xe9,1,2025-01-01,3\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin.csv cannot be read as utf-8.*read.encoding"):
        load_source(src(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"file not found: .*nothere.csv"):
        read_header(src(tmp_path / "nothere.csv"))


def test_value_maps_constants_and_control_arm(tmp_path: Path) -> None:
    path = tmp_path / "contacts.csv"
    pd.DataFrame({"user": [1, 2, 3], "version": ["gate_30", "gate_40", "gate_40"]}).to_csv(path, index=False)
    frame = load_source(src(path, "contacts", columns={"customer_id": "user", "group": "version", "arm": "version"},
                            values={"group": {"gate_30": "control", "gate_40": "treatment"}},
                            constants={"campaign_id": "cookie_cats"}))
    assert list(frame["group"]) == ["control", "treatment", "treatment"]
    assert list(frame["arm"]) == ["gate_30", "gate_40", "gate_40"]
    assert set(frame["campaign_id"]) == {"cookie_cats"}
    hill = tmp_path / "hill.csv"
    pd.DataFrame({"segment": ["Mens E-Mail", "No E-Mail"], "visit": [1, 0]}).to_csv(hill, index=False)
    frame = load_source(src(hill, "contacts", columns={"arm": "segment"}, control_arm="No E-Mail",
                            constants={"campaign_id": "hillstrom"}))
    assert list(frame["group"]) == ["treatment", "control"]
    assert "visit" in frame.columns


def test_config_relative_paths_and_key_suggestions(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("name: x\nas_of: 2025-01-31\nsources:\n  transactions:\n    path: d/tx.csv\n")
    config = load_config(tmp_path / "run.yaml")
    assert config.sources["transactions"].path == (tmp_path / "d" / "tx.csv").resolve()
    assert config.steps == ("data", "knowledge", "personalisation", "monitoring")
    (tmp_path / "bad.yaml").write_text("name: x\nas_of: 2025-01-31\nsources:\n  transaction:\n    path: a.csv\n")
    with pytest.raises(InputError, match=r"unknown source table 'transaction'; did you mean 'transactions'"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text("name: x\nas_of: 2025-01-31\nouptut_dir: o\nsources: {}\n")
    with pytest.raises(InputError, match=r"unknown key 'ouptut_dir'.*'output_dir'"):
        load_config(tmp_path / "bad2.yaml")
    (tmp_path / "bad3.yaml").write_text("name: x\nas_of: 31/01/2025x\nsources: {}\n")
    with pytest.raises(InputError, match=r"is not a date"):
        load_config(tmp_path / "bad3.yaml")


def test_shipped_configs_load() -> None:
    root = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(root.rglob("*.yaml")):
        config = load_config(path)
        assert config.sources, path


def test_parquet_read_as_pandas_reads_it(demo_dir: Path) -> None:
    """Parquet is handed over column by column (less memory): the same frame as a plain pandas read."""
    path = demo_dir / "transactions.parquet"
    pd.testing.assert_frame_equal(load_source(src(path)), pd.read_parquet(path), check_exact=True)
