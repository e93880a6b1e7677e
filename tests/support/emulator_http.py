"""Shared by the emulator's own tests (a plugin of tests/conftest.py): one emulator per module
(`emu`, reset around each test by `clean_emu`), an httpx `client`, URL helpers."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from emulator import PortalEmulator

ODS = "/api/explore/v2.1/catalog/datasets"
DF = "/data-fair/api/v1/datasets"
DAILY = "consommation-quotidienne-brute"
NAT = "consommation-annuelle-brute"
REG = "consommation-annuelle-brute-regionale"
COMMUNE = "consommation-annuelle-d-electricite-et-gaz-par-commune"
DEPT = "consommation-annuelle-d-electricite-et-gaz-par-departement"
ADRESSE = "consommation-annuelle-residentielle-par-adresse"


@pytest.fixture(scope="module")
def emu() -> Iterator[PortalEmulator]:
    with PortalEmulator(years=(2022, 2023)) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


def odre(emu: PortalEmulator, path: str) -> str:
    return emu.urls["odre"] + ODS + path


def ore(emu: PortalEmulator, path: str) -> str:
    return emu.urls["ore"] + DF + path


def walk_lines(client: httpx.Client, url: str, params: dict) -> tuple[list[dict], list[dict]]:
    """Follow `next` links; returns (rows, page payloads)."""
    rows, pages = [], []
    resp = client.get(url, params=params)
    while True:
        assert resp.status_code == 200, resp.text
        payload = resp.json()
        pages.append(payload)
        rows.extend(payload["results"])
        if "next" not in payload:
            return rows, pages
        resp = client.get(payload["next"])


@pytest.fixture
def clean_emu(emu: PortalEmulator) -> Iterator[PortalEmulator]:
    """`emu` with no faults, modes or logs before and after the test."""
    emu.reset()
    yield emu
    emu.reset()
