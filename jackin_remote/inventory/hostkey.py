"""Strict parsing of pinned OpenSSH public keys ("TYPE BASE64 [comment]").

A pinned host key decides whom we trust with a session, so it is checked down to the key blob's
wire format: a typo or a pasted private key must fail here, never at connect time.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct

# Key type -> curve name carried in the blob (ECDSA only) and the expected point size.
_ECDSA_POINT_SIZES = {"nistp256": 65, "nistp384": 97, "nistp521": 133}
_ED25519_KEY_SIZE = 32

KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)

_BASE64_RE = re.compile(r"^[A-Za-z0-9+/]+={0,2}\Z")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class HostKeyFormatError(ValueError):
    """The text is not a usable OpenSSH public key line."""


def parse_public_key(text: str) -> str:
    """Validate an OpenSSH public key line; return it normalized as "TYPE BASE64"."""
    if _CONTROL_RE.search(text.strip()):
        raise HostKeyFormatError("a key line is one line of printable text")
    parts = text.split()
    if len(parts) < 2:
        raise HostKeyFormatError('expected "TYPE BASE64 [comment]"')
    key_type, encoded = parts[0], parts[1]
    if key_type not in KEY_TYPES:
        if encoded in KEY_TYPES:
            raise HostKeyFormatError("this looks like a known_hosts line: drop the host name")
        raise HostKeyFormatError(f"unsupported key type {key_type[:40]!r}")
    blob = _decode_base64(encoded)
    _check_blob(key_type, blob)
    return f"{key_type} {encoded}"


def _decode_base64(encoded: str) -> bytes:
    if not _BASE64_RE.match(encoded):
        raise HostKeyFormatError("the key is not valid base64")
    try:
        blob = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise HostKeyFormatError("the key is not valid base64") from exc
    # Reject non-canonical encodings (stray bits in padding): one key, one spelling.
    if base64.b64encode(blob).decode("ascii") != encoded:
        raise HostKeyFormatError("the key is not canonical base64")
    return blob


def _wire_strings(blob: bytes) -> list[bytes]:
    """Split an SSH wire-format blob into its length-prefixed strings (RFC 4251 section 5)."""
    fields: list[bytes] = []
    offset = 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise HostKeyFormatError("the key blob is truncated")
        (size,) = struct.unpack_from(">I", blob, offset)
        offset += 4
        if offset + size > len(blob):
            raise HostKeyFormatError("the key blob is truncated")
        fields.append(blob[offset : offset + size])
        offset += size
    return fields


def _check_blob(key_type: str, blob: bytes) -> None:
    fields = _wire_strings(blob)
    if not fields or fields[0] != key_type.encode("ascii"):
        raise HostKeyFormatError(f"the key blob does not start with its type {key_type!r}")
    body = fields[1:]
    if key_type == "ssh-ed25519":
        _expect_ed25519(body, extra=0)
    elif key_type == "sk-ssh-ed25519@openssh.com":
        _expect_ed25519(body, extra=1)
    elif key_type == "ssh-rsa":
        _expect_rsa(body)
    elif key_type.startswith("sk-ecdsa-"):
        _expect_ecdsa(body, curve="nistp256", extra=1)
    else:
        _expect_ecdsa(body, curve=key_type.rsplit("-", 1)[1], extra=0)


def _expect_count(body: list[bytes], count: int) -> None:
    if len(body) != count:
        raise HostKeyFormatError("the key blob has the wrong number of fields")


def _expect_ed25519(body: list[bytes], *, extra: int) -> None:
    _expect_count(body, 1 + extra)
    if len(body[0]) != _ED25519_KEY_SIZE:
        raise HostKeyFormatError("an ed25519 key is 32 bytes")


def _expect_ecdsa(body: list[bytes], *, curve: str, extra: int) -> None:
    _expect_count(body, 2 + extra)
    if body[0] != curve.encode("ascii"):
        raise HostKeyFormatError(f"the key blob names a different curve than {curve}")
    if len(body[1]) != _ECDSA_POINT_SIZES[curve] or body[1][:1] != b"\x04":
        raise HostKeyFormatError(f"not an uncompressed {curve} point")


def _expect_rsa(body: list[bytes]) -> None:
    _expect_count(body, 2)
    exponent, modulus = body
    if not exponent or not modulus or exponent[0] & 0x80 or modulus[0] & 0x80:
        raise HostKeyFormatError("the RSA key has an invalid exponent or modulus")
