"""Reading request bodies with limits on wire size and on gzip-decoded size."""

from __future__ import annotations

import zlib

from flask import request
from werkzeug.exceptions import ClientDisconnected

from webapi.current import current_request
from webapi.errors import ApiError

_GZIP = ("gzip", "x-gzip")


def read_body(max_wire_bytes: int, max_decoded_bytes: int) -> bytes:
    """The request body, gunzipped when ``Content-Encoding: gzip``.

    413 when the body on the wire or its decompressed form is over its limit: a gzip bomb is cut
    off after ``max_decoded_bytes`` of output, never inflated in full. 400 for corrupt gzip,
    415 for other encodings, 408 when the body ends before its Content-Length (see webapi.worker).
    """
    req = current_request()
    length = req.content_length
    if length is not None and length > max_wire_bytes:
        raise _too_large(f"the body is {length} bytes; the limit is {max_wire_bytes}")
    try:
        if length is not None:
            # The server's input stream ends at Content-Length (PEP 3333), which was checked above;
            # werkzeug's limited stream around it would only repeat that for every read.
            data = req.environ["wsgi.input"].read(length)
        else:  # chunked: werkzeug reads the body up to its end
            data = req.stream.read(max_wire_bytes + 1)
    except ClientDisconnected:
        data = b""
    if length is not None and len(data) < length:
        # The worker shut the read side after the request timeout, or the client stopped sending.
        raise ApiError(408, "request_timeout", f"the body ended after {len(data)} of its {length} bytes: the "
                       "client stopped sending, or it did not arrive within the request timeout")
    if len(data) > max_wire_bytes:
        raise _too_large(f"the body exceeds the limit of {max_wire_bytes} bytes")
    encoding = req.environ.get("HTTP_CONTENT_ENCODING", "identity").strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding not in _GZIP:
        raise ApiError(415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported; use gzip")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        decoded = inflater.decompress(data, max_decoded_bytes + 1)
    except zlib.error as err:
        raise ApiError(400, "invalid_gzip", f"the gzip body is corrupt: {err}") from None
    if len(decoded) > max_decoded_bytes or inflater.unconsumed_tail:
        raise _too_large(f"the body decompresses to more than {max_decoded_bytes} bytes")
    if not inflater.eof:
        raise ApiError(400, "invalid_gzip", "the gzip body is truncated")
    return decoded


def require_content_type(*allowed: str, missing_ok: bool = False) -> None:
    """415 unless the media type (parameters ignored) is one of ``allowed``."""
    media_type = request.mimetype
    if not media_type and missing_ok:
        return
    if media_type not in allowed:
        raise ApiError(
            415, "unsupported_media_type",
            f"Content-Type {media_type or '(none)'!s} is not accepted here; send {' or '.join(allowed)}",
        )


def _too_large(message: str) -> ApiError:
    return ApiError(413, "payload_too_large", message)
