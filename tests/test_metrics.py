"""GET /metrics: token-protected, parsed by Prometheus' own parser, scraped in the middle of a real
backup, counting a backup made by another process (the CLI), hiding VMs the caller may not see;
and the Grafana dashboard in docs/ uses only metrics that exist."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from backup_helpers import MiB, boot_guest_vm, run, write_pattern
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from appliance.access.records import VMAccessRecord
from appliance.backups.records import BackupRecord
from appliance.catalog.base import utcnow
from appliance.context import Appliance

JOB_TIMEOUT = 240
DASHBOARD = Path(__file__).parent.parent / "docs" / "grafana-dashboard.json"
CAIRN = str(Path(sys.executable).parent / "cairn")


def scrape(client: TestClient) -> dict[str, list]:
    """Family name -> its samples, as Prometheus reads them."""
    answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(answer.text)}


def value(families: dict[str, list], sample: str, **labels: str) -> float | None:
    found = [s.value for samples in families.values() for s in samples
             if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, (sample, labels, found)
    return found[0] if found else None


def test_metrics_need_a_token_and_parse(appliance: Appliance, viewer_client: TestClient):
    assert TestClient(viewer_client.app).get("/metrics").status_code == 401
    # Request latency is counted in this process, which earlier tests' apps share: count ours.
    vm_lists = {"route": "/api/v1/vms", "method": "GET", "status": "200"}
    before = value(scrape(viewer_client), "cairn_api_request_duration_seconds_count", **vm_lists) or 0
    viewer_client.get("/api/v1/vms")
    families = scrape(viewer_client)
    assert value(families, "cairn_info", version="0.1.0") == 1
    assert value(families, "cairn_store_up") == 1
    assert value(families, "cairn_store_filesystem_free_bytes") > 0
    assert value(families, "cairn_backups_damaged") == 0
    assert value(families, "cairn_api_request_duration_seconds_count", **vm_lists) == before + 1


def test_the_dashboard_references_only_metrics_that_exist(viewer_client: TestClient):
    viewer_client.get("/api/v1/health")
    families = set(scrape(viewer_client))
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bcairn_[a-z0-9_]+", expr)}
    assert len(used) > 20
    # The parser names a counter without _total and a histogram without _bucket/_sum/_count.
    missing = {name for name in used if re.sub(r"_(total|bucket|sum|count)$", "", name) not in families}
    assert not missing, f"the dashboard uses metrics /metrics does not have: {sorted(missing)}"
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"


def test_a_scrape_during_a_backup_shows_its_bytes_and_its_job(appliance: Appliance, appliance_data_dir: Path,
                                                              viewer_client: TestClient, guest_kernel):
    boot_guest_vm(appliance, guest_kernel, "scraped", [512 * MiB])
    for n in range(6):
        run(write_pattern(appliance, "scraped", "vda", 0x60 + n, (120 + 64 * n) * MiB, 48 * MiB))
    # Scraped on the copy's first progress report, as it is announced (the copy of 512 MiB goes on).
    with appliance.jobs.events.listen() as feed:
        job = appliance.jobs.submit("backup", {"vm": "scraped", "full": True})
        while not ((e := feed.get(timeout=JOB_TIMEOUT))["job_id"] == job.id and e["kind"] == "job.progress"
                   and e["data"]["step"] == "copy" and e["data"]["progress"] > 0.06):
            pass
        during = scrape(viewer_client)
    assert value(during, "cairn_jobs_active", kind="backup", state="running") == 1
    assert 0 < value(during, "cairn_job_progress_ratio", job_id=job.id, kind="backup", resource="vm:scraped") < 1
    read_so_far = value(during, "cairn_backup_running_read_bytes", job_id=job.id, vm="scraped")
    assert 0 < read_so_far < value(during, "cairn_backup_running_total_bytes", job_id=job.id, vm="scraped")
    assert value(during, "cairn_backups", vm="scraped", status="running") == 1

    assert appliance.jobs.wait(job.id, JOB_TIMEOUT).state == "succeeded"
    after = scrape(viewer_client)
    assert value(after, "cairn_jobs_active", kind="backup", state="running") is None
    assert value(after, "cairn_jobs_finished_total", kind="backup", outcome="succeeded") == 1
    assert value(after, "cairn_job_duration_seconds_count", kind="backup") == 1
    read = value(after, "cairn_backup_read_bytes_total", vm="scraped")
    stored = value(after, "cairn_backup_stored_bytes_total", vm="scraped")
    assert read >= read_so_far and 0 < stored <= read
    assert value(after, "cairn_backup_deduplicated_bytes_total", vm="scraped") == read - stored
    assert value(after, "cairn_backup_running_read_bytes", job_id=job.id, vm="scraped") is None
    assert value(after, "cairn_backup_last_success_timestamp_seconds", vm="scraped") > 0

    # Another process backs the VM up (the CLI's job): this process's scrape counts it, from the catalog.
    run(write_pattern(appliance, "scraped", "vda", 0x77, 8 * MiB, 4 * MiB))
    subprocess.run([CAIRN, "--data-dir", str(appliance_data_dir), "backup", "create", "scraped"], check=True,
                   capture_output=True, timeout=JOB_TIMEOUT)
    cli = scrape(viewer_client)
    assert value(cli, "cairn_backups", vm="scraped", status="ok") == 2
    assert value(cli, "cairn_backup_read_bytes_total", vm="scraped") > read
    assert value(cli, "cairn_jobs_finished_total", kind="backup", outcome="succeeded") == 2


def test_a_viewer_sees_no_series_of_a_vm_hidden_from_it(appliance: Appliance, viewer_client: TestClient,
                                                        api_client: TestClient):
    with appliance.catalog.begin() as s:
        for vm in ("shared", "private"):
            s.add(BackupRecord(id=f"b-{vm}", vm_name=vm, store="s", kind="full", status="ok", started_at=utcnow(),
                               finished_at=utcnow(), bytes_read=10 * MiB, bytes_stored=MiB, notes=[]))
        s.add(VMAccessRecord(vm_name="private", owner="someone-else"))
    seen = scrape(viewer_client)
    assert value(seen, "cairn_backups", vm="shared", status="ok") == 1
    assert not [s for samples in seen.values() for s in samples if s.labels.get("vm") == "private"]
    assert value(scrape(api_client), "cairn_backup_read_bytes_total", vm="private") == 10 * MiB   # the admin sees all
