"""One entry per source dataset: where it lives, how it is partitioned, what its rows must be."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, TypeAlias


class Kind(StrEnum):
    """How a column is typed in the lake."""

    CODE = "code"  # identifier kept as text: '01', '2A', '971'
    TEXT = "text"
    FLOAT = "float"
    INT = "int"
    YEAR = "year"
    INSTANT = "instant"  # a UTC timestamp


@dataclass(frozen=True)
class Column:
    """A known source column: its lake type, whether the load needs it, and its value rules."""

    name: str
    kind: Kind
    required: bool = False
    nullable: bool = True
    min_value: float | None = None
    pattern: str | None = None
    allowed: tuple[str, ...] | None = None
    width: int | None = None  # digits of a numeric code ('01': 2); restores zeros a number lost

    def code_from_number(self, number: int) -> str | None:
        """The code a number stands for at this column's width (1 -> '01'), or None.

        A number with more digits than the width is kept only when its digits are already a
        valid code of the column (overseas départements 971-976 have three).
        """
        if self.width is None or number < 0:
            return None
        digits = str(number)
        if len(digits) <= self.width:
            return digits.zfill(self.width)
        if self.pattern and re.fullmatch(self.pattern, digits):
            return digits
        return None


@dataclass(frozen=True)
class Portal:
    """A portal the datasets come from: its short name (settings `<name>_url`, concurrency
    limits), the name users know it by, and the protocol its one client speaks."""

    name: str
    title: str
    protocol: str  # opendatasoft | datafair


PORTALS: dict[str, Portal] = {
    portal.name: portal
    for portal in (
        Portal("odre", "ODRE", "opendatasoft"),
        Portal("ore", "Agence ORE", "datafair"),
        Portal("enedis", "Enedis", "datafair"),
    )
}


@dataclass(frozen=True)
class Dataset:
    """Everything dataset-specific; adding a dataset is adding one of these."""

    name: str
    portal: str  # odre | ore | enedis
    protocol: str  # opendatasoft | datafair
    source_id: str
    partition_field: str
    partition_is_instant: bool
    columns: tuple[Column, ...]
    natural_key: tuple[str, ...]
    aliases: dict[str, str] = field(default_factory=dict)
    masked_measures: tuple[str, ...] = ()  # set null when conso_totale_mwh is null (ORE secrecy)
    fingerprint_field: str | None = None  # summed per partition to spot revised years
    title: str = ""  # how people know it (the dashboard's label)

    @property
    def column_map(self) -> dict[str, Column]:
        """Columns by name."""
        return {c.name: c for c in self.columns}

    @property
    def required(self) -> list[str]:
        """Names the source must provide."""
        return [c.name for c in self.columns if c.required]

    def canonical(self, source_name: str) -> str:
        """The lake name of a source column (aliases resolved)."""
        return self.aliases.get(source_name, source_name)


CODE_DEPARTEMENT = r"^(\d{2}|2[AB]|97\d)$"
CODE_COMMUNE = r"^(\d{5}|2[AB]\d{3})$"
CODE_REGION = r"^\d{2}$"
CODE_IRIS = r"^(\d{5}|2[AB]\d{3})\d{4}$"
FILIERES = ("Electricité", "Gaz")
MASK_MARKER = "conso_totale_mwh"  # ORE statistical secrecy: a row is masked when this is null


def _c(name: str, kind: Kind, **kw: object) -> Column:
    return Column(name, kind, **kw)  # type: ignore[arg-type]


def _req(name: str, kind: Kind, **kw: object) -> Column:
    return Column(name, kind, required=True, **kw)  # type: ignore[arg-type]


ANNEE = _req("annee", Kind.YEAR, nullable=False)
NON_NEGATIVE = {"min_value": 0.0}

_ORE_CONTEXT = tuple(
    _c(n, Kind.FLOAT)
    for n in (
        "nombre_d_habitants",
        "taux_de_logements_collectifs",
        "taux_de_residences_principales",
        "superficie_des_logements_30_m2",
        "superficie_des_logements_30_a_40_m2",
        "superficie_des_logements_40_a_60_m2",
        "superficie_des_logements_60_a_80_m2",
        "superficie_des_logements_80_a_100_m2",
        "superficie_des_logements_100_m2",
        "residences_principales_avant_1919",
        "residences_principales_de_1919_a_1945",
        "residences_principales_de_1946_a_1970",
        "residences_principales_de_1971_a_1990",
        "residences_principales_de_1991_a_2005",
        "residences_principales_de_2006_a_2015",
        "residences_principales_apres_2016",
        "taux_de_chauffage_electrique",
        "nombre_de_mailles_secretisees",
    )
)

_ORE_MEASURES = (
    _req("operateur", Kind.TEXT, nullable=False),
    _req("filiere", Kind.TEXT, nullable=False, allowed=FILIERES),
    _req("code_categorie_consommation", Kind.CODE, nullable=False),
    _req("code_grand_secteur", Kind.CODE, nullable=False),
    _req("code_secteur_naf2", Kind.CODE, width=2),
    _req("nb_sites", Kind.INT, **NON_NEGATIVE),
    _req("conso_totale_mwh", Kind.FLOAT, **NON_NEGATIVE),
    _req("conso_moyenne_mwh", Kind.FLOAT, **NON_NEGATIVE),
)

_ODRE_ANNUAL_MEASURES = (
    _req("consommation_brute_gaz_grtgaz", Kind.FLOAT, **NON_NEGATIVE),
    _c("statut_grtgaz", Kind.TEXT),
    _req("consommation_brute_gaz_terega", Kind.FLOAT, **NON_NEGATIVE),
    _c("statut_terega", Kind.TEXT),
    _req("consommation_brute_gaz_totale", Kind.FLOAT, **NON_NEGATIVE),
    _req("consommation_brute_electricite_rte", Kind.FLOAT, **NON_NEGATIVE),
    _c("statut_rte", Kind.TEXT),
    _req("consommation_brute_totale", Kind.FLOAT, **NON_NEGATIVE),
)


def _daily_measures(min_value: float | None) -> tuple[Column, ...]:
    bound = {"min_value": min_value}
    return (
        _req("date_heure", Kind.INSTANT, nullable=False),
        _c("date", Kind.TEXT),
        _c("heure", Kind.TEXT),
        _c("consommation_brute_gaz_grtgaz", Kind.FLOAT, **bound),
        _c("statut_grtgaz", Kind.TEXT),
        _c("consommation_brute_gaz_terega", Kind.FLOAT, **bound),
        _c("statut_terega", Kind.TEXT),
        _req("consommation_brute_gaz_totale", Kind.FLOAT, **bound),
        _req("consommation_brute_electricite_rte", Kind.FLOAT, **bound),
        _c("statut_rte", Kind.TEXT),
        _req("consommation_brute_totale", Kind.FLOAT, **bound),
        _c("flag_ignore", Kind.TEXT, allowed=("oui", "non")),
    )


def _ore_dataset(name: str, title: str, source_id: str, geography: tuple[Column, ...]) -> Dataset:
    """An Agence ORE annual dataset; its first geography column is the area code."""
    return Dataset(
        name=name,
        title=title,
        portal="ore",
        protocol="datafair",
        source_id=source_id,
        partition_field="annee",
        partition_is_instant=False,
        columns=(ANNEE, *geography, *_ORE_MEASURES, *_ORE_CONTEXT),
        natural_key=(
            "annee",
            "filiere",
            "operateur",
            geography[0].name,
            "code_categorie_consommation",
            "code_grand_secteur",
            "code_secteur_naf2",
        ),
        masked_measures=("conso_moyenne_mwh",),
        fingerprint_field="conso_totale_mwh",
    )


_NATRAN = {
    "consommation_brute_gaz_natran": "consommation_brute_gaz_grtgaz",
    "statut_natran": "statut_grtgaz",
}

DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            name="adresse",
            title="Consommation résidentielle par adresse",
            portal="enedis",
            protocol="datafair",
            source_id="consommation-annuelle-residentielle-par-adresse",
            partition_field="annee",
            partition_is_instant=False,
            columns=(
                ANNEE,
                _req("code_iris", Kind.CODE, pattern=CODE_IRIS, width=9),
                _c("nom_iris", Kind.TEXT),
                _req("numero_de_voie", Kind.TEXT),
                _req("indice_de_repetition", Kind.TEXT),
                _req("type_de_voie", Kind.TEXT),
                _req("libelle_de_voie", Kind.TEXT),
                _req("code_commune", Kind.CODE, nullable=False, pattern=CODE_COMMUNE, width=5),
                _req("nom_commune", Kind.TEXT),
                _c("segment_de_client", Kind.TEXT),
                _req("nombre_de_logements", Kind.INT, **NON_NEGATIVE),
                _req("consommation_annuelle_totale_de_l_adresse_mwh", Kind.FLOAT, **NON_NEGATIVE),
                _req(
                    "consommation_annuelle_moyenne_par_site_de_l_adresse_mwh",
                    Kind.FLOAT,
                    **NON_NEGATIVE,
                ),
                _c("consommation_annuelle_moyenne_de_la_commune_mwh", Kind.FLOAT, **NON_NEGATIVE),
                _c("code_epci", Kind.CODE, width=9),
                _req("code_departement", Kind.CODE, pattern=CODE_DEPARTEMENT, width=2),
                _req("code_region", Kind.CODE, pattern=CODE_REGION, width=2),
                _c("adresse", Kind.TEXT),
                _c("tri_des_adresses", Kind.TEXT),
            ),
            natural_key=(
                "annee",
                "code_commune",
                "code_iris",
                "numero_de_voie",
                "indice_de_repetition",
                "type_de_voie",
                "libelle_de_voie",
                "segment_de_client",
            ),
            aliases={
                "consommation_annuelle_totale_de_ladresse_mwh": (
                    "consommation_annuelle_totale_de_l_adresse_mwh"
                ),
                "consommation_annuelle_moyenne_par_site_de_ladresse_mwh": (
                    "consommation_annuelle_moyenne_par_site_de_l_adresse_mwh"
                ),
            },
            fingerprint_field="consommation_annuelle_totale_de_l_adresse_mwh",
        ),
        _ore_dataset(
            "commune",
            "Consommation annuelle par commune",
            "consommation-annuelle-d-electricite-et-gaz-par-commune",
            geography=(
                _req("code_commune", Kind.CODE, nullable=False, pattern=CODE_COMMUNE, width=5),
                _req("nom_commune", Kind.TEXT),
                _c("code_epci", Kind.CODE, width=9),
                _c("nom_epci", Kind.TEXT),
                _c("type_epci", Kind.TEXT),
                _req("code_departement", Kind.CODE, pattern=CODE_DEPARTEMENT, width=2),
                _c("nom_departement", Kind.TEXT),
                _req("code_region", Kind.CODE, pattern=CODE_REGION, width=2),
                _c("nom_region", Kind.TEXT),
            ),
        ),
        _ore_dataset(
            "departement",
            "Consommation annuelle par département",
            "consommation-annuelle-d-electricite-et-gaz-par-departement",
            geography=(
                _req(
                    "code_departement", Kind.CODE, nullable=False, pattern=CODE_DEPARTEMENT, width=2
                ),
                _req("nom_departement", Kind.TEXT),
                _req("code_region", Kind.CODE, pattern=CODE_REGION, width=2),
                _req("nom_region", Kind.TEXT),
            ),
        ),
        Dataset(
            name="nationale_annuelle",
            title="Consommation brute annuelle nationale",
            portal="odre",
            protocol="opendatasoft",
            source_id="consommation-annuelle-brute",
            partition_field="annee",
            partition_is_instant=False,
            columns=(
                ANNEE,
                *_ODRE_ANNUAL_MEASURES,
                _c("consommation_corrigee_electricite_rte", Kind.FLOAT, **NON_NEGATIVE),
            ),
            natural_key=("annee",),
            aliases=_NATRAN,
        ),
        Dataset(
            name="regionale_annuelle",
            title="Consommation brute annuelle régionale",
            portal="odre",
            protocol="opendatasoft",
            source_id="consommation-annuelle-brute-regionale",
            partition_field="annee",
            partition_is_instant=False,
            columns=(
                ANNEE,
                _req("code_insee_region", Kind.CODE, nullable=False, pattern=CODE_REGION, width=2),
                _req("region", Kind.TEXT),
                *_ODRE_ANNUAL_MEASURES,
                _c("geo_shape_region", Kind.TEXT),
                _c("geo_point_region", Kind.TEXT),
            ),
            natural_key=("annee", "code_insee_region"),
            aliases=_NATRAN,
        ),
        Dataset(
            name="nationale_quotidienne",
            title="Consommation brute quotidienne nationale",
            portal="odre",
            protocol="opendatasoft",
            source_id="consommation-quotidienne-brute",
            partition_field="date_heure",
            partition_is_instant=True,
            columns=_daily_measures(0.0),
            natural_key=("date_heure",),
            aliases=_NATRAN,
        ),
        Dataset(
            name="regionale_quotidienne",
            title="Consommation brute quotidienne régionale",
            portal="odre",
            protocol="opendatasoft",
            source_id="consommation-quotidienne-brute-regionale",
            partition_field="date_heure",
            partition_is_instant=True,
            columns=(
                *_daily_measures(None),
                _req("code_insee_region", Kind.CODE, nullable=False, pattern=CODE_REGION, width=2),
                _req("region", Kind.TEXT),
            ),
            natural_key=("date_heure", "code_insee_region"),
            aliases=_NATRAN,
        ),
    )
}


# The datasets' short names as a type: the choices the deployed flow's form offers (an enum
# in its parameter schema), built from the catalog. Type checkers see plain names.
if TYPE_CHECKING:
    DatasetName: TypeAlias = str
else:
    DatasetName = Literal[tuple(DATASETS)]


def get_dataset(name: str) -> Dataset:
    """The catalog entry of a dataset short name, with a clear error for a typo."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(DATASETS)
        raise ValueError(f"unknown dataset {name!r}; known datasets: {known}") from None
