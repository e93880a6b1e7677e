"""The gold tables' contract: names, source datasets, columns, keys and sort order.

The one owner of what a gold table is (docs/CONTRACT.md section 3). Pure Python with no
third-party import: the Spark job gets it with `--py-files` and checks every table it builds
against it; the flow, the dashboard, the Tableau extracts and the tests read it from here.
Changing a table's columns or keys is an edit here plus its builder in `spark/aggregate.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

ORE_MEASURES = ("nb_sites", "conso_totale_mwh", "conso_moyenne_mwh", "nb_lignes_masquees")
ODRE_MEASURES = ("gaz_mwh", "electricite_mwh", "total_mwh")
PARTITION = "annee"  # every table is written as Parquet partitioned by year


@dataclass(frozen=True)
class GoldTable:
    """One gold table.

    `keys` is its unique key and the order of its rows (Parquet files and CSV); `columns`
    its columns in CSV order; `sources` the raw datasets it is built from (it is skipped
    when none of them is loaded).

    The Spark job writes it as Parquet partitioned by `annee` in the order of `keys`: its
    files read by year folder (ascending), then by file name, give the rows in key order
    (`annee` never decreases along `keys`: it is their first key, or a function of the
    first, as the year of a date). `cluster` says how: empty for a small table (at most
    ~100k rows), written by one task as one sorted file per year; else the leading keys
    a big table is range-partitioned on (one task per key range, files in range order),
    each task sorting its rows by `keys`.
    """

    name: str
    grain: str
    sources: tuple[str, ...]
    keys: tuple[str, ...]
    columns: tuple[str, ...]
    cluster: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        missing = [key for key in (*self.keys, PARTITION) if key not in self.columns]
        if missing:
            raise ValueError(f"gold table {self.name}: keys {missing} are not columns")
        leading = self.cluster == self.keys[: len(self.cluster)]
        if self.cluster and (not leading or self.cluster[0] != PARTITION):
            raise ValueError(
                f"gold table {self.name}: cluster {list(self.cluster)} must be leading keys, "
                f"{PARTITION} first"
            )

    @property
    def write_order(self) -> tuple[str, ...]:
        """How a write task sorts its rows: `annee` (the Parquet partition) first, then
        `keys`; the same order as `keys` alone (`annee` never decreases along them), which
        also satisfies the sort on `annee` Spark's partitioned write asks for."""
        return self.keys if self.keys[0] == PARTITION else (PARTITION, *self.keys)


TABLES: dict[str, GoldTable] = {
    table.name: table
    for table in (
        GoldTable(
            "conso_adresse",
            "year x address (Enedis residential)",
            ("adresse",),
            keys=("annee", "code_commune", "adresse", "code_iris"),
            cluster=("annee", "code_commune"),
            columns=(
                "annee",
                "adresse",
                "code_iris",
                "code_commune",
                "nom_commune",
                "code_departement",
                "code_region",
                "nombre_de_logements",
                "conso_totale_mwh",
                "conso_moyenne_mwh",
            ),
        ),
        GoldTable(
            "conso_commune",
            "year x commune x filière x grand secteur (ORE commune)",
            ("commune",),
            keys=("annee", "code_commune", "filiere", "code_grand_secteur"),
            cluster=("annee", "code_commune"),
            columns=(
                "annee",
                "code_commune",
                "nom_commune",
                "code_departement",
                "code_region",
                "filiere",
                "code_grand_secteur",
                *ORE_MEASURES,
            ),
        ),
        GoldTable(
            "conso_departement",
            "year x département x filière x grand secteur (ORE département)",
            ("departement",),
            keys=("annee", "code_departement", "filiere", "code_grand_secteur"),
            columns=(
                "annee",
                "code_departement",
                "nom_departement",
                "code_region",
                "filiere",
                "code_grand_secteur",
                *ORE_MEASURES,
            ),
        ),
        GoldTable(
            "conso_region",
            "year x region x filière x grand secteur (ORE département rolled up)",
            ("departement",),
            keys=("annee", "code_region", "filiere", "code_grand_secteur"),
            columns=(
                "annee",
                "code_region",
                "nom_region",
                "filiere",
                "code_grand_secteur",
                *ORE_MEASURES,
            ),
        ),
        GoldTable(
            "conso_secteur",
            "year x filière x grand secteur x NAF code, national (ORE département)",
            ("departement",),
            keys=("annee", "filiere", "code_grand_secteur", "code_secteur_naf2"),
            columns=("annee", "filiere", "code_grand_secteur", "code_secteur_naf2", *ORE_MEASURES),
        ),
        GoldTable(
            "conso_nationale",
            "year (ODRE national annual, GWh to MWh)",
            ("nationale_annuelle",),
            keys=("annee",),
            columns=("annee", *ODRE_MEASURES),
        ),
        GoldTable(
            "conso_regionale_brute",
            "year x region (ODRE regional annual, GWh to MWh)",
            ("regionale_annuelle",),
            keys=("annee", "code_region"),
            columns=("annee", "code_region", "nom_region", *ODRE_MEASURES),
        ),
        GoldTable(
            "conso_journaliere",
            "local day x region, 'FR' for the national series (ODRE quotidienne)",
            ("nationale_quotidienne", "regionale_quotidienne"),
            keys=("date", "code_region"),
            columns=(
                "date",
                "annee",
                "code_region",
                "electricite_mwh",
                "gaz_mwh",
                "nb_pas_electricite",
                "nb_pas_gaz",
            ),
        ),
    )
}
GOLD_TABLES: tuple[str, ...] = tuple(TABLES)


def get_table(name: str) -> GoldTable:
    """A gold table by name; ValueError naming the known ones otherwise."""
    try:
        return TABLES[name]
    except KeyError:
        raise ValueError(f"unknown gold table {name!r}; known: {', '.join(TABLES)}") from None
