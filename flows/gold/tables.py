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
    """

    name: str
    grain: str
    sources: tuple[str, ...]
    keys: tuple[str, ...]
    columns: tuple[str, ...]

    def __post_init__(self) -> None:
        missing = [key for key in (*self.keys, PARTITION) if key not in self.columns]
        if missing:
            raise ValueError(f"gold table {self.name}: keys {missing} are not columns")


TABLES: dict[str, GoldTable] = {
    table.name: table
    for table in (
        GoldTable(
            "conso_adresse",
            "year x address (Enedis residential)",
            ("adresse",),
            keys=("annee", "code_commune", "adresse", "code_iris"),
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
