"""User-data checks at create (workspace/domain/userdata.py): every accepted and refused
form, and the text of a schema error (with cloud-init's own schema when installed)."""

from __future__ import annotations

import pytest

from workspace.config import CLOUD_CONFIG_SCHEMA, ContextConfig
from workspace.domain import userdata
from workspace.errors import InvalidArgument

SCHEMA = ContextConfig().schema_path()
needs_schema = pytest.mark.skipif(not SCHEMA, reason="cloud-init's schema is not installed")


def multipart(*parts: tuple[str, bytes]) -> bytes:
    out = b'Content-Type: multipart/mixed; boundary="B"\nMIME-Version: 1.0\n\n'
    for ctype, body in parts:
        out += f"--B\nContent-Type: {ctype}\n\n".encode() + body + b"\n"
    return out + b"--B--\n"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"#cloud-config\n",
        b"#cloud-config\nruncmd:\n- [touch, /tmp/x]\npackages: [htop]\n",
        b"#cloud-config\nwrite_files:\n- path: /etc/motd\n  content: hi\n",
        b"#Cloud-Config\nruncmd: [[ls]]\n",  # cloud-init lowercases it (it was refused)
        # cloud-init's own write_files example: a gzip'd file as YAML !!binary (bytes)
        b"#cloud-config\nwrite_files:\n- encoding: gzip\n  path: /usr/bin/hello\n"
        b"  content: !!binary |\n"
        b"    H4sIAIDb/U8C/1NW1E/KzNMvzuBKTc7IV8hIzcnJVyjPL8pJ4QIA6N+MVxsAAAA=\n",
        b"#!/bin/sh\necho hello\n",
        b"#!/usr/bin/env python3\nprint('hi')\n",
        b"#cloud-boothook\n#!/bin/sh\necho early\n",
        multipart(
            ("text/cloud-config", b"#cloud-config\nruncmd: [[ls]]"),
            ("text/x-shellscript", b"#!/bin/sh\nls"),
        ),
        multipart(("text/plain", b"#!/bin/sh\nls")),
        # cloud-init's boothook handler runs a #! script declared a boothook as it is
        multipart(("text/cloud-boothook", b"#!/bin/sh\nls")),
        # ... and looks at what a text/x-shellscript part holds
        multipart(("text/x-shellscript", b"#cloud-config\nruncmd: [[ls]]")),
        # ... and reads a part declared cloud-config as YAML, its #cloud-config line or
        # not (Terraform's cloudinit_config of a yamlencode() has none): it was refused
        multipart(("text/cloud-config", b'runcmd: [[ls]]\nusers: [{"name": "alice"}]')),
    ],
    ids=[
        "empty",
        "empty-cloud-config",
        "cloud-config",
        "write-files",
        "cloud-config-capitalised",
        "write-files-binary",
        "script",
        "python-script",
        "boothook",
        "multipart",
        "multipart-plain-script",
        "multipart-boothook-script",
        "multipart-cloud-config-declared-script",
        "multipart-cloud-config-without-its-line",
    ],
)
def test_accepted(data: bytes) -> None:
    userdata.check(data, SCHEMA)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello world\n", "user-data is not accepted: expected a #cloud-config document"),
        (b"#include\nhttp://x/y\n", "expected a #cloud-config document, a #! script"),
        (b"#cloud-config-archive\n- type: text/x-shellscript\n", "user-data is not accepted"),
        (b"#cloud-config\n- a\n- b\n", "user-data: #cloud-config: expected a mapping of keys"),
        (b"#cloud-config\nruncmd: [oops\n", "user-data: #cloud-config: not valid YAML (line 3"),
        (b"#cloud-config\nkey: \xff\n", "a #cloud-config document must be UTF-8"),
        # cloud-init accepted these and then never ran them, reporting nothing
        (b"#!/bin/sh\necho \xff\xfe bad\n", "user-data: a #! script must be UTF-8 (byte 15"),
        (b"#cloud-boothook\n#!/bin/sh\n\xff\n", "user-data: a boothook must be UTF-8"),
        # cloud-init execs what follows the #cloud-boothook line: without #! it cannot
        (b"#cloud-boothook\necho hi > /etc/motd\n", "user-data: a boothook must be a script"),
        (
            multipart(("text/cloud-boothook", b"  #cloud-boothook\n#!/bin/sh\n")),
            "user-data: part 1 (text/cloud-boothook): a boothook must be a script",
        ),
        # cloud-init finds the script past them, writes it as given, and its exec fails
        (b"\n#!/bin/sh\necho hi\n", "user-data: a #! script must start with #! at its very"),
        (
            multipart(("text/x-shellscript", b"  #!/bin/sh\necho hi\n")),
            "user-data: part 1 (text/x-shellscript): a #! script must start with #! at its",
        ),
        (
            multipart(("text/x-shellscript", b"#!/bin/sh\necho \xff\n")),
            "user-data: part 1 (text/x-shellscript): a #! script must be UTF-8",
        ),
        (
            multipart(("text/cloud-config", b"#cloud-config\n[1, 2]")),
            "user-data: part 1 (text/cloud-config): #cloud-config: expected a mapping",
        ),
        (
            multipart(("text/cloud-config", b"- runcmd")),
            "user-data: part 1 (text/cloud-config): #cloud-config: expected a mapping",
        ),
        (
            multipart(("text/x-include-url", b"http://example.org/x")),
            "user-data: part 1 (text/x-include-url): this part type is not accepted",
        ),
        (
            multipart(("text/plain", b"just words")),
            "user-data: part 1 (text/plain): expected a #cloud-config document",
        ),
        (
            b"MIME-Version: 1.0\nContent-Type: text/plain\n\n#!/bin/sh\n",
            "a MIME document that is not multi-part",
        ),
        # cloud-init 22.4 runs a text/cloud-config or text/cloud-boothook part as its
        # declared type says (it looks at the content of text/plain and
        # text/x-shellscript parts only): a script declared cloud-config, or a
        # cloud-config declared a boothook, was accepted and then did nothing at boot (a
        # YAML string; "Exec format error"), nothing said to the user
        (
            multipart(("text/cloud-config", b"#!/bin/sh\nls")),
            "user-data: part 1 (text/cloud-config): it holds a #! script, which cloud-init "
            "would read as a #cloud-config document; declare it text/x-shellscript",
        ),
        (
            multipart(("text/cloud-boothook", b"#cloud-config\nruncmd: [[ls]]")),
            "user-data: part 1 (text/cloud-boothook): it holds a #cloud-config document, "
            "which cloud-init would run as a boothook; declare it text/cloud-config",
        ),
        (
            multipart(("text/x-shellscript-per-boot", b"#cloud-config\nruncmd: [[ls]]")),
            "user-data: part 1 (text/x-shellscript-per-boot): it holds a #cloud-config "
            "document, which cloud-init would run as a #! script; declare it text/cloud-config",
        ),
        (
            b"\xef\xbb\xbf#cloud-config\nruncmd: [[ls]]\n",
            "user-data starts with a byte order mark, which cloud-init does not look past: "
            "save it as UTF-8 without one",
        ),
        (
            b"\x1f\x8b\x08\x00gzip",
            "user-data is gzip-compressed: give it uncompressed (expected a #cloud-config",
        ),
    ],
    ids=[
        "plain-text",
        "include",
        "cloud-config-archive",
        "yaml-list",
        "bad-yaml",
        "not-utf8",
        "script-not-utf8",
        "boothook-not-utf8",
        "boothook-without-its-interpreter",
        "multipart-boothook-after-spaces",
        "script-after-a-blank-line",
        "multipart-script-after-spaces",
        "multipart-script-not-utf8",
        "multipart-list",
        "multipart-list-without-its-line",
        "multipart-include",
        "multipart-text",
        "mime-single",
        "multipart-script-as-cloud-config",
        "multipart-cloud-config-as-boothook",
        "multipart-cloud-config-as-per-boot-script",
        "bom",
        "gzip-named",
    ],
)
def test_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        userdata.check(data, SCHEMA)
    assert message in info.value.message


@needs_schema
def test_a_schema_error_names_the_key_and_the_problem() -> None:
    with pytest.raises(InvalidArgument) as info:
        userdata.check(b"#cloud-config\nruncmd: 5\n", SCHEMA)
    assert info.value.message == "user-data: #cloud-config: runcmd: 5 is not of type 'array'"


@needs_schema
def test_a_nested_schema_error_names_its_path() -> None:
    with pytest.raises(InvalidArgument) as info:
        userdata.check(b"#cloud-config\nwrite_files:\n- path: 3\n", SCHEMA)
    assert "write_files.0.path: 3 is not of type 'string'" in info.value.message


@needs_schema
def test_an_unquoted_mode_is_said_to_need_quotes_and_a_problem_once() -> None:
    """YAML reads `permissions: 0644` as the number 420, and the message named only 420;
    a hostname met through both branches of the schema's oneOf was said twice."""
    with pytest.raises(InvalidArgument) as info:
        userdata.check(b"#cloud-config\nwrite_files:\n- {path: /x, permissions: 0644}\n", SCHEMA)
    assert info.value.message == (
        "user-data: #cloud-config: write_files.0.permissions: 420 is not of type 'string' "
        "(YAML read the unquoted value as a number: quote it: '0644')"
    )
    with pytest.raises(InvalidArgument) as info:
        userdata.check(b"#cloud-config\nhostname: 123\n", SCHEMA)
    assert info.value.message == (
        "user-data: #cloud-config: hostname: 123 is not of type 'string' "
        "(YAML read the unquoted value as a number: quote it)"
    )


@needs_schema
def test_a_multipart_cloud_config_part_is_checked_against_the_schema() -> None:
    data = multipart(
        ("text/x-shellscript", b"#!/bin/sh\nls"), ("text/cloud-config", b"#cloud-config\nruncmd: 5")
    )
    with pytest.raises(InvalidArgument) as info:
        userdata.check(data, SCHEMA)
    assert info.value.message == (
        "user-data: part 2 (text/cloud-config): #cloud-config: runcmd: 5 is not of type 'array'"
    )


def test_without_a_schema_only_the_yaml_is_checked() -> None:
    userdata.check(b"#cloud-config\nruncmd: 5\n", "")
    assert ContextConfig(cloud_config_schema="none").schema_path() == ""


def test_auto_finds_cloud_inits_schema_when_installed() -> None:
    import os

    expected = CLOUD_CONFIG_SCHEMA if os.path.exists(CLOUD_CONFIG_SCHEMA) else ""
    assert ContextConfig().schema_path() == expected
    assert ContextConfig(cloud_config_schema="/x.json").schema_path() == "/x.json"


def test_kinds() -> None:
    assert userdata.kind(b"  #cloud-config\n") == "cloud-config"
    assert userdata.kind(b"#!/bin/bash") == "script"
    assert userdata.kind(b"#cloud-boothook") == "boothook"
    assert userdata.kind(b"Content-Type: multipart/mixed; boundary=x") == "multipart"
    assert userdata.kind(b"{}") == ""


def _aliases(levels: int) -> bytes:
    """A #cloud-config of a few hundred bytes whose YAML aliases of aliases expand to
    9**levels values."""
    lines = ["#cloud-config", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    lines.append(f"runcmd: [*a{levels - 1}]")
    return "\n".join(lines).encode() + b"\n"


def _nested_mime(depth: int) -> bytes:
    heads = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i) for i in range(depth)
    )
    tails = b"".join(b"\n--b%d--\n" % i for i in reversed(range(depth)))
    return (
        b"MIME-Version: 1.0\n" + heads + b"Content-Type: text/x-shellscript\n\n#!/bin/sh\n" + tails
    )


@pytest.mark.parametrize("schema", ["", SCHEMA])
def test_a_document_too_big_or_too_deep_to_check_is_refused(schema: str) -> None:
    """A few hundred bytes of YAML aliases of aliases expand to 43 million values: they
    were taken, and with cloud-init's schema checked (and printed in the refusal) for
    some 17 s in the create's transaction. YAML, MIME parts or JSON nested a thousand
    deep made Python's parsers recurse past their limit: an INTERNAL error."""
    deep = b"[" * 1000 + b"]" * 1000
    for data, message in (
        (_aliases(8), "more than 100000 values, its YAML aliases expanded"),
        (b"#cloud-config\nruncmd: " + deep, "nested more than 64 deep"),
        (b"#cloud-config\nruncmd: " + b"[" * 65 + b"]" * 65, "nested more than 64 deep"),
        (multipart(("text/cloud-config", b"runcmd: " + deep)), "nested more than 64 deep"),
        (_nested_mime(1000), "a MIME document of multi-parts nested too deep"),
    ):
        with pytest.raises(InvalidArgument) as info:
            userdata.check(data, schema)
        assert message in info.value.message
    # Aliases that expand to little, and parts nested a few deep, are taken.
    userdata.check(b"#cloud-config\nx: &a [1, 2]\ny: [*a, *a]\n", schema)
    userdata.check(_nested_mime(3), schema)


def test_a_long_document_without_aliases_is_not_refused_for_its_values() -> None:
    """A site may raise limits.max_user_data_bytes: a #cloud-config of 100,001 values
    and no alias (200 KB) was refused "more than 100000 values, its YAML aliases
    expanded". The values a document may expand to are at least one per byte of it."""
    many = b"#cloud-config\nruncmd: [" + b",".join([b"x"] * 100_001) + b"]\n"
    userdata.check(many)
    with pytest.raises(InvalidArgument, match="its YAML aliases expanded"):
        userdata.check(_aliases(8) + b"pad: " + b"x" * len(many) + b"\n")
