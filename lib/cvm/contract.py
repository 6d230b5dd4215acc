"""The data contract: every input table, its columns, types, meaning and one example row.

Declared once and used three ways: to validate the client's files (`cvm.sources`), to document them
(`data/README.md` is checked against this module by the tests) and to build test fixtures.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["id", "str", "date", "float", "int", "bool", "category"]

CAMPAIGN_TYPES = ("acquisition", "upsell", "crosssell", "retention", "reactivation")
GROUPS = ("treatment", "control")
CHANNELS = ("email", "sms", "phone", "post")


@dataclass(frozen=True)
class Column:
    """One contract column: its type, whether it is required, what it means and an example value."""

    name: str
    kind: Kind
    required: bool
    meaning: str
    example: object
    allowed: tuple[str, ...] | None = None
    pii: bool = False


@dataclass(frozen=True)
class Table:
    """One contract table; `keep_extra` keeps any unmapped column as a customer attribute."""

    name: str
    meaning: str
    columns: tuple[Column, ...]
    keep_extra: bool = False
    key: tuple[str, ...] = field(default_factory=tuple)

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


TRANSACTIONS = Table(
    "transactions",
    "One row per order line (or per order). Negative amount or quantity is a return.",
    (
        Column("customer_id", "id", True, "Customer identifier, the key shared by every table", "C000123"),
        Column("order_id", "id", False,
               "Order or invoice number; a configured prefix marks cancellations. When the file has none, every "
               "row is one order", "O0004711"),
        Column("order_date", "date", True, "Date (and time) of the order", "2025-03-14 10:32:00"),
        Column("amount", "float", True,
               "Net line value in the reporting currency; negative for returns. When absent it is "
               "computed as quantity x unit_price", 59.90),
        Column("quantity", "float", False, "Units; negative for returns", 2),
        Column("unit_price", "float", False, "Price per unit, used to compute amount when amount is absent", 29.95),
        Column("product_id", "id", False, "Product or SKU", "SKU-88812"),
        Column("category", "category", False, "Product category", "home"),
        Column("channel", "category", False, "Sales channel", "online"),
        Column("discount", "float", False, "Discount given on the line, in currency", 6.00),
        Column("store_id", "id", False, "Store or site", "S014"),
    ),
    keep_extra=True,
    key=("order_id", "product_id"),
)

CUSTOMERS = Table(
    "customers",
    "The CRM: one row per customer with descriptive attributes and marketing consents.",
    (
        Column("customer_id", "id", True, "Customer identifier", "C000123"),
        Column("signup_date", "date", False, "Date the customer joined", "2023-05-02"),
        Column("acquisition_channel", "category", False, "How the customer was acquired", "paid_search"),
        Column("acquisition_cost", "float", False, "Cost of acquiring this customer (CAC), currency", 18.50),
        Column("region", "category", False, "Region of residence", "North"),
        Column("birth_year", "int", False, "Year of birth", 1984),
        Column("age_band", "category", False, "Age band, when birth year is not given", "35-44"),
        Column("gender", "category", False, "Gender as recorded", "F"),
        Column("consent_email", "bool", False, "May be contacted by e-mail", True),
        Column("consent_sms", "bool", False, "May be contacted by SMS", False),
        Column("consent_phone", "bool", False, "May be contacted by phone", False),
        Column("consent_post", "bool", False, "May be contacted by post", True),
        Column("email", "str", False, "E-mail address (PII: never shown in reports)", "jane@example.com", pii=True),
        Column("phone", "str", False, "Phone number (PII: never shown in reports)", "+44 20 7946 0000", pii=True),
    ),
    keep_extra=True,
    key=("customer_id",),
)

LOYALTY = Table(
    "loyalty",
    "Loyalty programme or any other enrichment keyed by customer; every extra column is kept as an attribute.",
    (
        Column("customer_id", "id", True, "Customer identifier", "C000123"),
        Column("loyalty_tier", "category", False, "Programme tier", "gold"),
        Column("points_balance", "float", False, "Points balance at as_of", 1250),
        Column("loyalty_join_date", "date", False, "Date the customer joined the programme", "2024-01-10"),
    ),
    keep_extra=True,
    key=("customer_id",),
)

CAMPAIGNS = Table(
    "campaigns",
    "One row per campaign.",
    (
        Column("campaign_id", "id", True, "Campaign identifier", "CMP-2025-11"),
        Column("type", "category", True, "Campaign type", "retention", allowed=CAMPAIGN_TYPES),
        Column("start_date", "date", True, "First contact date", "2025-11-03"),
        Column("name", "str", False, "Readable name", "Winter win-back"),
        Column("channel", "category", False, "Main channel", "email"),
        Column("end_date", "date", False, "End of the offer validity / attribution window", "2025-11-17"),
        Column("discount_pct", "float", False, "Discount offered, percent of the order value", 15.0),
        Column("cost_per_contact", "float", False, "Cost of one contact, currency", 0.05),
        Column("margin_pct", "float", False, "Gross margin on incremental sales before discount, percent", 40.0),
    ),
    key=("campaign_id",),
)

CONTACTS = Table(
    "contacts",
    "One row per customer per campaign assignment, control rows included.",
    (
        Column("customer_id", "id", False,
               "Customer identifier; may be absent in anonymised exports (row identity is used, joins are skipped)",
               "C000123"),
        Column("campaign_id", "id", True, "Campaign identifier (a constant may be configured)", "CMP-2025-11"),
        Column("arm", "str", False, "Offer or creative; several arms may share one control", "15pct_email"),
        Column("group", "category", True, "treatment or control", "treatment", allowed=GROUPS),
        Column("channel", "category", False, "Channel used for the contact", "email"),
        Column("contact_date", "date", False, "Date of the contact", "2025-11-03"),
        Column("discount_pct", "float", False, "Discount offered to this customer, percent", 15.0),
        Column("delivered", "bool", False, "Message delivered", True),
        Column("opened", "bool", False, "Message opened", True),
        Column("clicked", "bool", False, "Link clicked", False),
        Column("converted", "bool", False, "Bought within the attribution window", False),
        Column("revenue", "float", False, "Revenue within the attribution window, currency", 0.0),
    ),
    keep_extra=True,
)

TABLES: dict[str, Table] = {t.name: t for t in (TRANSACTIONS, CUSTOMERS, LOYALTY, CAMPAIGNS, CONTACTS)}

#: YAML documents whose names are reserved; their fields are defined by the personalisation driver.
RESERVED_YAML = ("offers", "contact_policy")


def markdown() -> str:
    """The contract as Markdown tables (the body of data/README.md, which a test keeps in sync)."""
    parts = []
    for table in TABLES.values():
        parts.append(f"### `{table.name}`\n\n{table.meaning}"
                     + (" Columns outside the contract are kept as attributes." if table.keep_extra else "") + "\n")
        parts.append("| column | type | required | meaning | example |\n|---|---|---|---|---|")
        for c in table.columns:
            allowed = f" One of: {', '.join(c.allowed)}." if c.allowed else ""
            parts.append(f"| `{c.name}` | {c.kind} | {'yes' if c.required else 'no'} | {c.meaning}.{allowed} "
                         f"| `{c.example}` |")
        parts.append("\nExample row:\n\n```csv\n" + ",".join(c.name for c in table.columns) + "\n"
                     + ",".join(str(c.example) for c in table.columns) + "\n```\n")
    return "\n".join(parts)


def pandera_schema(table: str):
    """The typed form of a contract table, as a pandera schema: what every validated table is checked against."""
    import pandera.pandas as pa

    checks = {"date": pa.Column("datetime64[us]", nullable=True), "float": pa.Column(float, nullable=True),
              "int": pa.Column(float, nullable=True), "bool": pa.Column("boolean", nullable=True)}
    columns = {}
    for c in TABLES[table].columns:
        if c.kind in checks:
            col = checks[c.kind]
            columns[c.name] = pa.Column(col.dtype, nullable=not c.required, required=False)
        else:
            allowed = [pa.Check.isin(list(c.allowed))] if c.allowed else []
            columns[c.name] = pa.Column("string", checks=allowed, nullable=not c.required, required=False)
    return pa.DataFrameSchema(columns, strict=False, name=table)
