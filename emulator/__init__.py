"""Local emulator of the ODRE (Opendatasoft) and Agence ORE / Enedis (Data Fair) portals.

    with PortalEmulator(years=(2021, 2022, 2023), adresse_rows=None, seed=0) as emu:
        emu.urls            # {"odre": "http://127.0.0.1:P/odre", "ore": ..., "enedis": ...}
        emu.table("commune", 2023)          # what is served, as pandas
        emu.inject("status", dataset="commune", request="lines", status=429, times=2)
        emu.data_fault("extra_column", "commune", 2023)
        emu.revise("nationale_annuelle", 2023, factor=1.1)
        emu.conformance(3, rate_window_s=0.5, rate_limit_probability=0.03)  # seeded framing
        emu.limits(requests_per_minute=600, bandwidth=500_000)  # published anonymous limits
        emu.stats()         # per portal: requests, status_429, gzip, bytes_sent, regimes

Independent of the rest of `flows`: it is the fake source the pipeline is tested against.
"""

from .faults import DATA_FAULTS, REQUEST_KINDS, TRANSPORT_FAULTS, TransportFault
from .server import PortalEmulator
from .specs import DATASET_IDS, DATASETS, DatasetSpec, Field

__all__ = [
    "DATASETS",
    "DATASET_IDS",
    "DATA_FAULTS",
    "REQUEST_KINDS",
    "TRANSPORT_FAULTS",
    "DatasetSpec",
    "Field",
    "PortalEmulator",
    "TransportFault",
]
