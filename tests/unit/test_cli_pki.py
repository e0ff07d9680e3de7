"""`ws-admin pki init|issue|revoke|list`: what each writes and says, and its errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cryptography import x509

from workspace import pki
from workspace.cli import admin
from workspace.identity import Identity, Kind


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = admin.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_init_issue_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = str(tmp_path / "ca")
    code, out, _ = run(capsys, "pki", "init", "--dir", ca, "-o", "json")
    assert code == 0 and json.loads(out)["crl_file"] == f"{ca}/crl.pem"

    a = tmp_path / "alice"
    code, out, _ = run(
        capsys, "-o", "json", "pki", "issue", "user", "alice", "--admin",
        "--project", "physics", "--project", "bio", "--out", str(a), "--dir", ca,
    )  # fmt: skip
    assert code == 0
    issued = json.loads(out)
    assert issued["server_name"] == ""  # users never serve
    assert issued["uris"] == [
        "workspace://user/alice",
        "workspace://role/admin",
        "workspace://project/bio",
        "workspace://project/physics",
    ]
    who = pki.identity_of_dir(a)
    assert (who.kind, who.name, who.admin, who.projects) == (
        Kind.USER, "alice", True, ("bio", "physics"),
    )  # fmt: skip
    assert (a / "key.pem").stat().st_mode & 0o777 == 0o600
    assert a.stat().st_mode & 0o777 == 0o700

    n = tmp_path / "n1"
    code, out, _ = run(
        capsys, "pki", "issue", "node", "n1", "--host", "n1.example", "--host", "10.0.0.5",
        "--out", str(n), "--dir", ca,
    )  # fmt: skip
    assert code == 0 and "issued node:n1" in out
    assert "server name n1.node.workspace.invalid" in out
    assert pki.identity_of_dir(n).is_node
    # the names that prove what a server is are the CA's alone
    code, _, err = run(
        capsys, "pki", "issue", "node", "n2", "--host", "service.workspace.invalid",
        "--out", str(tmp_path / "n2"), "--dir", ca,
    )  # fmt: skip
    assert code == 1 and "reserved for the names the CA itself gives" in err
    s = tmp_path / "svc"
    assert run(capsys, "pki", "issue", "service", "head", "head.example", "--out", str(s),
               "--dir", ca)[0] == 0  # fmt: skip
    assert pki.identity_of_dir(s).name == "head"

    code, out, _ = run(capsys, "pki", "list", "--dir", ca, "-o", "json")
    rows = {r["name"]: r for r in json.loads(out)["issued"]}
    assert set(rows) == {"alice", "n1", "head"} and not any(r["revoked"] for r in rows.values())

    code, out, _ = run(capsys, "pki", "revoke", "alice", "--dir", ca)
    assert code == 0 and "revoked user:alice" in out
    revoked = pki.Revocations(f"{ca}/crl.pem", f"{ca}/ca.pem").serials()
    assert revoked == {who.serial}
    # by serial, in hex as `pki list` shows it
    code, out, _ = run(capsys, "pki", "revoke", rows["n1"]["serial"], "--dir", ca)
    assert code == 0 and "node:n1" in out
    code, out, _ = run(capsys, "pki", "list", "--dir", ca)
    assert out.count("revoked") == 2 and "valid" in out

    # A user's second certificate while one is valid (a renewal): issued, and said.
    code, out, err = run(capsys, "-o", "json", "pki", "issue", "user", "alice",
                         "--out", str(tmp_path / "a2"), "--dir", ca)  # fmt: skip
    assert code == 0 and err == ""  # the first one is revoked
    renewed = json.loads(out)["serial"]
    code, _, err = run(capsys, "pki", "issue", "user", "alice", "--out", str(tmp_path / "a3"),
                       "--dir", ca)  # fmt: skip
    assert code == 0
    assert f"user:alice already holds a valid certificate (serial {renewed})" in err
    # A name a user and a node share: revoked only with its kind.
    run(capsys, "pki", "issue", "user", "n1", "--out", str(tmp_path / "un1"), "--dir", ca)
    capsys.readouterr()
    code, _, err = run(capsys, "pki", "revoke", "n1", "--dir", ca)
    assert code == 1 and "say which: node:n1 or user:n1" in err
    code, out, _ = run(capsys, "pki", "revoke", "user:n1", "--dir", ca)
    assert code == 0 and "revoked user:n1" in out and "node:n1" not in out


def test_two_service_replicas_on_one_host_get_names_of_their_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pki issue service localhost` for a second replica on the host gave both
    certificates the name localhost, and revoking it by that name revoked both. A name
    that holds a valid service certificate is refused, nothing written; the replica
    gets its own name (--name), which revokes it alone; --force renews."""
    ca = str(tmp_path / "ca")
    run(capsys, "pki", "init", "--dir", ca)
    one, two = tmp_path / "one", tmp_path / "two"
    assert run(capsys, "pki", "issue", "service", "localhost", "--out", str(one),
               "--dir", ca)[0] == 0  # fmt: skip
    first = f"{pki.identity_of_dir(one).serial:#x}"
    code, out, err = run(capsys, "pki", "issue", "service", "localhost", "--out", str(two),
                         "--dir", ca)  # fmt: skip
    assert (code, out) == (1, "")
    assert f"service:localhost already holds a valid certificate (serial {first})" in err
    assert "--name NAME" in err and "--force" in err
    assert not two.exists() and len(pki.CA(ca).issued()) == 1

    code, _, _ = run(capsys, "pki", "issue", "service", "localhost", "--name", "replica-2",
                     "--out", str(two), "--dir", ca)  # fmt: skip
    assert code == 0
    assert pki.identity_of_dir(two).name == "replica-2"
    cert = x509.load_pem_x509_certificate((two / "cert.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert "service.workspace.invalid" in sans.get_values_for_type(x509.DNSName)

    code, out, _ = run(capsys, "pki", "revoke", "service:replica-2", "--dir", ca)
    assert code == 0 and "service:replica-2" in out and "service:localhost" not in out
    revoked = pki.Revocations(f"{ca}/crl.pem", f"{ca}/ca.pem").serials()
    assert revoked == {pki.identity_of_dir(two).serial}

    # Renewing the first replica's: --force, and the note names the one it replaces.
    code, _, err = run(capsys, "pki", "issue", "service", "localhost", "--force",
                       "--out", str(tmp_path / "renewed"), "--dir", ca)  # fmt: skip
    assert code == 0
    assert f"service:localhost already holds a valid certificate (serial {first})" in err


def test_a_service_whose_certificate_expired_is_issued_a_new_one_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The usual renewal of a certificate that ran out: an expired one holds nothing
    (clients refuse it), so neither the refusal nor the note "already holds a valid
    certificate" is said of it; they were, naming the expired serial as valid."""
    ca = tmp_path / "ca"
    run(capsys, "pki", "init", "--dir", str(ca))
    # days=0: it expires the moment it is issued (not_after is whole seconds).
    pki.CA(ca).issue(Identity(Kind.SERVICE, "head"), tmp_path / "old", ("head",), days=0)
    pki.CA(ca).issue(Identity(Kind.USER, "alice"), tmp_path / "old-alice", days=0)

    code, out, err = run(capsys, "pki", "issue", "service", "head", "--out",
                         str(tmp_path / "new"), "--dir", str(ca))  # fmt: skip
    assert code == 0 and "issued service:head" in out
    assert err == ""
    code, _, err = run(capsys, "pki", "issue", "user", "alice", "--out",
                       str(tmp_path / "new-alice"), "--dir", str(ca))  # fmt: skip
    assert code == 0 and err == ""
    # The new one is in force: a second is refused as before.
    code, _, err = run(capsys, "pki", "issue", "service", "head", "--out",
                       str(tmp_path / "third"), "--dir", str(ca))  # fmt: skip
    assert code == 1 and "service:head already holds a valid certificate" in err
    # pki list says which ran out (it said "valid" of them).
    code, out, _ = run(capsys, "pki", "list", "--dir", str(ca))
    states = {(line.split()[1], line.split()[2], line.split()[-1]) for line in out.splitlines()[1:]}
    assert states == {
        ("service", "head", "expired"), ("user", "alice", "expired"),
        ("service", "head", "valid"), ("user", "alice", "valid"),
    }  # fmt: skip
    code, out, _ = run(capsys, "pki", "list", "--dir", str(ca), "-o", "json")
    assert sorted(r["state"] for r in json.loads(out)["issued"]) == [
        "expired", "expired", "valid", "valid"]  # fmt: skip


def test_default_ca_dir_is_the_local_sites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WS_PKI_DIR", raising=False)
    monkeypatch.setenv("WS_SITE_DIR", str(tmp_path / "site"))
    assert run(capsys, "pki", "init")[0] == 0
    assert (tmp_path / "site" / "pki" / "ca.key").exists()
    monkeypatch.setenv("WS_PKI_DIR", str(tmp_path / "elsewhere"))
    assert run(capsys, "pki", "init")[0] == 0
    assert (tmp_path / "elsewhere" / "ca.pem").exists()


def test_init_in_a_file_says_it_is_a_file_not_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`WS_PKI_DIR=notes.txt ws-admin pki init` (or --dir) said only "notes.txt: File
    exists", and a directory under a file "Not a directory": not that the path is a
    file where the CA's directory goes."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    monkeypatch.setenv("WS_PKI_DIR", str(notes))
    code, out, err = run(capsys, "pki", "init")
    assert (code, out) == (1, "")
    assert err == (
        f"ws-admin: error: {notes} is a file, not a directory: the CA is made in a "
        "directory (`--dir DIR` or $WS_PKI_DIR)\n"
    )
    code, out, err = run(capsys, "pki", "init", "--dir", str(notes / "ca"))
    assert (code, out) == (1, "")
    assert err == (
        f"ws-admin: error: {notes / 'ca'}: {notes} is a file, not a directory: the CA is "
        "made in a directory (`--dir DIR` or $WS_PKI_DIR)\n"
    )
    assert notes.read_text() == "mine"


def test_errors_are_clear_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = str(tmp_path / "ca")
    out = tmp_path / "x"
    code, _, err = run(capsys, "pki", "issue", "user", "alice", "--out", str(out), "--dir", ca)
    assert code == 1 and "no site CA" in err and "ws-admin pki init" in err
    assert "`--dir DIR` or $WS_PKI_DIR" in err
    assert not out.exists()
    assert run(capsys, "pki", "init", "--dir", ca)[0] == 0
    code, _, err = run(capsys, "pki", "init", "--dir", ca)
    assert code == 1 and "already holds a CA" in err
    for bad in ("Alice", "al ice", "_x", "a" * 64, "alice\n"):
        code, _, err = run(capsys, "pki", "issue", "user", bad, "--out", str(out), "--dir", ca)
        assert code == 1 and "not a valid user name" in err, bad
        assert not out.exists()
    code, _, err = run(
        capsys, "pki", "issue", "user", "bob", "--project", "Bad!", "--out", str(out), "--dir", ca
    )
    # refused as an invalid user name just above is (exit 1), not a usage error
    assert code == 1 and err == "ws-admin: error: --project 'Bad!' is not a valid project " + (
        "name (1-63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit)\n"
    )
    assert not out.exists()
    out.mkdir()
    (out / "notes").write_text("mine")
    code, _, err = run(capsys, "pki", "issue", "user", "bob", "--out", str(out), "--dir", ca)
    # refused as an identity directory already there is (exit 1), not a usage error
    assert code == 1 and err == f"ws-admin: error: --out {out} exists and is not empty; " + (
        "choose a new directory\n"
    )
    assert sorted(p.name for p in out.iterdir()) == ["notes"]
    code, _, err = run(capsys, "pki", "revoke", "nobody", "--dir", ca)
    assert code == 1 and "no certificate named 'nobody'" in err
    assert json.loads(run(capsys, "pki", "list", "--dir", ca, "-o", "json")[1])["issued"] == []


def test_issue_with_a_relative_out_says_an_absolute_identity_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `use it: [tls] identity_dir = "..."` hint goes into a config, where a relative
    path is refused (workspace/config_paths.py): it names the directory absolutely."""
    ca = str(tmp_path / "ca")
    assert run(capsys, "pki", "init", "--dir", ca)[0] == 0
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "pki", "issue", "node", "n1", "--out", "N1", "--dir", ca)
    assert code == 0
    assert f'[tls] identity_dir = "{tmp_path}/N1"' in out


def test_not_after_is_written_as_every_other_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pki list` and `pki issue` gave not_after as issued.json keeps it,
    2027-12-05T08:34:36+00:00, where every other time the CLIs print (`site up`'s
    started_at, each created_at) ends in Z: jq's fromdate, which reads only the Z form,
    failed on it in a script checking which certificates expire soon."""
    ca = str(tmp_path / "ca")
    assert run(capsys, "pki", "init", "--dir", ca)[0] == 0
    code, out, _ = run(
        capsys, "-o", "json", "pki", "issue", "user", "alice", "--out", str(tmp_path / "a"),
        "--dir", ca,
    )  # fmt: skip
    assert code == 0
    not_after = json.loads(out)["not_after"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", not_after), not_after
    code, out, _ = run(capsys, "-o", "json", "pki", "list", "--dir", ca)
    assert [r["not_after"] for r in json.loads(out)["issued"]] == [not_after]
    code, out, _ = run(capsys, "pki", "list", "--dir", ca)
    assert out.split("\n")[1].split()[3] == not_after  # the NOT_AFTER column


def test_bundle_and_issue_with_the_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CA rotation: `pki bundle` writes one ca.pem and crl.pem of both CAs; `issue
    --ca-file` writes that ca.pem into the identity, and refuses a bundle without the CA
    that issues."""
    old, new, dist = (str(tmp_path / n) for n in ("old", "new", "dist"))
    for d in (old, new):
        assert run(capsys, "pki", "init", "--dir", d)[0] == 0
    code, out, _ = run(capsys, "pki", "bundle", old, new, "--out", dist)
    assert code == 0 and "run this again after each revoke" in out
    bundle = Path(dist, "ca.pem").read_bytes()
    assert len(x509.load_pem_x509_certificates(bundle)) == 2
    assert Path(dist, "crl.pem").read_bytes().count(b"BEGIN X509 CRL") == 2
    a = tmp_path / "alice"
    code, _, _ = run(capsys, "pki", "issue", "user", "alice", "--dir", new,
                     "--ca-file", f"{dist}/ca.pem", "--out", str(a))  # fmt: skip
    assert code == 0 and (a / "ca.pem").read_bytes() == bundle
    code, _, err = run(capsys, "pki", "issue", "user", "bob", "--dir", new,
                       "--ca-file", f"{old}/ca.pem", "--out", str(tmp_path / "bob"))  # fmt: skip
    assert code == 1 and "does not hold the CA" in err
