"""`make demo` (workspace/demo.py): its closing hints (`ws ssh demo` only when the demo
could give the VM the caller's SSH key; without one, how to make a key and a VM that has
it), the key it logs in with, and the console lines it shows once the guest is up."""

from __future__ import annotations

from pathlib import Path

from workspace.demo import console_tail, identity, next_steps, user_key


def test_with_a_key_the_demo_vm_is_reached_over_ssh(tmp_path: Path) -> None:
    key = tmp_path / ".ssh" / "id_ed25519.pub"
    text = next_steps(key, ssh_home=tmp_path)
    assert "  ws ssh demo " in text and "ssh-keygen" not in text


def test_without_a_key_no_ssh_into_the_demo_vm_is_suggested() -> None:
    text = next_steps(None)
    assert "ws ssh demo" not in text.replace("no `ws ssh demo`", "")
    steps = text.index("ssh-keygen"), text.index("ws key add"), text.index("ws create")
    assert list(steps) == sorted(steps)  # the key first, then a VM created after it
    assert "ws exec demo" in text  # reaches the demo VM without a key


def test_the_demo_logs_in_with_the_private_half_of_the_key_it_added(tmp_path: Path) -> None:
    """$HOME not the passwd entry's home: ssh would not find the key the demo found
    through $HOME, so ws ssh is given it with -i (and the hint says so too)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    assert user_key(home) is None
    (home / ".ssh" / "id_rsa.pub").write_text("ssh-rsa AAAA me\n")
    assert user_key(home) is None  # no private half: nothing ssh could log in with
    (home / ".ssh" / "id_rsa").write_text("private\n")
    (home / ".ssh" / "id_ed25519.pub").write_text("ssh-ed25519 AAAA me\n")
    key = user_key(home)
    assert key == home / ".ssh" / "id_rsa.pub"
    assert identity(key) == ["-i", str(home / ".ssh" / "id_rsa")]
    text = next_steps(key, ssh_home=tmp_path / "elsewhere")
    # A long -i path: the login and the exec each on a line of their own.
    assert f"\n  ws ssh -i {home / '.ssh' / 'id_rsa'} demo\n  ws exec demo -- df -h /\n" in text


def test_the_console_shown_is_its_last_lines_without_escapes() -> None:
    log = (
        "[  OK  ] Started \x1b[0;1;39mssh.service\x1b[0m - OpenBSD Secure Shell server.\r\n"
        "\r\n"
        "Cloud-init v. 22.4.2 finished at Mon, 01 Jan 2024 00:01:30 +0000. Up 88.1 seconds\r\n"
        "\r\n"
        "Debian GNU/Linux 12 demo ttyS0\r\n"
        "\r\n"
        "demo login: "
    )
    assert console_tail(log, 3) == [
        "Cloud-init v. 22.4.2 finished at Mon, 01 Jan 2024 00:01:30 +0000. Up 88.1 seconds",
        "Debian GNU/Linux 12 demo ttyS0",
        "demo login:",
    ]
    assert console_tail(log)[0] == "[  OK  ] Started ssh.service - OpenBSD Secure Shell server."
