"""Large synthetic `adresse` partitions, generated per requested position (never materialised)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

STREET_KEYS = ("code_commune", "type_de_voie", "libelle_de_voie")
STREET_COLUMNS = (
    "code_iris",
    "nom_iris",
    "type_de_voie",
    "libelle_de_voie",
    "code_commune",
    "nom_commune",
    "consommation_annuelle_moyenne_de_la_commune_mwh",
    "code_epci",
    "code_departement",
    "code_region",
)
TOTAL = "consommation_annuelle_totale_de_ladresse_mwh"
MEAN = "consommation_annuelle_moyenne_par_site_de_ladresse_mwh"
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, vectorised over a uint64 array."""
    z = values + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


class SyntheticAdresse:
    """An `adresse` partition of any size whose row i is a pure function of (seed, year, i)."""

    # Streets (commune, type, name) and their IRIS/EPCI context come from the sample; row i
    # goes to street (i * a + b) mod S with house number i // S + 1, so addresses are unique.
    # Dwellings and mean consumption per site are drawn from the sample's values.

    def __init__(self, template: pa.Table, *, year: int, num_rows: int, seed: int = 0) -> None:
        self.year = year
        self._num_rows = int(num_rows)
        self._columns = list(template.column_names)
        keys = template.select(list(STREET_KEYS)).to_pandas()
        first = ~keys.fillna("").duplicated().to_numpy()
        self._streets = template.filter(pa.array(first)).select(list(STREET_COLUMNS))
        self._n_streets = self._streets.num_rows
        self._dwellings = template["nombre_de_logements"].to_numpy(zero_copy_only=False)
        self._means = template[MEAN].to_numpy(zero_copy_only=False)
        self._indices = template["indice_de_repetition"]
        self._key = np.uint64((seed * 1_000_003 + year * 7_919) & 0xFFFFFFFFFFFF)
        self._a = self._coprime(self._n_streets)
        self._b = int(self._key) % self._n_streets

    @staticmethod
    def _coprime(n: int) -> int:
        a = max(3, int(n * 0.618) | 1)
        while math.gcd(a, n) != 1:
            a += 2
        return a

    @property
    def num_rows(self) -> int:
        """Number of rows."""
        return self._num_rows

    @property
    def column_names(self) -> list[str]:
        """Columns, in the portal's order."""
        return list(self._columns)

    def _hash(self, positions: np.ndarray, salt: int) -> np.ndarray:
        base = positions.astype(np.uint64) * np.uint64(4) + np.uint64(salt)
        return mix64(base ^ (self._key << np.uint64(16)))

    def take(self, positions: np.ndarray, columns: Sequence[str]) -> pa.Table:
        """Generate the rows at `positions` (vectorised, O(len(positions)))."""
        pos = np.asarray(positions, dtype=np.int64)
        street = pa.array((pos * self._a + self._b) % self._n_streets)
        numero = pos // self._n_streets + 1
        cache: dict[str, pa.Array] = {}

        def get(name: str) -> pa.Array:
            if name not in cache:
                cache[name] = self._column(name, pos, street, numero, get)
            return cache[name]

        return pa.table({name: get(name) for name in columns})

    def _column(
        self,
        name: str,
        pos: np.ndarray,
        street: pa.Array,
        numero: np.ndarray,
        get: Callable[[str], pa.Array],
    ) -> pa.Array:
        if name in STREET_COLUMNS:
            return self._streets[name].take(street).combine_chunks()
        if name == "annee":
            return pa.array(np.full(len(pos), self.year, dtype=np.int64))
        if name == "numero_de_voie":
            return pa.array(numero)
        if name == "indice_de_repetition":
            pick = self._hash(pos, 1) % np.uint64(len(self._indices))
            return self._indices.take(pa.array(pick.astype(np.int64))).combine_chunks()
        if name == "segment_de_client":
            return pa.array(np.full(len(pos), "RESIDENTIEL", dtype=object), pa.string())
        if name == "nombre_de_logements":
            pick = (self._hash(pos, 2) % np.uint64(len(self._dwellings))).astype(np.int64)
            return pa.array(self._dwellings[pick].astype(np.int64))
        if name == MEAN:
            pick = (self._hash(pos, 3) % np.uint64(len(self._means))).astype(np.int64)
            unit = (self._hash(pos, 0) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
            return pa.array(np.round(self._means[pick] * (0.9 + 0.2 * unit), 3))
        if name == TOTAL:
            dwellings = get("nombre_de_logements").to_numpy()
            return pa.array(np.round(get(MEAN).to_numpy() * dwellings, 3))
        if name == "adresse":
            parts = [
                pc.cast(get("numero_de_voie"), pa.string()),
                get("indice_de_repetition"),
                get("type_de_voie"),
                get("libelle_de_voie"),
            ]
            return pc.binary_join_element_wise(*parts, " ", null_handling="skip")
        if name == "tri_des_adresses":
            return pa.array(pos + 1)
        raise KeyError(name)
