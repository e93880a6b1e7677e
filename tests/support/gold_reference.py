"""The gold tables of docs/CONTRACT.md section 3, computed independently with DuckDB SQL.

Independent of the Spark job: its own SQL over every raw Parquet file (not through the
pointers), its own constants; only the lake's folder names come from flows.lake.layout.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

from flows.lake import layout


def _raw(lake: Path, dataset: str) -> str:
    glob = lake / layout.raw_partition(dataset, "*") / "*.parquet"
    return f"read_parquet('{glob}', hive_partitioning = true, union_by_name = true)"


def _part(name: str) -> str:
    return f"nullif(regexp_replace(trim({name}), '\\s+', ' ', 'g'), '')"


ORE_AGGREGATES = """
    sum(case when conso_totale_mwh is not null then nb_sites end)::bigint as nb_sites,
    sum(conso_totale_mwh) as conso_totale_mwh,
    count(*) filter (where conso_totale_mwh is null)::bigint as nb_lignes_masquees
"""
ORE_MEAN = "case when nb_sites > 0 then conso_totale_mwh / nb_sites end as conso_moyenne_mwh"


def queries(lake: Path) -> dict[str, str]:
    """One SQL query per gold table, over the raw Parquet files."""
    parts = ", ".join(
        _part(p)
        for p in ("numero_de_voie", "indice_de_repetition", "type_de_voie", "libelle_de_voie")
    )
    odre = """
        consommation_brute_gaz_totale * 1000 as gaz_mwh,
        consommation_brute_electricite_rte * 1000 as electricite_mwh,
        consommation_brute_totale * 1000 as total_mwh
    """
    daily = """
        select (timezone('Europe/Paris', date_heure))::date as date, {region} as code_region,
               consommation_brute_electricite_rte as e, consommation_brute_gaz_totale as g
        from {source} where coalesce(flag_ignore, 'non') <> 'oui'
    """
    return {
        "conso_adresse": f"""
            with rows as (
                select annee::int as annee, code_commune, code_iris, nom_commune,
                       code_departement, code_region, nombre_de_logements,
                       consommation_annuelle_totale_de_l_adresse_mwh as total,
                       concat_ws(' ', {parts}) as adresse
                from {_raw(lake, "adresse")})
            select annee, adresse, code_iris, code_commune, max(nom_commune) as nom_commune,
                   max(code_departement) as code_departement, max(code_region) as code_region,
                   sum(nombre_de_logements)::bigint as nombre_de_logements,
                   sum(total) as conso_totale_mwh,
                   case when sum(nombre_de_logements) > 0
                        then sum(total) / sum(nombre_de_logements) end as conso_moyenne_mwh
            from rows group by annee, code_commune, code_iris, adresse""",
        "conso_commune": f"""
            select *, {ORE_MEAN} from (
                select annee::int as annee, code_commune, max(nom_commune) as nom_commune,
                       max(code_departement) as code_departement,
                       max(code_region) as code_region, filiere, code_grand_secteur,
                       {ORE_AGGREGATES}
                from {_raw(lake, "commune")}
                group by annee, code_commune, filiere, code_grand_secteur)""",
        "conso_departement": f"""
            select *, {ORE_MEAN} from (
                select annee::int as annee, code_departement,
                       max(nom_departement) as nom_departement, max(code_region) as code_region,
                       filiere, code_grand_secteur, {ORE_AGGREGATES}
                from {_raw(lake, "departement")}
                group by annee, code_departement, filiere, code_grand_secteur)""",
        "conso_region": f"""
            select *, {ORE_MEAN} from (
                select annee::int as annee, code_region, max(nom_region) as nom_region,
                       filiere, code_grand_secteur, {ORE_AGGREGATES}
                from {_raw(lake, "departement")}
                group by annee, code_region, filiere, code_grand_secteur)""",
        "conso_secteur": f"""
            select *, {ORE_MEAN} from (
                select annee::int as annee, filiere, code_grand_secteur, code_secteur_naf2,
                       {ORE_AGGREGATES}
                from {_raw(lake, "departement")}
                group by annee, filiere, code_grand_secteur, code_secteur_naf2)""",
        "conso_nationale": f"select annee::int as annee, {odre} "
        f"from {_raw(lake, 'nationale_annuelle')}",
        "conso_regionale_brute": f"""
            select annee::int as annee, code_insee_region as code_region, region as nom_region,
                   {odre}
            from {_raw(lake, "regionale_annuelle")}""",
        "conso_journaliere": f"""
            with steps as (
                {daily.format(region="'FR'", source=_raw(lake, "nationale_quotidienne"))}
                union all
                {daily.format(region="code_insee_region",
                              source=_raw(lake, "regionale_quotidienne"))})
            select date, year(date)::int as annee, code_region,
                   sum(e) * 0.5 as electricite_mwh, sum(g) * 1.0 as gaz_mwh,
                   count(e)::bigint as nb_pas_electricite, count(g)::bigint as nb_pas_gaz
            from steps group by date, code_region""",
    }  # fmt: skip


def reference(lake: Path, table: str) -> pd.DataFrame:
    """A gold table as DuckDB computes it from the raw lake."""
    return duckdb.sql(queries(lake)[table]).df()
