"""Portal clients, one per protocol, behind one small interface."""

from __future__ import annotations

from flows.settings import Settings
from flows.sources.catalog import Dataset
from flows.sources.http import PortalHttp, RetryPolicy
from flows.sources.portals.base import PartitionStats, PortalClient, SourceMetadata
from flows.sources.portals.datafair import DataFairClient
from flows.sources.portals.opendatasoft import OpendatasoftClient

__all__ = [
    "PartitionStats",
    "PortalClient",
    "SourceMetadata",
    "client_for",
]

_PROTOCOLS: dict[str, type[OpendatasoftClient] | type[DataFairClient]] = {
    "opendatasoft": OpendatasoftClient,
    "datafair": DataFairClient,
}


def client_for(dataset: Dataset, settings: Settings) -> PortalClient:
    """The client of the portal that serves a dataset."""
    http = PortalHttp(
        dataset.portal,
        settings.portal_url(dataset.portal),
        policy=RetryPolicy(
            settings.http_max_attempts, settings.http_backoff_base, settings.http_backoff_max
        ),
        connect_timeout=settings.http_connect_timeout,
        read_timeout=settings.http_read_timeout,
        concurrency=settings.portal_concurrency,
        user_agent=settings.user_agent,
        rate_limit_window_s=settings.rate_limit_window_s,
        rate_limit_patience_s=settings.rate_limit_patience_s,
    )
    return _PROTOCOLS[dataset.protocol](http, page_size=settings.datafair_page_size)
