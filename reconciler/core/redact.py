"""Credentials out of what is shown or kept: URLs (a password or a token as the user, query
values such as ``?token=``), scp-style git addresses with a password, and the same inside
free text (git's own messages name the URL they failed on).

``redact(url)`` masks one URL; ``scrub(text)`` masks every URL and address in a text. What
runs keeps the real URL (a fetch needs it); what is logged, stored as an error or an event,
or answered by the API goes through one of them.
"""

from __future__ import annotations

import re

MASK = "***"
_URL = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s'\"<>`]+")
_USERINFO = re.compile(r"^(?P<scheme>[^:/]+)://(?P<user>[^/@?#]*)@")
# user:password@host:path (scp style, as git takes it); a plain user@host:path has no secret
_SCP = re.compile(r"(?<![\w/.:-])(?P<user>[\w.+-]+):(?P<password>[^\s@/'\"]+)@(?P<host>[\w.-]+):")
_QUERY_VALUE = re.compile(r"(?P<name>[?&;][^=&#\s]*)=(?P<value>[^&#\s]*)")
# a user alone carries no secret in these (ssh's user names the account, never a token)
_PLAIN_USER_SCHEMES = frozenset({"ssh", "git+ssh", "ssh+git", "sftp"})
# passwords that say the user is the token (``https://<token>:x-oauth-basic@github.com``)
_PLACEHOLDERS = frozenset({"", "x", "x-oauth", "x-oauth-basic"})


def redact(url: str) -> str:
    """``url`` with its credentials masked: ``user:***@``, a token given as the user of an
    http(s) URL (``https://***@host``, ``https://***:***@host`` with a placeholder password
    such as ``x-oauth-basic``), every query value (``?token=***``); an scp-style
    ``user:password@host:path`` as ``user:***@host:path``."""
    found = _USERINFO.match(url)
    if found is not None:
        user = found.group("user")
        if ":" in user:
            name, _colon, password = user.partition(":")
            shown = f"{MASK if password.lower() in _PLACEHOLDERS else name}:{MASK}"
        elif user and found.group("scheme").lower() not in _PLAIN_USER_SCHEMES:
            shown = MASK
        else:
            shown = user
        url = f"{found.group('scheme')}://{shown}@{url[found.end() :]}"
    elif "://" not in url:
        url = _SCP.sub(lambda m: f"{m.group('user')}:{MASK}@{m.group('host')}:", url)
    head, mark, tail = url.partition("?")
    if mark:
        query, hash_mark, fragment = tail.partition("#")
        masked = _QUERY_VALUE.sub(
            lambda m: f"{m.group('name')}={MASK}" if m.group("value") else m.group(0),
            "?" + query,
        )
        url = head + masked + hash_mark + fragment
    return url


def scrub(text: str) -> str:
    """``text`` with every URL and scp-style address in it redacted."""
    if "@" not in text and "://" not in text:
        return text  # the common case: nothing that could hold a credential
    text = _URL.sub(lambda m: redact(m.group(0)), text)
    return _SCP.sub(lambda m: f"{m.group('user')}:{MASK}@{m.group('host')}:", text)


def secrets_of(url: str) -> list[str]:
    """The credentials ``redact`` masks in ``url`` (to mask them where they appear bare, as
    a tool may echo a password without its URL); short ones (under 4 characters) are left,
    as masking them would garble ordinary words."""
    found: list[str] = []
    user = _USERINFO.match(url)
    if user is not None:
        name, colon, password = user.group("user").partition(":")
        scheme = user.group("scheme").lower()
        found.append(password if colon else name if scheme not in _PLAIN_USER_SCHEMES else "")
        if colon and password.lower() in _PLACEHOLDERS:
            found.append(name)
    elif (scp := _SCP.search(url)) is not None:
        found.append(scp.group("password"))
    _head, _mark, tail = url.partition("?")
    found += [m.group("value") for m in _QUERY_VALUE.finditer("?" + tail.partition("#")[0])]
    return [s for s in found if len(s) >= 4]
