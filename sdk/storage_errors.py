"""What an object store's failure means, in one line: the URI, the cause and the fix.

s3fs, ossfs/oss2 and gcsfs raise their clients' own exceptions (botocore's ``NoCredentialsError``,
``EndpointConnectionError``, ``ClientError``; oss2's ``RequestError``/``ServerError``; google-auth's
``DefaultCredentialsError``), which reach a user as a 100-line traceback. ``explain`` maps the four
failures a user can fix (missing credentials, an unreachable endpoint, a missing bucket, access
denied) to a ``StorageError`` naming the variable or setting to change; ``translated`` applies it
around the functions of ``distilflow.uri``. Exception classes are matched by name, so nothing here
imports a storage client.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from distilflow.errors import StorageError

F = TypeVar("F", bound=Callable[..., Any])

CREDENTIALS = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or mount them from a Kubernetes Secret",
    "oss": "set OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET (or ALIBABA_CLOUD_ACCESS_KEY_ID and "
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET)",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file (or run: gcloud auth "
    "application-default login)",
}
INSTALL = {"oss": "pip install 'distilflow[oss]' (ossfs)", "gs": "pip install 'distilflow[gcs]' (gcsfs)"}
NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError", "RefreshError"}
UNREACHABLE = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ClientConnectionError",
    "ServerDisconnectedError",
    "ConnectionRefusedError",
}
BAD_KEY = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "InvalidClientTokenId",
}
DENIED = {"AccessDenied", "AllAccessDisabled", "Forbidden", "AccountProblem", "403"} | BAD_KEY


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def endpoint(scheme: str) -> str:
    """Where the store is, as configured, and the variable that says so."""
    if scheme == "s3":
        for name in ("DISTILFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"):
            if os.environ.get(name):
                return f"{os.environ[name]} (${name})"
        return "AWS's default endpoint (set DISTILFLOW_S3_ENDPOINT_URL for another store)"
    if scheme == "oss":
        return (
            f"{os.environ['OSS_ENDPOINT']} ($OSS_ENDPOINT)"
            if os.environ.get("OSS_ENDPOINT")
            else "$OSS_ENDPOINT"
        )
    return (
        f"{os.environ['STORAGE_EMULATOR_HOST']} ($STORAGE_EMULATOR_HOST)"
        if os.environ.get("STORAGE_EMULATOR_HOST")
        else "Google Cloud Storage"
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from (s3fs wraps botocore's in an OSError)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def _code(exc: BaseException) -> str | None:
    """The store's error code: botocore's ``response.Error.Code``, oss2's ``code``, an HTTP status."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = (response.get("Error") or {}).get("Code")
        if code:
            return str(code)
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        return code
    status = getattr(exc, "status", None) or (code if isinstance(code, int) else None)
    return (
        {403: "Forbidden", 404: "NotFound", 401: "Unauthorized"}.get(status)
        if isinstance(status, int)
        else None
    )


def _oss_key() -> bool:
    return bool(os.environ.get("OSS_ACCESS_KEY_ID") or os.environ.get("ALIBABA_CLOUD_ACCESS_KEY_ID"))


def explain(uri: str, exc: BaseException) -> StorageError | None:
    """``exc`` as a one-line StorageError naming ``uri``, the cause and the fix; None when it is none of
    the failures a user can fix (the exception is then left as it is)."""
    scheme = _scheme(uri)
    if scheme == "file":
        return None
    bucket = uri.split("://", 1)[1].split("/", 1)[0]
    for link in _chain(exc):
        names = {cls.__name__ for cls in type(link).__mro__}
        code = _code(link)
        if names & NO_CREDENTIALS:
            return StorageError(f"{uri}: no {scheme}:// credentials found; {CREDENTIALS.get(scheme, '')}")
        if names & UNREACHABLE or (scheme == "oss" and "RequestError" in names):
            return StorageError(
                f"{uri}: cannot reach the store at {endpoint(scheme)}; check that address and that the store is "
                "up (and the network between)"
            )
        if code == "NoSuchBucket":
            return StorageError(
                f"{uri}: bucket {bucket!r} does not exist at {endpoint(scheme)}; create it or fix the bucket name"
            )
        if scheme == "oss" and code in DENIED and not _oss_key():
            # ossfs signs nothing without a key: OSS answers an anonymous request AccessDenied
            return StorageError(f"{uri}: no oss:// credentials found; {CREDENTIALS['oss']}")
        if code in BAD_KEY:
            return StorageError(
                f"{uri}: the store refused the credentials ({code}): they are wrong or expired; "
                f"{CREDENTIALS.get(scheme, '')}"
            )
        if code in DENIED or (isinstance(link, PermissionError) and code is None):
            return StorageError(
                f"{uri}: access denied ({code or '403'}): the credentials may not use bucket {bucket!r} (or are "
                f"wrong); grant them read/write on it (bucket policy or IAM/RAM role), or "
                f"{CREDENTIALS.get(scheme, 'use other credentials')}"
            )
    return None


def oss_bucket_problem(uri: str) -> StorageError | None:
    """Why an ``oss://`` object looked absent, asked of the bucket itself (``GetBucketInfo``): ossfs
    answers "not found" for a missing bucket, a refused key and no key alike. None: the bucket is fine."""
    import oss2

    from distilflow.uri import _credentials, storage_options

    creds = _credentials(uri)
    if creds.get("token"):
        auth: Any = oss2.StsAuth(creds["key"], creds["secret"], creds["token"])
    else:
        auth = oss2.Auth(creds["key"], creds["secret"]) if creds else oss2.AnonymousAuth()
    name = uri.split("://", 1)[1].split("/", 1)[0]
    try:
        oss2.Bucket(auth, storage_options(uri).get("endpoint", ""), name).get_bucket_info()
    except Exception as exc:
        return explain(uri, exc)
    return None


@contextlib.contextmanager
def translated(uri: str) -> Iterator[None]:
    """Re-raise a store's failure as ``explain``'s one-line StorageError (the original as its cause)."""
    try:
        yield
    except StorageError:
        raise
    except ImportError as exc:
        scheme = _scheme(uri)
        if scheme in INSTALL:
            raise StorageError(
                f"{uri}: {scheme}:// needs a package that is not installed; {INSTALL[scheme]}"
            ) from exc
        raise
    except Exception as exc:
        error = explain(uri, exc)
        if error is None:
            raise
        raise error from exc


def on_uri(position: int = 0) -> Callable[[F], F]:
    """Decorate a function whose argument at ``position`` is a URI with ``translated``."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            uri = args[position] if len(args) > position else next(iter(kwargs.values()), "")
            with translated(str(uri)):
                return fn(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap
