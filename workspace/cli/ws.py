"""ws: create and manage workspaces (VMs) on a workspace service.

The service is --service ADDR, else $WS_SERVICE, else the local site started by
`ws-admin site up`. Every command takes --output json.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Sequence

from workspace import errors
from workspace.cli import common
from workspace.client import Client, state_name
from workspace.v1 import common_pb2

PROG = "ws"
WS = common_pb2.WorkspaceState
_DESIRED = common_pb2.DesiredState.DESCRIPTOR

# Lifecycle commands: (client method, state --wait waits for, help).
ACTIONS: dict[str, tuple[str, int, str]] = {
    "start": ("start_workspace", WS.WORKSPACE_STATE_RUNNING, "start a stopped workspace"),
    "stop": ("stop_workspace", WS.WORKSPACE_STATE_STOPPED, "shut a workspace down"),
    "reboot": ("reboot_workspace", WS.WORKSPACE_STATE_RUNNING, "reboot a running workspace"),
    "pause": ("pause_workspace", WS.WORKSPACE_STATE_PAUSED, "pause a running workspace"),
    "resume": ("resume_workspace", WS.WORKSPACE_STATE_RUNNING, "resume a paused workspace"),
    "destroy": (
        "destroy_workspace",
        WS.WORKSPACE_STATE_TERMINATED,
        "destroy a workspace and its disks",
    ),
}
DEFAULT_WAIT_S = 300.0


# -- rendering ---------------------------------------------------------------------------


def _label(ws: common_pb2.Workspace) -> str:
    return f"{ws.name} ({ws.id})" if ws.name and ws.name != ws.id else ws.id


def _nic_text(nic: common_pb2.Nic) -> str:
    addr = f"{nic.ip}/{nic.prefix_len}" if nic.ip and nic.prefix_len else nic.ip or "-"
    gateway = f" gateway {nic.gateway}" if nic.gateway else ""
    return f"{nic.network} {addr} mac {nic.mac or '-'}{gateway}"


def workspace_text(ws: common_pb2.Workspace) -> str:
    pairs: list[tuple[str, object]] = [
        ("id", ws.id),
        ("name", ws.name),
        ("state", state_name(ws.state)),
        ("desired", common.enum_name(_DESIRED, ws.desired_state)),
        ("reason", ws.reason),
        ("image", ws.image),
        ("cpus", ws.cpus),
        ("memory_mib", ws.memory_mib),
        ("node", ws.node),
    ]
    pairs += [("nic", _nic_text(n)) for n in ws.nics]
    pairs += [
        ("cluster", ws.cluster),
        ("role", ws.role),
        ("owner", ws.owner),
        ("reboot_count", ws.reboot_count or ""),
        ("request_id", ws.request_id),
        ("created_at", common.fmt_time(ws.created_at)),
        ("updated_at", common.fmt_time(ws.updated_at)),
    ]
    return common.fields(pairs)


def workspace_rows(items: Sequence[common_pb2.Workspace]) -> str:
    rows = [
        [
            ws.id,
            ws.name or "-",
            state_name(ws.state),
            ws.image,
            ws.cpus,
            ws.memory_mib,
            ws.node or "-",
            ",".join(n.ip for n in ws.nics if n.ip) or "-",
        ]
        for ws in items
    ]
    return common.table(["ID", "NAME", "STATE", "IMAGE", "CPUS", "MEMORY_MIB", "NODE", "IP"], rows)


def state_line(ws: common_pb2.Workspace) -> str:
    reason = f"  ({ws.reason})" if ws.reason else ""
    return f"{_label(ws)}: {state_name(ws.state)}{reason}"


def _show(args: argparse.Namespace, ws: common_pb2.Workspace) -> None:
    if args.output == "json":
        common.print_json(common.to_dict(ws))
    else:
        print(workspace_text(ws))


def _progress(args: argparse.Namespace) -> Callable[[common_pb2.Workspace], None] | None:
    if args.output == "json":
        return None

    def on_change(ws: common_pb2.Workspace) -> None:
        print(f"{PROG}: {state_line(ws)}", file=sys.stderr, flush=True)

    return on_change


# -- commands ----------------------------------------------------------------------------


class Commands:
    """Handlers; each returns the exit code."""

    def __init__(self, connect: common.Connect) -> None:
        self._connect = connect
        self._client: Client | None = None

    def client(self, args: argparse.Namespace) -> Client:
        if self._client is None:
            self._client = self._connect(args.service)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def create(self, args: argparse.Namespace) -> int:
        user_data = b""
        if args.user_data:
            if args.user_data == "-":
                user_data = sys.stdin.buffer.read()
            else:
                with open(args.user_data, "rb") as f:
                    user_data = f.read()
        client = self.client(args)
        ws = client.create_workspace(
            image=args.image,
            name=args.name or "",
            cpus=args.cpus or 0,
            memory_mib=args.memory_mib or 0,
            networks=args.network or [],
            user_data=user_data,
            request_id=args.request_id,
        )
        if args.wait:
            ws = client.wait_for_state(
                ws.id, [WS.WORKSPACE_STATE_RUNNING], args.timeout, _progress(args)
            )
        _show(args, ws)
        return common.EXIT_OK

    def list(self, args: argparse.Namespace) -> int:
        items = self.client(args).list_workspaces(include_terminated=args.all)
        if args.output == "json":
            common.print_json([common.to_dict(ws) for ws in items])
        elif items:
            print(workspace_rows(items))
        return common.EXIT_OK

    def show(self, args: argparse.Namespace) -> int:
        _show(args, self.client(args).get_workspace(args.id))
        return common.EXIT_OK

    def console(self, args: argparse.Namespace) -> int:
        data = self.client(args).get_console(args.id, tail_bytes=args.tail or 0)
        if args.output == "json":
            text = data.decode("utf-8", errors="replace")
            common.print_json({"id": args.id, "data": text})
        else:
            sys.stdout.buffer.write(data)
            if data and not data.endswith(b"\n"):
                sys.stdout.buffer.write(b"\n")
            sys.stdout.flush()
        return common.EXIT_OK

    def action(self, args: argparse.Namespace) -> int:
        method, target, _ = ACTIONS[args.command]
        client = self.client(args)
        if args.command == "stop":
            ws = client.stop_workspace(args.id, timeout_s=args.timeout or 0, force=args.force)
        else:
            ws = getattr(client, method)(args.id)
        if args.wait:
            if args.wait_timeout:
                wait_s = args.wait_timeout
            elif args.command == "stop":  # there --timeout is the clean-shutdown time
                wait_s = max(DEFAULT_WAIT_S, (args.timeout or 0) + 60.0)
            else:
                wait_s = args.timeout or DEFAULT_WAIT_S
            ws = client.wait_for_state(ws.id or args.id, [target], wait_s, _progress(args))
        if args.output == "json":
            common.print_json(common.to_dict(ws))
        else:
            print(state_line(ws))
        return common.EXIT_OK

    def watch(self, args: argparse.Namespace) -> int:
        client = self.client(args)
        ws_id = ""
        if args.id:
            ws_id = client.get_workspace(args.id).id
        else:
            client.health()  # fail now (exit 3) rather than retry silently
        seen: dict[str, int] = {}
        events = client.watch(ws_id, include_terminated=args.all or bool(ws_id), reconnect=True)
        try:
            for event in events:
                ws = event.workspace
                if seen.get(ws.id) == ws.state:
                    continue
                seen[ws.id] = ws.state
                if args.output == "json":
                    common.print_json_line(common.to_dict(event))
                else:
                    print(f"{time.strftime('%H:%M:%S')}  {state_line(ws)}", flush=True)
        except KeyboardInterrupt:
            return common.EXIT_OK
        finally:
            events.close()
        return common.EXIT_OK

    def image_list(self, args: argparse.Namespace) -> int:
        images = self.client(args).list_images()
        if args.output == "json":
            common.print_json([common.to_dict(i) for i in images])
        elif images:
            print(common.image_rows(images))
        return common.EXIT_OK

    def image_show(self, args: argparse.Namespace) -> int:
        img = self.client(args).get_image(args.name)
        if args.output == "json":
            common.print_json(common.to_dict(img))
        else:
            print(common.image_text(img))
        return common.EXIT_OK


# -- parser ------------------------------------------------------------------------------


def _add_wait(p: argparse.ArgumentParser, state: str, timeout_flag: bool) -> None:
    p.add_argument("--wait", action="store_true", help=f"wait until the workspace is {state}")
    if timeout_flag:
        p.add_argument(
            "--timeout",
            type=common.seconds,
            metavar="S",
            help=f"with --wait: give up after S seconds (default {DEFAULT_WAIT_S:g})",
        )
    p.add_argument(
        "--wait-timeout",
        type=common.seconds,
        metavar="S",
        help=f"with --wait: give up after S seconds (default {DEFAULT_WAIT_S:g})",
    )


def build_parser(cmds: Commands) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_global_options(parser)
    parent = common.options_parent()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("create", parents=[parent], help="create a workspace")
    p.add_argument("--image", required=True, help="image name")
    p.add_argument("--name", help="workspace name (unique per owner)")
    p.add_argument("--cpus", type=common.positive_int, metavar="N", help="virtual CPUs")
    p.add_argument("--memory-mib", type=common.positive_int, metavar="M", help="memory in MiB")
    p.add_argument("--network", action="append", metavar="NET", help="attach to NET (repeatable)")
    p.add_argument("--user-data", metavar="FILE", help="context for the guest (- for stdin)")
    p.add_argument("--request-id", metavar="ID", help="idempotency key (default: a fresh uuid4)")
    p.add_argument("--wait", action="store_true", help="wait until the workspace is RUNNING")
    p.add_argument(
        "--timeout",
        type=common.seconds,
        default=DEFAULT_WAIT_S,
        metavar="S",
        help=f"with --wait: give up after S seconds (default {DEFAULT_WAIT_S:g})",
    )
    p.set_defaults(func=cmds.create)

    p = sub.add_parser("list", parents=[parent], help="list workspaces")
    p.add_argument("--all", action="store_true", help="include terminated workspaces")
    p.set_defaults(func=cmds.list)

    p = sub.add_parser("show", parents=[parent], help="show one workspace")
    p.add_argument("id", help="workspace id or name")
    p.set_defaults(func=cmds.show)

    p = sub.add_parser("console", parents=[parent], help="print a workspace's console log")
    p.add_argument("id", help="workspace id or name")
    p.add_argument(
        "--tail", type=common.non_negative_int, metavar="BYTES", help="only the last BYTES"
    )
    p.set_defaults(func=cmds.console)

    for name, (_, state, text) in ACTIONS.items():
        p = sub.add_parser(name, parents=[parent], help=text)
        p.add_argument("id", help="workspace id or name")
        if name == "stop":
            p.add_argument(
                "--timeout",
                type=common.non_negative_int,
                metavar="S",
                help="seconds to wait for a clean shutdown before powering off "
                "(default: the service's)",
            )
            p.add_argument("--force", action="store_true", help="power off at once")
        _add_wait(p, state_name(state), timeout_flag=name != "stop")
        p.set_defaults(func=cmds.action)

    p = sub.add_parser(
        "watch", parents=[parent], help="print workspace state changes (Ctrl-C ends)"
    )
    p.add_argument("id", nargs="?", help="only this workspace (id or name)")
    p.add_argument("--all", action="store_true", help="include terminated workspaces")
    p.set_defaults(func=cmds.watch)

    p = sub.add_parser("image", parents=[parent], help="images")
    isub = p.add_subparsers(dest="image_command", metavar="COMMAND", required=True)
    q = isub.add_parser("list", parents=[parent], help="list images")
    q.set_defaults(func=cmds.image_list)
    q = isub.add_parser("show", parents=[parent], help="show one image")
    q.add_argument("name", help="image name")
    q.set_defaults(func=cmds.image_show)
    return parser


def main(argv: list[str] | None = None, connect: common.Connect | None = None) -> int:
    cmds = Commands(connect or common.default_connect)
    args = build_parser(cmds).parse_args(argv)
    try:
        return common.run(PROG, args.func, args)
    finally:
        with contextlib.suppress(errors.WorkspaceError):
            cmds.close()


if __name__ == "__main__":
    sys.exit(main())
