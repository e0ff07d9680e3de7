"""ws without a service: parsing, usage errors, and what the workspace commands print
and exit with, against a fake client."""

from __future__ import annotations

import argparse
import json
import shlex
from typing import Any

import pytest

from workspace import errors
from workspace.cli import ws
from workspace.client import Client, ServiceNotConfigured, WaitTimeout
from workspace.v1 import common_pb2, images_pb2, trust_pb2

WS = common_pb2.WorkspaceState
HUGE = "99999999999999999999"


def _ws(state: int = WS.WORKSPACE_STATE_RUNNING, **kw: Any) -> common_pb2.Workspace:
    base: dict[str, Any] = {"id": "w1", "name": "alpha", "image": "img", "cpus": 1}
    base.update(kw)
    return common_pb2.Workspace(state=state, memory_mib=512, **base)


# -- parsing -------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    return ws.build_parser(ws.Commands(lambda _s: None)).parse_args(argv)  # type: ignore[arg-type, return-value]


def test_global_options_before_or_after_the_subcommand() -> None:
    a = _parse(["--service", "h:1", "--output", "json", "list"])
    assert (a.service, a.output, a.all) == ("h:1", "json", False)
    a = _parse(["list", "--all", "-o", "json", "--service", "unix:/s"])
    assert (a.service, a.output, a.all) == ("unix:/s", "json", True)
    a = _parse(["-o", "json", "show", "w1"])
    assert (a.output, a.service, a.id) == ("json", None, "w1")
    a = _parse(["image", "list", "--output", "json"])
    assert a.output == "json"


def test_create_arguments() -> None:
    a = _parse(
        shlex.split(
            "create --image deb --name n --cpus 2 --memory-mib 1024 --network a "
            "--network b --request-id r1 --wait --timeout 12"
        )
    )
    assert (a.image, a.name, a.cpus, a.memory_mib) == ("deb", "n", 2, 1024)
    assert (a.network, a.request_id, a.wait, a.wait_timeout) == (["a", "b"], "r1", True, 12.0)
    a = _parse(["create", "--image", "deb"])
    assert (a.cpus, a.network, a.wait, a.wait_timeout) == (None, None, False, None)
    assert (a.require, a.wait_for_capacity) == (None, None)
    a = _parse(
        shlex.split(
            "create --image deb --require gpu=1 --require hypervisor=xen --wait-for-capacity 90"
        )
    )
    assert a.require == [("gpu", "1"), ("hypervisor", "xen")] and a.wait_for_capacity == 90


@pytest.mark.parametrize(
    "argv",
    [
        ["create"],  # --image is required
        ["create", "--image", "x", "--cpus", "0"],
        ["create", "--image", "x", "--cpus", "two"],
        ["create", "--image", "x", "--memory-mib", "-5"],
        ["create", "--image", "x", "--require", "gpu"],
        ["create", "--image", "x", "--require", "=1"],
        ["create", "--image", "x", "--wait-for-capacity", "-1"],
        ["create", "--image", "x", "--wait-for-capacity", "soon"],
        ["show"],
        ["frobnicate"],
        ["--output", "yaml", "list"],
        ["console", "w1", "--tail", "-1"],
        ["image"],
        [],
        # Numbers no request can carry: a usage error, not a traceback while building it.
        *(
            ["create", "--image", "x", flag, HUGE]
            for flag in ("--cpus", "--memory-mib", "--wait-for-capacity", "--net-mbps")
        ),
        ["create", "--image", "x", "--cpu-percent", "99999999999"],
        ["create", "--image", "x", "--grow", f"root:{HUGE}GiB"],
        ["create", "--image", "x", "--blank", f"scratch:{HUGE}GiB"],
        ["create", "--image", "x", "--lease", f"{HUGE}d"],
        ["stop", "w1", "--timeout", HUGE],
        ["lease", "extend", "w1", "999999999999d"],
        ["cluster", "create", "c", "--member", f"w=img,count={HUGE}"],
        ["cluster", "scale", "c", "--role", "w", "--count", HUGE],
        # A limit of 0 would be read as "not given": the default on create, nothing on update.
        ["create", "--image", "x", "--net-mbps", "0"],
        ["update", "w1", "--cpu-percent", "0"],
        ["cluster", "create", "c", "--member", "w=img", "--disk-iops", "0"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ws.main(argv, connect=lambda _s: pytest.fail("no client for a usage error"))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    # One line (issue 2: "a one-line reason"), not argparse's usage block before it.
    (line,) = err.splitlines()
    assert ": error: " in line and line.endswith(" --help for usage)"), line
    assert "usage:" not in err and "Traceback" not in err


def test_a_usage_error_is_one_line_naming_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, line in (
        (
            ["create", "--image", "tiny", "--cpus", "abc"],
            "ws create: error: argument --cpus: not a whole number: 'abc' "
            "(ws create --help for usage)",
        ),
        (
            ["create", "--image", "tiny", "--cpus", "0"],
            "ws create: error: argument --cpus: must be at least 1, got 0 "
            "(ws create --help for usage)",
        ),
        (
            ["create", "--image", "tiny", "--bogus"],
            "ws create: error: unrecognized arguments: --bogus (ws create --help for usage)",
        ),
        ([], "ws: error: the following arguments are required: COMMAND (ws --help for usage)"),
    ):
        with pytest.raises(SystemExit) as exc:
            ws.main(argv, connect=lambda _s: pytest.fail("no client for a usage error"))
        assert exc.value.code == 2
        out = capsys.readouterr()
        assert (out.out, out.err) == ("", line + "\n")


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["list", "--bogus"], "ws list"),
        (["cluster", "list", "--bogus"], "ws cluster list"),
        (["key", "list", "extra"], "ws key list"),
    ],
)
def test_an_unknown_argument_is_named_with_its_command_usage(
    argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not the top-level usage (every command listed), which says nothing of the command."""
    with pytest.raises(SystemExit) as exc:
        ws.main(argv, connect=lambda _s: pytest.fail("no client for a usage error"))
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err == (
        f"{usage}: error: unrecognized arguments: {argv[-1]} ({usage} --help for usage)\n"
    )


def test_an_empty_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """`--name ""` once made a workspace named ws-ID without a word."""
    code = ws.main(["create", "--image", "x", "--name", ""], connect=lambda _s: FakeClient())  # type: ignore[arg-type, return-value]
    assert code == 2 and "--name is empty" in capsys.readouterr().err


def test_stop_has_shutdown_timeout_and_force() -> None:
    a = _parse(["stop", "w1", "--timeout", "5", "--force", "--wait", "--wait-timeout", "9"])
    assert (a.id, a.timeout, a.force, a.wait, a.wait_timeout) == (["w1"], 5, True, True, 9.0)
    for cmd in ("start", "reboot", "pause", "resume", "destroy"):
        for flag in ("--wait-timeout", "--timeout"):
            a = _parse([cmd, "w1", "w2", "--wait", flag, "7"])
            assert (a.command, a.id, a.wait, a.wait_timeout) == (cmd, ["w1", "w2"], True, 7.0)
        assert not hasattr(a, "force")


def _commands_with_wait(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action.choices, dict):  # the subcommands
            for name, sub in action.choices.items():
                out += _commands_with_wait(sub, (*path, name))
    if "--wait" in parser._option_string_actions:
        out.append((path, parser))
    return out


def test_every_command_with_wait_takes_wait_timeout_and_its_old_name() -> None:
    """docs/clusters.md: `--wait-timeout S`, or its older name `--timeout S` (but on
    `ws stop`, whose --timeout is the clean shutdown's)."""
    found = _commands_with_wait(ws.build_parser(ws.Commands(lambda _s: None)))  # type: ignore[arg-type, return-value]
    names = {" ".join(p) for p, _ in found}
    assert {"create", "start", "stop", "cluster create", "cluster start", "cluster destroy"} <= (
        names
    )
    assert "cluster scale" in names
    for path, parser in found:
        what = " ".join(path)
        assert parser._option_string_actions["--wait-timeout"].dest == "wait_timeout", what
        if path != ("stop",):
            assert parser._option_string_actions["--timeout"].dest == "wait_timeout", what


# -- exit codes with a fake client -------------------------------------------------------


class FakeClient:
    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.calls: list[tuple[str, Any]] = []
        self.closed = False

    def _do(self, call: str, *args: Any, **kw: Any) -> None:
        self.calls.append((call, (args, kw)))
        if self.fail is not None:
            raise self.fail

    def list_workspaces(
        self, include_terminated: bool = False, all_users: bool = False, mine: bool = False
    ) -> list[common_pb2.Workspace]:
        self._do("list", include_terminated=include_terminated, all_users=all_users, mine=mine)
        return [_ws()]

    def get_workspace(self, id: str) -> common_pb2.Workspace:
        self._do("get", id)
        return _ws(id=id)

    def get_cluster(self, id: str) -> Any:
        raise errors.NotFound(f"no cluster {id!r}")  # (a workspace not found may be one)

    def create_workspace(self, **kw: Any) -> common_pb2.Workspace:
        self._do("create", **kw)
        return _ws(WS.WORKSPACE_STATE_PENDING)

    def stop_workspace(self, id: str, timeout_s: int = 0, force: bool = False) -> Any:
        self._do("stop", id, timeout_s=timeout_s, force=force)
        return _ws(WS.WORKSPACE_STATE_STOPPING)

    def pause_workspace(self, id: str) -> Any:
        self._do("pause", id)  # the node has not acted yet
        return _ws(desired_state=common_pb2.DESIRED_STATE_PAUSED)

    def wait_for_state(
        self,
        id: str,
        states: Any,
        timeout_s: float,
        on_change: Any,
        on_outage: Any = None,
        waited_s: Any = None,
        desired: Any = None,
        named: str = "",
    ) -> Any:
        self._do("wait", id, states=list(states), timeout_s=timeout_s)
        final = _ws(next(iter(states)))
        if on_change is not None:
            on_change(final)
        return final

    def get_console(self, id: str, tail_bytes: int = 0) -> bytes:
        self._do("console", id, tail_bytes=tail_bytes)
        return b"boot\nREADY"

    def add_ssh_key(self, public_key: str) -> Any:
        self._do("add_ssh_key", public_key)
        raise AssertionError("sent")

    def close(self) -> None:
        self.closed = True


def _run(argv: list[str], client: FakeClient) -> int:
    return ws.main(argv, connect=lambda _s: client)  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.NotFound("no workspace 'x'"), 1),
        (errors.InvalidArgument("cpus must be between 1 and 64"), 1),
        (errors.FailedPrecondition("already destroyed"), 1),
        (errors.Unavailable("cannot reach the workspace service at h:1"), 3),
        (ServiceNotConfigured("no workspace service configured"), 3),
        (WaitTimeout("timed out"), 1),
    ],
)
def test_errors_are_one_line_with_exit_code(
    exc: Exception, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    client = FakeClient(fail=exc)
    assert _run(["show", "x"], client) == code
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == f"ws: error: {exc}\n"
    assert client.closed


def test_several_workspaces_stop_at_an_unreachable_service(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A refusal of one of several is named and the rest go on (tests/functional/test_cli.py);
    # a service that cannot be reached ends the command at once.
    client = FakeClient(fail=errors.Unavailable("cannot reach the workspace service at h:1"))
    assert _run(["stop", "a", "b", "c"], client) == 3
    assert [c[0] for c in client.calls] == ["stop"]
    assert capsys.readouterr().err == "ws: error: cannot reach the workspace service at h:1\n"


def test_connect_failure_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    def connect(_s: str | None) -> Client:
        raise ServiceNotConfigured("no workspace service configured: pass --service")

    assert ws.main(["list"], connect=connect) == 3
    assert capsys.readouterr().err.startswith("ws: error: no workspace service configured")


def test_list_json_and_text(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    assert _run(["list", "--all", "--output", "json"], client) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["state"] == "RUNNING" and data[0]["memory_mib"] == 512
    asked = {"include_terminated": True, "all_users": False, "mine": False}
    assert client.calls == [("list", ((), asked))]
    assert _run(["list", "--mine", "-o", "json"], client) == 0
    assert client.calls[-1][1][1]["mine"] is True
    capsys.readouterr()
    assert _run(["list"], FakeClient()) == 0
    assert capsys.readouterr().out.split()[8:11] == ["w1", "alpha", "RUNNING"]


def test_create_wait_reports_progress_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    argv = ["create", "--image", "img", "--cpus", "2", "--wait", "--timeout", "5"]
    assert _run(argv, client) == 0
    create, wait = client.calls
    assert create[1][1]["cpus"] == 2 and create[1][1]["request_id"] is None
    assert wait[1][1] == {"states": [WS.WORKSPACE_STATE_RUNNING], "timeout_s": 5.0}
    out = capsys.readouterr()
    assert "state       RUNNING" in out.out
    assert out.err == "ws: alpha (w1): RUNNING\n"


def test_stop_wait_json(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    assert _run(["-o", "json", "stop", "w1", "--timeout", "5", "--force", "--wait"], client) == 0
    stop, wait = client.calls
    assert stop[1] == (("w1",), {"timeout_s": 5, "force": True})
    assert wait[1][1]["states"] == [WS.WORKSPACE_STATE_STOPPED]
    out = capsys.readouterr()
    # The result alone on stdout; the wait's progress on stderr, as in text mode.
    assert json.loads(out.out)["state"] == "STOPPED"
    assert out.err == "ws: alpha (w1): STOPPED\n"


def test_stop_timeout_0_powers_off_at_once() -> None:
    """`ws stop --timeout 0` (no wait for a clean shutdown) went out as the request's
    timeout_s 0, which the service reads as its default: the guest had 60 s, not none."""
    client = FakeClient()
    assert _run(["stop", "w1", "--timeout", "0"], client) == 0
    assert client.calls[0][1] == (("w1",), {"timeout_s": 0, "force": True})
    assert _run(["stop", "w1"], client) == 0  # left out: the service's default, no force
    assert client.calls[1][1] == (("w1",), {"timeout_s": 0, "force": False})


def test_console_prints_the_text(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    assert _run(["console", "w1", "--tail", "100"], client) == 0
    assert capsys.readouterr().out == "boot\nREADY\n"
    assert client.calls[0][1][1] == {"tail_bytes": 100}


class NamedClient(FakeClient):
    """Resolves a workspace by id or name, as the service does."""

    def get_workspace(self, id: str) -> common_pb2.Workspace:
        self._do("get", id)
        if id not in ("w1", "alpha"):
            raise errors.NotFound(f"no workspace {id!r}")
        return _ws()


@pytest.mark.parametrize("ref", ["alpha", "w1"])
def test_console_json_carries_the_workspaces_id_and_name(
    ref: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws console NAME -o json` once gave the NAME typed as its "id"; now the id and
    the name, as `ws show NAME -o json` does, and the log is read by that id."""
    client = NamedClient()
    assert _run(["console", ref, "-o", "json"], client) == 0
    assert json.loads(capsys.readouterr().out) == {
        "id": "w1",
        "name": "alpha",
        "data": "boot\nREADY",
    }
    assert ("console", (("w1",), {"tail_bytes": 0})) in client.calls


def test_keygen_over_an_existing_key_is_refused_not_a_usage_error(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A PREFIX.key already there is a refusal (exit 1, as a local file that says no is
    elsewhere), not a usage error (exit 2); the key stays; --force replaces it."""
    prefix = str(tmp_path / "me")

    def keygen(*extra: str) -> int:
        argv = ["image", "keygen", "--out", prefix, *extra]
        return ws.main(argv, connect=lambda _s: pytest.fail("keygen needs no service"))

    assert keygen() == 0
    key = (tmp_path / "me.key").read_bytes()
    capsys.readouterr()
    assert keygen() == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == f"ws: error: {prefix}.key exists; use --force to replace it\n"
    assert (tmp_path / "me.key").read_bytes() == key
    assert keygen("--force") == 0
    assert (tmp_path / "me.key").read_bytes() != key


def test_keygen_over_an_existing_public_key_is_refused_too(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only PREFIX.key was checked: a PREFIX.pub there alone (someone's key to trust,
    say) was overwritten without a word. It is refused as PREFIX.key is, nothing is
    written; --force replaces both, a matching pair."""
    from images import signing

    prefix = tmp_path / "me"
    pub = tmp_path / "me.pub"
    pub.write_bytes(b"theirs")

    def keygen(*extra: str) -> int:
        argv = ["image", "keygen", "--out", str(prefix), *extra]
        return ws.main(argv, connect=lambda _s: pytest.fail("keygen needs no service"))

    assert keygen() == 1
    out = capsys.readouterr()
    assert (out.out, out.err) == ("", f"ws: error: {pub} exists; use --force to replace it\n")
    assert pub.read_bytes() == b"theirs" and not (tmp_path / "me.key").exists()
    assert keygen("--force") == 0
    private = signing.load_private_key((tmp_path / "me.key").read_bytes())
    assert pub.read_text() == signing.public_pem(private)


def test_keygen_never_writes_a_private_key_where_a_symlink_points(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A symlink at PREFIX.key (dangling: `exists()` says no) is refused as a file is;
    --force replaces the link itself, and the file it pointed to gets nothing."""
    prefix = tmp_path / "me"
    target = tmp_path / "elsewhere" / "stolen.key"
    target.parent.mkdir()
    (tmp_path / "me.key").symlink_to(target)

    def keygen(*extra: str) -> int:
        argv = ["image", "keygen", "--out", str(prefix), *extra]
        return ws.main(argv, connect=lambda _s: pytest.fail("keygen needs no service"))

    assert keygen() == 1
    assert capsys.readouterr().err.startswith(f"ws: error: {prefix}.key exists")
    assert not target.exists()
    assert keygen("--force") == 0
    key = tmp_path / "me.key"
    assert not key.is_symlink() and key.stat().st_mode & 0o777 == 0o600
    assert not target.exists()


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_key_add_of_a_file_it_cannot_read_is_refused_not_a_usage_error(
    what: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws key add FILE` of a FILE it cannot read exited 2 (usage); a file that says no
    is exit 1, as `--user-data`, `--spec` and `image sign --key` are; nothing is sent."""
    path = tmp_path / "id_ed25519.pub"
    if what == "directory":
        path.mkdir()
    client = FakeClient()
    assert _run(["key", "add", str(path)], client) == 1
    out = capsys.readouterr()
    reason = "Is a directory" if what == "directory" else "No such file or directory"
    assert (out.out, out.err) == ("", f"ws: error: {path}: {reason}\n")
    assert client.calls == []


@pytest.mark.parametrize("given", ["public", "text", "ec", "empty"])
def test_image_sign_with_a_file_that_is_not_a_private_key_is_refused_clearly(
    given: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws image sign --key FILE` of a FILE that is no private key exited 2 (usage) with
    cryptography's words ("Unable to load PEM file. See https://... MalformedFraming"):
    a local file that says no is exit 1, one line naming it and what --key takes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    assert ws.main(["image", "keygen", "--out", str(tmp_path / "me")]) == 0
    capsys.readouterr()
    path = tmp_path / "me.pub"
    if given == "text":
        path = tmp_path / "notes.txt"
        path.write_text("not a key\n")
    elif given == "ec":
        path = tmp_path / "ec.pem"
        path.write_bytes(
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    elif given == "empty":
        path = tmp_path / "empty.key"
        path.write_bytes(b"")
    argv = ["image", "sign", "img:1", "--key", str(path)]
    assert ws.main(argv, connect=lambda _s: pytest.fail("read before connecting")) == 1
    out = capsys.readouterr()
    if given == "public":
        said = (
            "a public key; sign with the private key (PREFIX.key of `ws image keygen --out PREFIX`)"
        )
    else:
        said = "not a private key of `ws image keygen` (an unencrypted Ed25519 key in PEM)"
    assert (out.out, out.err) == ("", f"ws: error: {path}: {said}\n")


def test_a_binary_file_where_text_is_read_is_one_line(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A binary manifest once ended in a UnicodeDecodeError traceback."""
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    code = ws.main(
        ["image", "push", "m:1", "--manifest", str(binary)],
        connect=lambda _s: pytest.fail("read before connecting"),
    )
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err == "ws: error: a file given is not UTF-8 text (invalid start byte at byte 0)\n"


def test_an_action_not_waited_for_says_what_was_requested(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`ws pause` printed "RUNNING" alone, which read as if nothing had happened."""
    assert _run(["pause", "w1"], FakeClient()) == 0
    assert capsys.readouterr().out == "alpha (w1): RUNNING, PAUSED requested\n"
    assert _run(["pause", "w1", "--wait"], FakeClient()) == 0
    assert capsys.readouterr().out == "alpha (w1): PAUSED\n"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        # Commands whose exit code is not only "0 done, 1 refused" say what it is.
        (["image", "verify"], "Exits 0 when it is trusted, 1 when it is not"),
        (["exec"], "exits with the command's exit code"),
        (["cluster", "exec"], "Exits 0 only when every member's command exited 0"),
        # Two options with one meaning say so (their help was word for word the same).
        (
            ["start"],
            "--wait-timeout S, --timeout S with --wait: give up after S seconds "
            "(default 300); --timeout is its older name",
        ),
        (["stop"], "(default 300, or --timeout plus 60 when that is longer)"),
        # --tail 0 is accepted and prints the whole log (the service's "no limit"), which
        # "only the last BYTES" did not say.
        (["console"], "--tail BYTES only the last BYTES (0: the whole log, as without --tail)"),
    ],
)
def test_help_names_exit_codes_that_carry_meaning(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        ws.main([*argv, "--help"], connect=lambda _s: pytest.fail("no client for --help"))
    assert exc.value.code == 0
    assert says in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", ["exec", "ssh", "scp"])
def test_help_says_the_boot_wait_is_only_at_a_terminal(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --retry, ws exec/ssh/scp wait for a guest that just started only when run at
    a terminal (guest_cmds.interactive); their --help said they always did, so a script
    written from it expected a wait it never got."""
    with pytest.raises(SystemExit) as exc:
        ws.main([command, "--help"], connect=lambda _s: pytest.fail("no client for --help"))
    assert exc.value.code == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "at a terminal" in said and "in a script" in said


class InterruptedClient(FakeClient):
    """Ctrl-C while `ws create --wait` waits for the new workspace to run."""

    def wait_for_state(self, *args: Any, **kw: Any) -> Any:
        raise KeyboardInterrupt


@pytest.mark.parametrize("output", ["text", "json"])
def test_an_interrupted_create_wait_says_the_workspace_is_still_there(
    output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C ends the wait, not the workspace: it is queued or booting, and the user is
    told which it is and how to follow or remove it (exit 130 as before)."""
    argv = ["-o", output, "create", "--image", "img", "--wait"]
    assert _run(argv, InterruptedClient()) == 130
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines() == [
        "ws: workspace alpha (w1) was created and is not destroyed (PENDING when last seen): "
        "`ws show w1` follows it, `ws destroy w1` removes it",
        "ws: interrupted",
    ]


class SaveClient(FakeClient):
    """`ws image save`: the service refuses the save (``fail``), or accepts it and the
    workspace is seen marked (``saving_as``) before the image is made."""

    def save_image(
        self, workspace: str, image: str, project: str, timeout_s: float, on_progress: Any
    ) -> Any:
        self._do("save_image", workspace, image)
        if on_progress is not None:
            on_progress(_ws(name="box", saving_as=image))
        return images_pb2.Image(name=image, total_bytes=1024)


@pytest.mark.parametrize("output", ["text", "json"])
def test_a_refused_save_says_only_why(output: str, capsys: pytest.CaptureFixture[str]) -> None:
    """It said "its node copies its disks" before the service had answered, so a refused
    save printed that, then the error."""
    refused = errors.FailedPrecondition("only a stopped workspace can be saved")
    assert _run(["-o", output, "image", "save", "box", "env:2"], SaveClient(refused)) == 1
    out = capsys.readouterr()
    assert (out.out, out.err) == ("", f"ws: error: {refused}\n")
    # Accepted, the line comes once the workspace is marked as being saved.
    assert _run(["-o", output, "image", "save", "box", "env:2"], SaveClient()) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "ws: saving box as env:2: its node copies its disks (it cannot start until this ends) ..."
    )
    assert err[-1] == "ws: saved box as env:2 (1.0 KiB)"


@pytest.mark.parametrize("timeout", ["-1", "0", "nan", "1e300"])
def test_a_save_timeout_no_wait_can_take_is_a_usage_error(
    timeout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws image save --timeout` took any float: -1, 0, nan or 1e300 went to the service as
    the call's deadline, which ran out at once, and the user read "the workspace service
    did not answer in time" with exit 3 (unreachable), the save never asked for."""
    client = SaveClient()
    with pytest.raises(SystemExit) as exc:
        _run(["image", "save", "box", "env:2", "--timeout", timeout], client)
    assert exc.value.code == 2
    assert client.calls == []
    err = capsys.readouterr().err
    assert err.startswith("ws image save: error: argument --timeout:"), err
    assert _parse(["image", "save", "box", "env:2", "--timeout", "90"]).timeout == 90.0


class VerifyClient(FakeClient):
    """`ws image verify`: the site's verdict on image ``img`` (``trusted``)."""

    def __init__(self, trusted: bool) -> None:
        super().__init__()
        self.trusted = trusted

    def get_signatures(self, image: str) -> Any:
        reason = "signed by trusted key 757a" if self.trusted else f"image {image} is not signed"
        return trust_pb2.ImageSignatures(image=image, trusted=self.trusted, reason=reason)


@pytest.mark.parametrize("output", ["text", "json"])
def test_an_untrusted_verdict_says_why_on_stderr(
    output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ws image verify` of an untrusted image exited 1 with nothing on stderr: a script
    reading the exit code (stdout kept for the verdict, or dropped) learnt no reason, where
    every other exit 1 says why in one line, `ws-admin schedule explain`'s "does not fit"
    too."""
    assert _run(["-o", output, "image", "verify", "img"], VerifyClient(False)) == 1
    out = capsys.readouterr()
    assert out.err == "ws: error: image img is not trusted: image img is not signed\n"
    assert "not signed" in out.out  # the verdict, as before
    assert _run(["-o", output, "image", "verify", "img"], VerifyClient(True)) == 0
    assert capsys.readouterr().err == ""
