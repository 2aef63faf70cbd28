"""Typed URIs over fsspec: plain paths, ``file://``, ``s3://``, ``oss://``, ``gs://``.

``s3://`` talks to any S3-compatible store: the endpoint comes from ``DISTILFLOW_S3_ENDPOINT_URL``
or the standard ``AWS_ENDPOINT_URL``; credentials from the usual AWS variables or a mounted
Secret, never from a config. ``oss://`` needs ``ossfs`` (extra ``oss``), ``gs://`` needs ``gcsfs``.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator

SCHEMES = ("file", "s3", "oss", "gs")


def check_uri(value: str) -> str:
    """Accept a local path or a URI with a supported scheme; say which schemes exist when refusing."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("empty URI; give a local path or one of file://, s3://, oss://, gs://")
    if "://" in value:
        scheme = value.split("://", 1)[0].lower()
        if scheme not in SCHEMES:
            raise ValueError(
                f"unsupported URI scheme {scheme + '://'!r} in {value!r}; use a local path or "
                + ", ".join(s + "://" for s in SCHEMES)
            )
        if scheme != "file" and not value.split("://", 1)[1].strip("/"):
            raise ValueError(f"{value!r} names no bucket; write {scheme}://BUCKET/PREFIX")
    return value


Uri = Annotated[str, AfterValidator(check_uri)]
"""A string field that holds a local path or a supported object-storage URI."""


def scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def is_local(uri: str) -> bool:
    return scheme(uri) == "file"


def local_path(uri: str) -> str:
    """The filesystem path of a local URI (``file://`` stripped, made absolute)."""
    if not is_local(uri):
        raise ValueError(f"{uri} is not a local path")
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return os.path.abspath(os.path.expanduser(path))


def storage_options(uri: str) -> dict[str, Any]:
    """fsspec options for ``uri``: the S3 endpoint URL when one is configured."""
    if scheme(uri) == "s3":
        endpoint = os.environ.get("DISTILFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            return {"client_kwargs": {"endpoint_url": endpoint}}
    if scheme(uri) == "oss":
        endpoint = os.environ.get("OSS_ENDPOINT")
        if endpoint:
            return {"endpoint": endpoint}
    return {}


def filesystem(uri: str):
    """Return ``(fs, path)`` for ``uri``."""
    import fsspec

    check_uri(uri)
    if is_local(uri):
        return fsspec.filesystem("file"), local_path(uri)
    try:
        fs, path = fsspec.core.url_to_fs(uri, **storage_options(uri))
    except ImportError as exc:
        extra = {"oss": "oss", "gs": "gcs"}.get(scheme(uri), "")
        raise ImportError(f"{uri}: {exc}; install distilflow[{extra}]") from None
    return fs, path


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with ``/`` (or the local separator for local paths)."""
    if is_local(uri):
        return os.path.join(local_path(uri), *parts)
    return posixpath.join(uri.rstrip("/"), *parts)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically: a local file is written beside its target and renamed; an object
    store PUT only becomes visible once complete."""
    fs, path = filesystem(uri)
    if is_local(uri):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return
    with fs.open(path, "wb") as f:
        f.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def remove(uri: str, recursive: bool = False) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def upload_dir(local_dir: str, uri: str) -> None:
    """Copy a local folder to ``uri`` (a no-op when they are the same place)."""
    if is_local(uri):
        dest = local_path(uri)
        if os.path.abspath(local_dir) != dest:
            shutil.copytree(local_dir, dest, dirs_exist_ok=True)
        return
    fs, path = filesystem(uri)
    fs.put(local_dir.rstrip("/") + "/", path.rstrip("/") + "/", recursive=True)


def materialize(uri: str, cache_dir: str | None = None) -> str:
    """Return a local folder or file holding ``uri``'s content (downloaded once into a cache)."""
    if is_local(uri):
        return local_path(uri)
    cache_root = cache_dir or os.environ.get("DISTILFLOW_CACHE", os.path.expanduser("~/.cache/distilflow"))
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    dest = os.path.join(cache_root, "downloads", key)
    done = dest + ".complete"
    if os.path.exists(done):
        return dest
    fs, path = filesystem(uri)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=key + ".partial-", dir=os.path.dirname(dest))
    if fs.isdir(path):
        fs.get(path.rstrip("/") + "/", staging + "/", recursive=True)
    else:
        fs.get(path, os.path.join(staging, posixpath.basename(path)))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(staging, dest)
    Path(done).touch()
    return dest
