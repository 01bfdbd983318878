"""Files behind a URI: local paths and anything pyarrow.fs understands (s3://, gs://).

Every write that another process may read is atomic: the bytes go to a temporary name in
the same folder and are renamed into place, so a killed writer never leaves a file that
looks whole.

S3-compatible stores other than AWS (MinIO, Ceph, moto) are named by the AWS SDKs' standard
variables, AWS_ENDPOINT_URL_S3 or else AWS_ENDPOINT_URL (e.g. http://minio:9000), read here
and passed to pyarrow as `endpoint_override`: pyarrow's own reading of them depends on its
version and on how the filesystem is built (`S3FileSystem()` ignores them in pyarrow 25).
Credentials come from the environment too (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), never
from the URI: a URI is recorded in run records and MLflow params.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def normalize(uri: str) -> str:
    """Absolute local path for plain paths; URIs are returned unchanged."""
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return os.path.abspath(os.path.expanduser(uri)) if is_local(uri) else uri.rstrip("/")


# The AWS SDKs' order: the service-specific variable wins over the global one.
S3_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint the environment names, if any (None: AWS S3 itself)."""
    return next((os.environ[name] for name in S3_ENDPOINT_VARIABLES if os.environ.get(name)), None)


def has_password(uri: str) -> bool:
    """Whether a URI carries a secret in its user info (scheme://user:secret@host/...)."""
    return "://" in uri and urlsplit(uri).password is not None


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    uri = normalize(uri)
    if is_local(uri):
        return pafs.LocalFileSystem(), uri
    try:
        return pafs.FileSystem.from_uri(_with_endpoint(uri))
    except (pa.ArrowInvalid, ValueError) as err:
        raise ValueError(f"cannot open storage URI {uri!r}: {err}") from err


def _with_endpoint(uri: str) -> str:
    endpoint = s3_endpoint()
    if not uri.startswith("s3://") or endpoint is None or "endpoint_override=" in uri:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}endpoint_override={quote(endpoint, safe='')}"


def join(uri: str, *parts: str) -> str:
    return "/".join([normalize(uri).rstrip("/"), *parts])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def make_dirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


@dataclass(frozen=True)
class Entry:
    uri: str  # full URI (scheme kept), usable with every function here
    name: str
    is_dir: bool


def list_dir(uri: str) -> list[Entry]:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(
        (Entry(join(uri, i.base_name), i.base_name, i.type == pafs.FileType.Directory) for i in infos),
        key=lambda e: e.name,
    )


def list_files(uri: str) -> dict[str, int]:
    """Every file under a folder, at any depth: path relative to `uri` ("shards/a.parquet") -> size in
    bytes, from one recursive listing (on S3 one paged LIST, not a request per file). {} if absent."""
    fs, path = resolve(uri)
    base = path.rstrip("/") + "/"
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return {info.path[len(base):]: info.size for info in infos
            if info.type == pafs.FileType.File and info.path.startswith(base)}


_CHUNK = 8 << 20


def checksum(uri: str) -> tuple[str, int]:
    """sha256 (hex) and size of a file, streamed in 8 MiB chunks so a large file is never held whole."""
    fs, path = resolve(uri)
    digest, size = hashlib.sha256(), 0
    try:
        with fs.open_input_stream(path) as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"no file at {uri}") from err
    return digest.hexdigest(), size


def remove_tree(uri: str) -> None:
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def remove_file(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def temporary_name(uri: str) -> str:
    """A sibling name that readers ignore (they look for exact names only)."""
    head, _, tail = uri.rpartition("/")
    return f"{head}/.{tail}.tmp-{uuid.uuid4().hex[:8]}"


_TEMPORARY = re.compile(r"\..+\.tmp-[0-9a-f]{8}")


def is_temporary(name: str) -> bool:
    """Whether a file name is one `temporary_name` makes: a write that never finished (or not yet)."""
    return _TEMPORARY.fullmatch(name.rpartition("/")[2]) is not None


def write_bytes_atomic(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path.rpartition("/")[0], recursive=True)
    tmp = temporary_name(path)
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    except BaseException:
        if fs.get_file_info(tmp).type == pafs.FileType.File:
            fs.delete_file(tmp)
        raise


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"no file at {uri}") from err


def write_json_atomic(uri: str, value: Any, sort_keys: bool = True) -> None:
    write_bytes_atomic(uri, json.dumps(value, indent=2, sort_keys=sort_keys, default=str).encode())


def read_json(uri: str) -> Any:
    data = read_bytes(uri)
    try:
        return json.loads(data)
    except json.JSONDecodeError as err:
        raise ValueError(f"{uri} is not valid JSON: {err}") from err
