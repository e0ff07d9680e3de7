"""ws-admin: administer a workspace service (nodes, networks, images, the capacity queue,
the scheduler, its replicas) and run a local site.

`ws-admin site up` starts an all-in-one site (service + an agent per node) on this machine;
`ws` then finds it by default. Every command takes --output json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from images import formats
from images import manifest as image_manifest
from workspace import errors
from workspace.cli import (
    admin_text,
    backfill_cmds,
    cache_cmds,
    clusterspec,
    common,
    event_cmds,
    pki_cmds,
    progress,
    project_cmds,
    render,
    replica_cmds,
    trust_cmds,
    usage_cmds,
)
from workspace.client import Client
from workspace.client_address import SERVICE_ENV
from workspace.site import local
from workspace.v1 import common_pb2, images_pb2

PROG = "ws-admin"


# -- image files -----------------------------------------------------------------------


def detect_format(path: str | os.PathLike[str]) -> str:
    """raw or qcow2, from the file's content as `ws image push` detects it; another
    container (vmdk, vdi, ...) is refused with the conversion to run."""
    try:
        return image_manifest.detect_format(path)
    except image_manifest.ManifestError as exc:
        raise errors.InvalidArgument(str(exc)) from None


def check_file(path: str) -> None:
    """A file to upload: there, a file, not empty (InvalidArgument saying which not)."""
    if os.path.isdir(path):
        raise errors.InvalidArgument(f"{path}: is a directory, not a file")
    if not os.path.isfile(path):
        raise errors.InvalidArgument(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise errors.InvalidArgument(f"{path}: is empty")


def read_appliance(directory: str | os.PathLike[str]) -> dict[str, str]:
    """DIR/appliance.json from the test-appliance builder, with paths made absolute."""
    base = Path(directory)
    path = base / "appliance.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        # A local file that says no (exit 1), as an invalid one is; not a usage error.
        raise errors.InvalidArgument(
            f"{path} not found: is {base} an appliance directory?"
        ) from None
    except ValueError as exc:
        raise errors.InvalidArgument(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not data.get("disk"):
        raise errors.InvalidArgument(f'{path}: needs at least a "disk" entry')
    out = {k: str(data.get(k) or "") for k in ("kernel", "initrd", "cmdline", "disk")}
    for key in ("kernel", "initrd", "disk"):
        if out[key] and not os.path.isabs(out[key]):
            out[key] = str(base / out[key])
    out["disk_format"] = str(data.get("disk_format") or "")
    return out


# -- commands ----------------------------------------------------------------------------


class Commands(common.ClientCommands):
    # nodes, networks

    def node_list(self, args: argparse.Namespace) -> int:
        nodes = self.client(args).list_nodes()
        render.emit_list(
            args,
            nodes,
            admin_text.node_rows,
            "no nodes; a workspace-agent registers its node when it starts",
        )
        return common.EXIT_OK

    def node_show(self, args: argparse.Namespace) -> int:
        node = self.client(args).get_node(args.name)
        render.emit(args, node, admin_text.node_text(node))
        return common.EXIT_OK

    def node_state(self, args: argparse.Namespace) -> int:
        client = self.client(args)
        method = {
            "drain": client.drain_node,
            "enable": client.enable_node,
            "remove": client.remove_node,
        }[args.node_command]
        node = method(args.name)
        if args.node_command == "remove":
            name = node.name or args.name
            text = (
                f"removed node {name} (its agent, if it runs again, registers it again: "
                f"stop it, or keep it out with `ws-admin pki revoke node:{name}`)"
            )
        else:
            text = admin_text.node_rows([node])
        render.emit(args, node, text)
        return common.EXIT_OK

    # the capacity queue, the scheduler

    def queue(self, args: argparse.Namespace) -> int:
        entries = self.client(args).list_queue()
        render.emit_list(args, entries, admin_text.queue_rows, "no requests wait for capacity")
        return common.EXIT_OK

    def schedule_dump(self, args: argparse.Namespace) -> int:
        try:
            requirements = clusterspec.requirements(args.require)
        except ValueError as exc:
            raise common.UsageError(str(exc)) from None
        text = self.client(args).get_scheduler_input(
            cpus=args.cpus or 0,
            memory_mib=args.memory_mib or 0,
            networks=args.network or [],
            image=args.image or "",
            requirements=requirements,
            preemptible=args.preemptible,
        )
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
        return common.EXIT_OK

    def schedule_explain(self, args: argparse.Namespace) -> int:
        """Offline: replays a `schedule dump` file; no service is contacted."""
        try:
            from workspace.scheduler import explain
        except ImportError as exc:
            raise errors.FailedPrecondition(
                f"schedule explain is not available in this installation ({exc})"
            ) from None
        try:
            result = explain.explain_file(args.file, args.preemptible)
        except errors.WorkspaceError as exc:
            raise type(exc)(f"{args.file}: {exc.message}") from None
        if render.wants_json(args):
            render.print_json(result.to_dict())
        else:
            sys.stdout.write(result.render_text())
            sys.stdout.flush()
        if not result.fits:
            common.error(PROG, result.headline())
            return common.EXIT_REQUEST
        return common.EXIT_OK

    def network_create(self, args: argparse.Namespace) -> int:
        start, end = _range(args.range) if args.range else ("", "")
        net = self.client(args).create_network(
            args.name,
            args.subnet,
            gateway=args.gateway or "",
            range_start=start,
            range_end=end,
            bridge=args.bridge or "",
            mac_prefix=args.mac_prefix or "",
            dns=args.dns or [],
            vlan=args.vlan or 0,
        )
        render.emit(args, net, admin_text.network_rows([net]))
        return common.EXIT_OK

    def network_list(self, args: argparse.Namespace) -> int:
        nets = self.client(args).list_networks()
        render.emit_list(
            args,
            nets,
            admin_text.network_rows,
            "no networks; `ws-admin network create NAME --subnet CIDR` makes one",
        )
        return common.EXIT_OK

    def network_set(self, args: argparse.Namespace) -> int:
        dns = [] if args.no_dns else args.dns
        addresses = _range(args.range) if args.range else None
        if dns is None and addresses is None:
            raise common.UsageError(
                "say what to change: --dns IP (repeatable), --no-dns or --range START-END"
            )
        net = self.client(args).update_network(args.name, dns, addresses)
        render.emit(args, net, admin_text.network_rows([net]))
        if dns is not None and net.allocated:  # stderr: the JSON on stdout stays the network
            print(
                f"{PROG}: note: workspaces already on {net.name} ({net.allocated} address(es)"
                " in use) keep the DNS servers cloud-init set at their first boot; DHCP"
                " clients get the new ones at their next lease",
                file=sys.stderr,
            )
        return common.EXIT_OK

    def network_delete(self, args: argparse.Namespace) -> int:
        net = self.client(args).delete_network(args.name)
        render.emit(args, net, f"network {net.name} ({net.subnet}) deleted")
        return common.EXIT_OK

    # images

    def _upload(self, client: Client, path: str, what: str) -> images_pb2.BlobRef:
        bar = progress.UploadProgress(PROG, f"{what} {os.path.basename(path)}")
        try:
            ref = client.upload_blob(path, bar)
        except BaseException:
            bar.end()  # the error (or "interrupted") on a line of its own
            raise
        bar.done(ref)
        return ref

    def image_import(self, args: argparse.Namespace) -> int:
        if args.appliance:
            if args.file or args.kernel or args.initrd or args.cmdline:
                raise common.UsageError(
                    "--appliance DIR replaces FILE, --kernel, --initrd and --cmdline"
                )
            app = read_appliance(args.appliance)
            disk, fmt = app["disk"], args.format or app["disk_format"]
            kernel, initrd, cmdline = app["kernel"], app["initrd"], app["cmdline"]
        else:
            if not args.file:
                raise common.UsageError("give the disk image FILE or --appliance DIR")
            if (args.initrd or args.cmdline) and not args.kernel:
                raise common.UsageError("--initrd and --cmdline need --kernel")
            disk, fmt = args.file, args.format
            kernel, initrd, cmdline = args.kernel or "", args.initrd or "", args.cmdline or ""
        for path in (disk, kernel, initrd):
            if path:
                check_file(path)
        fmt = fmt or detect_format(disk)
        if fmt not in ("raw", "qcow2"):
            raise errors.InvalidArgument(f"disk format must be raw or qcow2, not {fmt!r}")
        try:
            image_manifest.parse_ref(args.name)
        except image_manifest.ManifestError as exc:
            raise errors.InvalidArgument(str(exc)) from None
        client = self.client(args)
        # Said before gigabytes are uploaded (the import says it again, race-free).
        with contextlib.suppress(errors.NotFound):
            client.get_image(args.name)
            raise errors.AlreadyExists(f"image {args.name!r} already exists; pick a new version")
        client.check_import(args.name)  # a NAME a project holds: not the admin's to take
        # The import's checks of the disk (a backing file, a truncated qcow2, its virtual
        # size), as `ws image push` runs them: it was sent whole, then refused.
        limit = client.repository_usage().max_virtual_bytes or image_manifest.MAX_SIZE
        try:
            formats.inspect(disk, fmt, limit, f"image {args.name}, disk {disk}")
        except formats.UnsafeImage as exc:
            raise errors.InvalidArgument(f"{exc}; nothing sent") from None
        ref = self._upload(client, disk, "disk")
        kernel_ref = self._upload(client, kernel, "kernel") if kernel else None
        initrd_ref = self._upload(client, initrd, "initrd") if initrd else None
        root = common_pb2.Partition(
            name="root",
            digest=ref.digest,
            size_bytes=os.path.getsize(disk),
            format=fmt,
            mode=common_pb2.PartitionMode.PARTITION_MODE_COW,
        )
        img = client.import_image(
            args.name,
            [root],
            kernel_digest=kernel_ref.digest if kernel_ref else "",
            initrd_digest=initrd_ref.digest if initrd_ref else "",
            cmdline=cmdline,
        )
        render.emit(args, render.image_dict(img), render.image_text(img))
        return common.EXIT_OK

    def image_list(self, args: argparse.Namespace) -> int:
        images = self.client(args).list_images()
        render.emit_list(args, images, render.image_rows, render.NO_IMAGES, render.image_dict)
        return common.EXIT_OK

    # the local site

    def _site(self, args: argparse.Namespace) -> local.LocalSite:
        def say(msg: str) -> None:
            print(f"{PROG}: {msg}", file=sys.stderr, flush=True)

        return local.LocalSite(
            args.dir,
            driver=getattr(args, "driver", None),
            virt_type=getattr(args, "virt_type", None),
            say=say,
            nodes=getattr(args, "nodes", None),
        )

    def site_up(self, args: argparse.Namespace) -> int:
        site = self._site(args)
        result = site.up(timeout_s=args.timeout)
        rec = result.record
        if render.wants_json(args):
            # site.json's fields (service_pid, ...: scripts read them), its time as the
            # others, and the keys `site status` gives the same things (service.pid, ...).
            data = json.loads(rec.to_json())
            data["started_at"] = render.fmt_epoch(rec.started_at)
            data.update(state="running", **site.processes(rec))
            render.print_json({**data, "already": result.already_running})
            return common.EXIT_OK
        where = _dir_flag(site.dir)
        head = "already running" if result.already_running else "running"
        print(f"local site {head} in {site.dir} (driver {rec.driver})")
        print(f"  service  pid {rec.service_pid}  {rec.address}  (log {site.service_log})")
        for agent in rec.agents:
            print(f"  agent    pid {agent.pid}  node {agent.node}  (log {agent.log})")
        if rec.identity_dir:
            print(f"  identity {rec.identity_dir}  (mutual TLS; ws uses it by default)")
        print()
        if not where:
            print("use it:   ws list            (ws finds this site by default)")
        else:
            print(f"use it:   export WS_SITE_DIR={site.dir}")
        print(f"   or:    export WS_SERVICE={rec.address}")
        print(f"stop it:  ws-admin site down{where}")
        return common.EXIT_OK

    def site_down(self, args: argparse.Namespace) -> int:
        site = self._site(args)
        done = site.down(purge=args.purge)
        render.emit(args, {"dir": str(site.dir), "stopped": done}, "\n".join(done))
        return common.EXIT_OK

    def site_status(self, args: argparse.Namespace) -> int:
        st = self._site(args).status()
        if render.wants_json(args):
            render.print_json(st)
        elif st["state"] == "stopped":
            up = f"ws-admin site up{_dir_flag(Path(st['dir']))}"
            print(f"local site in {st['dir']}: stopped (`{up}` starts it)")
        elif st["state"] == "absent":
            up = f"ws-admin site up{_dir_flag(Path(st['dir']))}"
            print(f"no local site in {st['dir']} (`{up}` makes one)")
            if other := (args.service or os.environ.get(SERVICE_ENV, "")).strip():
                print(
                    f"the site at {other} is no local site: `ws-admin replica list` shows "
                    "its service replicas, `ws-admin node list` its nodes"
                )
        else:
            svc = st["service"]

            def run(p: dict[str, Any]) -> str:
                if p.get("stopping"):  # got its SIGTERM, finishes its work, then exits
                    return "STOPPING"
                return "running" if p["running"] else "NOT RUNNING"

            print(f"local site in {st['dir']}: {st['state']} (driver {st['driver']})")
            print(
                f"  service  pid {svc['pid']} {run(svc)}  {st['address']}  "
                f"health {st['health'] or '-'}"
            )
            _metrics_line(svc, "service")
            print(f"  log: {svc['log']}  (service)")
            ident = st.get("identity") or {}
            who = ident.get("principal") or ident.get("note") or "-"
            print(f"  identity {who}  {ident.get('dir', '')}".rstrip())
            for agent in st.get("agents", []):
                why = f" ({agent['reason']})" if agent.get("reason") else ""
                print(
                    f"  agent    pid {agent['pid']} {run(agent)}  node {agent['node']} "
                    f"{agent['state']}{why}"
                )
                _metrics_line(agent, f"agent {agent['node']}")
                print(f"  log: {agent['log']}  (agent {agent['node']})")
            if st.get("switch"):
                sw = st["switch"]
                there = "" if sw["exists"] else " MISSING"
                print(f"  switch   network namespace {sw['netns']}{there} (L2 between the nodes)")
        return common.EXIT_OK if st["state"] == "running" else common.EXIT_UNREACHABLE


def _dir_flag(site_dir: Path) -> str:
    """`` --dir DIR`` for a command about the site in ``site_dir``, unless ws-admin finds
    it without (the default site directory, or $WS_SITE_DIR's)."""
    here = local.default_site_dir().expanduser().resolve() == site_dir.resolve()
    return "" if here else f" --dir {site_dir}"


def _metrics_line(proc: dict[str, Any], what: str) -> None:
    """``metrics: URL`` of one process of the site (if it has metrics)."""
    if proc.get("metrics"):
        where = f", in network namespace {proc['netns']}" if proc.get("netns") else ""
        print(f"  metrics: {proc['metrics']}  ({what}{where})")


# -- parser ------------------------------------------------------------------------------


def _range(text: str) -> tuple[str, str]:
    """``--range START-END`` as (start, end); either may be empty in ``network set``."""
    start, sep, end = text.partition("-")
    if not sep or not (start.strip() or end.strip()):
        raise common.UsageError(f"--range must be START-END, got {text!r}")
    return start.strip(), end.strip()


def _node_count(text: str) -> int:
    """``site up --nodes N``: 1 to MAX_NODES (a usage error otherwise, as for 0)."""
    n = common.positive_int(text)
    if n > local.MAX_NODES:
        raise argparse.ArgumentTypeError(f"must be at most {local.MAX_NODES}, got {n}")
    return n


def build_parser(cmds: Commands) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = common.Parser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_global_options(parser)
    parent = common.options_parent()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def group(name: str, text: str) -> Any:
        p = sub.add_parser(name, parents=[parent], help=text)
        return p.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)

    nodes = group("node", "nodes")
    p = nodes.add_parser(
        "list",
        parents=[parent],
        help="list nodes (CONDITIONS: what keeps one from serving some workspaces)",
    )
    p.set_defaults(func=cmds.node_list)
    p = nodes.add_parser(
        "show", parents=[parent], help="one node, with each of its conditions and what to do"
    )
    p.add_argument("name", help="node name")
    p.set_defaults(func=cmds.node_show)
    for name, text in (
        ("drain", "give a node no new work (what runs there keeps running)"),
        ("enable", "let a drained node take new work again"),
        ("remove", "forget a node (refused while it holds live workspaces)"),
    ):
        p = nodes.add_parser(name, parents=[parent], help=text)
        p.add_argument("name", help="node name")
        p.set_defaults(func=cmds.node_state)

    p = sub.add_parser(
        "queue", parents=[parent], help="requests waiting for capacity, first in line first"
    )
    p.set_defaults(func=cmds.queue)

    sched = group("schedule", "the scheduler: dump its input, explain a placement offline")
    p = sched.add_parser(
        "dump",
        parents=[parent],
        help="print the scheduler's input for a request as JSON (for `schedule explain`)",
    )
    p.add_argument("--cpus", type=common.positive_int, metavar="N", help="virtual CPUs")
    p.add_argument("--memory-mib", type=common.positive_int, metavar="M", help="memory in MiB")
    p.add_argument("--network", action="append", metavar="NET", help="network (repeatable)")
    p.add_argument("--image", metavar="IMG", help="image name")
    p.add_argument(
        "--require",
        action="append",
        type=clusterspec.requirement_arg,
        metavar="KEY=VALUE",
        help="a node label the request needs (repeatable)",
    )
    p.add_argument(
        "--preemptible",
        action="store_true",
        help="a preemptible request: kept off every node the capacity queue holds, "
        "preempting nobody (default: a normal one)",
    )
    p.set_defaults(func=cmds.schedule_dump)
    p = sched.add_parser(
        "explain",
        parents=[parent],
        help="replay a `schedule dump` file offline: the placement and every node's verdict",
        description="Replay a file written by `ws-admin schedule dump` without contacting "
        "the service: the placement and, per request, every node's verdict (every filter "
        "that rejects it, or its weights). Exit status 1 when the request does not fit.",
    )
    p.add_argument("file", metavar="FILE", help='scheduler input JSON ("-" for stdin)')
    p.add_argument(
        "--preemptible",
        action="store_true",
        help="place the request as a preemptible one (every held node left out; it "
        "preempts nobody), whatever the file says",
    )
    p.set_defaults(func=cmds.schedule_explain)

    nets = group("network", "networks")
    p = nets.add_parser("create", parents=[parent], help="define a network (IP pool)")
    p.add_argument("name")
    p.add_argument("--subnet", required=True, metavar="CIDR", help="e.g. 10.77.0.0/24")
    p.add_argument("--gateway", metavar="IP", help="default: the first address")
    p.add_argument("--range", metavar="START-END", help="allocatable addresses")
    p.add_argument("--bridge", metavar="BR", help="bridge name on every node")
    p.add_argument("--mac-prefix", metavar="XX:XX:XX", help="first three MAC octets")
    p.add_argument("--dns", action="append", metavar="IP", help="DNS server (repeatable)")
    p.add_argument(
        "--vlan",
        type=common.non_negative_int,
        metavar="N",
        help="802.1Q id (1-4094) on the nodes' uplinks (default: untagged)",
    )
    p.set_defaults(func=cmds.network_create)
    p = nets.add_parser("list", parents=[parent], help="list networks")
    p.set_defaults(func=cmds.network_list)
    p = nets.add_parser(
        "set",
        parents=[parent],
        help="change a network's DNS servers or address range",
        description="Change a network in place. DNS servers: new workspaces get them in "
        "their seed, the nodes' DHCP servers offer them and the filters of "
        "--connectivity cluster NICs let DNS through to them at once; a VM already made "
        "keeps what cloud-init set at its first boot. The range: grown or moved within "
        "the subnet, refused if an address in use would fall outside it; creates waiting "
        "for an address are tried again.",
    )
    p.add_argument("name")
    dns = p.add_mutually_exclusive_group()
    dns.add_argument(
        "--dns", action="append", metavar="IP", help="DNS server (repeatable; replaces them)"
    )
    dns.add_argument("--no-dns", action="store_true", help="no DNS servers")
    p.add_argument(
        "--range",
        metavar="START-END",
        help="allocatable addresses; an empty side keeps the default "
        "(10.0.0.2-, or --range=-10.0.0.99)",
    )
    p.set_defaults(func=cmds.network_set)
    p = nets.add_parser(
        "delete",
        parents=[parent],
        help="remove a network no workspace, cluster or backfill entry uses",
        description="Remove a network. Refused while a workspace (not TERMINATED), a "
        "cluster or a backfill entry uses it; the nodes keep their bridge until their "
        "agent.toml drops it.",
    )
    p.add_argument("name")
    p.set_defaults(func=cmds.network_delete)

    images = group("image", "images")
    p = images.add_parser("import", parents=[parent], help="upload a disk image and register it")
    p.add_argument("name", help="image name (name:version)")
    p.add_argument("file", nargs="?", help="disk image file (raw or qcow2)")
    p.add_argument("--format", choices=("raw", "qcow2"), help="disk format (default: detected)")
    p.add_argument("--kernel", metavar="F", help="kernel for direct boot")
    p.add_argument("--initrd", metavar="F", help="initrd for direct boot")
    p.add_argument("--cmdline", metavar="S", help="kernel command line")
    p.add_argument(
        "--appliance", metavar="DIR", help="import DIR/appliance.json (test-appliance builder)"
    )
    p.set_defaults(func=cmds.image_import)
    p = images.add_parser("list", parents=[parent], help="list images")
    p.set_defaults(func=cmds.image_list)

    cache_cmds.register(sub, parent, cmds.client)
    project_cmds.register_admin(sub, images, parent, cmds.client)
    trust_cmds.register_admin(sub, parent, cmds.client)
    usage_cmds.register_admin(sub, parent, cmds.client)
    event_cmds.register(sub, parent, cmds.client)
    backfill_cmds.register(sub, parent, cmds.client)
    replica_cmds.register(sub, parent, cmds.client)
    pki_cmds.register(sub, parent)

    site = group("site", "the local all-in-one site (service + an agent per node, --nodes N)")
    sub.choices["site"].description = local.STATE_RULE
    dir_help = f"site directory (default: ${local.SITE_ENV} or ~/.local/share/workspace/site)"
    p = site.add_parser("up", parents=[parent], help="start the local site")
    p.add_argument("--dir", help=dir_help)
    p.add_argument(
        "--driver",
        choices=local.DRIVERS,
        help="fake (no VMs, default) or libvirt (VMs in the site's own network namespace); "
        "default: what the site ran with last time, else fake",
    )
    p.add_argument(
        "--virt-type",
        choices=("qemu", "kvm"),
        help='libvirt domain type: "qemu" (TCG, the default: nested KVM does not work on '
        'these machines) or "kvm"',
    )
    p.add_argument(
        "--nodes",
        type=_node_count,
        metavar="N",
        help=f"N agents on this machine (at most {local.MAX_NODES}), nodes local-1..local-N, "
        "each with its own state, cache and (libvirt) network namespace and libvirtd; "
        "default: what the site ran with last time, else 1 (node local)",
    )
    p.add_argument(
        "--timeout",
        type=common.seconds,
        default=local.START_TIMEOUT_S,
        metavar="S",
        help=f"give up starting after S seconds (default {local.START_TIMEOUT_S:g})",
    )
    p.set_defaults(func=cmds.site_up)
    p = site.add_parser("down", parents=[parent], help="stop the local site (keeps its data)")
    p.add_argument("--dir", help=dir_help)
    p.add_argument(
        "--purge",
        action="store_true",
        help="also remove everything the site wrote in its directory (database, images, "
        "VMs' disks, logs): a clean slate, after which `site up` may use another driver",
    )
    p.set_defaults(func=cmds.site_down)
    p = site.add_parser("status", parents=[parent], help="is the local site running?")
    p.add_argument("--dir", help=dir_help)
    p.set_defaults(func=cmds.site_status)
    return parser


def main(argv: list[str] | None = None, connect: common.Connect | None = None) -> int:
    return common.cli_main(PROG, Commands, build_parser, argv, connect)


if __name__ == "__main__":
    sys.exit(main())
