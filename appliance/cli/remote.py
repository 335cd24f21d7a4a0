"""`Client` through an appliance's API over HTTPS: stdlib http.client and ssl, nothing heavier.

Every request carries the access key (`Authorization: Bearer`), and goes only to the appliance
whose certificate is trusted: one the system's CAs vouch for (with its host name), or one whose
SHA-256 fingerprint was pinned (`cairn login` shows it and asks, or takes --fingerprint; a
self-signed certificate such as the one `cairn serve` makes). A pinned certificate is checked
before anything is sent on the connection. An error answer's body, {"error": {"code",
"message"}}, becomes an `ApiError` whose code picks the exit status (common.EXIT_CODES).

On the appliance's own host, the running appliance's local socket serves the same requests
(`LocalSocket`: plain HTTP, no key; the kernel tells the appliance who connects): the local
CLI's reads go there (machine.py).

A job is submitted with POST /api/v1/jobs, the route every client uses, and followed on its
event stream (GET /api/v1/events/stream?job=ID, server-sent events) read on a thread of its own.
"""
from __future__ import annotations

import http.client
import json
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from appliance.api.models import (
    BackupOut,
    BootTestOut,
    EventOut,
    InstantRestoreOut,
    JobOut,
    PolicyPreview,
    StartedVM,
    StoppedVM,
    VMDetail,
    VMOut,
)
from appliance.catalog.query import TOTAL_HEADER
from appliance.jobs.states import FINISHED_STATES, JobState

from .client import JobProgress, Listing, NewVM, Page, PowerAction
from .common import CliError
from .login import canonical_url, fingerprint_of, normal_fingerprint

if TYPE_CHECKING:
    from pydantic import BaseModel

    from appliance.deletion.protection import Impact
    from appliance.policies.service import Policy, PolicyOut
    from appliance.vms.devices import NewDisk, NewNic
    from dedup.stats import StoreStats

API = "/api/v1"
CONNECT_TIMEOUT = 15.0     # seconds to reach the appliance
SOCKET_CONNECT_TIMEOUT = 1.0   # seconds to connect to the local socket: a live appliance takes it at once
ANSWER_TIMEOUT = 3600.0    # seconds to wait for an answer: a boot test or a graceful stop takes a while
CHECK_INTERVAL = 0.5       # seconds between looks at a followed job while it waits for its turn
UPLOAD_BLOCK = 1 << 20
READER_EXIT = 5.0          # seconds for an event stream's reader to see its connection shut
# An HTTP status's error code, for an error body that names one the exit statuses do not know.
STATUS_CODES = {401: "UnauthorizedError", 403: "ForbiddenError"}


class ApiError(CliError):
    """The appliance refused or failed a request: its code and message, as its error body says."""

    def __init__(self, status: int, code: str, message: str, remedy: str = ""):
        super().__init__(f"{message}{remedy}")
        self.status = status
        self.error_codes = [code, STATUS_CODES.get(status, code)]


class NotSignedInError(CliError):
    """No access key for the appliance."""


class UnreachableError(CliError):
    """The appliance did not answer."""


class CertificateError(CliError):
    """The appliance's certificate is not one this machine trusts."""


@dataclass(frozen=True)
class Endpoint:
    """Where an appliance answers and how its certificate is checked: `fingerprint` pins it,
    None trusts what the system's CAs vouch for."""
    url: str
    fingerprint: str | None = None

    def connect(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        assert parts.hostname is not None
        if parts.scheme == "http":
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=CONNECT_TIMEOUT)
        else:
            conn = _PinnedHTTPS(parts.hostname, parts.port, self, timeout=CONNECT_TIMEOUT)
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as e:
            raise CertificateError(
                f"the certificate of {self.url} is not trusted here ({e.verify_message}): a self-signed one "
                f"(like `cairn serve` makes) is trusted by its fingerprint: `cairn login {self.url}` shows it "
                "and asks, or set CAIRN_FINGERPRINT") from None
        except ssl.SSLError as e:
            raise UnreachableError(f"{self.url} does not speak TLS as expected ({e.reason}): is it an appliance's "
                                   "https:// address?") from None
        except OSError as e:
            raise UnreachableError(f"cannot reach the appliance at {self.url}: {e.strerror or e}; is "
                                   "`cairn serve` running there, and the address right?") from None
        assert conn.sock is not None
        conn.sock.settimeout(ANSWER_TIMEOUT)
        return conn

    def certificate(self) -> tuple[bytes, bool]:
        """The certificate the appliance presents (DER), and whether the system's CAs vouch for
        it: what `cairn login` shows before trusting it."""
        parts = urlsplit(self.url)
        assert parts.hostname is not None and parts.port is not None
        try:
            with socket.create_connection((parts.hostname, parts.port), timeout=CONNECT_TIMEOUT) as raw:
                try:
                    with ssl.create_default_context().wrap_socket(raw, server_hostname=parts.hostname) as tls:
                        der = tls.getpeercert(binary_form=True)
                        assert der is not None
                        return der, True
                except ssl.SSLCertVerificationError:
                    pass
            with socket.create_connection((parts.hostname, parts.port), timeout=CONNECT_TIMEOUT) as raw, \
                    _unverified().wrap_socket(raw, server_hostname=parts.hostname) as tls:
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                return der, False
        except ssl.SSLError as e:
            raise UnreachableError(f"{self.url} does not speak TLS as expected ({e.reason})") from None
        except OSError as e:
            raise UnreachableError(f"cannot reach the appliance at {self.url}: {e.strerror or e}") from None

    @property
    def prefix(self) -> str:
        """The path the appliance's API is under (behind a proxy, maybe not the root)."""
        return urlsplit(self.url).path


@dataclass(frozen=True)
class LocalSocket:
    """The running appliance's local socket on this machine (appliance/server/local_socket.py):
    plain HTTP and no access key; the appliance asks the kernel who connects."""
    path: Path
    prefix = ""

    @property
    def url(self) -> str:
        return f"unix:{self.path}"

    def connect(self) -> http.client.HTTPConnection:
        conn = _UnixHTTPConnection(self.path)
        try:
            conn.connect()
        except OSError as e:
            conn.close()
            raise UnreachableError(f"the appliance's local socket {self.path} does not answer: {e.strerror or e}") from None
        assert conn.sock is not None
        conn.sock.settimeout(ANSWER_TIMEOUT)
        return conn


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path):
        super().__init__("localhost", timeout=SOCKET_CONNECT_TIMEOUT)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.socket_path))


def _unverified() -> ssl.SSLContext:
    """TLS whose certificate is checked by the caller (against a pinned fingerprint), not by a CA."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to an endpoint: its pinned certificate is compared before the request is sent."""

    def __init__(self, host: str, port: int | None, endpoint: Endpoint, timeout: float):
        pinned = endpoint.fingerprint is not None
        super().__init__(host, port, timeout=timeout, context=_unverified() if pinned else ssl.create_default_context())
        self.endpoint = endpoint

    def connect(self) -> None:
        super().connect()
        if self.endpoint.fingerprint is None:
            return
        der = self.sock.getpeercert(binary_form=True)
        if der is None or (found := fingerprint_of(der)) != self.endpoint.fingerprint:
            self.close()
            raise CertificateError(
                f"the certificate of {self.endpoint.url} is not the one trusted: its SHA-256 fingerprint is "
                f"{found if der else 'missing'}, the pinned one {self.endpoint.fingerprint}. Nothing was sent. "
                "If the appliance has a new certificate, check its fingerprint there (`cairn serve` prints it) "
                f"and sign in again: cairn login {self.endpoint.url}")


class RemoteClient:
    def __init__(self, endpoint: Endpoint | LocalSocket, token: str, token_source: str):
        self.endpoint = endpoint
        self.where = endpoint.url
        self.token = token
        self.token_source = token_source   # where the key came from, for a refusal's remedy

    @classmethod
    def signed_in(cls, url: str) -> RemoteClient:
        """The client of the appliance at `url` with its access key: $CAIRN_TOKEN, else the one
        `cairn login` stored; its certificate pinned by $CAIRN_FINGERPRINT, else by the login's."""
        import os

        from .login import Logins

        url = canonical_url(url)
        login = Logins.load().get(url)
        pin = os.environ.get("CAIRN_FINGERPRINT") or (login.fingerprint if login else None)
        endpoint = Endpoint(url, normal_fingerprint(pin) if pin else None)
        if token := os.environ.get("CAIRN_TOKEN"):
            return cls(endpoint, token, "CAIRN_TOKEN")
        if login is None:
            raise NotSignedInError(f"not signed in to {url}: run `cairn login {url}`, or set CAIRN_TOKEN to an "
                                   "access key (POST /api/v1/tokens)")
        return cls(endpoint, login.token, "login")

    # -- HTTP ------------------------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        """The answer's JSON (None for an empty one); an error answer raises ApiError."""
        response, conn = self.request(method, path, body, query)
        try:
            data = response.read()
        finally:
            conn.close()
        return json.loads(data) if data else None

    def listed(self, path: str, listing: Listing, **query: Any) -> tuple[list[Any], int]:
        """A page of a listing, and how many match in all (the X-Total-Count header)."""
        response, conn = self.request("GET", path, query={**query, "filter": listing.filters, "sort": listing.sort,
                                                          "limit": listing.limit, "offset": listing.offset})
        try:
            items = json.loads(response.read())
        finally:
            conn.close()
        return items, int(response.headers.get(TOTAL_HEADER, len(items)))

    def request(self, method: str, path: str, body: Any = None,
                query: dict[str, Any] | None = None) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
        """Send a request and return its answer (status 2xx) still to be read, with its connection."""
        wanted = {k: v for k, v in (query or {}).items() if v is not None}
        target = f"{self.endpoint.prefix}{API}{path}" + (f"?{urlencode(wanted, doseq=True)}" if wanted else "")
        headers = {"Accept": "application/json"}
        if self.token:   # none only to sign in
            headers["Authorization"] = f"Bearer {self.token}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = self.endpoint.connect()
        try:
            conn.request(method, target, payload, headers)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise UnreachableError(f"the appliance at {self.endpoint.url} did not answer {method} {path}: {e}") from None
        if response.status >= 400:
            try:
                raise self._refusal(response)
            finally:
                conn.close()
        return response, conn

    def _refusal(self, response: http.client.HTTPResponse) -> ApiError:
        raw = response.read()
        try:
            error = json.loads(raw)["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = f"HTTP{response.status}", f"the appliance answered {response.status} {response.reason}"
        remedy = ""
        if response.status == 401:
            remedy = (f"; CAIRN_TOKEN was refused: set it to a valid access key, or unset it and `cairn login "
                      f"{self.endpoint.url}`" if self.token_source == "CAIRN_TOKEN"
                      else f"; sign in again: cairn login {self.endpoint.url}")
        return ApiError(response.status, code, message, remedy)

    # -- jobs ------------------------------------------------------------------------------------

    def run(self, kind: str, params: BaseModel) -> Generator[JobOut | JobProgress, None, None]:
        job = JobOut.model_validate(self.call("POST", "/jobs", {"kind": kind, "params": params.model_dump(mode="json")}))
        yield job
        while True:   # a stream that ends before the job (the appliance restarted) is opened again
            with _EventStream(self, job.id) as stream:
                started = job.state != JobState.QUEUED
                checked = time.monotonic()
                while (item := stream.next(CHECK_INTERVAL)) is not _EventStream.CLOSED:
                    if isinstance(item, JobOut):
                        yield item
                        return
                    if item is not None:
                        started = True   # a queued job says nothing
                        if item["kind"] == "job.progress":
                            data = item["data"]
                            yield JobProgress(data["progress"], data["step"], data.get("detail"))
                    if not started and time.monotonic() - checked >= CHECK_INTERVAL:
                        checked = time.monotonic()   # waiting for its turn: the follower says why
                        job = self.job(job.id)
                        started = job.state != JobState.QUEUED
                        yield job
            job = self.job(job.id)
            if job.state in FINISHED_STATES:
                yield job
                return

    def cancel_job(self, job_id: str) -> JobOut:
        return JobOut.model_validate(self.call("POST", f"/jobs/{quote(job_id)}/cancel"))

    def wait_job(self, job_id: str, timeout: float) -> JobOut:
        deadline = time.monotonic() + timeout
        while (job := self.job(job_id)).state not in FINISHED_STATES:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout:.0f} s")
            time.sleep(CHECK_INTERVAL)
        return job

    def jobs(self, listing: Listing) -> Page[JobOut]:
        items, total = self.listed("/jobs", listing)
        return Page([JobOut.model_validate(j) for j in items], total)

    def job(self, job_id: str) -> JobOut:
        return JobOut.model_validate(self.call("GET", f"/jobs/{quote(job_id)}"))

    def events(self, job_id: str | None, limit: int) -> list[EventOut]:
        filters = [f"job_id:eq:{job_id}"] if job_id else None
        return [EventOut.model_validate(e) for e in self.call("GET", "/events", filter=filters, sort="-id", limit=limit)]

    # -- VMs -------------------------------------------------------------------------------------

    def vms(self, listing: Listing) -> Page[VMOut]:
        items, total = self.listed("/vms", listing)
        return Page([VMOut.model_validate(v) for v in items], total)

    def vm(self, name: str) -> VMDetail:
        return VMDetail.model_validate(self.call("GET", f"/vms/{quote(name)}"))

    def create_vm(self, new: NewVM) -> VMDetail:
        if new.base_image is not None:
            raise CliError("--image names a file on this machine: through the API, give a library image "
                           "(--from-image; `cairn image import` or PUT /api/v1/images/NAME puts one there)")
        body = {k: v for k, v in vars(new).items() if k != "base_image"}
        return VMDetail.model_validate(self.call("POST", "/vms", body))

    def start_vm(self, name: str, paused: bool) -> StartedVM:
        return StartedVM.model_validate(self.call("POST", f"/vms/{quote(name)}/start", {"paused": paused}))

    def power(self, name: str, action: PowerAction) -> VMDetail:
        return VMDetail.model_validate(self.call("POST", f"/vms/{quote(name)}/{action}"))

    def stop_vm(self, name: str, timeout: float, force: bool) -> StoppedVM:
        return StoppedVM.model_validate(self.call("POST", f"/vms/{quote(name)}/stop",
                                                  {"timeout": timeout, "force": force}))

    def resize_vm(self, name: str, vcpus: int | None, memory_mib: int | None) -> VMDetail:
        return VMDetail.model_validate(self.call("PATCH", f"/vms/{quote(name)}",
                                                 {"vcpus": vcpus, "memory_mib": memory_mib}))

    def grow_disk(self, name: str, disk: str, size: int) -> int:
        return int(self.call("POST", f"/vms/{quote(name)}/disks/{quote(disk)}/resize", {"size": size})["size"])

    def set_ha(self, name: str, enabled: bool, max_restarts: int, window_seconds: int) -> VMDetail:
        return VMDetail.model_validate(self.call("PUT", f"/vms/{quote(name)}/ha", {
            "enabled": enabled, "max_restarts": max_restarts, "window_seconds": window_seconds}))

    def set_compute_pool(self, name: str, pool: str | None) -> VMDetail:
        return VMDetail.model_validate(self.call("PUT", f"/vms/{quote(name)}/compute-pool", {"pool": pool}))

    def clone_progress(self, name: str) -> dict[str, float]:
        return dict(self.call("GET", f"/vms/{quote(name)}/streams"))

    def delete_vm(self, name: str, dry_run: bool) -> Impact:
        from appliance.deletion.protection import Impact

        return Impact.model_validate(self.call("DELETE", f"/vms/{quote(name)}", dry_run=str(dry_run).lower()))

    # -- a stopped VM's disks and NICs -----------------------------------------------------------

    def add_disk(self, name: str, disk: NewDisk) -> VMDetail:
        return VMDetail.model_validate(self.call("POST", f"/vms/{quote(name)}/disks", asdict(disk)))

    def remove_disk(self, name: str, disk: str, delete_file: bool) -> VMDetail:
        return VMDetail.model_validate(self.call("DELETE", f"/vms/{quote(name)}/disks/{quote(disk)}",
                                                 delete_file=str(delete_file).lower()))

    def add_nic(self, name: str, nic: NewNic) -> VMDetail:
        return VMDetail.model_validate(self.call("POST", f"/vms/{quote(name)}/nics", asdict(nic)))

    def remove_nic(self, name: str, mac: str) -> VMDetail:
        return VMDetail.model_validate(self.call("DELETE", f"/vms/{quote(name)}/nics/{quote(mac)}"))

    # -- the image library -----------------------------------------------------------------------

    def images(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/images"))

    def import_image(self, name: str, file: Path, kind: str | None,
                     progress: Callable[[int], None]) -> dict[str, Any]:
        """Uploaded as the body of PUT /images/NAME, a block at a time."""
        target = f"{self.endpoint.prefix}{API}/images/{quote(name)}" + (f"?kind={kind}" if kind else "")
        conn = self.endpoint.connect()
        try:
            conn.putrequest("PUT", target)
            for header, value in (("Authorization", f"Bearer {self.token}"), ("Accept", "application/json"),
                                  ("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(file.stat().st_size))):
                conn.putheader(header, value)
            conn.endheaders()
            sent = 0
            with file.open("rb") as source:
                while block := source.read(UPLOAD_BLOCK):
                    conn.send(block)
                    sent += len(block)
                    progress(sent)
            response = conn.getresponse()
            if response.status >= 400:
                raise self._refusal(response)
            return dict(json.loads(response.read()))
        except (OSError, http.client.HTTPException) as e:
            raise UnreachableError(f"the upload of {file} to {self.endpoint.url} broke off: {e}") from None
        finally:
            conn.close()

    def image_from_vm(self, vm: str, name: str, disk: str | None) -> dict[str, Any]:
        return dict(self.call("POST", f"/vms/{quote(vm)}/image", {"image": name, "disk": disk}))

    def verify_image(self, name: str) -> dict[str, Any]:
        return dict(self.call("POST", f"/images/{quote(name)}/verify"))

    def delete_image(self, name: str) -> None:
        self.call("DELETE", f"/images/{quote(name)}")

    # -- backups, snapshots, restores, the store -------------------------------------------------

    def backups(self, vm: str | None, listing: Listing) -> Page[BackupOut]:
        items, total = self.listed("/backups", listing, vm=vm)
        return Page([BackupOut.model_validate(b) for b in items], total)

    def backup(self, backup_id: str) -> BackupOut:
        return BackupOut.model_validate(self.call("GET", f"/backups/{quote(backup_id)}"))

    def protect_backup(self, backup_id: str, protected: bool) -> BackupOut:
        return BackupOut.model_validate(self.call("PUT" if protected else "DELETE",
                                                  f"/backups/{quote(backup_id)}/protection"))

    def snapshot_tree(self, vm: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/vms/{quote(vm)}/snapshots"))

    def check_snapshots(self, vm: str, repair: bool) -> dict[str, Any]:
        return dict(self.call("POST", f"/vms/{quote(vm)}/snapshots/check", repair=str(repair).lower()))

    def boot_test(self, backup_id: str, timeout: float, marker: str) -> BootTestOut:
        return BootTestOut.model_validate(self.call("POST", f"/backups/{quote(backup_id)}/boot-test",
                                                    {"timeout": timeout, "marker": marker}))

    def instant_restore(self, vm: str) -> InstantRestoreOut:
        return InstantRestoreOut.model_validate(self.call("GET", f"/instant-restores/{quote(vm)}"))

    def instant_speed(self, vm: str, speed: int) -> InstantRestoreOut:
        return InstantRestoreOut.model_validate(self.call("POST", f"/instant-restores/{quote(vm)}/speed",
                                                          {"speed": speed}))

    def instant_resume(self, vm: str, speed: int | None) -> InstantRestoreOut:
        return InstantRestoreOut.model_validate(self.call("POST", f"/instant-restores/{quote(vm)}/resume",
                                                          {"speed": speed}))

    def store_stats(self) -> StoreStats:
        from pydantic import TypeAdapter

        from dedup.stats import StoreStats

        return TypeAdapter(StoreStats).validate_python(self.call("GET", "/store/stats"))

    # -- policies --------------------------------------------------------------------------------

    def policies(self) -> list[PolicyOut]:
        from appliance.policies.service import PolicyOut

        return [PolicyOut.model_validate(p) for p in self.call("GET", "/policies", sort="name", limit=1000)]

    def create_policy(self, policy: Policy) -> PolicyOut:
        from appliance.policies.service import PolicyOut

        return PolicyOut.model_validate(self.call("POST", "/policies", policy.model_dump(mode="json")))

    def preview_policy(self, name: str, count: int) -> PolicyPreview:
        return PolicyPreview.model_validate(self.call("GET", f"/policies/{quote(name)}/preview", count=count))

    def delete_policy(self, name: str, dry_run: bool) -> Impact:
        from appliance.deletion.protection import Impact

        return Impact.model_validate(self.call("DELETE", f"/policies/{quote(name)}", dry_run=str(dry_run).lower()))


class _EventStream:
    """A job's event stream, read on a thread: `next` returns its next event (a dict), the job
    as it ended (JobOut, the stream's last event), None when nothing came within the timeout, or
    CLOSED once the appliance ended the stream without the job's end."""

    CLOSED = object()

    def __init__(self, client: RemoteClient, job_id: str):
        self.client = client
        self.job_id = job_id
        self.items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.conn: http.client.HTTPConnection | None = None

    def __enter__(self) -> _EventStream:
        response, self.conn = self.client.request("GET", "/events/stream", query={"job": self.job_id})
        self.reader = threading.Thread(target=self._read, args=(response,), name=f"events of job {self.job_id}",
                                       daemon=True)
        self.reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.conn is not None
        if self.conn.sock is not None:
            try:
                self.conn.sock.shutdown(socket.SHUT_RDWR)   # the reading thread sees the end of the stream
            except OSError:
                pass
        self.reader.join(READER_EXIT)   # before the connection (and the answer it reads) is closed under it
        self.conn.close()

    def next(self, timeout: float) -> Any:
        try:
            return self.items.get(timeout=timeout)
        except queue.Empty:
            return None

    def _read(self, response: http.client.HTTPResponse) -> None:
        """Server-sent events: `event:` and `data:` lines, a blank line ends one; `:` lines are
        keep-alive comments."""
        kind, data = "message", []
        try:
            for raw in response:
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":"):
                    continue
                if line:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "event":
                        kind = value
                    elif name == "data":
                        data.append(value)
                    continue
                if data:
                    payload = json.loads("\n".join(data))
                    self.items.put(JobOut.model_validate(payload) if kind == "job.end" else payload)
                kind, data = "message", []
        except (OSError, ValueError, http.client.HTTPException):
            pass   # cut off: the follower asks for the job's state and opens the stream again
        self.items.put(self.CLOSED)
