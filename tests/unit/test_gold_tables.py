"""flows.gold.tables against the spec it encodes: the gold table section of docs/CONTRACT.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flows.gold.tables import GOLD_TABLES, PARTITION, TABLES, GoldTable

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "CONTRACT.md"
# | `conso_adresse` | year x address (Enedis) | `annee, adresse, code_iris, ...` |
ROW = re.compile(r"^\|\s*`(?P<table>\w+)`\s*\|.*\|\s*`(?P<columns>[^`]+)`\s*\|\s*$")


def contract_tables() -> dict[str, tuple[str, ...]]:
    """Table -> required columns, from the rows of the contract's gold table section."""
    text = CONTRACT.read_text(encoding="utf-8")
    section = text.split("\n## 3. Gold tables", 1)[1].split("\n## ", 1)[0]
    found: dict[str, tuple[str, ...]] = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            assert match["table"] not in found, f"{match['table']} twice in the contract"
            found[match["table"]] = tuple(c.strip() for c in match["columns"].split(","))
    return found


def test_the_contract_lists_the_eight_tables() -> None:
    spec = contract_tables()

    assert len(spec) == 8
    assert set(spec) == set(GOLD_TABLES) == set(TABLES)


def test_every_table_has_the_contract_columns_in_order() -> None:
    spec = contract_tables()

    for name, table in TABLES.items():
        assert table.columns == spec[name], name


def test_keys_are_columns_and_every_table_is_partitioned_by_year() -> None:
    for name, table in TABLES.items():
        assert table.keys and set(table.keys) <= set(table.columns), name
        assert "annee" in table.columns and table.sources, name


def test_big_tables_cluster_on_their_leading_keys_and_every_order_starts_with_the_year() -> None:
    assert {name for name, table in TABLES.items() if table.cluster} == {
        "conso_adresse",
        "conso_commune",
    }
    for name, table in TABLES.items():
        assert table.cluster == table.keys[: len(table.cluster)], name
        # the Parquet folders are years: the order within a write task starts with it
        assert table.write_order[0] == PARTITION, name
        assert [k for k in table.write_order if k != PARTITION] == [
            k for k in table.keys if k != PARTITION
        ], name
    assert TABLES["conso_journaliere"].write_order == ("annee", "date", "code_region")


def test_a_cluster_must_be_leading_keys_from_the_year() -> None:
    def table(keys: tuple[str, ...], cluster: tuple[str, ...]) -> GoldTable:
        return GoldTable("t", "g", ("adresse",), keys, ("annee", "code", "name"), cluster)

    with pytest.raises(ValueError, match="cluster"):
        table(("annee", "code", "name"), ("code",))
    with pytest.raises(ValueError, match="cluster"):
        table(("annee", "code", "name"), ("annee", "name"))
    assert table(("annee", "code"), ("annee",)).cluster == ("annee",)
    assert table(("annee", "code"), ()).write_order == ("annee", "code")
