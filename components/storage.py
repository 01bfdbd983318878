"""Files behind a URI: local paths and anything pyarrow.fs understands (s3://, gs://).

Every write that another process may read is atomic: the bytes go to a temporary name in
the same folder and are renamed into place, so a killed writer never leaves a file that
looks whole.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def normalize(uri: str) -> str:
    """Absolute local path for plain paths; URIs are returned unchanged."""
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return os.path.abspath(os.path.expanduser(uri)) if is_local(uri) else uri.rstrip("/")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    uri = normalize(uri)
    if is_local(uri):
        return pafs.LocalFileSystem(), uri
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, ValueError) as err:
        raise ValueError(f"cannot open storage URI {uri!r}: {err}") from err


def join(uri: str, *parts: str) -> str:
    return "/".join([normalize(uri).rstrip("/"), *parts])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


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


def write_json_atomic(uri: str, value: Any) -> None:
    write_bytes_atomic(uri, json.dumps(value, indent=2, sort_keys=True, default=str).encode())


def read_json(uri: str) -> Any:
    data = read_bytes(uri)
    try:
        return json.loads(data)
    except json.JSONDecodeError as err:
        raise ValueError(f"{uri} is not valid JSON: {err}") from err
