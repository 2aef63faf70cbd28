"""Typed URIs over fsspec: plain paths, ``file://``, ``s3://``, ``oss://``, ``gs://`` and (to read)
``hf://datasets/ORG/NAME[@REVISION]/PATH``.

``s3://`` talks to any S3-compatible store: the endpoint comes from ``DISTILFLOW_S3_ENDPOINT_URL``
or the standard ``AWS_ENDPOINT_URL``; credentials from the usual AWS variables or a mounted
Secret, never from a config. ``oss://`` needs ``ossfs`` (extra ``oss``): the endpoint comes from
``OSS_ENDPOINT``, the AccessKey from ``OSS_ACCESS_KEY_ID``/``OSS_ACCESS_KEY_SECRET`` (or the
``ALIBABA_CLOUD_*`` variables, plus an STS token when set). ``gs://`` needs ``gcsfs``.

``hf://datasets/...`` reads a Hugging Face hub dataset through ``huggingface_hub``'s fsspec filesystem
(``HfFileSystem``): the endpoint comes from ``HF_ENDPOINT`` (a mirror), the token from the environment
variable ``DISTILFLOW_HF_TOKEN_ENV`` names (default ``HF_TOKEN``; a source's ``token_env`` overrides it),
never from a config. distilflow only reads from the hub: writing there is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator

from distilflow.errors import StorageError
from distilflow.storage_errors import on_uri

SCHEMES = ("file", "s3", "oss", "gs", "hf")
READ_ONLY_SCHEMES = ("hf",)
"""Schemes distilflow reads from but never writes to."""

HF_TOKEN_ENV = "HF_TOKEN"
"""The environment variable holding the hub token unless ``DISTILFLOW_HF_TOKEN_ENV`` names another."""

_HF_PATH = re.compile(r"datasets/[^/@\s]+/[^/@\s]+(@[^/\s]+)?(/.*)?$")


def check_uri(value: str) -> str:
    """Accept a local path or a URI with a supported scheme; say which schemes exist when refusing."""
    supported = "a local path or one of " + ", ".join(s + "://" for s in SCHEMES)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"empty URI; give {supported}")
    if "://" in value:
        scheme, rest = value.split("://", 1)
        scheme = scheme.lower()
        if scheme not in SCHEMES:
            raise ValueError(f"unsupported URI scheme {scheme + '://'!r} in {value!r}; use {supported}")
        if scheme == "file":
            if not rest.strip():
                raise ValueError(f"{value!r} names no path; write file:///ABSOLUTE/PATH or a plain path")
        elif scheme == "hf":
            if not _HF_PATH.match(rest):
                raise ValueError(
                    f"{value!r} is not a hub dataset path; write hf://datasets/ORG/NAME[@REVISION]/PATH "
                    "(e.g. hf://datasets/alibaba-pai/OmniThought@main/data/train-00000-of-00135.parquet)"
                )
        elif not rest.split("/", 1)[0].strip():
            # s3:///key has a key but an empty bucket name
            raise ValueError(f"{value!r} names no bucket; write {scheme}://BUCKET/PREFIX")
    else:
        # "s3:/bucket/key" would otherwise silently become a local folder named "s3:"
        typo = re.match(r"([A-Za-z][A-Za-z0-9+.-]+):/", value)
        if typo:
            raise ValueError(
                f"{value!r} looks like a URI missing a '/'; write {typo.group(1).lower()}://... "
                f"(supported: {supported}) or ./{value} for a local path"
            )
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
    if scheme(uri) == "hf":
        # read when the URI is opened, not when huggingface_hub was imported (its constants are)
        endpoint = os.environ.get("HF_ENDPOINT")
        if endpoint:
            return {"endpoint": endpoint.rstrip("/")}
    return {}


def hf_token(token_env: str | None = None) -> str | None:
    """The hub token: the value of ``token_env``, else of the variable ``DISTILFLOW_HF_TOKEN_ENV`` names,
    else of ``HF_TOKEN``; None when that variable is unset (public datasets need none)."""
    name = token_env or os.environ.get("DISTILFLOW_HF_TOKEN_ENV") or HF_TOKEN_ENV
    return os.environ.get(name) or None


def _credentials(uri: str, token_env: str | None = None) -> dict[str, Any]:
    """Credentials a backend does not read from the environment itself: ossfs takes the AccessKey
    only as arguments, HfFileSystem its token. Kept out of ``storage_options``, which keys the
    download cache."""
    if scheme(uri) == "hf":
        token = hf_token(token_env)
        # False: no token at all, not the one huggingface_hub would find in ~/.cache/huggingface
        return {"token": token if token else False}
    if scheme(uri) != "oss":
        return {}
    env = os.environ
    key = env.get("OSS_ACCESS_KEY_ID") or env.get("ALIBABA_CLOUD_ACCESS_KEY_ID")
    secret = env.get("OSS_ACCESS_KEY_SECRET") or env.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
    token = env.get("OSS_SESSION_TOKEN") or env.get("ALIBABA_CLOUD_SECURITY_TOKEN")
    if not key:
        return {}
    return {"key": key, "secret": secret, **({"token": token} if token else {})}


@on_uri(0)
def filesystem(uri: str, token_env: str | None = None):
    """Return ``(fs, path)`` for ``uri`` (``token_env``: the variable holding an ``hf://`` token)."""
    import fsspec

    check_uri(uri)
    if is_local(uri):
        return fsspec.filesystem("file"), local_path(uri)
    # a missing ossfs/gcsfs is an ImportError that ``on_uri`` turns into a line saying what to install
    return fsspec.core.url_to_fs(uri, **storage_options(uri), **_credentials(uri, token_env))


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with ``/`` (or the local separator for local paths)."""
    if is_local(uri):
        return os.path.join(local_path(uri), *parts)
    # a part with a leading "/" would make posixpath.join drop the bucket and return a local path
    return posixpath.join(uri.rstrip("/"), *(p.lstrip("/") for p in parts))


def bucket(uri: str) -> str:
    """The bucket of an object-storage URI (``s3://BUCKET/key``)."""
    return uri.split("://", 1)[1].split("/", 1)[0]


def _missing_bucket(uri: str) -> StorageError:
    name = bucket(uri)
    if scheme(uri) == "s3":
        endpoint = storage_options(uri).get("client_kwargs", {}).get("endpoint_url")
        flag = f" --endpoint-url {endpoint}" if endpoint else ""
        where = endpoint or "the default AWS endpoint (set DISTILFLOW_S3_ENDPOINT_URL for another store)"
        return StorageError(
            f"{uri}: bucket {name!r} does not exist at {where}; create it "
            f"(aws s3 mb s3://{name}{flag}) or fix the bucket name in the URI"
        )
    return StorageError(f"{uri}: bucket {name!r} does not exist; create it or fix the bucket name in the URI")


def _bucket_exists(fs: Any, uri: str) -> bool:
    try:
        return bool(fs.exists(bucket(uri)))
    except FileNotFoundError:  # ossfs 2025.5 raises it for a missing bucket instead of answering False
        return False
    except Exception:  # no permission to look at the bucket itself: assume it is there
        return True


def hf_not_found(uri: str, reason: str = "no such file") -> FileNotFoundError:
    """A hub "not found" naming the URI, the endpoint asked and what to check."""
    where = storage_options(uri).get("endpoint", "the Hugging Face hub")
    return FileNotFoundError(
        f"{uri}: {reason} at {where} (check the dataset name, the @revision and the path; a private or "
        "gated dataset needs a token in HF_TOKEN or in the variable DISTILFLOW_HF_TOKEN_ENV names)"
    )


def _not_found(fs: Any, uri: str) -> Exception:
    """A store's bare "not found" turned into an error naming the URI, or the bucket when that is missing
    (for oss://, also a refused or missing key: ossfs says "not found" for those too)."""
    if scheme(uri) == "hf":
        return hf_not_found(uri)
    if scheme(uri) == "oss":
        from distilflow.storage_errors import oss_bucket_problem

        return oss_bucket_problem(uri) or FileNotFoundError(f"{uri}: no such file or folder")
    if not _bucket_exists(fs, uri):
        return _missing_bucket(uri)
    return FileNotFoundError(f"{uri}: no such file or folder")


def _fresh(uri: str):
    """``(fs, path)`` with the store's cached listings of ``path`` dropped: another pod may have written
    or removed objects since this process last listed the folder (s3fs answers from its cache)."""
    fs, path = filesystem(uri)
    if not is_local(uri):
        fs.invalidate_cache(path)
    return fs, path


@on_uri(0)
def exists(uri: str) -> bool:
    fs, path = _fresh(uri)
    return fs.exists(path)


def _hf_reason(exc: Exception) -> str:
    """What huggingface_hub's FileNotFoundError says was missing (repository, revision or file)."""
    text = str(exc)
    found = re.search(r"\((repository not found|revision not found|invalid repository id)\)", text)
    return found.group(1) if found else "no such file"


@on_uri(0)
def read_bytes(uri: str) -> bytes:
    try:
        fs, path = _fresh(uri)  # a cached listing would also give a stale size for a rewritten object
    except FileNotFoundError as exc:
        if scheme(uri) != "hf":
            raise
        raise hf_not_found(uri, _hf_reason(exc)) from None
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        if is_local(uri):
            raise
        raise _not_found(fs, uri) from None
    except Exception as exc:
        # ossfs 2025.5 lets oss2's 404s (NoSuchBucket) out of its listings untranslated
        if scheme(uri) == "oss" and getattr(exc, "status", None) == 404:
            raise _not_found(fs, uri) from None
        raise


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def refuse_read_only(uri: str) -> None:
    """Raise StorageError when ``uri`` is on a store distilflow only reads (the hub)."""
    if scheme(uri) in READ_ONLY_SCHEMES:
        raise StorageError(
            f"{uri}: distilflow reads from {scheme(uri)}:// but never writes there; write outputs to a local "
            "path, s3://, oss:// or gs:// and publish to the hub yourself"
        )


@on_uri(0)
def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically: a local file is written beside its target and renamed; an object
    store PUT only becomes visible once complete."""
    refuse_read_only(uri)
    fs, path = filesystem(uri)
    if is_local(uri):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            # a failed write leaves the old file as it was and no temporary file behind
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        return
    try:
        with fs.open(path, "wb") as f:
            f.write(data)
    except FileNotFoundError:
        raise _not_found(fs, uri) from None


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


@on_uri(0)
def remove(uri: str, recursive: bool = False) -> None:
    refuse_read_only(uri)
    fs, path = _fresh(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


@on_uri(1)
def upload_dir(local_dir: str, uri: str) -> None:
    """Copy a local folder to ``uri`` (a no-op when they are the same place)."""
    if not os.path.isdir(local_dir):
        raise FileNotFoundError(f"{local_dir}: no such folder to upload to {uri}")
    refuse_read_only(uri)
    if is_local(uri):
        dest = local_path(uri)
        if os.path.abspath(local_dir) != dest:
            shutil.copytree(local_dir, dest, dirs_exist_ok=True)
        return
    fs, path = filesystem(uri)
    # s3fs's recursive put creates a missing bucket; a typo in a bucket name must fail instead
    if not _bucket_exists(fs, uri):
        raise _missing_bucket(uri)
    fs.put(local_dir.rstrip("/") + "/", path.rstrip("/") + "/", recursive=True)


@on_uri(0)
def materialize(uri: str, cache_dir: str | None = None) -> str:
    """Return a local folder or file holding ``uri``'s content (downloaded once into a cache).

    The cache is keyed by the URI and by what is there now (each object's size and ETag or modification
    time), so a stage rerun that writes a new model to the same URI is downloaded again, never served
    stale; older downloads of the same URI are removed.
    """
    if is_local(uri):
        return local_path(uri)
    cache_root = cache_dir or os.environ.get("DISTILFLOW_CACHE", os.path.expanduser("~/.cache/distilflow"))
    # the same URI on another endpoint is another object
    key = hashlib.sha256((uri + repr(sorted(storage_options(uri).items()))).encode()).hexdigest()[:16]
    fs, path = _fresh(uri)
    try:
        is_dir = fs.isdir(path)
        found = fs.find(path, detail=True) if is_dir else {path: fs.info(path)}
    except FileNotFoundError:
        raise _not_found(fs, uri) from None
    if not found:
        raise _not_found(fs, uri)
    listing = sorted(
        (
            name[len(path) :],
            info.get("size"),
            str(info.get("ETag") or info.get("LastModified") or info.get("mtime")),
        )
        for name, info in found.items()
    )
    version = hashlib.sha256(repr(listing).encode()).hexdigest()[:16]
    folder = os.path.join(cache_root, "downloads", key)
    dest = os.path.join(folder, version)
    done = dest + ".complete"
    if os.path.exists(done):
        # the marker holds the file name when the URI is a single file
        name = Path(done).read_text().strip()
        return os.path.join(dest, name) if name else dest
    os.makedirs(folder, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=version + ".partial-", dir=folder)
    try:
        if is_dir:
            name = ""
            fs.get(path.rstrip("/") + "/", staging + "/", recursive=True)
        else:
            name = posixpath.basename(path.rstrip("/"))
            fs.get(path, os.path.join(staging, name))
    except FileNotFoundError:
        shutil.rmtree(staging, ignore_errors=True)
        raise _not_found(fs, uri) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(staging, dest)
    Path(done).write_text(name)
    for old in os.listdir(folder):  # earlier versions of this URI (not partial downloads in flight)
        if not old.startswith(version) and ".partial-" not in old:
            target = os.path.join(folder, old)
            if os.path.isdir(target):
                shutil.rmtree(target, ignore_errors=True)
            else:
                os.remove(target)
    return os.path.join(dest, name) if name else dest
