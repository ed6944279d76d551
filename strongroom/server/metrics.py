"""``GET /metrics``: the store in Prometheus' text format (``prometheus-client``), behind the API token.

Read at each scrape from what the store already records, so every process's work counts (a backup
from the CLI, a schedule run by a timer), not only this server's:

=============================================  ==========================================================
``strongroom_jobs{type,status}``               jobs of the store (``SHOW JOBS``) by type and status
``strongroom_last_backup_bytes{collection}``   bytes of the newest successful backup per collection
``strongroom_last_backup_duration_seconds``    ... and how long it took (same label)
``strongroom_schedule_last_success_age_``      seconds since a schedule last succeeded (absent: never)
``seconds{schedule_id,label,backup_type}``
``strongroom_kms_calls{region,operation,``     every use of a key (the audit log): encrypt or decrypt, ok,
``result}``                                    cached (the key cache answered) or error
``strongroom_key_cache_*``                     the key cache (serve): hits, misses, evictions, entries
``strongroom_data_key_age_seconds{region}``    age of each region's active data key (absent: locked)
``strongroom_cmek_status{region,status}``      1 for each region's current CMEK status
=============================================  ==========================================================

Collection labels are redacted URIs; nothing here is a secret.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..kms.cache import key_cache
from ..store.jobs import JobRow

if TYPE_CHECKING:
    from .app import StoreService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _age(then: str | None, now: datetime) -> float | None:
    if not then:
        return None
    at = datetime.fromisoformat(then)
    return (now - (at if at.tzinfo else at.replace(tzinfo=UTC))).total_seconds()


class StoreCollector(Collector):
    def __init__(self, service: StoreService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        view = self.service.view()
        now = datetime.now(UTC)
        jobs = view.jobs.list()

        by_status = GaugeMetricFamily(
            "strongroom_jobs", "Jobs of the store, by type and status", labels=["type", "status"]
        )
        for (kind, status), n in sorted(Counter((j.job_type, j.status) for j in jobs).items()):
            by_status.add_metric([kind, status], n)
        yield by_status

        last_bytes = GaugeMetricFamily(
            "strongroom_last_backup_bytes",
            "Bytes of the newest successful backup, per collection",
            labels=["collection"],
        )
        last_duration = GaugeMetricFamily(
            "strongroom_last_backup_duration_seconds",
            "Duration of the newest successful backup, per collection",
            labels=["collection"],
        )
        newest: dict[str, JobRow] = {}
        for job in jobs:  # oldest first: the last one seen per collection is the newest
            if job.job_type == "BACKUP" and job.status == "succeeded" and job.collection:
                newest[job.collection] = job
        for collection, job in sorted(newest.items()):
            if job.bytes is not None:
                last_bytes.add_metric([collection], float(job.bytes))
            if job.started and job.finished:
                seconds = (datetime.fromisoformat(job.finished) - datetime.fromisoformat(job.started)).total_seconds()
                last_duration.add_metric([collection], seconds)
        yield last_bytes
        yield last_duration

        schedules = GaugeMetricFamily(
            "strongroom_schedule_last_success_age_seconds",
            "Seconds since a backup schedule last succeeded (absent if it never has)",
            labels=["schedule_id", "label", "backup_type"],
        )
        for row in view.schedules.show():
            age = _age(row.last_success, now)
            if age is not None:
                schedules.add_metric([str(row.id), row.label, row.kind], age)
        yield schedules

        calls = CounterMetricFamily(
            "strongroom_kms_calls", "Uses of a key (the audit log)", labels=["region", "operation", "result"]
        )
        counted = Counter((r.region, r.operation, _result(r.result)) for r in view.audit_records())
        for labels, n in sorted(counted.items()):
            calls.add_metric(list(labels), n)
        yield calls

        key_age = GaugeMetricFamily(
            "strongroom_data_key_age_seconds", "Age of each region's active data key", labels=["region"]
        )
        cmek = GaugeMetricFamily("strongroom_cmek_status", "Each region's CMEK status", labels=["region", "status"])
        # The open store, for its keys' ages (a view without keys knows none); the report only reads,
        # and each region's keys refresh under their own lock, so the service's lock is not needed.
        for st in self.service.store.encryption_status():
            cmek.add_metric([st.region, st.status], 1)
            active = next((k for k in st.data_keys if k.active), None)
            age = _age(active.created, now) if active else None
            if age is not None:
                key_age.add_metric([st.region], age)
        yield key_age
        yield cmek


def _result(result: str) -> str:
    return {"ok": "ok", "ok (cached)": "cached"}.get(result, "error")


class KeyCacheCollector(Collector):
    """The process's key cache (kms/cache.py): hits, misses, evictions, and keys held now."""

    def collect(self) -> Iterator[Metric]:
        cache = key_cache()
        if cache is None:
            return
        stats = cache.stats()
        for name, value, text in (
            ("strongroom_key_cache_hits", stats.hits, "Unwraps answered from the key cache"),
            ("strongroom_key_cache_misses", stats.misses, "Unwraps that called the KMS"),
            ("strongroom_key_cache_evictions", stats.evictions, "Keys wiped from the cache (expired, full, cleared)"),
        ):
            counter = CounterMetricFamily(name, text)
            counter.add_metric([], value)
            yield counter
        held = GaugeMetricFamily("strongroom_key_cache_entries", "Unwrapped keys the cache holds now")
        held.add_metric([], stats.entries)
        yield held


def metrics_registry(service: StoreService) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(service))
    registry.register(KeyCacheCollector())
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
