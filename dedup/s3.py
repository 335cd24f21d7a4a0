"""The S3 backend: a store in a bucket of an S3 service (radosgw, AWS, MinIO...), through boto3.

    s3://BUCKET[/PREFIX]?endpoint=https://rgw.example:443&region=NAME&profile=NAME&lock=compliance

Credentials come from boto3's usual places (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the
profile in ~/.aws/credentials), never from the location. Keys are `PREFIX/<store path>`.

Files: an object appears whole or not at all. A small file is one PUT; a larger one (a pack) is
a multipart upload of PART-sized parts, sent on a background thread while the next part fills,
that only CompleteMultipartUpload makes visible. A writer that dies leaves an incomplete upload,
invisible to readers; a bucket lifecycle rule (set when Cairn creates the bucket) aborts it a day
later. Directories are zero-byte markers `PREFIX/<dir>/` that make an empty directory exist;
a directory lists with one ListObjectsV2 (delimiter "/").

Times come from the server's clock only: objects' LastModified and the Date of its answers.
HEAD answers in whole seconds, listings in milliseconds; clock_error_ns (1 s) covers that for GC.
S3 cannot set a time, so:

- touch(P) PUTs an empty marker `PREFIX/.cairn/held/P`, then checks that P still exists; a
  file's mtime is the later of its own and its marker's;
- rename(S, T) is a server-side copy (radosgw shares the data instead of copying it) that
  records S's mtime and name in T's metadata, then the delete of S. A touch of S that succeeded
  checked S before that delete, so its marker was written before it and counts for T: GC, which
  stats the packs it moved aside only after moving them all, sees every such touch (gc.py step 5).
  Listings do not carry metadata: a renamed file lists with its copy time, later than its true
  mtime, which can only make GC keep it longer.

Locks are lease objects `PREFIX/.cairn/locks/<path>` changed only by conditional PUTs, which
radosgw (16.2) and AWS both honour: If-None-Match: * creates one only if none exists, If-Match:
<ETag> replaces it only if nobody else did meanwhile (compare-and-swap). The holder rewrites it
every LOCK_SECONDS/4 (If-Match its last ETag); a lease whose LastModified is LOCK_SECONDS older
than the server's Date is dead and can be taken over with If-Match. So a lock dies with its
holder without a clock other than the server's, and two takers can never both win.

Object Lock (lock=compliance, on a bucket Cairn creates with it): retain() puts a compliance
retention date on the current version of an object; no one, the bucket's owner included, can
delete or overwrite that version before the date. Deleting a retained object only adds a delete
marker (the bucket is versioned), so Cairn's own deletes never fail on it; the lifecycle rule
removes old versions once their date has passed.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from .backend import Entry, NewFile
from .errors import StoreError, StoreFullError, StoreUnreachableError
from .locks import guarded_create_lock, guarded_try_lock

LOCK_SECONDS = 60
CLOCK_ERROR_NS = 1_000_000_000
PART = 16 << 20  # multipart part size: 4 requests per 64 MiB pack
IN_FLIGHT = 2  # parts of one file being sent while the next fills
HIDDEN = ".cairn"
HELD = f"{HIDDEN}/held"
LOCKS = f"{HIDDEN}/locks"
_MTIME = "cairn-mtime"  # metadata of a renamed object: its source's mtime (ns)
_ORIGIN = "cairn-origin"  # ... and its source's store path
_LIFECYCLE_DAYS = 1
_FULL = {"QuotaExceeded", "InsufficientStorage", "XMinioStorageFull", "EntityTooLarge"}
_REFUSED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
            "InvalidToken", "ExpiredToken"}
_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}  # a missing bucket holds no file


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise StoreError("S3 stores need boto3: pip install boto3 (Cairn's dependencies include it)") from None
    return boto3


@dataclass(frozen=True)
class S3Options:
    endpoint: str | None = None  # None: AWS
    region: str | None = None
    profile: str | None = None
    object_lock: bool = False  # the bucket has (or is created with) Object Lock
    timeout: float = 30.0


class S3Backend:
    clock_error_ns = CLOCK_ERROR_NS

    def __init__(self, client: Any, bucket: str, prefix: str, location: str, options: S3Options) -> None:
        self.location = location
        self.closed = False
        self.object_lock = options.object_lock
        self._s3 = client
        self._bucket = bucket
        self._root = f"{prefix}/" if prefix else ""
        self._senders = ThreadPoolExecutor(4, thread_name_prefix="cairn-s3-part")
        self._locks: set[S3Lock] = set()  # held, with a heartbeat using the connection

    @classmethod
    def connect(cls, bucket: str, prefix: str, options: S3Options) -> S3Backend:
        boto3 = _boto3()
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound

        location = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        try:
            session = boto3.session.Session(profile_name=options.profile)
        except ProfileNotFound as e:
            raise StoreUnreachableError(f"cannot reach store {location}: {e}") from None
        config = Config(s3={"addressing_style": "path" if options.endpoint else "auto"},
                        retries={"mode": "standard", "max_attempts": 3}, connect_timeout=options.timeout,
                        read_timeout=options.timeout, max_pool_connections=16)
        client = session.client("s3", endpoint_url=options.endpoint, region_name=options.region, config=config)
        backend = cls(client, bucket, prefix, location, options)
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as e:
            if _code(e) not in _MISSING:
                backend.close()
                raise backend.translate(e, "open the bucket") from None
            # A missing bucket is an empty store: init creates it.
        except BotoCoreError as e:
            backend.close()
            raise backend.translate(e, "open the bucket") from None
        return backend

    # --- files ---------------------------------------------------------------

    def create_root(self) -> None:
        with self._errors("create the bucket"):
            if not self._bucket_exists():
                create: dict[str, Any] = {"Bucket": self._bucket}
                region = self._s3.meta.region_name
                if region and region not in ("us-east-1", "default") and not self._s3.meta.endpoint_url:
                    create["CreateBucketConfiguration"] = {"LocationConstraint": region}
                if self.object_lock:
                    create["ObjectLockEnabledForBucket"] = True
                self._s3.create_bucket(**create)
                self._s3.put_bucket_lifecycle_configuration(Bucket=self._bucket,
                                                            LifecycleConfiguration=_lifecycle(self.object_lock))
            elif self.object_lock and not self._has_object_lock():
                raise StoreError(f"store {self.location}: bucket {self._bucket} exists without Object Lock, which "
                                 "S3 turns on only when a bucket is created: name a new bucket for lock=compliance")
            if self._root:
                self._s3.put_object(Bucket=self._bucket, Key=self._root, Body=b"")

    def read(self, name: str) -> bytes:
        with self._errors(f"read {name}"):
            return self._get(name, {})

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        with self._errors(f"read {name}"):
            try:
                return self._get(name, {"Range": f"bytes={offset}-{offset + length - 1}"})
            except _Missing:
                raise
            except self._client_error() as e:
                if _code(e) == "InvalidRange":
                    return b""  # offset at or past the end
                raise

    @contextmanager
    def atomic_writer(self, name: str) -> Iterator[NewFile]:
        writer = _ObjectWriter(self, self._key(name))
        try:
            yield writer
            writer.finish()
        except BaseException:
            writer.abandon()
            raise

    def make_dir(self, name: str) -> None:
        with self._errors(f"create directory {name}"):
            self._s3.put_object(Bucket=self._bucket, Key=self._key(name) + "/", Body=b"")

    def stat(self, name: str) -> Entry | None:
        base = name.rsplit("/", 1)[-1]
        with self._errors(f"look at {name or 'the store'}"):
            if name == "":
                if not self._bucket_exists():
                    return None
                return Entry("", 0, 0, True) if not self._root or self._any_under(self._root) else None
            head = self._head(self._key(name))
            if head is None:
                return Entry(base, 0, 0, True) if self._any_under(self._key(name) + "/") else None
            return Entry(base, head["ContentLength"], self._mtime(name, head), False)

    def list(self, name: str) -> builtins.list[Entry]:
        directory = self._key(name) + "/" if name else self._root
        with self._errors(f"list {name or 'the store'}"):
            files, dirs = self._list(directory)
            held, _ = self._list(self._key(_join(HELD, name)) + "/")
        entries = [Entry(d, 0, 0, True) for d in dirs]
        for base, (size, mtime) in files.items():
            if base:  # "" is the directory's own marker
                entries.append(Entry(base, size, max(mtime, held.get(base, (0, 0))[1]), False))
        return entries

    def touch(self, name: str) -> bool:
        with self._errors(f"touch {name}"):
            # Marker first, then the check: a touch that sees the file counts for any rename after it.
            self._s3.put_object(Bucket=self._bucket, Key=self._key(_join(HELD, name)), Body=b"")
            return self._head(self._key(name)) is not None

    def rename(self, source: str, target: str) -> None:
        with self._errors(f"rename {source}"):
            head = self._head(self._key(source))
            if head is None:
                raise FileNotFoundError(errno.ENOENT, f"{self.location}/{source} does not exist")
            metadata = {_MTIME: str(self._mtime(source, head)), _ORIGIN: source}
            self._s3.copy_object(Bucket=self._bucket, Key=self._key(target), MetadataDirective="REPLACE",
                                 CopySource={"Bucket": self._bucket, "Key": self._key(source)}, Metadata=metadata)
            self._s3.delete_object(Bucket=self._bucket, Key=self._key(source))

    def remove(self, name: str) -> None:
        with self._errors(f"remove {name}"):
            head = self._head(self._key(name))
            keys = [self._key(name), self._key(_join(HELD, name))]
            origin = (head or {}).get("Metadata", {}).get(_ORIGIN)
            if origin and self._head(self._key(origin)) is None:
                keys.append(self._key(_join(HELD, origin)))  # the source's marker counted for this copy only
            self._delete(keys)

    def remove_tree(self, name: str) -> None:
        with self._errors(f"remove {name}"):
            for directory in (self._key(name), self._key(_join(HELD, name))):
                keys = [o["Key"] for page in self._pages(directory + "/", delimiter=None) for o in page.get("Contents", [])]
                self._delete([*keys, directory + "/"])

    def retain(self, name: str, until: datetime) -> None:
        """Compliance retention of the file's current version until `until` (an Object Lock bucket only)."""
        with self._errors(f"retain {name}"):
            self._s3.put_object_retention(Bucket=self._bucket, Key=self._key(name),
                                          Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until})

    def retained_until(self, name: str) -> datetime | None:
        with self._errors(f"look at the retention of {name}"):
            try:
                answer = self._s3.get_object_retention(Bucket=self._bucket, Key=self._key(name))
            except self._client_error() as e:
                if _code(e) in {"NoSuchObjectLockConfiguration", "ObjectLockConfigurationNotFoundError"}:
                    return None
                raise
        retention = answer.get("Retention", {})
        return retention.get("RetainUntilDate") if retention.get("Mode") == "COMPLIANCE" else None

    # --- locks ---------------------------------------------------------------

    def try_lock(self, name: str, create: bool = True) -> S3Lock | None:
        return guarded_try_lock(lambda: self.stat(name) is not None, lambda: S3Lock.acquire(self, name),
                                lambda content: self._put_exclusive(name, content), create)

    def create_lock(self, name: str, content: bytes) -> S3Lock:
        return guarded_create_lock(lambda: S3Lock.acquire(self, name), lambda content: self._put_exclusive(name, content), content,
                                   f"{self.location}/{name}")

    def close(self) -> None:
        """Disconnect. Locks still held are left to go stale, as if this process had died."""
        if self.closed:
            return
        self.closed = True
        for lock in list(self._locks):
            lock.stop_heartbeat()
        self._senders.shutdown(wait=True)
        self._s3.close()

    # --- internals -------------------------------------------------------------

    def _key(self, name: str) -> str:
        return f"{self._root}{name}"

    def _put_exclusive(self, name: str, content: bytes) -> None:
        with self._errors(f"create {name}"):
            try:
                self._s3.put_object(Bucket=self._bucket, Key=self._key(name), Body=content, IfNoneMatch="*")
            except self._client_error() as e:
                if _code(e) in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
                    raise FileExistsError(errno.EEXIST, f"{self.location}/{name} exists") from None
                raise

    def _get(self, name: str, extra: dict[str, str]) -> bytes:
        try:
            answer = self._s3.get_object(Bucket=self._bucket, Key=self._key(name), **extra)
        except self._client_error() as e:
            if _code(e) in _MISSING:
                raise _Missing(name) from None
            raise
        with answer["Body"] as body:
            return body.read()

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self._s3.head_object(Bucket=self._bucket, Key=key)
        except self._client_error() as e:
            if _code(e) in _MISSING:
                return None
            raise

    def _mtime(self, name: str, head: dict[str, Any]) -> int:
        """A file's mtime: its own (or, renamed, its source's), or its touch marker's if later."""
        metadata = head.get("Metadata", {})
        own = int(metadata[_MTIME]) if _MTIME in metadata else _ns(head["LastModified"])
        markers = [name, *([metadata[_ORIGIN]] if _ORIGIN in metadata else [])]
        for marker in markers:
            held = self._head(self._key(_join(HELD, marker)))
            if held is not None:
                own = max(own, _ns(held["LastModified"]))
        return own

    def _list(self, directory: str) -> tuple[dict[str, tuple[int, int]], builtins.list[str]]:
        """({file: (size, mtime ns)}, [subdirectories]) of a directory prefix ending in "/"."""
        files: dict[str, tuple[int, int]] = {}
        dirs: builtins.list[str] = []
        for page in self._pages(directory, delimiter="/"):
            for o in page.get("Contents", []):
                files[o["Key"][len(directory):]] = (o["Size"], _ns(o["LastModified"]))
            dirs += [p["Prefix"][len(directory):-1] for p in page.get("CommonPrefixes", [])]
        return files, dirs

    def _pages(self, prefix: str, delimiter: str | None) -> Iterator[dict[str, Any]]:
        args = {"Bucket": self._bucket, "Prefix": prefix, **({"Delimiter": delimiter} if delimiter else {})}
        try:
            yield from self._s3.get_paginator("list_objects_v2").paginate(**args)
        except self._client_error() as e:
            if _code(e) != "NoSuchBucket":
                raise

    def _any_under(self, prefix: str) -> bool:
        try:
            answer = self._s3.list_objects_v2(Bucket=self._bucket, Prefix=prefix, MaxKeys=1)
        except self._client_error() as e:
            if _code(e) == "NoSuchBucket":
                return False
            raise
        return bool(answer.get("KeyCount"))

    def _delete(self, keys: builtins.list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            answer = self._s3.delete_objects(Bucket=self._bucket, Delete={"Objects": batch, "Quiet": True})
            failed = [e for e in answer.get("Errors", []) if e.get("Code") not in _MISSING]
            if failed:
                raise StoreError(f"store {self.location}: cannot delete {failed[0]['Key']}: {failed[0].get('Message')}")

    def _bucket_exists(self) -> bool:
        try:
            self._s3.head_bucket(Bucket=self._bucket)
        except self._client_error() as e:
            if _code(e) in _MISSING:
                return False
            raise
        return True

    def _has_object_lock(self) -> bool:
        try:
            answer = self._s3.get_object_lock_configuration(Bucket=self._bucket)
        except self._client_error():
            return False
        return answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"

    def _client_error(self) -> type[Exception]:
        from botocore.exceptions import ClientError

        return ClientError

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """boto3's errors as the store's, saying what to do; a missing object is FileNotFoundError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except _Missing as e:
            raise FileNotFoundError(errno.ENOENT, f"{self.location}/{e.args[0]} does not exist") from None
        except (ClientError, BotoCoreError) as e:
            raise self.translate(e, doing) from None

    def translate(self, e: Exception, doing: str) -> StoreError:
        code = _code(e)
        where = f"store {self.location}: cannot {doing}"
        if code in _FULL:
            return StoreFullError(f"{where}: the bucket or its owner's quota is full ({code}). Nothing was lost; "
                                  "free space (cairn store prune, then gc) or raise the quota, then run again")
        if code in _REFUSED:
            return StoreUnreachableError(f"{where}: the server refused the credentials ({code}): check "
                                         "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the profile) and the "
                                         "user's rights on the bucket")
        if code == "NoCredentialsError":
            return StoreUnreachableError(f"{where}: no S3 credentials: set AWS_ACCESS_KEY_ID and "
                                         "AWS_SECRET_ACCESS_KEY, or name a profile (?profile=NAME)")
        if code in {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"}:
            return StoreUnreachableError(f"{where}: the S3 endpoint does not answer ({e}); check the endpoint "
                                         "and the network, then run again")
        return StoreError(f"{where}: {e}")


class _Missing(Exception):
    """The object does not exist (becomes FileNotFoundError at the edge)."""


class _ObjectWriter:
    """Bytes of one new object: PUT whole if small, else a multipart upload whose parts are sent
    on the backend's threads, at most IN_FLIGHT per file, while the next part fills."""

    def __init__(self, backend: S3Backend, key: str) -> None:
        self._backend = backend
        self._s3 = backend._s3
        self._key = key
        self._buffer = bytearray()
        self._upload: str | None = None
        self._parts: list[Future[dict[str, Any]]] = []

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._buffer += data
        if len(self._buffer) >= PART:
            self._send_part()
        return memoryview(data).nbytes

    def flush(self) -> None:
        """Nothing: the object exists once finish() has returned."""

    def finish(self) -> None:
        bucket = self._backend._bucket
        with self._backend._errors(f"write {self._key}"):
            if self._upload is None:
                self._s3.put_object(Bucket=bucket, Key=self._key, Body=bytes(self._buffer))
                return
            if self._buffer:
                self._send_part()
            parts = [{"PartNumber": n, "ETag": f.result()["ETag"]} for n, f in enumerate(self._parts, 1)]
            self._s3.complete_multipart_upload(Bucket=bucket, Key=self._key, UploadId=self._upload,
                                               MultipartUpload={"Parts": parts})

    def abandon(self) -> None:
        if self._upload is None:
            return
        for part in self._parts:
            part.exception()  # waits
        try:
            self._s3.abort_multipart_upload(Bucket=self._backend._bucket, Key=self._key, UploadId=self._upload)
        except Exception:
            pass  # the lifecycle rule aborts it a day later

    def _send_part(self) -> None:
        bucket = self._backend._bucket
        with self._backend._errors(f"write {self._key}"):
            if self._upload is None:
                self._upload = self._s3.create_multipart_upload(Bucket=bucket, Key=self._key)["UploadId"]
            if len(self._parts) >= IN_FLIGHT:
                self._parts[-IN_FLIGHT].result()
            body, number = bytes(self._buffer), len(self._parts) + 1
            self._buffer.clear()
            self._parts.append(self._backend._senders.submit(
                self._s3.upload_part, Bucket=bucket, Key=self._key, UploadId=self._upload, PartNumber=number,
                Body=body))


class S3Lock:
    """A held lease object, rewritten (compare-and-swap) by a heartbeat until release()."""

    def __init__(self, backend: S3Backend, name: str, etag: str) -> None:
        self._backend = backend
        self._name = name
        self._key = backend._key(_join(LOCKS, name))
        self._etag = etag
        self._stop = threading.Event()
        self._beats = 0
        self.lost = False
        self._thread = threading.Thread(target=self._run, name=f"cairn-lock-{name}", daemon=True)
        self._thread.start()
        backend._locks.add(self)

    @classmethod
    def acquire(cls, backend: S3Backend, name: str) -> S3Lock | None:
        """The lock, or None while a live holder has it."""
        key = backend._key(_join(LOCKS, name))
        s3, bucket = backend._s3, backend._bucket
        with backend._errors(f"lock {name}"):
            condition: dict[str, str] = {"IfNoneMatch": "*"}
            head = backend._head(key)
            if head is not None:
                now = parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"])
                if (now - head["LastModified"]).total_seconds() < LOCK_SECONDS:
                    return None  # its holder's heartbeat is recent
                condition = {"IfMatch": _bare(head["ETag"])}  # dead: take it over, unless someone else does first
            try:
                answer = s3.put_object(Bucket=bucket, Key=key, Body=_lease_body(0), **condition)
            except backend._client_error() as e:
                if _code(e) in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
                    return None
                raise
        return cls(backend, name, answer["ETag"])

    def stop_heartbeat(self) -> None:
        self._stop.set()
        self._thread.join()
        self._backend._locks.discard(self)

    def release(self, unlink: bool = False) -> None:
        self.stop_heartbeat()
        backend = self._backend
        if backend.closed:
            return  # disconnected: the lease goes stale by itself
        if unlink:
            backend.remove(self._name)
        with backend._errors(f"unlock {self._name}"):
            head = backend._head(self._key)
            if head is not None and head["ETag"] == self._etag:
                backend._s3.delete_object(Bucket=backend._bucket, Key=self._key)

    def _run(self) -> None:
        backend = self._backend
        while not self._stop.wait(LOCK_SECONDS / 4):
            self._beats += 1
            try:
                answer = backend._s3.put_object(Bucket=backend._bucket, Key=self._key, Body=_lease_body(self._beats),
                                                IfMatch=_bare(self._etag))
            except backend._client_error() as e:
                if _code(e) in {"PreconditionFailed", "412"}:
                    self.lost = True  # taken over after it went stale: it is theirs now
                    return
                continue  # the next beat retries
            except Exception:
                continue
            self._etag = answer["ETag"]


def _lease_body(beat: int) -> bytes:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "beat": beat,
                       "token": secrets.token_hex(4)}).encode()


def _lifecycle(versioned: bool) -> dict[str, Any]:
    rule: dict[str, Any] = {"ID": "cairn", "Status": "Enabled", "Filter": {"Prefix": ""},
                            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": _LIFECYCLE_DAYS}}
    if versioned:
        # Versions a delete or an overwrite left behind go once no retention holds them.
        rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": _LIFECYCLE_DAYS}
    return {"Rules": [rule]}


def _bare(etag: str) -> str:
    # radosgw 16 compares If-Match with the ETag's value without its quotes.
    return etag.strip('"')


def _code(e: Exception) -> str:
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return type(e).__name__


def _ns(when: datetime) -> int:
    return int(when.astimezone(UTC).timestamp() * 1_000_000) * 1000


def _join(directory: str, base: str) -> str:
    return f"{directory}/{base}" if directory else base

