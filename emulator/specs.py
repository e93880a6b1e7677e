"""Static description of the emulated datasets: portals, ids, fields and keys."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

ODS_PORTALS = ("odre",)
DATAFAIR_PORTALS = ("ore", "enedis")
PORTALS = ODS_PORTALS + DATAFAIR_PORTALS

# Field kinds: text, int, double, year (ODS date field holding a year), date, datetime,
# geo_point_2d, geo_shape.
NUMERIC_KINDS = frozenset({"int", "double"})
ODS_TYPES = {
    "text": "text",
    "int": "int",
    "double": "double",
    "year": "date",
    "date": "date",
    "datetime": "datetime",
    "geo_point_2d": "geo_point_2d",
    "geo_shape": "geo_shape",
}
DATAFAIR_TYPES = {
    "text": ("string", None),
    "int": ("integer", None),
    "double": ("number", None),
    "year": ("integer", None),
    "date": ("string", "date"),
    "datetime": ("string", "date-time"),
    "geo_point_2d": ("string", None),
    "geo_shape": ("string", None),
}


@dataclass(frozen=True)
class Field:
    """One served column: portal name, kind, human label and original (upload) name."""

    name: str
    kind: str
    label: str = ""
    original: str = ""

    @property
    def title(self) -> str:
        """Human label, derived from the name when not given."""
        return self.label or _label(self.name)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset as published by its portal."""

    short: str
    portal: str
    dataset_id: str
    title: str
    partition: str
    fields: tuple[Field, ...]
    keys: tuple[str, ...]
    measures: tuple[str, ...]
    sample: str

    @property
    def protocol(self) -> str:
        """`ods` (Opendatasoft Explore v2.1) or `datafair` (Data Fair v1)."""
        return "ods" if self.portal in ODS_PORTALS else "datafair"

    @property
    def internal_id(self) -> str:
        """Data Fair's opaque dataset id (the slug is `dataset_id`); ODS uses `dataset_id`."""
        if self.protocol == "ods":
            return self.dataset_id
        digest = hashlib.sha1(self.dataset_id.encode()).digest()
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        num = int.from_bytes(digest[:16], "big")
        chars = []
        for _ in range(24):
            num, rem = divmod(num, 36)
            chars.append(alphabet[rem])
        return "".join(chars)

    def field(self, name: str) -> Field | None:
        """The base field called `name`, if any."""
        for f in self.fields:
            if f.name == name:
                return f
        return None


def _label(name: str) -> str:
    text = name.replace("_", " ").strip()
    text = text.replace(" mwh", " (MWh)").replace(" m2", " m²")
    return text[:1].upper() + text[1:]


def _f(spec: str) -> tuple[Field, ...]:
    """Parse `name:kind` whitespace-separated declarations."""
    out = []
    for item in spec.split():
        name, kind = item.split(":")
        out.append(Field(name, kind))
    return tuple(out)


_HOUSING = _f(
    """nombre_d_habitants:double taux_de_logements_collectifs:double
    taux_de_residences_principales:double superficie_des_logements_30_m2:double
    superficie_des_logements_30_a_40_m2:double superficie_des_logements_40_a_60_m2:double
    superficie_des_logements_60_a_80_m2:double superficie_des_logements_80_a_100_m2:double
    superficie_des_logements_100_m2:double residences_principales_avant_1919:double
    residences_principales_de_1919_a_1945:double residences_principales_de_1946_a_1970:double
    residences_principales_de_1971_a_1990:double residences_principales_de_1991_a_2005:double
    residences_principales_de_2006_a_2015:double residences_principales_apres_2016:double
    taux_de_chauffage_electrique:double"""
)
_ORE_MEASURES = _f("nb_sites:int conso_totale_mwh:double conso_moyenne_mwh:double")
_ORE_SECTOR = _f("code_categorie_consommation:text code_grand_secteur:text code_secteur_naf2:text")

ADRESSE_FIELDS = (
    *_f(
        """annee:int code_iris:text nom_iris:text numero_de_voie:int
        indice_de_repetition:text type_de_voie:text libelle_de_voie:text code_commune:text
        nom_commune:text segment_de_client:text nombre_de_logements:int"""
    ),
    Field(
        "consommation_annuelle_totale_de_ladresse_mwh",
        "double",
        "Consommation annuelle totale de l'adresse (MWh)",
        "consommation_annuelle_totale_de_l'adresse_mwh",
    ),
    Field(
        "consommation_annuelle_moyenne_par_site_de_ladresse_mwh",
        "double",
        "Consommation annuelle moyenne par site de l'adresse (MWh)",
        "consommation_annuelle_moyenne_par_site_de_l'adresse_mwh",
    ),
    *_f(
        """consommation_annuelle_moyenne_de_la_commune_mwh:double adresse:text
        code_epci:text code_departement:text code_region:text tri_des_adresses:int"""
    ),
)

COMMUNE_FIELDS = (
    *_f(
        """operateur:text filiere:text annee:int code_commune:text nom_commune:text
        code_epci:text nom_epci:text type_epci:text code_departement:text nom_departement:text
        code_region:text nom_region:text"""
    ),
    *_ORE_SECTOR,
    *_ORE_MEASURES,
    *_HOUSING,
)

DEPARTEMENT_FIELDS = (
    *_f(
        """operateur:text filiere:text annee:int code_departement:text nom_departement:text
        code_region:text nom_region:text"""
    ),
    *_ORE_SECTOR,
    *_ORE_MEASURES,
    *_HOUSING,
)

NATIONALE_ANNUELLE_FIELDS = _f(
    """annee:year consommation_brute_gaz_grtgaz:int statut_grtgaz:text
    consommation_brute_gaz_terega:int statut_terega:text consommation_brute_gaz_totale:int
    consommation_brute_electricite_rte:int consommation_corrigee_electricite_rte:int
    statut_rte:text consommation_brute_totale:int"""
)

REGIONALE_ANNUELLE_FIELDS = _f(
    """annee:year code_insee_region:text region:text consommation_brute_gaz_grtgaz:int
    statut_grtgaz:text consommation_brute_gaz_terega:int statut_terega:text
    consommation_brute_electricite_rte:int consommation_brute_gaz_totale:int statut_rte:text
    consommation_brute_totale:int geo_shape_region:geo_shape geo_point_region:geo_point_2d"""
)

_DAILY_VALUES = _f(
    """date:date heure:text consommation_brute_gaz_grtgaz:int statut_grtgaz:text
    consommation_brute_gaz_terega:int statut_terega:text consommation_brute_gaz_totale:int
    consommation_brute_electricite_rte:int statut_rte:text consommation_brute_totale:int
    flag_ignore:text"""
)
NATIONALE_QUOTIDIENNE_FIELDS = (Field("date_heure", "datetime"), *_DAILY_VALUES)
REGIONALE_QUOTIDIENNE_FIELDS = (
    Field("date_heure", "datetime"),
    *_f("code_insee_region:text region:text"),
    *_DAILY_VALUES,
)

_ODRE_MEASURES = (
    "consommation_brute_gaz_grtgaz",
    "consommation_brute_gaz_terega",
    "consommation_brute_gaz_totale",
    "consommation_brute_electricite_rte",
    "consommation_brute_totale",
)

DATASETS: dict[str, DatasetSpec] = {
    s.short: s
    for s in (
        DatasetSpec(
            "adresse",
            "enedis",
            "consommation-annuelle-residentielle-par-adresse",
            "Consommation annuelle résidentielle par adresse",
            "annee",
            ADRESSE_FIELDS,
            (
                "annee",
                "code_iris",
                "code_commune",
                "numero_de_voie",
                "indice_de_repetition",
                "type_de_voie",
                "libelle_de_voie",
            ),
            (
                "consommation_annuelle_totale_de_ladresse_mwh",
                "consommation_annuelle_moyenne_par_site_de_ladresse_mwh",
                "consommation_annuelle_moyenne_de_la_commune_mwh",
            ),
            "conso_annuelle_electricite_gaz_adresse",
        ),
        DatasetSpec(
            "commune",
            "ore",
            "consommation-annuelle-d-electricite-et-gaz-par-commune",
            "Consommation annuelle d'électricité et gaz par commune",
            "annee",
            COMMUNE_FIELDS,
            (
                "annee",
                "filiere",
                "operateur",
                "code_commune",
                "code_categorie_consommation",
                "code_grand_secteur",
                "code_secteur_naf2",
            ),
            ("conso_totale_mwh", "conso_moyenne_mwh"),
            "conso_annuelle_electricite_gaz_commune",
        ),
        DatasetSpec(
            "departement",
            "ore",
            "consommation-annuelle-d-electricite-et-gaz-par-departement",
            "Consommation annuelle d'électricité et gaz par département",
            "annee",
            DEPARTEMENT_FIELDS,
            (
                "annee",
                "filiere",
                "operateur",
                "code_departement",
                "code_categorie_consommation",
                "code_grand_secteur",
                "code_secteur_naf2",
            ),
            ("conso_totale_mwh", "conso_moyenne_mwh"),
            "conso_annuelle_electricite_gaz_departement",
        ),
        DatasetSpec(
            "nationale_annuelle",
            "odre",
            "consommation-annuelle-brute",
            "Consommation annuelle brute (électricité et gaz)",
            "annee",
            NATIONALE_ANNUELLE_FIELDS,
            ("annee",),
            (*_ODRE_MEASURES, "consommation_corrigee_electricite_rte"),
            "conso_annuelle_electricite_gaz_nationale",
        ),
        DatasetSpec(
            "regionale_annuelle",
            "odre",
            "consommation-annuelle-brute-regionale",
            "Consommation annuelle brute régionale (électricité et gaz)",
            "annee",
            REGIONALE_ANNUELLE_FIELDS,
            ("annee", "code_insee_region"),
            _ODRE_MEASURES,
            "conso_electricite_gaz_regionale",
        ),
        DatasetSpec(
            "nationale_quotidienne",
            "odre",
            "consommation-quotidienne-brute",
            "Consommation quotidienne brute (électricité et gaz, pas demi-horaire)",
            "date_heure",
            NATIONALE_QUOTIDIENNE_FIELDS,
            ("date_heure",),
            _ODRE_MEASURES,
            "conso_quotidien_electricite_gaz_nationale",
        ),
        DatasetSpec(
            "regionale_quotidienne",
            "odre",
            "consommation-quotidienne-brute-regionale",
            "Consommation quotidienne brute régionale (électricité et gaz)",
            "date_heure",
            REGIONALE_QUOTIDIENNE_FIELDS,
            ("date_heure", "code_insee_region"),
            _ODRE_MEASURES,
            "conso_quotidien_electricite_gaz_regionale",
        ),
    )
}

DATASET_IDS: dict[str, str] = {short: spec.dataset_id for short, spec in DATASETS.items()}

# Columns renamed when ODRE serves the NaTran spelling (GRTgaz was renamed NaTran in 2025).
NATRAN_SUFFIX = ("_grtgaz", "_natran")


def natran_name(name: str) -> str:
    """The NaTran spelling of a GRTgaz column name (unchanged for other names)."""
    old, new = NATRAN_SUFFIX
    return name[: -len(old)] + new if name.endswith(old) else name
