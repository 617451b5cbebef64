"""The one pattern of an ``allowIps`` entry: an IPv4 or IPv6 address, or a CIDR.

The OpenAPI document carries it (``pattern``), and the schema checks an entry with it before
:func:`ipaddress.ip_network` does, so the two agree: what the pattern allows, the server takes,
and nothing else (``ip_network`` alone also takes ``10.0.0.0/255.0.0.0``, and ``str.strip``
drops any Unicode space, where the pattern allows only spaces and tabs around the entry).
It ends in ``\\Z``, as the image names' pattern does: schemathesis reads patterns with
Python's ``re``, where ``$`` also matches before a final newline.
"""
from __future__ import annotations

import ipaddress
import re

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_V4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_H = r"[0-9a-fA-F]{1,4}"
# RFC 4291 section 2.2: the eight groups, each way of shortening a run of zeros with "::",
# and the forms ending in an IPv4 address.
_V6 = ("(?:"
       rf"(?:{_H}:){{7}}{_H}"
       rf"|(?:{_H}:){{1,7}}:"
       rf"|(?:{_H}:){{1,6}}:{_H}"
       rf"|(?:{_H}:){{1,5}}(?::{_H}){{1,2}}"
       rf"|(?:{_H}:){{1,4}}(?::{_H}){{1,3}}"
       rf"|(?:{_H}:){{1,3}}(?::{_H}){{1,4}}"
       rf"|(?:{_H}:){{1,2}}(?::{_H}){{1,5}}"
       rf"|{_H}:(?::{_H}){{1,6}}"
       rf"|:(?:(?::{_H}){{1,7}}|:)"
       rf"|(?:{_H}:){{6}}{_V4}"
       rf"|(?:{_H}:){{1,5}}:{_V4}"
       rf"|::(?:ffff(?::0{{1,4}})?:)?{_V4}"
       rf"|(?:{_H}:){{1,4}}:(?:{_H}:){{0,1}}{_V4}"
       ")")
_PREFIX_V4 = r"(?:3[0-2]|[12]?[0-9])"
_PREFIX_V6 = r"(?:12[0-8]|1[01][0-9]|[1-9]?[0-9])"
BLANKS = " \t"  # around an entry, and only these, are dropped
_BLANK = r"[ \t]*"
IP_OR_CIDR = rf"^{_BLANK}(?:{_V4}(?:/{_PREFIX_V4})?|{_V6}(?:/{_PREFIX_V6})?){_BLANK}\Z"
_IP_OR_CIDR = re.compile(IP_OR_CIDR)


def parse_ip_or_cidr(text: str) -> str:
    """``text`` as :func:`ipaddress.ip_network` writes it (host bits cleared).

    :raises ValueError: ``text`` does not match :data:`IP_OR_CIDR`.
    """
    if _IP_OR_CIDR.fullmatch(text) is None:
        raise ValueError(text)
    return str(ipaddress.ip_network(text.strip(BLANKS), strict=False))
