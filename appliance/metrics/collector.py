"""The metrics read at scrape time from the catalog, the store and the certificate.

Every process that works (`cairn serve`, a `cairn backup create` from a shell, a job run by the
CLI) writes what it did to the catalog; a scrape reads it back from there, so these numbers are
the same whichever process did the work, and survive restarts. The counters among them are
totals over the catalog's rows, not counts since a process started. Only the store's usage is
not read at every scrape: walking every index of a large store takes long, so it is refreshed
in the background at most every STORE_STATS_TTL and the last answer is served.

What only the serving process can know is in live.py.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.backups.records import BackupRecord
from appliance.jobs.records import EventRecord, JobRecord
from appliance.notifications.records import AlarmRecord, DeliveryRecord, NotificationRuleRecord
from appliance.vms.records import VMOptionsRecord
from dedup import StoreStats, store_stats

from .live import RUNNING_BACKUPS

if TYPE_CHECKING:
    from appliance.context import Appliance

log = logging.getLogger("cairn.metrics")
STORE_STATS_TTL = 300.0
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
FINISHED = ("succeeded", "failed", "cancelled")
GOOD_BACKUP = ("ok", "pruned")


def _seconds(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


class StoreStatsCache:
    """The store's usage as last measured; a stale one is re-measured in a background thread."""

    def __init__(self, app: Appliance, ttl: float = STORE_STATS_TTL):
        self.app = app
        self.ttl = ttl
        self._lock = threading.Lock()
        self._stats: StoreStats | None = None
        self._measured = 0.0
        self._measuring = False
        self.error: str | None = None

    def get(self, wait: float = 0.0) -> StoreStats | None:
        """The last measure; `wait` seconds for the first one (a test, a quick first scrape)."""
        with self._lock:
            measuring = None
            if time.monotonic() - self._measured > self.ttl and not self._measuring:
                self._measuring = True
                measuring = threading.Thread(target=self._measure, name="cairn-store-stats", daemon=True)
                measuring.start()
            first = self._stats is None
        if measuring is not None and first and wait:
            measuring.join(wait)
        with self._lock:
            return self._stats

    def _measure(self) -> None:
        try:
            stats, error = store_stats(self.app.store), None
        except Exception as e:   # locked (no passphrase), unreachable: said by cairn_store_up
            log.warning("measuring the store failed: %s", e)
            stats, error = None, str(e) or type(e).__name__
        with self._lock:
            self._stats, self.error = stats or self._stats, error
            self._measured, self._measuring = time.monotonic(), False


class ApplianceCollector:
    """One scrape's families; VMs in `hidden` (the caller may not see them) are left out."""

    def __init__(self, app: Appliance, store_cache: StoreStatsCache, hidden: set[str]):
        self.app = app
        self.store_cache = store_cache
        self.hidden = hidden

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("cairn_info", "This Cairn appliance (always 1)", labels=["version"])
        info.add_metric([_version()], 1)
        yield info
        with self.app.catalog() as s:
            yield from self._jobs(s)
            yield from self._backups(s)
            yield from self._verify_and_gc(s)
            yield from self._ha(s)
            yield from self._notifications(s)
        yield from self._store()
        yield from self._certificate()

    def _visible(self, vm: str | None) -> bool:
        return vm not in self.hidden

    # -- jobs ---------------------------------------------------------------------------------------

    def _jobs(self, s: Session) -> Iterator[Metric]:
        finished = CounterMetricFamily("cairn_jobs_finished", "Jobs that ended, by kind and outcome "
                                       "(succeeded, failed, cancelled), from the catalog", labels=["kind", "outcome"])
        active = GaugeMetricFamily("cairn_jobs_active", "Jobs queued, running or undoing now, by kind",
                                   labels=["kind", "state"])
        for kind, state, count in s.execute(select(JobRecord.kind, JobRecord.state, func.count())
                                            .group_by(JobRecord.kind, JobRecord.state)):
            (finished if state in FINISHED else active).add_metric([kind, state], count)
        yield finished
        yield active

        durations: dict[str, list[float]] = defaultdict(list)
        for kind, started, ended in s.execute(select(JobRecord.kind, JobRecord.started_at, JobRecord.finished_at)
                                              .where(JobRecord.state.in_(FINISHED),
                                                     JobRecord.started_at.is_not(None))):
            if started is not None and ended is not None:
                durations[kind].append((ended - started).total_seconds())
        histogram = HistogramMetricFamily("cairn_job_duration_seconds", "How long finished jobs ran, by kind",
                                          labels=["kind"])
        for kind, values in sorted(durations.items()):
            buckets = [(str(float(b)), sum(v <= b for v in values)) for b in DURATION_BUCKETS]
            histogram.add_metric([kind], [*buckets, ("+Inf", len(values))], sum(values))
        yield histogram

        running = s.execute(select(JobRecord.id, JobRecord.kind, JobRecord.resource, JobRecord.progress)
                            .where(JobRecord.state == "running")).all()
        progress = GaugeMetricFamily("cairn_job_progress_ratio", "Progress of each running job (0 to 1)",
                                     labels=["job_id", "kind", "resource"])
        for job_id, kind, resource, fraction in running:
            if self._visible(resource.removeprefix("vm:") if resource.startswith("vm:") else None):
                progress.add_metric([job_id, kind, resource], fraction)
        yield progress

        done = GaugeMetricFamily("cairn_backup_running_read_bytes",
                                 "Bytes read so far by each backup job running in the serving process",
                                 labels=["job_id", "vm"])
        total = GaugeMetricFamily("cairn_backup_running_total_bytes",
                                  "Bytes each backup job running in the serving process has to read",
                                  labels=["job_id", "vm"])
        for backup in RUNNING_BACKUPS.current({job_id for job_id, *_ in running}):
            if self._visible(backup.vm):
                done.add_metric([backup.job_id, backup.vm], backup.bytes_done)
                total.add_metric([backup.job_id, backup.vm], backup.bytes_total)
        yield done
        yield total

    # -- backups ------------------------------------------------------------------------------------

    def _backups(self, s: Session) -> Iterator[Metric]:
        count = GaugeMetricFamily("cairn_backups", "Backups in the catalog by VM and status", labels=["vm", "status"])
        read = CounterMetricFamily("cairn_backup_read_bytes", "Bytes read from VM disks by good backups",
                                   labels=["vm"])
        stored = CounterMetricFamily("cairn_backup_stored_bytes", "Bytes good backups added to the store "
                                     "(new chunks, after compression)", labels=["vm"])
        deduplicated = CounterMetricFamily("cairn_backup_deduplicated_bytes", "Bytes good backups read but did "
                                           "not store (already there, or zeros)", labels=["vm"])
        last = GaugeMetricFamily("cairn_backup_last_success_timestamp_seconds",
                                 "When each VM's latest good backup finished (Unix time)", labels=["vm"])
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for vm, status, n, bytes_read, bytes_stored, newest in s.execute(
                select(BackupRecord.vm_name, BackupRecord.status, func.count(), func.sum(BackupRecord.bytes_read),
                       func.sum(BackupRecord.bytes_stored), func.max(BackupRecord.finished_at))
                .group_by(BackupRecord.vm_name, BackupRecord.status)):
            if not self._visible(vm):
                continue
            count.add_metric([vm, status], n)
            if status in GOOD_BACKUP:
                totals[vm][0] += bytes_read or 0
                totals[vm][1] += bytes_stored or 0
            if status == "ok" and (when := _seconds(newest)) is not None:
                last.add_metric([vm], when)
        for vm, (bytes_read, bytes_stored) in sorted(totals.items()):
            read.add_metric([vm], bytes_read)
            stored.add_metric([vm], bytes_stored)
            deduplicated.add_metric([vm], max(bytes_read - bytes_stored, 0))
        yield from (count, read, stored, deduplicated, last)

    # -- verify, GC ---------------------------------------------------------------------------------

    def _verify_and_gc(self, s: Session) -> Iterator[Metric]:
        damaged = sum(1 for (damage,) in s.execute(select(BackupRecord.damage)
                                                   .where(BackupRecord.status.in_(GOOD_BACKUP))) if damage)
        yield GaugeMetricFamily("cairn_backups_damaged", "Backups the latest verify found damaged", value=damaged)
        verified = s.scalar(select(func.max(BackupRecord.verified_at)))
        last_verified = GaugeMetricFamily("cairn_verify_last_full_timestamp_seconds",
                                          "When a full verify last checked the backups (Unix time)")
        if (when := _seconds(verified)) is not None:
            last_verified.add_metric([], when)
        yield last_verified
        yield from self._last_job(s, "store.verify", "cairn_verify_last", {
            "chunks_checked": "Chunks the last verify job checked",
            "bad_chunks": "Damaged or missing chunks the last verify job found"})
        yield from self._last_job(s, "store.gc", "cairn_gc_last", {
            "chunks_removed": "Chunks the last GC job removed",
            "bytes_removed": "Bytes the last GC job freed"})

    def _last_job(self, s: Session, kind: str, prefix: str, fields: dict[str, str]) -> Iterator[Metric]:
        """The result of the newest succeeded job of this kind, a gauge per field."""
        job = s.scalars(select(JobRecord).where(JobRecord.kind == kind, JobRecord.state == "succeeded")
                        .order_by(JobRecord.finished_at.desc()).limit(1)).first()
        when = GaugeMetricFamily(f"{prefix}_timestamp_seconds", f"When the last {kind} job finished (Unix time)")
        families = {name: GaugeMetricFamily(f"{prefix}_{name}", help_text) for name, help_text in fields.items()}
        if job is not None and (finished := _seconds(job.finished_at)) is not None:
            when.add_metric([], finished)
            for name, family in families.items():
                value: Any = (job.result or {}).get(name, 0)
                family.add_metric([], len(value) if isinstance(value, list) else value)
        yield when
        yield from families.values()

    # -- HA -----------------------------------------------------------------------------------------

    def _ha(self, s: Session) -> Iterator[Metric]:
        restarts = CounterMetricFamily("cairn_ha_restarts", "Times HA restarted a crashed VM", labels=["vm"])
        for resource, n in s.execute(select(EventRecord.resource, func.count())
                                     .where(EventRecord.kind == "vm.ha.restarted").group_by(EventRecord.resource)):
            vm = (resource or "").removeprefix("vm:")
            if self._visible(vm):
                restarts.add_metric([vm], n)
        yield restarts
        gave_up = GaugeMetricFamily("cairn_ha_gave_up", "1 for a VM whose HA gave up restarting it", labels=["vm"])
        for vm in s.scalars(select(VMOptionsRecord.vm_name).where(VMOptionsRecord.ha_gave_up_at.is_not(None),
                                                                   VMOptionsRecord.ha_enabled.is_(False))):
            if self._visible(vm):
                gave_up.add_metric([vm], 1)
        yield gave_up

    # -- alarms -------------------------------------------------------------------------------------

    def _notifications(self, s: Session) -> Iterator[Metric]:
        firing = GaugeMetricFamily("cairn_alarms_firing", "Alarms firing now, by rule and severity",
                                   labels=["rule", "severity"])
        for rule, severity, n in s.execute(select(AlarmRecord.rule, AlarmRecord.severity, func.count())
                                           .where(AlarmRecord.active_key.is_not(None))
                                           .group_by(AlarmRecord.rule, AlarmRecord.severity)):
            firing.add_metric([rule, severity], n)
        yield firing
        outbox = GaugeMetricFamily("cairn_notification_messages", "Notification messages by state "
                                   "(pending: not delivered yet; abandoned: given up)", labels=["state"])
        for state, n in s.execute(select(DeliveryRecord.state, func.count()).group_by(DeliveryRecord.state)):
            outbox.add_metric([state], n)
        yield outbox

    # -- the store ----------------------------------------------------------------------------------

    def _store(self) -> Iterator[Metric]:
        location = self.app.settings.store_access().location
        size = GaugeMetricFamily("cairn_store_filesystem_size_bytes", "Size of the filesystem holding the store")
        free = GaugeMetricFamily("cairn_store_filesystem_free_bytes", "Free space on the store's filesystem")
        if Path(location).is_dir():
            usage = shutil.disk_usage(location)
            size.add_metric([], usage.total)
            free.add_metric([], usage.free)
        yield size
        yield free
        stats = self.store_cache.get(wait=5.0)
        yield GaugeMetricFamily("cairn_store_up", "1 when the store's usage could be measured",
                                value=0 if self.store_cache.error or stats is None else 1)
        families = {
            "stored_bytes": ("cairn_store_stored_bytes", "Bytes the store's chunks take (compressed)"),
            "unique_bytes": ("cairn_store_unique_bytes", "Plain bytes of the store's distinct chunks"),
            "logical_bytes": ("cairn_store_logical_bytes", "Sum of the disk sizes of every backup in the store"),
            "chunks": ("cairn_store_chunks", "Distinct chunks in the store"),
            "backups": ("cairn_store_backups", "Backups in the store"),
            "dedup_ratio": ("cairn_store_dedup_ratio", "Logical bytes per unique byte"),
        }
        for attribute, (name, help_text) in families.items():
            family = GaugeMetricFamily(name, help_text)
            if stats is not None:
                family.add_metric([], getattr(stats, attribute))
            yield family

    # -- the certificate ----------------------------------------------------------------------------

    def _certificate(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("cairn_certificate_expiry_timestamp_seconds",
                                   "When the appliance's TLS certificate expires (Unix time)", labels=["certificate"])
        for path in self._certificates():
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except (OSError, ValueError):
                continue
            expires = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=UTC)
            family.add_metric([str(path)], expires.timestamp())
        yield family

    def _certificates(self) -> list[Path]:
        """The one the certificate rule watches (its own path, or the data dir's self-signed one)."""
        with self.app.catalog() as s:
            rule = s.get(NotificationRuleRecord, "certificate.expiry")
        chosen = (rule.params.get("certificate") if rule else None) or self.app.settings.tls_dir / "cert.pem"
        return [Path(chosen)] if Path(chosen).is_file() else []


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("cairn")
    except PackageNotFoundError:
        return "unknown"
