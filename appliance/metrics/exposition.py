"""One scrape: the collector's families and the process's own, in Prometheus' text format."""
from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .collector import ApplianceCollector, StoreStatsCache
from .live import REGISTRY

if TYPE_CHECKING:
    from appliance.context import Appliance

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The appliance's metrics; `render` for a caller who may not see the VMs in `hidden`."""

    def __init__(self, app: Appliance):
        self.app = app
        self.store_cache = StoreStatsCache(app)

    def render(self, hidden: set[str]) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ApplianceCollector(self.app, self.store_cache, hidden))
        return generate_latest(registry) + generate_latest(REGISTRY)
