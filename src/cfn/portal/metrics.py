"""Prometheus metrics of the portal (``GET /metrics``), on a registry of its own.

Counters and histograms are updated as requests and events pass; task and
agent counts are read from SQL at scrape time, so they are never stale.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cfn.store import reports
from cfn.store.repository import Store

log = logging.getLogger(__name__)


class _StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterable[Metric]:
        tasks = GaugeMetricFamily("cfn_tasks", "Tasks by status (SQL).", labels=["status"])
        agents = GaugeMetricFamily(
            "cfn_agents", "Agents by status and provider (SQL).", labels=["status", "provider"]
        )
        try:
            for status, count in reports.task_counts(self.store).items():
                tasks.add_metric([status], float(count))
            by_status_provider: dict[tuple[str, str], int] = {}
            for tally in reports.agent_tallies(self.store):
                labels = (tally.status, tally.provider or "unknown")
                by_status_provider[labels] = by_status_provider.get(labels, 0) + tally.count
            for (status, provider), count in by_status_provider.items():
                agents.add_metric([status, provider], float(count))
        except Exception as exc:  # a scrape must not fail because SQL did
            log.warning("metrics: cannot read the store: %s", exc)
        yield tasks
        yield agents


class PortalMetrics:
    def __init__(self, store: Store | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cfn_portal_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cfn_portal_request_seconds",
            "HTTP request latency by route.",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.socket_clients = Gauge(
            "cfn_portal_socket_clients",
            "Socket.IO clients connected to /cfn-loop.",
            registry=self.registry,
        )
        self.events_sent = Counter(
            "cfn_portal_events_sent",
            "Events sent to Socket.IO clients, by kind and whether replayed.",
            ["kind", "replay"],
            registry=self.registry,
        )
        self.event_delay = Histogram(
            "cfn_portal_event_delay_seconds",
            "From the orchestrator's emit (event ts) to the Socket.IO send, live events only.",
            registry=self.registry,
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
        )
        self.auth_failures = Counter(
            "cfn_portal_auth_failures",
            "Requests and connections refused for their token (401) or role (403).",
            ["code"],
            registry=self.registry,
        )
        self.tasks_submitted = Counter(
            "cfn_portal_tasks_submitted",
            "Tasks queued through POST /api/tasks/create.",
            registry=self.registry,
        )
        if store is not None:
            self.registry.register(_StoreCollector(store))
