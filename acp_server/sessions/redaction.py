"""Secrets in an MCP server list, found and masked before the list is stored or shown.

Env and header values are always secrets. So are the parts of a URL that carry
credentials (the userinfo, secret-named query and fragment values) and the values of
secret-named arguments (``--token=x``, ``--api-key x``, ``GITHUB_TOKEN=x``, an
``Authorization: ...`` or ``X-Api-Key: ...`` header argument, a URL argument with a
password). A name is secret when its last word is one (``api_key``, ``accessToken``,
``x-auth-token``), so ordinary arguments such as ``--max-tokens 4096`` or
``--token-file path`` stay as they are. A secret passed as a bare positional argument
cannot be told from any other argument and is kept.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

REDACTED = "<redacted>"

_SECRET_WORDS = frozenset(
    {
        "apikey",
        "auth",
        "authorization",
        "bearer",
        "cookie",
        "credential",
        "credentials",
        "jwt",
        "key",
        "pass",
        "passphrase",
        "passwd",
        "password",
        "pat",
        "pwd",
        "secret",
        "sig",
        "signature",
        "token",
    }
)
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_NAME = re.compile(r"-{0,2}[A-Za-z_][\w.-]*")
_HEADER = re.compile(r"([A-Za-z][\w-]*)(\s*:\s*)(\S.*)", re.DOTALL)


def is_secret_name(name: str) -> bool:
    """Whether a parameter, flag, variable or header called ``name`` holds a secret."""
    words = [word.lower() for word in _WORD.findall(name) if not word.isdigit()]
    return bool(words) and words[-1] in _SECRET_WORDS and words[0] != "no"


def redact_url(url: str, found: list[str] | None = None) -> str:
    """``url`` with its credentials replaced by ``REDACTED``; what was removed is added
    to ``found``. A lone http(s) user name is a token (``https://TOKEN@host``); a URL
    too broken to parse is redacted whole."""
    found = [] if found is None else found
    try:
        parts = urlsplit(url)
    except ValueError:
        found.append(url)
        return REDACTED
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if colon and password:
            found.append(password)
            netloc = f"{user}:{REDACTED}@{host}"
        elif user and not colon and parts.scheme in ("http", "https"):
            found.append(user)
            netloc = f"{REDACTED}@{host}"
    query = _redact_pairs(parts.query, found)
    fragment = _redact_pairs(parts.fragment, found)
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _redact_pairs(text: str, found: list[str]) -> str:
    """``a=1&token=x`` with secret-named values redacted, the rest byte for byte."""
    if "=" not in text:
        return text
    pairs = []
    for pair in text.split("&"):
        name, eq, value = pair.partition("=")
        if eq and value and is_secret_name(unquote_plus(name)):
            found.append(value)
            pair = f"{name}={REDACTED}"
        pairs.append(pair)
    return "&".join(pairs)


def redact_args(args: list[str], found: list[str] | None = None) -> list[str]:
    """A stdio server's arguments with secret values replaced by ``REDACTED``."""
    found = [] if found is None else found
    redacted: list[str] = []
    takes_value = False
    for arg in args:
        if takes_value and not arg.startswith("-"):
            found.append(arg)
            redacted.append(REDACTED)
            takes_value = False
            continue
        redacted.append(_redact_arg(arg, found))
        takes_value = _is_flag(arg) and "=" not in arg and is_secret_name(arg)
    return redacted


def _is_flag(arg: str) -> bool:
    """``--name`` or Go-style ``-name``; never a one-letter ``-p``, whose meaning varies."""
    return arg.startswith("-") and len(arg.lstrip("-")) > 1


def _redact_arg(arg: str, found: list[str]) -> str:
    name, eq, value = arg.partition("=")
    if eq and _NAME.fullmatch(name):
        if is_secret_name(name) and value:
            found.append(value)
            return f"{name}={REDACTED}"
        return f"{name}={_redact_text(value, found)}"
    return _redact_text(arg, found)


def _redact_text(text: str, found: list[str]) -> str:
    """A URL's credentials, or the value of a ``Name: value`` header with a secret name."""
    if "://" in text:
        return redact_url(text, found)
    header = _HEADER.fullmatch(text)
    if header and _is_secret_header(header[1]):
        found.append(header[3])
        return f"{header[1]}{header[2]}{REDACTED}"
    return text


def _is_secret_header(name: str) -> bool:
    """``Authorization``, ``Cookie`` or a compound such as ``X-Api-Key``: a lone word
    before a colon (``key:value``) is more often a label than a header."""
    lower = name.lower()
    if lower in ("authorization", "proxy-authorization", "cookie"):
        return True
    return ("-" in name or "_" in name) and is_secret_name(name)


def scrub_mcp_server(server: dict[str, Any], found: list[str] | None = None) -> dict[str, Any]:
    """One MCP server entry as it may be stored or shown: names kept, secrets redacted."""
    found = [] if found is None else found
    copy = dict(server)
    for key in ("env", "headers"):
        if isinstance(copy.get(key), list):
            entries = [entry for entry in copy[key] if isinstance(entry, dict)]
            found += [str(entry["value"]) for entry in entries if entry.get("value")]
            copy[key] = [{"name": entry.get("name"), "value": REDACTED} for entry in entries]
    if isinstance(copy.get("url"), str):
        copy["url"] = redact_url(copy["url"], found)
    if isinstance(copy.get("args"), list):
        copy["args"] = redact_args([str(arg) for arg in copy["args"]], found)
    return copy


def scrub_mcp_servers(servers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The MCP server list as stored: every secret redacted (the editor resends the
    list on load/resume)."""
    return [scrub_mcp_server(server) for server in servers if isinstance(server, dict)]


def has_redactions(server: dict[str, Any]) -> bool:
    """Whether a stored entry lost a secret, so it cannot be restarted as it is."""
    entries = [*_list(server.get("env")), *_list(server.get("headers"))]
    if any(isinstance(entry, dict) and entry.get("value") == REDACTED for entry in entries):
        return True
    texts = [server.get("url"), *_list(server.get("args"))]
    return any(isinstance(text, str) and REDACTED in text for text in texts)


def _list(value: Any) -> list[Any]:
    """A stored field that should be a list (an imported file may say otherwise)."""
    return value if isinstance(value, list) else []


def secrets_of(server: dict[str, Any]) -> tuple[str, ...]:
    """The secret strings of one entry (with their percent-decoded forms), longest
    first, for masking them in text such as an error message."""
    found: list[str] = []
    scrub_mcp_server(server, found)
    forms = {form for value in found for form in (value, unquote_plus(value)) if len(form) >= 3}
    return tuple(sorted(forms, key=len, reverse=True))


def hide(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``REDACTED``."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text
