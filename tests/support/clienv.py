"""The environment of a CLI process a test starts: the emulator's portals, the session's
Prefect server, local[2] Spark, and nothing of the caller's ENERGY_PIPELINE_* settings."""

from __future__ import annotations

import os

from emulator import PortalEmulator


def cli_env(portals: PortalEmulator, **extra: str) -> dict[str, str]:
    """os.environ without ENERGY_PIPELINE_*, pointed at the emulator, plus `extra`."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("ENERGY_PIPELINE_")}
    env |= {
        "ENERGY_PIPELINE_ODRE_URL": portals.urls["odre"],
        "ENERGY_PIPELINE_ORE_URL": portals.urls["ore"],
        "ENERGY_PIPELINE_ENEDIS_URL": portals.urls["enedis"],
        "ENERGY_PIPELINE_SPARK_MASTER": "local[2]",
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),  # the session's test server
    }
    return env | extra
