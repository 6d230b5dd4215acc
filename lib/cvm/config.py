"""The run configuration: one YAML file says where the client's data is and how to read it.

Every key is documented in the README ("Configuration"). Paths in the file are relative to the file itself.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cvm.contract import TABLES
from cvm.errors import InputError

STEPS = ("data", "knowledge", "personalisation", "monitoring")
TOP_KEYS = {"name", "as_of", "output_dir", "seed", "sources", "steps", "params", "offers", "contact_policy", "engine",
            "spark"}
ENGINES = ("duckdb", "spark")
SPARK_KEYS = {"master", "conf", "transactions"}
SOURCE_KEYS = {"path", "columns", "read", "values", "constants", "cancellation_prefix", "control_arm",
               "outcomes", "primary_outcome"}
READ_KEYS = {"sep", "encoding", "decimal", "thousands", "date_format", "sheet", "skiprows", "header"}


@dataclass(frozen=True)
class SourceConfig:
    """How to read one contract table from the client's file."""

    table: str
    path: Path
    columns: dict[str, str] = field(default_factory=dict)
    read: dict[str, Any] = field(default_factory=dict)
    values: dict[str, dict[Any, Any]] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)
    cancellation_prefix: str | None = None
    control_arm: str | None = None
    outcomes: list[str] = field(default_factory=list)
    primary_outcome: str | None = None


@dataclass(frozen=True)
class SparkSettings:
    """Where the Spark engine runs (`master`: local[N], spark://host:7077, yarn, k8s://...), extra Spark settings, and
    optionally where Spark reads the transactions (a path or URL such as s3a://bucket/tx/; default: the source path)."""

    master: str = "local[2]"
    conf: dict[str, str] = field(default_factory=dict)
    transactions: str | None = None


@dataclass(frozen=True)
class RunConfig:
    """A whole run: name, analysis date, where outputs go, the sources, the steps and their parameters."""

    name: str
    as_of: date
    output_dir: Path
    sources: dict[str, SourceConfig]
    steps: tuple[str, ...] = STEPS
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 42
    offers: Path | None = None
    contact_policy: Path | None = None
    path: Path | None = None
    engine: str = "duckdb"
    spark: SparkSettings = field(default_factory=SparkSettings)

    def as_dict(self) -> dict[str, Any]:
        """The configuration as plain data, for the manifest."""
        return {
            "name": self.name, "as_of": self.as_of.isoformat(), "output_dir": str(self.output_dir),
            "seed": self.seed, "steps": list(self.steps), "params": self.params,
            "offers": str(self.offers) if self.offers else None,
            "contact_policy": str(self.contact_policy) if self.contact_policy else None,
            "engine": self.engine, "spark": {"master": self.spark.master, "conf": self.spark.conf,
                                             "transactions": self.spark.transactions},
            "sources": {t: {"path": str(s.path), "columns": s.columns, "read": s.read, "values": s.values,
                            "constants": s.constants, "cancellation_prefix": s.cancellation_prefix,
                            "control_arm": s.control_arm, "outcomes": s.outcomes,
                            "primary_outcome": s.primary_outcome}
                        for t, s in self.sources.items()},
        }


def read_yaml(path: str | Path, what: str) -> Any:
    """A YAML file's content; an InputError naming the file and what it should hold when it cannot be read."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot read the {what}: {exc}") from exc


def named_item(item: Any, number: int, allowed: set[str], kind: str, where: str) -> str:
    """The name of the number-th item of a rules list, after checking it is a mapping with a name and known keys."""
    if not isinstance(item, dict) or not item.get("name"):
        raise InputError(f"{where}: {kind} #{number} must be a mapping with a 'name'.")
    name = str(item["name"])
    unknown = set(item) - allowed
    if unknown:
        raise InputError(f"{where}: {kind} '{name}': unknown key(s) {sorted(unknown)}; allowed: "
                         f"{', '.join(sorted(allowed))}.")
    return name


def _unknown(keys: set[str], allowed: set[str], where: str, file: Path) -> None:
    for key in sorted(keys - allowed):
        hint = difflib.get_close_matches(key, sorted(allowed), n=1)
        tip = f" Did you mean '{hint[0]}'?" if hint else f" Allowed: {', '.join(sorted(allowed))}."
        raise InputError(f"{file}: unknown key '{key}' in {where}.{tip}")


def parse_date(value: Any, what: str) -> date:
    """A date from YAML (already a date) or text; a clear error otherwise."""
    if isinstance(value, date):
        return value
    try:
        return pd.Timestamp(str(value)).date()
    except (ValueError, TypeError) as exc:
        raise InputError(f"{what}: '{value}' is not a date; write it as YYYY-MM-DD.") from exc


def load_config(path: str | Path, as_of: str | None = None, steps: list[str] | None = None) -> RunConfig:
    """Read and check a run configuration; `as_of` and `steps` override the file's values."""
    path = Path(path).resolve()
    if not path.is_file():
        raise InputError(f"configuration file not found: {path}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise InputError(f"{path}: the configuration must be a mapping of keys to values.")
    _unknown(set(raw), TOP_KEYS, "the top level", path)
    for key in ("name", "as_of", "sources"):
        if key not in raw:
            raise InputError(f"{path}: the key '{key}' is required.")
    base = path.parent
    sources: dict[str, SourceConfig] = {}
    for table, spec in (raw["sources"] or {}).items():
        if table not in TABLES:
            hint = difflib.get_close_matches(table, list(TABLES), n=1)
            raise InputError(f"{path}: unknown source table '{table}'"
                             + (f"; did you mean '{hint[0]}'?" if hint else f"; tables are {', '.join(TABLES)}."))
        if not isinstance(spec, dict) or "path" not in spec:
            raise InputError(f"{path}: sources.{table} needs a 'path'.")
        _unknown(set(spec), SOURCE_KEYS, f"sources.{table}", path)
        _unknown(set(spec.get("read") or {}), READ_KEYS, f"sources.{table}.read", path)
        names = TABLES[table].names
        for contract_name in spec.get("columns") or {}:
            if contract_name not in names and not TABLES[table].keep_extra:
                hint = difflib.get_close_matches(contract_name, names, n=1)
                raise InputError(f"{path}: sources.{table}.columns maps '{contract_name}', which is not a column of "
                                 f"the {table} contract" + (f"; did you mean '{hint[0]}'?" if hint else "."))
        sources[table] = SourceConfig(
            table=table,
            path=(base / spec["path"]).resolve(),
            columns={str(k): str(v) for k, v in (spec.get("columns") or {}).items()},
            read=dict(spec.get("read") or {}),
            values={str(k): dict(v) for k, v in (spec.get("values") or {}).items()},
            constants=dict(spec.get("constants") or {}),
            cancellation_prefix=spec.get("cancellation_prefix"),
            control_arm=None if spec.get("control_arm") is None else str(spec["control_arm"]),
            outcomes=list(spec.get("outcomes") or []),
            primary_outcome=spec.get("primary_outcome"),
        )
    chosen = tuple(steps or raw.get("steps") or STEPS)
    for step in chosen:
        if step not in STEPS:
            raise InputError(f"{path}: unknown step '{step}'; steps are {', '.join(STEPS)}.")
    params = raw.get("params") or {}
    _unknown(set(params), set(STEPS), "params", path)
    engine, spark = _engine(raw, sources, base, path)
    return RunConfig(
        name=str(raw["name"]),
        as_of=parse_date(as_of or raw["as_of"], f"{path}: as_of"),
        output_dir=(base / raw.get("output_dir", "../output")).resolve(),
        sources=sources,
        steps=chosen,
        params={k: dict(v or {}) for k, v in params.items()},
        seed=int(raw.get("seed", 42)),
        offers=(base / raw["offers"]).resolve() if raw.get("offers") else None,
        contact_policy=(base / raw["contact_policy"]).resolve() if raw.get("contact_policy") else None,
        path=path,
        engine=engine,
        spark=spark,
    )


def _engine(raw: dict[str, Any], sources: dict[str, SourceConfig], base: Path,
            file: Path) -> tuple[str, SparkSettings]:
    """The `engine` and `spark` keys, checked; for engine: spark also that PySpark and Java are there."""
    engine = str(raw.get("engine") or "duckdb").lower()
    if engine not in ENGINES:
        raise InputError(f"{file}: engine must be one of {', '.join(ENGINES)}, got '{raw.get('engine')}'.")
    block = raw.get("spark") or {}
    if not isinstance(block, dict):
        raise InputError(f"{file}: spark must be a mapping with keys {', '.join(sorted(SPARK_KEYS))}.")
    _unknown(set(block), SPARK_KEYS, "spark", file)
    master = str(block.get("master") or SparkSettings.master).strip()
    conf = block.get("conf") or {}
    if not isinstance(conf, dict) or any(isinstance(v, (dict, list)) or v is None for v in conf.values()):
        raise InputError(f"{file}: spark.conf must map Spark setting names to single values, e.g. "
                         "{spark.executor.memory: 8g}.")
    location = block.get("transactions")
    if location is not None:
        location = str(location) if "://" in str(location) else str((base / str(location)).resolve())
    settings = SparkSettings(master=master, transactions=location,
                             conf={str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in conf.items()})
    if engine == "spark":
        from cvm.engine import check_spark_source, require_spark

        if "transactions" not in sources:
            raise InputError(f"{file}: engine: spark aggregates the transactions, but sources.transactions is not set.")
        try:
            check_spark_source(sources["transactions"], location or str(sources["transactions"].path))
            require_spark()
        except InputError as exc:
            raise InputError(f"{file}: {exc}") from exc
    return engine, settings


def config_for_data(base: Path, data_dir: Path, output_dir: Path, dest: Path, name: str | None = None) -> Path:
    """A copy of the run configuration `base` (e.g. configs/demo.yaml) pointed at the files of the same names in
    data_dir (sources and the demo truth), with offers and policy as absolute paths, runs written to output_dir and,
    when given, a new run name; written to dest (used by the benchmark and the tests)."""
    raw = read_yaml(base, "run configuration")
    if not isinstance(raw, dict) or not isinstance(raw.get("sources"), dict):
        raise InputError(f"{base}: a run configuration with 'sources' is needed (e.g. configs/demo.yaml).")
    for spec in raw["sources"].values():
        spec["path"] = str(data_dir / Path(spec["path"]).name)
    for key in ("offers", "contact_policy"):
        if raw.get(key):
            raw[key] = str((base.resolve().parent / raw[key]).resolve())
    personalisation = (raw.get("params") or {}).get("personalisation") or {}
    if personalisation.get("truth_dir"):
        personalisation["truth_dir"] = str(data_dir)
    raw.update(output_dir=str(output_dir), **({"name": name} if name else {}))
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return dest
