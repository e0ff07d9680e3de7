"""SSH public keys (workspace/ops/keys.py ``parse``, workspace/domain/sshkeys.py): the
accepted types, fingerprints as ``ssh-keygen -l`` prints them, clear refusals, and the
key pairs the service makes for guests."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from workspace.cli import ws
from workspace.client_keys import KeysClientMixin
from workspace.domain import sshkeys
from workspace.errors import InvalidArgument
from workspace.ops import keys

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen")


def keygen(tmp: Path, kind: str, bits: int = 0, comment: str = "me@laptop") -> Path:
    path = tmp / f"id_{kind}_{bits}"
    args = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(path)]
    if bits:
        args += ["-b", str(bits)]
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    return path


def keygen_fingerprint(path: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return out.split()[1]


@pytest.mark.parametrize(
    ("kind", "bits"),
    [("ed25519", 0), ("ecdsa", 256), ("ecdsa", 384), ("ecdsa", 521), ("rsa", 2048), ("rsa", 3072)],
)
def test_accepted_keys_and_their_fingerprints_match_ssh_keygen(
    tmp_path: Path, kind: str, bits: int
) -> None:
    path = keygen(tmp_path, kind, bits)
    text = path.with_suffix(".pub").read_text()
    line = keys.parse(text)
    assert line.fingerprint == keygen_fingerprint(path.with_suffix(".pub"))
    assert line.comment == "me@laptop"
    assert line.line() == text.strip()


def test_a_comment_with_spaces_is_kept(tmp_path: Path) -> None:
    path = keygen(tmp_path, "ed25519", comment="Jane Doe laptop")
    assert keys.parse(path.with_suffix(".pub").read_text()).comment == "Jane Doe laptop"


def test_a_pub_file_saved_with_a_byte_order_mark_is_taken(tmp_path: Path) -> None:
    """A .pub file an editor saved as "UTF-8 with BOM" was refused, saying its data did not
    match its type '\ufeffssh-ed25519'."""
    path = keygen(tmp_path, "ed25519").with_suffix(".pub")
    line = keys.parse("\ufeff" + path.read_text())
    assert line.type == "ssh-ed25519" and line.fingerprint == keygen_fingerprint(path)


def test_an_authorized_keys_line_with_options_is_refused_saying_so(tmp_path: Path) -> None:
    text = keygen(tmp_path, "ed25519").with_suffix(".pub").read_text()
    with pytest.raises(InvalidArgument) as info:
        keys.parse('no-pty,from="10.0.0.0/8" ' + text)
    assert info.value.message.startswith(
        "not an SSH public key (it starts with authorized_keys options "
        "'no-pty,from=\"10.0.0.0/8\"': give the key without them)"
    )


def _wire(*fields: bytes) -> str:
    return base64.b64encode(b"".join(len(f).to_bytes(4, "big") + f for f in fields)).decode()


def sk_key(kind: str, application: bytes = b"ssh:") -> str:
    """A security key's .pub line as ssh-keygen -t ed25519-sk|ecdsa-sk writes it (made
    without the hardware: the line holds only the public key and the application)."""
    if kind == "ed25519-sk":
        raw = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        return f"{keys.SK_ED25519} {_wire(keys.SK_ED25519.encode(), raw, application)} me@yubi"
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return (
        f"{keys.SK_ECDSA} {_wire(keys.SK_ECDSA.encode(), b'nistp256', point, application)} me@yubi"
    )


@pytest.mark.parametrize("kind", ["ed25519-sk", "ecdsa-sk"])
def test_a_security_keys_public_key_is_accepted(tmp_path: Path, kind: str) -> None:
    """A scientist logging in with a FIDO key (YubiKey: ssh-keygen -t ed25519-sk) was
    told its type was not accepted, though the guests' OpenSSH and cloud-init take it."""
    text = sk_key(kind) + "\n"
    line = keys.parse(text)
    (tmp_path / "id.pub").write_text(text)
    assert line.fingerprint == keygen_fingerprint(tmp_path / "id.pub")
    assert line.line() == text.strip() and line.comment == "me@yubi"


def test_a_security_key_that_is_not_one_is_refused() -> None:
    bad = _wire(keys.SK_ED25519.encode(), b"\x01" * 31, b"ssh:")
    with pytest.raises(InvalidArgument, match=r"not a valid sk-ssh-ed25519@openssh\.com key"):
        keys.parse(f"{keys.SK_ED25519} {bad}")
    with pytest.raises(InvalidArgument, match="no application"):
        keys.parse(sk_key("ed25519-sk", b""))


def test_a_short_rsa_key_is_refused(tmp_path: Path) -> None:
    path = keygen(tmp_path, "rsa", 1024)
    with pytest.raises(InvalidArgument, match="RSA key of 1024 bits is too weak"):
        keys.parse(path.with_suffix(".pub").read_text())


def test_a_private_key_is_named_as_such(tmp_path: Path) -> None:
    path = keygen(tmp_path, "ed25519")
    with pytest.raises(InvalidArgument) as info:
        keys.parse(path.read_text())
    assert info.value.message == "that is a private key; give the .pub file"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not an SSH public key (got nothing)"),
        ("hello", "not an SSH public key (expected one line: TYPE BASE64 [COMMENT])"),
        (
            "ssh-ed25519 !!!notbase64",
            "not an SSH public key (the key's second field is not base64)",
        ),
        (
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIFVZbZ3EXhyOoC1P1Sb7GbhLWyH1sVrRfQ2KDW4H7WeS",
            "does not match its type 'ssh-rsa'",
        ),
        ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "not an SSH public key"),
        ("a b\nc d\n", "not an SSH public key (got 2 lines)"),
    ],
)
def test_anything_else_is_refused_saying_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        keys.parse(text)
    assert message in info.value.message
    assert "ssh-ed25519" in info.value.message or "not accepted" in info.value.message


def test_a_dsa_key_type_is_not_accepted() -> None:
    blob = b"\x00\x00\x00\x07ssh-dss" + b"\x00" * 16
    with pytest.raises(InvalidArgument, match="SSH key type 'ssh-dss' is not accepted"):
        keys.parse(f"ssh-dss {base64.b64encode(blob).decode()} old")


def test_a_generated_host_key_pair_is_one_openssh_reads(tmp_path: Path) -> None:
    private, public = keys.new_key_pair()
    assert private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert public.startswith("ssh-ed25519 AAAA")
    path = tmp_path / "host"
    path.write_text(private)
    path.chmod(0o600)
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(path)], check=True, capture_output=True, text=True
    ).stdout.split()
    assert derived[:2] == public.split()[:2]
    (tmp_path / "host.pub").write_text(public + "\n")
    assert sshkeys.fingerprint(public) == keygen_fingerprint(tmp_path / "host.pub")


def test_fingerprint_of_an_unreadable_line() -> None:
    assert sshkeys.fingerprint("nonsense") == "?"


PPK = "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: me\nPublic-Lines: 2\n"


def test_the_client_refuses_a_private_key_without_sending_it(tmp_path: Path) -> None:
    """A private key given where the public one was meant (`ws key add ~/.ssh/id_ed25519`,
    ``Client.add_ssh_key``) was sent to the service, which refused it: the secret left the
    machine. It is refused before any call now."""

    class Keys(KeysClientMixin):
        _keys = cast(Any, SimpleNamespace(AddSshKey="AddSshKey"))

        def _call(self, method: Any, request: Any, timeout_s: float | None = None) -> Any:
            pytest.fail(f"the private key was sent: {request}")

    private = keygen(tmp_path, "ed25519")
    for text in (private.read_text(), PPK, "\ufeff" + PPK):
        with pytest.raises(InvalidArgument) as info:
            Keys().add_ssh_key(text)
        assert info.value.message == "that is a private key; give the .pub file (it was not sent)"


def test_ws_key_add_of_a_private_key_file_names_its_pub_and_does_not_connect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private = keygen(tmp_path, "rsa", 3072)
    code = ws.main(
        ["key", "add", str(private)], connect=lambda _s: pytest.fail("connected to send it")
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err == (
        f"ws: error: {private} is a private key, which stays on this machine (it was not "
        f"sent): give its public half, {private}.pub\n"
    )


@pytest.mark.parametrize(
    ("kind", "form", "said"),
    [
        ("ed25519", "RFC4716", "in the SSH2 format (RFC 4716) PuTTYgen saves: give it as "),
        ("rsa", "PKCS8", "in PEM (PKCS#8): give it as "),
        ("rsa", "PEM", "in PEM (PKCS#1): give it as "),
    ],
)
def test_a_public_key_in_another_format_says_how_to_convert_it(
    tmp_path: Path, kind: str, form: str, said: str
) -> None:
    """PuTTYgen's "Save public key" (RFC 4716) and PEM public keys were refused as "not an
    SSH public key (got 4 lines)"; the refusal names the format and the ssh-keygen command
    that prints the line wanted, and that command's output is accepted."""
    path = keygen(tmp_path, kind)
    exported = tmp_path / "exported"
    exported.write_text(
        subprocess.run(
            ["ssh-keygen", "-e", "-m", form, "-f", str(path.with_suffix(".pub"))],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    )
    with pytest.raises(InvalidArgument) as info:
        keys.parse(exported.read_text())
    message = info.value.message
    assert message.startswith(f"that is a public key {said}OpenSSH's one line, which `ssh-keygen")
    command = message.split("`")[1].replace("FILE", str(exported)).split()
    line = subprocess.run(command, check=True, capture_output=True, text=True, timeout=60).stdout
    assert keys.parse(line).fingerprint == keygen_fingerprint(path.with_suffix(".pub"))


def test_a_public_key_whose_comment_says_private_key_is_taken(tmp_path: Path) -> None:
    """Any text holding "PRIVATE KEY" was a private key: a public key whose comment said
    so (``-C "laptop, PRIVATE KEY on the yubikey"``) was refused "that is a private key;
    give the .pub file", though it was the .pub file. Only a private key's armour counts."""
    pub = keygen(tmp_path, "ed25519", comment="laptop, PRIVATE KEY on the yubikey")
    text = pub.with_suffix(".pub").read_text()
    assert not sshkeys.is_private(text)
    assert keys.parse(text).comment == "laptop, PRIVATE KEY on the yubikey"


def test_every_private_key_format_is_taken_for_one(tmp_path: Path) -> None:
    """OpenSSH's, PEM (RSA, EC, PKCS#8, encrypted), ssh.com's, PuTTY's .ppk (also without
    its header line), PGP's, and a paste of a key's last lines only."""
    rsa_key = keygen(tmp_path, "rsa", 3072)
    openssh = rsa_key.read_text()
    subprocess.run(["ssh-keygen", "-q", "-p", "-N", "", "-m", "PEM", "-f", str(rsa_key)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    pem_rsa = rsa_key.read_text()
    assert pem_rsa.startswith("-----BEGIN RSA PRIVATE KEY-----")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    enc = serialization.BestAvailableEncryption(b"secret")
    formats = (serialization.PrivateFormat.TraditionalOpenSSL, serialization.PrivateFormat.PKCS8)
    texts = [
        openssh,
        pem_rsa,
        *(
            ec_key.private_bytes(serialization.Encoding.PEM, f, e).decode()
            for f in formats
            for e in (serialization.NoEncryption(), enc)
        ),
        "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\nComment: me\nP2/56wAAA\n",
        PPK,
        "Encryption: none\nComment: me\nPublic-Lines: 2\nAAAA\nPrivate-Lines: 1\nAAAA\n",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF\n",
        openssh.splitlines()[-2] + "\n" + openssh.splitlines()[-1] + "\n",
    ]
    for text in texts:
        assert sshkeys.is_private(text), text
        with pytest.raises(InvalidArgument, match="that is a private key"):
            keys.parse(text)
