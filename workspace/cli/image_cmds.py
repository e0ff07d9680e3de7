"""`ws image ...`: push (content-addressed, only missing blobs are sent), list, show,
delete, usage, save (a stopped workspace's disks as a new image); and the disk options
of `ws create` (--blank, --grow).

    ws image push sci-base:1.2 --manifest sci-base.toml   # partitions from a TOML manifest
    ws image push sci-base:1.2 root.qcow2                 # one cow partition "root"
    ws image list | show NAME | delete NAME | usage
    ws image save WORKSPACE my-env:1

The manifest format is described in images/manifest.py and docs/images.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from images import manifest as image_manifest
from workspace import errors
from workspace.cli import common, guest_cmds, progress, render
from workspace.client import PushResult, parse_blank
from workspace.client_images import SAVE_TIMEOUT_S
from workspace.v1 import common_pb2

# What `ws image save CLUSTER IMAGE` suggests besides a member's name (cli/guest_cmds.py).
SAVE_CLUSTER = "`ws cluster show {name}` for each member's role: a save is of one member's disks"
# -- commands ----------------------------------------------------------------------------


def _manifest(args: argparse.Namespace) -> image_manifest.Manifest:
    try:
        if args.manifest:
            if (
                args.path
                or args.format
                or args.kernel
                or args.initrd
                or args.cmdline
                or args.context
                or args.login_user
            ):
                raise common.UsageError(
                    "--manifest FILE replaces PATH, --format, --kernel, --initrd, --cmdline, "
                    "--context and --login-user"
                )
            return image_manifest.load(args.manifest)
        if not args.path:
            raise common.UsageError("give the disk image PATH or --manifest FILE")
        if (args.initrd or args.cmdline) and not args.kernel:
            raise common.UsageError("--initrd and --cmdline need --kernel")
        single = image_manifest.single(args.path, args.format or "")
        return image_manifest.Manifest(
            single.partitions,
            Path(args.kernel).resolve() if args.kernel else None,
            Path(args.initrd).resolve() if args.initrd else None,
            image_manifest.check_cmdline(args.cmdline or ""),
            args.context or "none",
            image_manifest.check_login_user(args.login_user or ""),
        )
    except image_manifest.ManifestError as exc:
        raise errors.InvalidArgument(str(exc)) from None


class ImageCommands:
    def __init__(self, client_for: common.ClientFor, prog: str) -> None:
        self.client_for = client_for
        self.prog = prog

    def push(self, args: argparse.Namespace) -> int:
        try:
            image_manifest.parse_ref(args.name)
        except image_manifest.ManifestError as exc:
            raise common.UsageError(str(exc)) from None
        m = _manifest(args)
        client = self.client_for(args)
        bar = progress.PushProgress(self.prog)
        try:
            result: PushResult = client.push_image(args.name, m, bar, project=args.project or "")
        except BaseException as exc:
            bar.end()
            if isinstance(exc, KeyboardInterrupt):
                print(
                    f"{self.prog}: push interrupted: {args.name} is not registered; the files "
                    "sent in full stay in the repository, so pushing again sends only the rest",
                    file=sys.stderr,
                    flush=True,
                )
            raise
        sent = (
            f"{len(result.uploaded)} blob(s) sent ({render.fmt_bytes(result.sent_bytes)}),"
            f" {len(result.skipped)} already there"
        )
        if result.existed:  # pushed again: the same files (a lost blob is restored)
            said = f"{result.image.name} already exists with these files: {sent}"
        else:
            said = f"pushed {result.image.name}: {sent}"
        print(f"{self.prog}: {said}", file=sys.stderr, flush=True)
        render.emit(args, render.image_dict(result.image), render.image_text(result.image))
        return common.EXIT_OK

    def list(self, args: argparse.Namespace) -> int:
        client = self.client_for(args)
        images = client.list_images(mine=True) if args.mine else client.list_images()
        render.emit_list(args, images, render.image_rows, render.NO_IMAGES, render.image_dict)
        return common.EXIT_OK

    def show(self, args: argparse.Namespace) -> int:
        img = self.client_for(args).get_image(args.name)
        render.emit(args, render.image_dict(img), render.image_text(img))
        return common.EXIT_OK

    def delete(self, args: argparse.Namespace) -> int:
        img = self.client_for(args).delete_image(args.name)
        text = f"deleted image {img.name} ({render.fmt_bytes(img.total_bytes)})"
        render.emit(args, render.image_dict(img), text)
        return common.EXIT_OK

    def save(self, args: argparse.Namespace) -> int:
        try:
            image_manifest.parse_ref(args.image)
        except image_manifest.ManifestError as exc:
            raise common.UsageError(str(exc)) from None
        shown = progress.SaveProgress(self.prog)  # on stderr, in JSON mode too
        begun: list[common_pb2.Workspace] = []  # the workspace as last seen saving

        def on_progress(ws: common_pb2.Workspace) -> None:
            # Called only once the service has marked the workspace (saving_as): the
            # save was accepted. A refused one says only why (the error, below).
            said = bool(begun)
            begun[:] = [ws]
            if not said:
                print(
                    f"{self.prog}: saving {args.workspace} as {args.image}: its node copies its "
                    "disks (it cannot start until this ends) ...",
                    file=sys.stderr,
                    flush=True,
                )
            shown(ws)

        client = self.client_for(args)
        try:
            with guest_cmds.naming_clusters(client, args.workspace, SAVE_CLUSTER):
                img = client.save_image(
                    args.workspace, args.image, args.project or "", args.timeout, on_progress
                )
        except BaseException as exc:
            shown.end()
            if isinstance(exc, KeyboardInterrupt):
                self._save_interrupted(args, begun[-1] if begun else None)
            raise
        shown.end(saved=True)
        print(
            f"{self.prog}: saved {args.workspace} as {img.name} "
            f"({render.fmt_bytes(img.total_bytes)})",
            file=sys.stderr,
            flush=True,
        )
        render.emit(args, render.image_dict(img), render.image_text(img))
        return common.EXIT_OK

    def _save_interrupted(self, args: argparse.Namespace, ws: common_pb2.Workspace | None) -> None:
        """Ctrl-C during `ws image save`: only the wait ends; the service and the node go
        on with a save they accepted (the workspace cannot start until it ends)."""
        if ws is None:  # not seen marked yet: asked, but perhaps not accepted
            print(
                f"{self.prog}: wait interrupted: the save of {args.workspace} as {args.image} "
                f"was asked and may go on (`ws show {args.workspace}` says: saving, or not)",
                file=sys.stderr,
                flush=True,
            )
            return
        common.say_wait_interrupted(
            self.prog,
            render.state_line(ws, f", saving {render.saving_text(ws)}"),
            "save",
            f"ws show {ws.id or ws.name}",
        )

    def usage(self, args: argparse.Namespace) -> int:
        u = self.client_for(args).repository_usage()
        render.emit(args, u, render.usage_text(u))
        return common.EXIT_OK


def register(
    subparsers: Any,
    parent: argparse.ArgumentParser,
    client_for: common.ClientFor,
    prog: str = "ws",
) -> Any:
    """Add `image push|list|show|delete|usage|save` to ``subparsers`` (of the top parser);
    returns the subparsers of `image`, where more image commands can be added."""
    cmds = ImageCommands(client_for, prog)
    p = subparsers.add_parser("image", parents=[parent], help="images")
    sub = p.add_subparsers(dest="image_command", metavar="COMMAND", required=True)

    q = sub.add_parser(
        "push",
        parents=[parent],
        help="send an image to the repository (only what it lacks) and register it",
        description="Push NAME:VERSION: files are hashed locally, only blobs the service "
        "lacks are sent, then the image is registered. Either one disk PATH (a cow "
        'partition "root") or --manifest FILE (see docs/images.md).',
    )
    q.add_argument("name", metavar="NAME:VERSION", help="image name, e.g. sci-base:1.2")
    q.add_argument("path", nargs="?", metavar="PATH", help="disk image file (raw or qcow2)")
    q.add_argument("--manifest", metavar="FILE", help="TOML manifest of the partitions")
    q.add_argument("--format", choices=image_manifest.FORMATS, help="PATH's format (detected)")
    q.add_argument("--kernel", metavar="F", help="kernel for direct boot (with PATH)")
    q.add_argument("--initrd", metavar="F", help="initrd for direct boot (with PATH)")
    q.add_argument("--cmdline", metavar="S", help="kernel command line (with PATH)")
    q.add_argument(
        "--context",
        choices=image_manifest.CONTEXTS,
        help="how it takes deploy-time information: none (default) or nocloud (cloud-init: "
        "user-data, SSH keys, cluster roster)",
    )
    q.add_argument("--login-user", metavar="U", help="the account `ws ssh` logs in as")
    q.add_argument(
        "--project", metavar="P", help="the image's project (default: yours, if you have one)"
    )
    q.set_defaults(func=cmds.push)

    q = sub.add_parser("list", parents=[parent], help="list images")
    q.add_argument(
        "--mine", action="store_true", help="only yours, not your project colleagues' nor public"
    )
    q.set_defaults(func=cmds.list)
    q = sub.add_parser("show", parents=[parent], help="show one image and its partitions")
    q.add_argument("name", help="image name")
    q.set_defaults(func=cmds.show)
    q = sub.add_parser(
        "delete", parents=[parent], help="delete one of your images (not while in use)"
    )
    q.add_argument("name", help="image name")
    q.set_defaults(func=cmds.delete)
    q = sub.add_parser("usage", parents=[parent], help="your repository bytes and quota")
    q.set_defaults(func=cmds.usage)
    q = sub.add_parser(
        "save",
        parents=[parent],
        help="make a new image of a stopped workspace's disks",
        description="Save WORKSPACE (stopped) as image NAME:VERSION: its node copies each "
        "cow partition as it is now into a self-contained qcow2 and sends it to the "
        "repository; the image's readonly and blank partitions, kernel, context and login "
        "user are kept, disks added with `ws create --blank` are not. The workspace cannot "
        "start until the save ends. The new image is unsigned (`ws image sign` it where the "
        "site enforces signatures).",
    )
    q.add_argument("workspace", metavar="WORKSPACE", help="the workspace (name or id), stopped")
    q.add_argument("image", metavar="NAME:VERSION", help="the new image, e.g. my-env:1")
    q.add_argument(
        "--project",
        metavar="P",
        help="the image's project (default: the workspace's)",
    )
    q.add_argument(
        "--timeout",
        type=common.seconds,
        default=SAVE_TIMEOUT_S,
        metavar="S",
        help=f"give up waiting after S seconds; the save goes on (default {SAVE_TIMEOUT_S:g})",
    )
    q.set_defaults(func=cmds.save)
    return sub


# -- disk options of `ws create` -----------------------------------------------------------


def blank_arg(text: str) -> common_pb2.Partition:
    """``NAME:SIZE[:ext4]`` -> an extra blank partition."""
    try:
        return parse_blank(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def grow_arg(text: str) -> tuple[str, int]:
    """``NAME:SIZE`` -> (partition name, new virtual size in bytes)."""
    name, _, size_text = text.partition(":")
    if not name or not size_text:
        raise argparse.ArgumentTypeError(f"expected NAME:SIZE, got {text!r}")
    try:
        return name, image_manifest.parse_size(size_text, name)
    except image_manifest.ManifestError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_disk_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--blank",
        action="append",
        type=blank_arg,
        metavar="NAME:SIZE[:ext4]",
        help="add an empty disk, e.g. scratch:10GiB:ext4 (repeatable)",
    )
    p.add_argument(
        "--grow",
        action="append",
        type=grow_arg,
        metavar="NAME:SIZE",
        help="give the image's cow partition NAME a larger size, e.g. root:20GiB (repeatable)",
    )


def disk_options(
    args: argparse.Namespace,
) -> tuple[list[common_pb2.Partition], dict[str, int]]:
    """(extra_partitions, grow_bytes) for Client.create_workspace."""
    grow: dict[str, int] = {}
    for name, size in getattr(args, "grow", None) or []:
        if name in grow:
            raise common.UsageError(f"--grow {name} is given twice")
        grow[name] = size
    return list(getattr(args, "blank", None) or []), grow
