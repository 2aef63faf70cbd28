"""A loopback OSS-compatible server: the subset of the Alibaba Cloud OSS REST API that ossfs/oss2 use.

Path-style requests (oss2 uses them for an IP endpoint): ``/BUCKET/KEY?subresource``.

- bucket: ``GET /B?bucketInfo``; list objects v1 (``GET /B?prefix&marker&delimiter&max-keys``) and v2
  (``list-type=2``, ``continuation-token``), with paging and common prefixes; batch delete
  (``POST /B?delete``).
- object: ``PUT`` (put), ``GET`` (with ``Range``), ``HEAD`` and ``HEAD ?objectMeta``, ``DELETE``,
  append (``POST ?append&position=N``: 409 PositionNotEqualToLength on a wrong position), and
  multipart (``POST ?uploads``, ``PUT ?partNumber&uploadId``, ``POST ?uploadId``).

Responses carry ``x-oss-hash-crc64ecma`` (oss2 checks it), errors are OSS's XML ``<Error>``. Request
bodies are checked as OSS checks them (Alibaba Cloud OSS API reference): a ``Content-MD5`` that does
not match the body is ``InvalidDigest``; a CompleteMultipartUpload or DeleteMultipleObjects body that
is not the documented XML is ``MalformedXML``; completed parts must be listed in ascending order
(``InvalidPartOrder``), each uploaded with the ETag given (``InvalidPart``), and every part but the
last at least 100 KB (``EntityTooSmall``); a batch delete names at most 1000 objects.
Signatures are not checked, but every request is recorded (method, path, query, headers) so tests
can assert that the AccessKey id signed them and the secret never travelled.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import re
import threading
import uuid
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from tests.fakes.loopback import LoopbackHandler, LoopbackServer


def crc64(data: bytes) -> str:
    from oss2.utils import Crc64

    c = Crc64()
    c.update(data)
    return str(c.crc)


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _http_date(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")


class OssObject:
    def __init__(self, data: bytes, kind: str = "Normal") -> None:
        self.data = data
        self.kind = kind
        self.mtime = _dt.datetime.now(_dt.timezone.utc).timestamp()

    @property
    def etag(self) -> str:
        return hashlib.md5(self.data).hexdigest().upper()


def key_id(authorization: str) -> str | None:
    """The AccessKey id an ``Authorization`` header signs with: ``OSS <id>:<signature>`` (V1) or
    ``OSS4-HMAC-SHA256 Credential=<id>/<date>/<region>/oss/aliyun_v4_request,...`` (V4)."""
    found = re.match(r"OSS (\S+?):", authorization) or re.search(r"Credential=([^/,\s]+)/", authorization)
    return found.group(1) if found else None


class FakeOss(LoopbackServer):
    def __init__(
        self, buckets: tuple[str, ...] = (), access_keys: dict[str, tuple[str, ...]] | None = None
    ) -> None:
        """``access_keys``: AccessKey id -> the buckets it may use; None checks no access (as before).
        With it, a request to an existing bucket is AccessDenied unsigned, InvalidAccessKeyId with an
        unknown id and AccessDenied outside the id's buckets, each a 403 as OSS answers them (a missing
        bucket is NoSuchBucket first)."""
        self.access_keys = access_keys
        self.buckets: dict[str, dict[str, OssObject]] = {b: {} for b in buckets}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    # --- the API ------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], headers: Any, body: bytes):
        """``(status, headers, body)`` for one request."""
        parts = path.lstrip("/").split("/", 1)
        bucket = unquote(parts[0])
        key = unquote(parts[1]) if len(parts) > 1 else ""
        if self.access_keys is not None and bucket in self.buckets:  # OSS names a missing bucket first
            signer = key_id(headers.get("Authorization", ""))
            if signer is None:
                return self._error(
                    403, "AccessDenied", "You have no right to access this object because of bucket acl."
                )
            if signer not in self.access_keys:
                return self._error(
                    403,
                    "InvalidAccessKeyId",
                    "The OSS Access Key Id you provided does not exist in our records.",
                )
            if bucket not in self.access_keys[signer]:
                return self._error(403, "AccessDenied", "You have no right to access this object.")
        if bucket not in self.buckets:
            return self._error(404, "NoSuchBucket", f"The specified bucket does not exist: {bucket}")
        objects = self.buckets[bucket]
        if not key:
            if method == "GET" and "bucketInfo" in query:
                return self._bucket_info(bucket)
            if method == "GET":
                return self._list(objects, query)
            if method == "POST" and "delete" in query:
                return self._batch_delete(objects, body)
            return self._error(405, "MethodNotAllowed", f"{method} on a bucket")
        if method == "PUT" and "partNumber" in query:
            upload = self.uploads.get(query.get("uploadId", ""))
            if upload is None:
                return self._error(404, "NoSuchUpload", "The specified upload does not exist")
            upload["parts"][int(query["partNumber"])] = body
            part = OssObject(body)
            return 200, {"ETag": f'"{part.etag}"', "x-oss-hash-crc64ecma": crc64(body)}, b""
        if method == "PUT":
            obj = objects[key] = OssObject(body)
            return 200, {"ETag": f'"{obj.etag}"', "x-oss-hash-crc64ecma": crc64(body)}, b""
        if method == "POST" and "uploads" in query:
            upload_id = uuid.uuid4().hex.upper()
            self.uploads[upload_id] = {"bucket": bucket, "key": key, "parts": {}}
            xml = (
                f"<InitiateMultipartUploadResult><Bucket>{escape(bucket)}</Bucket><Key>{escape(key)}</Key>"
                f"<UploadId>{upload_id}</UploadId></InitiateMultipartUploadResult>"
            )
            return self._xml(xml)
        if method == "POST" and "uploadId" in query:
            upload = self.uploads.get(query["uploadId"])
            if upload is None:
                return self._error(404, "NoSuchUpload", "The specified upload does not exist")
            numbers, refusal = self._completed_parts(upload, body)
            if refusal:
                return refusal
            self.uploads.pop(query["uploadId"])
            data = b"".join(upload["parts"][n] for n in numbers)
            obj = objects[key] = OssObject(data, kind="Multipart")
            xml = (
                f"<CompleteMultipartUploadResult><Bucket>{escape(bucket)}</Bucket><Key>{escape(key)}</Key>"
                f'<ETag>"{obj.etag}"</ETag></CompleteMultipartUploadResult>'
            )
            return self._xml(xml, {"ETag": f'"{obj.etag}"', "x-oss-hash-crc64ecma": crc64(data)})
        if method == "POST" and "append" in query:
            position = int(query.get("position", "0"))
            current = objects.get(key)
            length = len(current.data) if current else 0
            if current is not None and current.kind != "Appendable":
                return self._error(409, "ObjectNotAppendable", "The object is not appendable")
            if position != length:
                return self._error(
                    409,
                    "PositionNotEqualToLength",
                    "Position is not equal to file length",
                    {"x-oss-next-append-position": str(length)},
                )
            obj = objects[key] = OssObject((current.data if current else b"") + body, kind="Appendable")
            return (
                200,
                {
                    "ETag": f'"{obj.etag}"',
                    "x-oss-next-append-position": str(len(obj.data)),
                    "x-oss-hash-crc64ecma": crc64(obj.data),
                },
                b"",
            )
        obj = objects.get(key)
        if method == "DELETE":
            objects.pop(key, None)
            return 204, {}, b""
        if obj is None:
            return self._error(404, "NoSuchKey", f"The specified key does not exist: {key}")
        meta = {
            "ETag": f'"{obj.etag}"',
            "Last-Modified": _http_date(obj.mtime),
            "x-oss-object-type": obj.kind,
            "x-oss-hash-crc64ecma": crc64(obj.data),
            "Content-Type": "application/octet-stream",
        }
        if method == "HEAD":
            return 200, {**meta, "Content-Length": str(len(obj.data))}, None
        if method == "GET":
            rng = headers.get("Range")
            if rng and rng.startswith("bytes="):
                start_s, _, end_s = rng[len("bytes=") :].partition("-")
                size = len(obj.data)
                start = int(start_s) if start_s else max(size - int(end_s), 0)
                end = min(int(end_s), size - 1) if end_s and start_s else size - 1
                if start >= size:
                    return self._error(416, "InvalidRange", "The requested range is not satisfiable")
                chunk = obj.data[start : end + 1]
                meta.pop("x-oss-hash-crc64ecma")  # OSS sends the whole object's CRC; oss2 skips it for ranges
                meta["Content-Range"] = f"bytes {start}-{end}/{size}"
                return 206, meta, chunk
            return 200, meta, obj.data
        return self._error(405, "MethodNotAllowed", method)

    def _list(self, objects: dict[str, OssObject], query: dict[str, str]):
        v2 = query.get("list-type") == "2"
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        max_keys = int(query.get("max-keys", "100"))
        after = query.get("continuation-token" if v2 else "marker", "") or query.get("start-after", "")
        entries: list[tuple[str, OssObject | None]] = []
        seen_prefixes: set[str] = set()
        for key in sorted(objects):
            if not key.startswith(prefix) or key <= after:
                continue
            rest = key[len(prefix) :]
            if delimiter and delimiter in rest:
                common = prefix + rest.split(delimiter, 1)[0] + delimiter
                if common in seen_prefixes or common <= after:
                    continue
                seen_prefixes.add(common)
                entries.append((common, None))
            else:
                entries.append((key, objects[key]))
        page, truncated = entries[:max_keys], len(entries) > max_keys
        items = []
        for key, obj in page:
            if obj is None:
                items.append(f"<CommonPrefixes><Prefix>{escape(key)}</Prefix></CommonPrefixes>")
            else:
                items.append(
                    f"<Contents><Key>{escape(key)}</Key><LastModified>{_iso(obj.mtime)}</LastModified>"
                    f'<ETag>"{obj.etag}"</ETag><Type>{obj.kind}</Type><Size>{len(obj.data)}</Size>'
                    "<StorageClass>Standard</StorageClass></Contents>"
                )
        last = page[-1][0] if page else ""
        nxt = ""
        if truncated:
            nxt = (
                f"<NextContinuationToken>{escape(last)}</NextContinuationToken>"
                if v2
                else f"<NextMarker>{escape(last)}</NextMarker>"
            )
        count = f"<KeyCount>{len(page)}</KeyCount>" if v2 else ""
        xml = (
            f"<ListBucketResult><Prefix>{escape(prefix)}</Prefix><MaxKeys>{max_keys}</MaxKeys>"
            f"<Delimiter>{escape(delimiter)}</Delimiter><IsTruncated>{str(truncated).lower()}</IsTruncated>"
            f"{nxt}{count}{''.join(items)}</ListBucketResult>"
        )
        return self._xml(xml)

    MIN_PART = 100 * 1024

    def _completed_parts(self, upload: dict[str, Any], body: bytes):
        """The part numbers a CompleteMultipartUpload body lists, or OSS's refusal of it."""
        try:
            root = ElementTree.fromstring(body)
            parts = [
                (int(p.findtext("PartNumber") or ""), (p.findtext("ETag") or "").strip('"'))
                for p in root.findall("Part")
            ]
        except (ElementTree.ParseError, ValueError):
            return [], self._error(400, "MalformedXML", "The XML you provided was not well-formed")
        if root.tag != "CompleteMultipartUpload" or not parts:
            return [], self._error(400, "MalformedXML", "The XML you provided was not well-formed")
        numbers = [n for n, _ in parts]
        if numbers != sorted(set(numbers)):
            return [], self._error(400, "InvalidPartOrder", "The list of parts was not in ascending order")
        for i, (n, etag) in enumerate(parts):
            data = upload["parts"].get(n)
            if data is None or OssObject(data).etag != etag.upper():
                return [], self._error(
                    400, "InvalidPart", f"One or more of the specified parts could not be found: {n}"
                )
            if i < len(parts) - 1 and len(data) < self.MIN_PART:
                return [], self._error(
                    400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size"
                )
        return numbers, None

    def _batch_delete(self, objects: dict[str, OssObject], body: bytes):
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            return self._error(400, "MalformedXML", "The XML you provided was not well-formed")
        if root.tag != "Delete" or not 0 < len(root.findall("Object")) <= 1000:
            return self._error(400, "MalformedXML", "The XML you provided was not well-formed")
        quiet = (root.findtext("Quiet") or "false").lower() == "true"
        deleted = []
        for node in root.findall("Object"):
            key = node.findtext("Key") or ""
            objects.pop(key, None)
            deleted.append(f"<Deleted><Key>{escape(key)}</Key></Deleted>")
        return self._xml(f"<DeleteResult>{'' if quiet else ''.join(deleted)}</DeleteResult>")

    def _bucket_info(self, bucket: str):
        now = _iso(0)
        xml = (
            f"<BucketInfo><Bucket><Name>{escape(bucket)}</Name><CreationDate>{now}</CreationDate>"
            "<StorageClass>Standard</StorageClass><ExtranetEndpoint>127.0.0.1</ExtranetEndpoint>"
            "<IntranetEndpoint>127.0.0.1</IntranetEndpoint><Location>oss-cn-hangzhou</Location>"
            "<Owner><DisplayName>test</DisplayName><ID>test</ID></Owner>"
            "<AccessControlList><Grant>private</Grant></AccessControlList></Bucket></BucketInfo>"
        )
        return self._xml(xml)

    @staticmethod
    def _xml(xml: str, headers: dict[str, str] | None = None):
        data = ('<?xml version="1.0" encoding="UTF-8"?>\n' + xml).encode()
        return 200, {"Content-Type": "application/xml", **(headers or {})}, data

    @staticmethod
    def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None):
        xml = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{escape(message)}</Message>'
            "<RequestId>test-request</RequestId><HostId>127.0.0.1</HostId></Error>"
        )
        return status, {"Content-Type": "application/xml", **(headers or {})}, xml.encode()

    # --- the HTTP server ----------------------------------------------------------------------

    def handler(self) -> type[LoopbackHandler]:
        fake = self

        class Handler(LoopbackHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
                body = self._read_body()
                digest_ok = True
                if self.headers.get("Content-MD5") and body:
                    expected = base64.b64encode(hashlib.md5(body).digest()).decode()
                    digest_ok = self.headers["Content-MD5"] == expected
                with fake._lock:
                    fake.requests.append(
                        {
                            "method": self.command,
                            "path": url.path,
                            "query": query,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                        }
                    )
                    if digest_ok:
                        status, headers, payload = fake.handle(
                            self.command, url.path, query, self.headers, body
                        )
                    else:
                        message = "The Content-MD5 you specified was invalid"
                        status, headers, payload = fake._error(400, "InvalidDigest", message)
                self.send_response(status)
                headers = {"x-oss-request-id": "test-request", "Server": "AliyunOSS", **headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(payload or b"")))
                self.end_headers()
                if payload and self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler

    def keys(self, bucket: str) -> list[str]:
        return sorted(self.buckets[bucket])
