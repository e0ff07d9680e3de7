"""User-data checks at create, before anything is stored (pure: no store, no protos).

Accepted (what cloud-init runs without fetching anything): a ``#cloud-config`` document
(YAML that parses to a mapping and, when a schema is given, passes cloud-init's JSON
schema), a ``#!`` script, a ``#cloud-boothook``, or a MIME multi-part document of these
(each cloud-config part checked the same way). Anything else is refused with a message
naming the accepted formats. The schema is large: it is loaded once per path.
"""

from __future__ import annotations

import codecs
import email
import email.message
import functools
import json
import re
from collections.abc import Mapping
from typing import Any

import jsonschema
import yaml

from workspace.domain import sshkeys
from workspace.errors import InvalidArgument

CLOUD_CONFIG = "#cloud-config"
BOOTHOOK = "#cloud-boothook"
# Other formats whose marker starts like #cloud-config (a list of parts, a JSON patch),
# which cloud-init reads as such: not a #cloud-config document.
OTHER_CLOUD_CONFIGS = (b"#cloud-config-archive", b"#cloud-config-jsonp")
FORMATS = (
    "a #cloud-config document, a #! script, a #cloud-boothook, "
    "or a MIME multi-part document of these"
)
# MIME part types cloud-init runs, by what the part's content starts with.
PART_TYPES = {
    "text/cloud-config": CLOUD_CONFIG,
    "text/x-shellscript": "#!",
    "text/cloud-boothook": BOOTHOOK,
}
# Scripts cloud-init (22.1+) keeps in /var/lib/cloud/scripts/per-boot|per-instance|
# per-once and runs at that frequency (handlers/shell_script_by_frequency.py): MIME
# part types only, run as declared.
BY_FREQUENCY = tuple(f"text/x-shellscript-per-{f}" for f in ("boot", "instance", "once"))
PART_TYPES.update(dict.fromkeys(BY_FREQUENCY, "#!"))
# The part types cloud-init 22.4 runs as declared, whatever they hold (it looks at the
# content of text/plain and text/x-shellscript parts only: user_data.py _process_msg),
# by the kind they must hold; and the type to declare for each kind.
AS_DECLARED = {
    "text/cloud-config": ("cloud-config",),
    "text/cloud-boothook": ("boothook", "script"),
}
AS_DECLARED.update(dict.fromkeys(BY_FREQUENCY, ("script",)))
TYPE_OF = {
    "cloud-config": "text/cloud-config",
    "script": "text/x-shellscript",
    "boothook": "text/cloud-boothook",
}
_NAMES = {
    "cloud-config": "a #cloud-config document",
    "script": "a #! script",
    "boothook": "a boothook",
}
GZIP_MAGIC = b"\x1f\x8b"
# Errors of one document named at most (the rest are counted).
MAX_ERRORS = 3
# How many values a #cloud-config document may hold, its YAML aliases expanded (or one
# per byte of it, if that is more), and how deep: a few hundred bytes of aliases of
# aliases expand to millions of values, which the schema check walked (and printed) for
# many seconds, and a document nested a thousand deep was an INTERNAL error. A document
# without aliases holds fewer values than it has bytes (so one within a raised
# limits.max_user_data_bytes is never refused so), and a real one is a few levels deep.
MAX_VALUES = 100_000
MAX_DEPTH = 64


def kind(data: bytes) -> str:
    """What a user-data document is: "cloud-config", "script", "boothook", "multipart",
    or "" (none of them)."""
    head = data.lstrip()[:256]
    low = head.lower()
    if low.startswith(OTHER_CLOUD_CONFIGS):
        return ""
    # cloud-init compares the start lowercased (handlers.type_from_starts_with): a
    # `#Cloud-Config` is one. Not so a boothook: its handler strips the line only when
    # it is `#cloud-boothook`, and the script left cannot run.
    if low.startswith(CLOUD_CONFIG.encode()):
        return "cloud-config"
    if head.startswith(BOOTHOOK.encode()):
        return "boothook"
    if head.startswith(b"#!"):
        return "script"
    if low.startswith(b"content-type: multipart/") or low.startswith(b"mime-version:"):
        return "multipart"
    return ""


@functools.lru_cache(maxsize=4)
def load_schema(path: str) -> jsonschema.protocols.Validator | None:
    """A validator of cloud-init's schema at ``path`` (loaded once; None: no path)."""
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        schema = json.load(f)
    cls = jsonschema.validators.validator_for(schema)
    # As cloud-init's own validator (config/schema.py get_jsonschema_validator): bytes
    # are a string, so that its documented `content: !!binary |` (a gzip'd file in
    # write_files) passes; it was refused as "... is not of type 'string'".
    strings = cls.TYPE_CHECKER.redefine("string", _is_string)
    cls = jsonschema.validators.extend(cls, type_checker=strings)
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator


def _is_string(_checker: object, value: object) -> bool:
    return isinstance(value, str | bytes)


def _where(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    return f"{path}: " if path else ""


def cloud_config_errors(text: str, validator: Any) -> list[str]:
    """What is wrong with a #cloud-config document ([]: nothing)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return [f"not valid YAML{where}: {problem}"]
    except RecursionError:
        return [f"nested more than {MAX_DEPTH} deep"]
    if doc is None:
        return []
    too_big = _too_big(doc, max(MAX_VALUES, len(text)))
    if too_big:
        return [too_big]
    if not isinstance(doc, dict):
        return [f"expected a mapping of keys (such as runcmd:), got a {type(doc).__name__}"]
    if validator is None:
        return []
    errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    # One problem met through two branches of the schema (a oneOf) is said once.
    said = list(dict.fromkeys(f"{_where(e)}{e.message}{_hint(e)}" for e in errors))
    out = said[:MAX_ERRORS]
    if len(said) > MAX_ERRORS:
        out.append(f"and {len(said) - MAX_ERRORS} more")
    return out


def _hint(error: jsonschema.ValidationError) -> str:
    """What to do about a number where a string is wanted: YAML read an unquoted
    `permissions: 0644` as the octal number 420, which the message names."""
    wanted = error.validator_value if error.validator == "type" else None
    value = error.instance
    if wanted != "string" or isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    example = ": '0644'" if list(error.absolute_path)[-1:] == ["permissions"] else ""
    return f" (YAML read the unquoted value as a number: quote it{example})"


def _too_big(doc: object, most: int) -> str:
    """Why ``doc`` holds too much to check ("": it does not), counted without recursion
    and without expanding more than ``most`` values."""
    stack: list[tuple[object, int]] = [(doc, 1)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > most:
            return f"more than {most} values, its YAML aliases expanded"
        if depth > MAX_DEPTH:
            return f"nested more than {MAX_DEPTH} deep"
        if isinstance(value, dict):
            stack.extend((x, depth + 1) for item in value.items() for x in item)
        elif isinstance(value, list):
            stack.extend((x, depth + 1) for x in value)
    return ""


@functools.lru_cache(maxsize=64)
def top_level(data: bytes) -> Mapping[str, Any]:
    """The top-level keys of #cloud-config ``data`` (empty when it is no mapping, or does
    not parse: it was checked at create). Parsed once and cached: the seed asks it
    several keys, a cluster's members share their user-data, and a node's orders render
    every seed. Read only."""
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def form_of(data: bytes, key: str) -> str:
    """What #cloud-config ``data`` sets top-level ``key`` to: "list", "string",
    "mapping", "other", or "" when it does not set it (or does not parse)."""
    value = top_level(data).get(key)
    if value is None:
        return ""
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    return "mapping" if isinstance(value, dict) else "other"


def keys_for(data: bytes, user: str) -> list[str]:
    """The SSH public keys #cloud-config ``data`` has cloud-init give ``user`` (the
    default user): its top-level ``ssh_authorized_keys`` and those of its ``users``
    entry named ``user`` (in a list, or a mapping's)."""
    doc = top_level(data)
    out = _key_lines(doc.get("ssh_authorized_keys"))
    users = doc.get("users")
    if isinstance(users, dict):
        users = [{**v, "name": k} for k, v in users.items() if isinstance(v, dict)]
    for entry in users if isinstance(users, list) else ():
        if isinstance(entry, dict) and entry.get("name") == user:
            out.extend(_key_lines(entry.get("ssh_authorized_keys")))
    return out


def _key_lines(value: object) -> list[str]:
    """The keys of a cloud-config ``ssh_authorized_keys`` list, one line each, from the
    key on (``sshkeys.key_of``): the pruning takes a record's second field for the key,
    and a line with options (``from="..." ssh-ed25519 AAAA...``) gave it "ssh-ed25519",
    which took every ed25519 key of the saved disk's next instance; one with no key
    (one field) gave it an empty pattern, which took every key. Lines with no key are
    left out."""
    if not isinstance(value, list):
        return []
    lines = [k for k in value if isinstance(k, str) and "\n" not in k.strip()]
    return [key for key in map(sshkeys.key_of, lines) if key]


# An account name useradd takes (Debian's default NAME_REGEX, at most 32 characters).
_ACCOUNT = re.compile(r"[a-z_][a-z0-9_-]{0,30}\$?")


def default_user_of(data: bytes) -> str:
    """The name #cloud-config ``data`` gives the default user (``user: NAME`` or
    ``user: {name: NAME}``; "" none, or not an account name)."""
    user = top_level(data).get("user")
    name = user.get("name") if isinstance(user, dict) else user
    return name if isinstance(name, str) and _ACCOUNT.fullmatch(name) else ""


# How each kind is named when it is not UTF-8 (cloud-init writes every part as UTF-8
# text: a script that is not fails in its handler and is never run, unreported).
_KIND_NAMES = {"cloud-config": "a #cloud-config document", "script": "a #! script"}


def _decoded(data: bytes, what: str, found: str = "cloud-config") -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        name = _KIND_NAMES.get(found, f"a {found}")
        raise InvalidArgument(
            f"{what}: {name} must be UTF-8 (byte {exc.start} is not); cloud-init would not run it"
        ) from None


def _check_script(data: bytes, what: str, found: str, declared: str = "") -> None:
    """A script must start with its ``#!`` (cloud-init finds it past leading blanks,
    writes it as given and execs it: the kernel then says "Exec format error", the
    script never runs, and only the guest's log tells). A boothook too, after its
    ``#cloud-boothook`` line: cloud-init execs what follows it, blanks stripped
    (handlers/boot_hook.py); ``declared``: the MIME part's type."""
    if found == "boothook" or declared == "text/cloud-boothook":
        body = data[len(BOOTHOOK) :] if data.startswith(BOOTHOOK.encode()) else data
        if not body.lstrip().startswith(b"#!"):
            raise InvalidArgument(
                f"{what}: a boothook must be a script: put its #! line (#!/bin/sh) right "
                "after #cloud-boothook (cloud-init runs what follows that line as a "
                "program, which it could not)"
            )
    elif found == "script" and not data.startswith(b"#!"):
        raise InvalidArgument(
            f"{what}: a #! script must start with #! at its very first byte, not after blank "
            "lines or spaces: cloud-init would take it, and the guest could not run it"
        )


def _check_part(part: email.message.Message, i: int, validator: Any) -> None:
    what = f"user-data: part {i} ({part.get_content_type()})"
    raw = part.get_payload(decode=True)
    data = raw if isinstance(raw, bytes) else b""
    found = kind(data)
    if not found and part.get_content_type() == "text/cloud-config":
        # cloud-init reads a part declared cloud-config as YAML, with the #cloud-config
        # line or without (Terraform's cloudinit_config of a yamlencode() has none).
        found = "cloud-config"
    wanted = PART_TYPES.get(part.get_content_type())
    if wanted is None and part.get_content_type() not in ("text/plain", "text/x-not-multipart"):
        raise InvalidArgument(f"{what}: this part type is not accepted; use {FORMATS}")
    if found in ("", "multipart"):
        raise InvalidArgument(f"{what}: expected {FORMATS}")
    declared = AS_DECLARED.get(part.get_content_type())
    if declared is not None and found not in declared:
        raise InvalidArgument(
            f"{what}: it holds {_NAMES[found]}, which cloud-init would "
            f"{'read as' if declared[0] == 'cloud-config' else 'run as'} {_NAMES[declared[0]]}; "
            f"declare it {TYPE_OF[found]} (or text/plain)"
        )
    text = _decoded(data, what, found)
    _check_script(data, what, found, part.get_content_type())
    if found == "cloud-config":
        errors = cloud_config_errors(text, validator)
        if errors:
            raise InvalidArgument(f"{what}: #cloud-config: {'; '.join(errors)}")


def _check_multipart(data: bytes, validator: Any) -> None:
    try:  # the parser and walk() recurse into each multi-part inside another
        msg = email.message_from_bytes(data)
        parts = [p for p in msg.walk() if not p.is_multipart()]
    except RecursionError:
        raise InvalidArgument("user-data: a MIME document of multi-parts nested too deep") from None
    if not msg.is_multipart():
        raise InvalidArgument(f"user-data: a MIME document that is not multi-part; use {FORMATS}")
    if not parts:
        raise InvalidArgument("user-data: a MIME multi-part document without parts")
    for i, part in enumerate(parts, 1):
        _check_part(part, i, validator)


def check(data: bytes, schema_path: str = "") -> None:
    """InvalidArgument unless ``data`` is empty or an accepted user-data document
    (``schema_path``: cloud-init's JSON schema to check #cloud-config against, "" none)."""
    if not data:
        return
    _check_cached(bytes(data), schema_path)


@functools.lru_cache(maxsize=64)
def _check_cached(data: bytes, schema_path: str) -> None:
    # Cached: the members of one cluster role share their user-data. Only successes are
    # cached (an exception is not).
    validator = load_schema(schema_path)
    found = kind(data)
    if found in ("cloud-config", "script", "boothook"):
        text = _decoded(data, "user-data", found)
        _check_script(data, "user-data", found)
    if found == "cloud-config":
        errors = cloud_config_errors(text, validator)
        if errors:
            raise InvalidArgument(f"user-data: #cloud-config: {'; '.join(errors)}")
    elif found == "multipart":
        _check_multipart(data, validator)
    elif data.startswith(codecs.BOM_UTF8):
        raise InvalidArgument(
            "user-data starts with a byte order mark, which cloud-init does not look past: "
            f"save it as UTF-8 without one ({FORMATS})"
        )
    elif data.startswith(GZIP_MAGIC):
        raise InvalidArgument(
            f"user-data is gzip-compressed: give it uncompressed (expected {FORMATS})"
        )
    elif not found:
        raise InvalidArgument(f"user-data is not accepted: expected {FORMATS}")
