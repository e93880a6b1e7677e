"""The catalog is the one owner of datasets and portals; the emulator describes the same
portals independently (from what they publish), so the two are held to each other here."""

from __future__ import annotations

from emulator.specs import DATASETS as SERVED
from flows.settings import Settings
from flows.sources.catalog import DATASETS, PORTALS


def test_every_dataset_is_served_by_the_emulator_under_the_same_portal_and_id():
    assert set(DATASETS) == set(SERVED)
    for name, dataset in DATASETS.items():
        served = SERVED[name]
        assert (served.portal, served.dataset_id) == (dataset.portal, dataset.source_id), name
        assert dataset.protocol == PORTALS[dataset.portal].protocol, name
        # the emulator's own names for the two protocols
        assert served.protocol == {"opendatasoft": "ods"}.get(dataset.protocol, dataset.protocol)


def test_every_dataset_has_a_title_and_every_portal_a_url_setting():
    assert all(dataset.title for dataset in DATASETS.values())
    for portal in PORTALS:
        assert Settings().portal_url(portal).startswith("https://"), portal
