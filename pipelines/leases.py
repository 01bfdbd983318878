"""Stage leases: two runs sharing a store never build the same stage output at once.

Before a stage runs, its run takes `<store>/leases/<stage>/<fingerprint>.json` (owner run
id, token, heartbeat, expiry). A second run that finds the lease held waits, and uses the output
as cached once its manifest is complete. The owner renews the lease while the stage runs; if
the owner dies, the lease expires `ttl_s` after its last heartbeat and a waiting run takes the
stage over (a training stage then resumes from the dead run's last checkpoint).

Taking a lease must be atomic, or two runs could both believe they hold it:
- a local folder (or a shared mount): `O_CREAT | O_EXCL` creates the file; an expired lease is
  taken over by the one run that creates its takeover marker (`<fingerprint>.json.takeover-<token>`, also
  `O_EXCL`), so no two waiters replace the same expired holding;
- S3: conditional writes, `If-None-Match: *` to create and `If-Match: <ETag>` to take over,
  renew and release (AWS S3 since 2024, MinIO, moto). A server that rejects them as not
  implemented gets a best-effort lease instead: write, wait, read back, and the last writer
  wins; two runs starting the same stage within that window may then both build it (the
  outputs are the same; the second write replaces the first).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any

from components import storage


@dataclass(frozen=True)
class Lease:
    uri: str
    owner: str  # the pipeline run id
    token: str  # this holding's own id: a run that retakes its own stage gets a new one
    heartbeat_at: float
    expires_at: float
    version: str | None = None  # the S3 ETag of the lease object
    replaced: str | None = None  # the owner of the expired lease this one took over

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at

    def body(self) -> bytes:
        fields = {k: v for k, v in asdict(self).items() if k not in ("uri", "version", "replaced")}
        return json.dumps(fields, sort_keys=True).encode()


class LeaseLost(RuntimeError):
    """Another run took the lease over: this run's heartbeats had stopped for longer than its expiry."""


def lease_uri(store_uri: str, stage: str, fingerprint: str) -> str:
    """Beside the stage outputs, not inside one: an output's file listing must not include it."""
    return storage.join(store_uri, "leases", stage, f"{fingerprint}.json")


def leases_for(store_uri: str, ttl_s: float) -> "LocalLeases | S3Leases":
    if storage.is_local(store_uri):
        return LocalLeases(ttl_s)
    if store_uri.startswith("s3://"):
        return S3Leases(ttl_s)
    raise ValueError(f"store {store_uri}: leases need a local folder or s3:// (no atomic create is known for this scheme)")


class LocalLeases:
    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s

    def try_acquire(self, uri: str, owner: str) -> tuple[Lease | None, Lease | None]:
        """(ours, None) when taken; (None, holder) when another run holds it and it has not expired."""
        path = storage.normalize(uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        for _ in range(3):  # a race lost to another run is looked at again
            lease = self._new(uri, owner)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.read(uri)
                if holder is None:
                    continue  # released between our create and our read
                if not holder.expired():
                    return None, holder
                if self._take_over(path, holder, lease):
                    return replace(lease, replaced=holder.owner), None
                continue
            with os.fdopen(fd, "wb") as out:
                out.write(lease.body())
            return lease, None
        return None, self.read(uri)

    def _take_over(self, path: str, expired: Lease, lease: Lease) -> bool:
        """Replace the expired holding `expired.token`; of several runs trying, one wins: the one that
        creates that holding's takeover marker (O_EXCL), and only while the lease is still that holding."""
        try:
            os.close(os.open(f"{path}.takeover-{expired.token or 'unreadable'}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        current = self.read(lease.uri)
        if current is None or current.token != expired.token:
            return False
        storage.write_bytes_atomic(lease.uri, lease.body())
        return True

    def read(self, uri: str) -> Lease | None:
        try:
            with open(storage.normalize(uri), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        return _parse(uri, data, None)

    def renew(self, lease: Lease) -> Lease:
        current = self.read(lease.uri)
        if current is None or current.token != lease.token:
            raise LeaseLost(f"lease {lease.uri} is now held by run {current.owner if current else 'nobody'}")
        renewed = self._new(lease.uri, lease.owner, lease.token)
        storage.write_bytes_atomic(lease.uri, renewed.body())
        return renewed

    def release(self, lease: Lease) -> None:
        import glob

        current = self.read(lease.uri)
        if current is not None and current.token == lease.token:
            storage.remove_file(lease.uri)
            for marker in glob.glob(glob.escape(storage.normalize(lease.uri)) + ".takeover-*"):
                os.remove(marker)

    def _new(self, uri: str, owner: str, token: str | None = None) -> Lease:
        now = time.time()
        return Lease(uri, owner, token or uuid.uuid4().hex, now, now + self.ttl_s)


class S3Leases(LocalLeases):
    """The same protocol on S3 conditional writes (module docstring)."""

    READ_BACK_S = 2.0  # best-effort mode: how long a writer waits before reading its lease back

    def __init__(self, ttl_s: float):
        super().__init__(ttl_s)
        self.conditional = True

    def _client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=storage.s3_endpoint())

    @staticmethod
    def _split(uri: str) -> tuple[str, str]:
        bucket, _, key = uri[len("s3://"):].partition("/")
        return bucket, key

    def try_acquire(self, uri: str, owner: str) -> tuple[Lease | None, Lease | None]:
        from botocore.exceptions import ClientError

        client, (bucket, key) = self._client(), self._split(uri)
        for _ in range(3):
            lease = self._new(uri, owner)
            holder = self.read(uri)
            if holder is not None and not holder.expired():
                return None, holder
            condition = {"IfMatch": holder.version} if holder is not None else {"IfNoneMatch": "*"}
            try:
                put = client.put_object(Bucket=bucket, Key=key, Body=lease.body(), **(condition if self.conditional else {}))
            except ClientError as err:
                code = err.response.get("Error", {}).get("Code", "")
                if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    continue  # another run created or took it first: look again
                if code in ("NotImplemented", "InvalidArgument") and self.conditional:
                    self.conditional = False  # this server has no conditional writes: best effort
                    continue
                raise
            taken = Lease(uri, owner, lease.token, lease.heartbeat_at, lease.expires_at, put.get("ETag"),
                          holder.owner if holder is not None else None)
            if not self.conditional:
                time.sleep(self.READ_BACK_S)
                back = self.read(uri)
                if back is None or back.token != taken.token:
                    return None, back
                taken = replace(back, replaced=taken.replaced)
            return taken, None
        return None, self.read(uri)

    def read(self, uri: str) -> Lease | None:
        from botocore.exceptions import ClientError

        bucket, key = self._split(uri)
        try:
            got = self._client().get_object(Bucket=bucket, Key=key)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return _parse(uri, got["Body"].read(), got.get("ETag"))

    def renew(self, lease: Lease) -> Lease:
        from botocore.exceptions import ClientError

        bucket, key = self._split(lease.uri)
        renewed = self._new(lease.uri, lease.owner, lease.token)
        condition = {"IfMatch": lease.version} if self.conditional and lease.version else {}
        try:
            put = self._client().put_object(Bucket=bucket, Key=key, Body=renewed.body(), **condition)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") == "PreconditionFailed":
                current = self.read(lease.uri)
                raise LeaseLost(f"lease {lease.uri} is now held by run {current.owner if current else 'nobody'}") from None
            raise
        return Lease(renewed.uri, renewed.owner, renewed.token, renewed.heartbeat_at, renewed.expires_at, put.get("ETag"))

    def release(self, lease: Lease) -> None:
        from botocore.exceptions import ClientError

        bucket, key = self._split(lease.uri)
        condition = {"IfMatch": lease.version} if self.conditional and lease.version else {}
        try:
            self._client().delete_object(Bucket=bucket, Key=key, **condition)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "NoSuchKey"):
                raise


def _parse(uri: str, data: bytes, version: str | None) -> Lease:
    try:
        fields = json.loads(data)
        return Lease(uri, fields["owner"], fields["token"], float(fields["heartbeat_at"]), float(fields["expires_at"]), version)
    except (ValueError, KeyError, TypeError) as err:
        # A half-written lease cannot happen (writes are atomic); a hand-edited one is treated as expired.
        return Lease(uri, f"unreadable lease ({err})", "", 0.0, 0.0, version)
