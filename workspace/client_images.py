"""The image and trust half of the Python client (``Client`` inherits it).

Blobs, images (push with dedup, delete, usage) and signatures; see workspace/client.py
for the plumbing (``_call``) and the rest of the API.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from images import formats, signing
from images import manifest as image_manifest
from workspace import errors, rpc_status
from workspace.chunking import ChunkSizer
from workspace.client_address import no_connection
from workspace.client_args import strings
from workspace.client_waits import WaitTimeout
from workspace.codec import v1 as codec_v1
from workspace.v1 import (
    common_pb2,
    images_pb2,
    images_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    trust_pb2,
    trust_pb2_grpc,
    workspaces_pb2,
)

T = TypeVar("T")
# list_images asks for this many per page (as list_workspaces does).
IMAGE_PAGE_SIZE = 500
# The longest a save is waited for: the service's default limit, and its grace.
SAVE_TIMEOUT_S = 3600.0 + 60.0
# How often a save's workspace is read for its progress (``save_image(on_progress=)``).
SAVE_POLL_S = 1.0
# An upload the service has taken no chunk of for this long is given up (``upload_blob``).
UPLOAD_STALL_S = 60.0
# How often an upload looks at whether it still moves.
UPLOAD_CHECK_S = 1.0

# progress(step, path, done_bytes, total_bytes); step is "hash", "upload" or "skip".
PushProgress = Callable[[str, str, int, int], None]


@dataclass(frozen=True)
class PushResult:
    """What a push did: the image, the blobs sent, the blobs the service already had."""

    image: images_pb2.Image
    uploaded: tuple[str, ...]
    skipped: tuple[str, ...]
    sent_bytes: int
    # The image already existed with these very files (a push again, e.g. to restore a
    # blob the repository lost): nothing was imported, the blobs it lacked were sent.
    existed: bool = False


class ImagesClientMixin:
    """Needs ``_call``, ``_images``, ``_projects``, ``_trust``, ``get_workspace`` and
    ``whoami`` from the Client."""

    _images: images_pb2_grpc.ImagesStub
    _projects: projects_pb2_grpc.ProjectsStub
    _trust: trust_pb2_grpc.TrustStub
    whoami: Callable[[], workspaces_pb2.Caller]  # WhoAmIClientMixin's
    address: str

    def _call(self, method: Callable[..., T], request: Any, timeout_s: float | None = None) -> T:
        raise NotImplementedError

    def _error(self, exc: grpc.RpcError) -> errors.WorkspaceError:
        raise NotImplementedError

    def get_workspace(self, id: str) -> common_pb2.Workspace:
        raise NotImplementedError

    # -- Images ------------------------------------------------------------------------

    def upload_blob(
        self,
        path: str | os.PathLike[str],
        progress: Callable[[int, int], None] | None = None,
        stall_s: float | None = None,
        digest: str = "",
    ) -> images_pb2.BlobRef:
        """Stream a file to the service's blob store, in chunks of 16 to 256 KiB by how
        fast the link takes them (workspace/chunking.py: a slow link is not cut).

        ``digest``: the file's, as hashed before ("sha256:<hex>"); the service then
        stores nothing unless the bytes it received hash to it (InvalidArgument: the
        file changed since, or the upload was cut short).

        ``progress(sent_bytes, total_bytes)`` is called before the first chunk and
        after each one. Returns the blob's digest ("sha256:<hex>") and size. An upload
        has no deadline (a large file over a slow link takes what it takes), but one the
        service takes no chunk of for ``stall_s`` seconds (default ``UPLOAD_STALL_S``)
        is cancelled: Unavailable (code DEADLINE_EXCEEDED), nothing stored.

        The bytes sent are the file's size when the upload began, which the first chunk
        says (``BlobChunk.size_bytes``): one longer or shorter by then (still being
        written) is cancelled before the chunk that would complete that size,
        InvalidArgument, nothing stored (a cancel gRPC's server sees as the stream's end
        is a stream short of its size, which the service refuses).
        """
        stall = UPLOAD_STALL_S if stall_s is None else stall_s
        total = os.path.getsize(path)
        moved = [time.monotonic()]  # when gRPC last took a chunk
        sent_all = threading.Event()
        taken = [0]  # bytes gRPC took (the chunk before each it asked for was sent)
        calls: list[grpc.Future] = []  # the call, once made
        made = threading.Event()
        changed: list[int] = []  # the file's size, once it is no longer ``total``

        def give_up(now: int) -> None:
            """Cancel the call short of the size it said: the service stores nothing."""
            changed.append(now)
            made.wait()
            calls[0].cancel()

        def chunks() -> Iterator[images_pb2.BlobChunk]:
            sent = 0
            with open(path, "rb") as f:
                if progress is not None:
                    progress(0, total)
                said = digest  # in the first chunk, with the size
                for data in ChunkSizer().read(f):
                    # The chunk that completes the size goes only if the file is still
                    # that size (a cancel then always leaves the stream short of it);
                    # after that chunk, nothing more is read.
                    end = sent + len(data)
                    if end > total or (end == total and os.fstat(f.fileno()).st_size != total):
                        give_up(os.fstat(f.fileno()).st_size)
                        return
                    chunk = images_pb2.BlobChunk(data=data, digest=said)
                    if not sent:
                        chunk.size_bytes = total
                    yield chunk
                    said = ""
                    moved[0] = time.monotonic()  # gRPC sent the last one, wants the next
                    sent += len(data)
                    taken[0] = sent
                    if progress is not None:
                        progress(sent, total)
                    if sent == total:
                        break
                if sent < total:
                    give_up(os.fstat(f.fileno()).st_size)
                    return
                if said:  # an empty file: one empty chunk, which says its digest
                    yield images_pb2.BlobChunk(digest=said)
            sent_all.set()

        # A service that stops reading (hung, or its blob directory stuck) keeps the
        # connection up while flow control holds every chunk back; on a unix socket even
        # keepalive pings wait behind them, so the upload waited for ever.
        call = self._images.UploadBlob.future(chunks())
        calls.append(call)
        made.set()
        try:
            while True:
                try:
                    return call.result(timeout=UPLOAD_CHECK_S)
                except grpc.FutureCancelledError:
                    if not changed:
                        raise
                    raise errors.InvalidArgument(
                        f"{path} changed while it was sent ({total} bytes when the upload "
                        f"began, now {changed[0]}); nothing was stored; try again once "
                        "nothing writes to it"
                    ) from None
                except grpc.FutureTimeoutError:
                    idle = time.monotonic() - moved[0]
                    if sent_all.is_set() or idle < stall:
                        continue
                    call.cancel()
                    raise rpc_status.coded(
                        errors.Unavailable(
                            f"the workspace service at {self.address} took no data of the "
                            f"upload of {path} for {idle:.0f} s; nothing was stored, try again"
                        ),
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    ) from None
        except grpc.RpcError as exc:
            said = exc.details() or ""
            lost = not said or no_connection(said)
            if taken[0] and lost and exc.code() == grpc.StatusCode.UNAVAILABLE:
                # The service took part of the file, so it was reached: it went away (a
                # restart, a crash). Not "cannot reach", with a hint at a TLS identity.
                # Its own UNAVAILABLE (its data directory read-only, its database away)
                # is said in its own words, as for any other call.
                raise rpc_status.coded(
                    errors.Unavailable(
                        f"the workspace service at {self.address} went away during the "
                        f"upload of {path} ({said or 'unavailable'}) after "
                        f"{taken[0]} of {total} bytes; nothing was stored, try again"
                    ),
                    grpc.StatusCode.UNAVAILABLE,
                ) from None
            raise self._error(exc) from None

    def import_image(
        self,
        name: str,
        partitions: Sequence[common_pb2.Partition],
        kernel_digest: str = "",
        initrd_digest: str = "",
        cmdline: str = "",
        project: str = "",
        context: str = "",
        login_user: str = "",
    ) -> images_pb2.Image:
        """Register an image of uploaded blobs, in ``project`` (default: the caller's only
        project); private to its owner and project until an admin publishes it.
        ``context``: "none" (default) or "nocloud" (it takes a cloud-init seed: user-data,
        SSH keys); ``login_user``: the account `ws ssh` logs in as."""
        req = images_pb2.ImportImageRequest(
            name=name,
            partitions=list(partitions),
            kernel_digest=kernel_digest,
            initrd_digest=initrd_digest,
            cmdline=cmdline,
            project=project,
            context=context,
            login_user=login_user,
        )
        return self._call(self._images.ImportImage, req)

    def list_images(
        self, page_size: int = IMAGE_PAGE_SIZE, mine: bool = False
    ) -> list[images_pb2.Image]:
        """Every image the caller sees, by name, fetched page by page; ``mine``: only
        the caller's own (``owner``), not their project colleagues' nor the public ones,
        as ``list(mine=True)``."""
        out: list[images_pb2.Image] = []
        token = ""
        while True:
            req = images_pb2.ListImagesRequest(page_size=page_size, page_token=token)
            resp = self._call(self._images.ListImages, req)
            out.extend(resp.images)
            token = resp.next_page_token
            if not token:
                break
        if not mine:
            return out
        me = self.whoami().user
        return [img for img in out if img.owner == me]

    def get_image(self, name: str) -> images_pb2.Image:
        return self._call(self._images.GetImage, images_pb2.GetImageRequest(name=name))

    def has_blobs(self, digests: Sequence[str]) -> list[str]:
        """The digests the service's repository does not hold yet (a push sends those)."""
        req = images_pb2.HasBlobsRequest(digests=strings(digests, "digests"))
        return list(self._call(self._images.HasBlobs, req).missing)

    def delete_image(self, name: str) -> images_pb2.Image:
        """Remove one of your images; refused (FailedPrecondition) while a live workspace
        uses it. Blobs no other image references leave the repository."""
        return self._call(self._images.DeleteImage, images_pb2.GetImageRequest(name=name))

    def save_image(
        self,
        workspace: str,
        image: str,
        project: str = "",
        timeout_s: float = SAVE_TIMEOUT_S,
        on_progress: Callable[[common_pb2.Workspace], None] | None = None,
    ) -> images_pb2.Image:
        """A new image ``image`` (NAME:VERSION) from stopped workspace ``workspace`` (name
        or id): its cow partitions as they are now, the rest as its image's. Returns once
        the workspace's node has sent its disks and the image is registered (minutes for
        large disks; ``timeout_s`` bounds the wait). ``on_progress``: called with the
        workspace every ``SAVE_POLL_S`` while the save is under way (``saving_disk``,
        ``saving_copied_percent`` while its node copies it, then ``saving_sent_bytes``
        of ``saving_size_bytes``)."""
        req = images_pb2.SaveImageRequest(workspace=workspace, image=image, project=project)
        if on_progress is None:
            return self._save_call(req, timeout_s)
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def call() -> None:
            try:
                outcome["image"] = self._save_call(req, timeout_s)
            except BaseException as exc:  # raised in the caller's thread below
                outcome["error"] = exc
            finally:
                done.set()

        threading.Thread(target=call, name="ws-save", daemon=True).start()
        while not done.wait(SAVE_POLL_S):
            try:
                ws = self.get_workspace(workspace)
            except errors.WorkspaceError:  # a read that failed: the save's answer will say
                continue
            if ws.saving_as == image and not done.is_set():
                on_progress(ws)
        if "error" in outcome:
            raise outcome["error"]
        found: images_pb2.Image = outcome["image"]
        return found

    def _save_call(self, req: images_pb2.SaveImageRequest, timeout_s: float) -> images_pb2.Image:
        """``SaveImage``; its wait running out while the service saves is a WaitTimeout
        saying the save goes on (the service and the node do not stop for it), not the
        Unavailable of a service that did not answer."""
        try:
            return self._call(self._images.SaveImage, req, timeout_s)
        except errors.Unavailable as exc:
            if exc.code != grpc.StatusCode.DEADLINE_EXCEEDED.name:
                raise
            try:
                ws = self.get_workspace(req.workspace)
            except errors.WorkspaceError:
                raise exc from None  # no answer at all: as it was
        waited = (
            f"timed out after {timeout_s:g} s waiting for the save of {req.workspace} "
            f"as {req.image}"
        )
        if ws.saving_as == req.image:
            raise WaitTimeout(
                f"{waited}, which goes on: the image is made when it ends "
                f"(`ws show {req.workspace}` follows it)",
                ws,
            ) from None
        raise WaitTimeout(
            f"{waited}; it is no longer being saved (`ws image show {req.image}` says whether "
            "the image was made)",
            ws,
        ) from None

    def repository_usage(self) -> images_pb2.RepositoryUsage:
        """Bytes your images take in the repository, and your quota (0: none)."""
        return self._call(self._images.GetRepositoryUsage, images_pb2.RepositoryUsageRequest())

    # -- image trust -------------------------------------------------------------------

    def sign_image(self, name: str, private_key_pem: bytes) -> trust_pb2.ImageSignatures:
        """Sign image ``name`` as the service stores it (every partition's digest, size,
        format, mode and ext4 flag, kernel, initrd, cmdline, its context and login user)
        and attach the signature."""
        private = signing.load_private_key(private_key_pem)
        img = self.get_image(name)
        boot = signing.Boot(img.context, img.login_user)
        envelope = signing.sign(codec_v1.image_spec_from_proto(img), private, boot)
        return self.add_signature(name, envelope)

    def add_signature(self, image: str, envelope_json: str) -> trust_pb2.ImageSignatures:
        req = trust_pb2.AddSignatureRequest(image=image, envelope_json=envelope_json)
        return self._call(self._trust.AddSignature, req)

    def get_signatures(self, image: str) -> trust_pb2.ImageSignatures:
        """The image's signatures and the service's verdict under the current policy."""
        req = trust_pb2.ImageSignaturesRequest(image=image)
        return self._call(self._trust.GetSignatures, req)

    def get_trust_policy(self) -> trust_pb2.TrustPolicy:
        return self._call(self._trust.GetPolicy, trust_pb2.GetPolicyRequest())

    def add_trust_key(
        self,
        public_key_pem: str,
        image_patterns: Sequence[str],
        expires_at: float = 0.0,
        comment: str = "",
    ) -> trust_pb2.TrustPolicy:
        """Trust a publisher key for images whose names match ``image_patterns``
        (fnmatch); ``expires_at`` in epoch seconds, 0 = never."""
        req = trust_pb2.AddKeyRequest(
            public_key_pem=public_key_pem,
            image_patterns=strings(image_patterns, "image_patterns"),
            comment=comment,
        )
        if expires_at:
            req.expires_at.FromNanoseconds(int(expires_at * 1e9))
        return self._call(self._trust.AddKey, req)

    def revoke_trust_key(self, key_id: str) -> trust_pb2.TrustPolicy:
        return self._call(self._trust.RevokeKey, trust_pb2.RevokeKeyRequest(key_id=key_id))

    def revoke_digest(self, digest: str) -> trust_pb2.TrustPolicy:
        return self._call(self._trust.RevokeDigest, trust_pb2.RevokeDigestRequest(digest=digest))

    def set_trust_mode(
        self, enforce: bool, stop_running_on_revoke: bool = False
    ) -> trust_pb2.TrustPolicy:
        mode = trust_pb2.TRUST_MODE_ENFORCE if enforce else trust_pb2.TRUST_MODE_WARN
        req = trust_pb2.SetModeRequest(mode=mode, stop_running_on_revoke=stop_running_on_revoke)
        return self._call(self._trust.SetMode, req)

    def list_audit(self, limit: int = 0, image: str = "") -> list[trust_pb2.AuditEntry]:
        """Trust decisions, newest first (limit 0: 100)."""
        req = trust_pb2.ListAuditRequest(limit=limit, image=image)
        return list(self._call(self._trust.ListAudit, req).entries)

    def push_image(
        self,
        name: str,
        manifest: image_manifest.Manifest,
        progress: PushProgress | None = None,
        project: str = "",
    ) -> PushResult:
        """Push an image: hash its files locally, ask which blobs the service lacks, send
        only those, then import the manifest. A re-push of the same files sends nothing.

        ``progress(step, path, done_bytes, total_bytes)`` is called while hashing
        (step "hash") and uploading (step "upload"), and once with step "skip" for a
        file the service already has. Raises ``InvalidArgument`` for a file that is not
        raw or qcow2 or that changes during the push.
        """
        fmts = _formats(manifest)  # before anything is hashed or sent
        # Refused before a file is hashed or a byte sent: a project that does not exist or
        # is not the caller's, or none named by a member of several (the import would
        # refuse either, after the upload).
        quotas = self._call(self._projects.GetQuota, projects_pb2.GetQuotaRequest(project=project))
        mine = sorted(q.project for q in quotas.projects)
        if not project and len(mine) > 1:
            raise errors.InvalidArgument(
                f"you are a member of {', '.join(mine)}: say which with --project"
            )
        # A name no push of the caller can take (another project's, or an image they do
        # not see): refused now, not after the upload.
        self.check_import(name, project)
        project_limit = quotas.projects[0].limits.image_bytes if len(quotas.projects) == 1 else 0
        usage = self.repository_usage()
        _check_sizes(manifest, usage, project_limit)
        _inspect(manifest, fmts, usage.max_virtual_bytes or image_manifest.MAX_SIZE)
        for attempt in range(2):
            digests = self._hash_files(manifest, progress)
            parts, boot = _push_partitions(manifest, digests, fmts), _boot(manifest, digests)
            # An image of that name the caller sees, made of other files: refused before a
            # byte is sent. Made of these: the blobs it lacks are sent (restored), and done.
            existing = self._visible_image(name)
            if existing is not None and not _same_image(existing, parts, boot, manifest):
                raise errors.AlreadyExists(f"image {name!r} already exists; pick a new version")
            uploaded, sent = self._send_missing(digests, progress)
            skipped = tuple(d for d, _ in digests.values() if d not in uploaded)
            done = (tuple(uploaded), tuple(dict.fromkeys(skipped)), sent)
            if existing is not None:
                return PushResult(existing, *done, True)
            try:
                image = self.import_image(
                    name,
                    parts,
                    *boot,
                    project=project,
                    context=manifest.context,
                    login_user=manifest.login_user,
                )
            except errors.AlreadyExists:
                # Registered since it was looked up: by another push of the same image at
                # once (a job array, a script run twice), done as this one asked; or of
                # other files, still "pick a new version".
                existing = self._visible_image(name)
                if existing is None or not _same_image(existing, parts, boot, manifest):
                    raise
                return PushResult(existing, *done, True)
            except errors.NotFound as exc:
                # A blob vanished between HasBlobs and the import (a DeleteImage of
                # another image that shared it): ask again once. Nothing else (a project
                # that does not exist) is helped by sending again. Twice: the push outlasts
                # the site's blob grace (docs/images.md), and no retry can help.
                if not _blob_missing(exc):
                    raise
                if attempt:
                    raise errors.NotFound(
                        f"{exc.message} (twice: this push sent it again): the repository "
                        "keeps a blob that is no image's yet for the service's blob_grace_s "
                        "(default 1 h) after it was sent, and sending this image's files "
                        "probably took longer; ask the site's admin to raise blob_grace_s"
                    ) from exc
                continue
            return PushResult(image, *done)
        raise AssertionError("unreachable")  # pragma: no cover

    def check_import(self, name: str, project: str = "") -> None:
        """Raise what an import of ``name`` into ``project`` would be refused for whatever
        its files (ALREADY_EXISTS for a name another project holds, or a NAME:VERSION the
        caller does not see), importing nothing. A service older than the check takes the
        request for an import of nothing and refuses it so: then nothing is raised."""
        req = images_pb2.ImportImageRequest(name=name, project=project, check_only=True)
        try:
            self._call(self._images.ImportImage, req)
        except errors.InvalidArgument as exc:
            if not exc.message.endswith(NOTHING_TO_BOOT):
                raise

    def _visible_image(self, name: str) -> images_pb2.Image | None:
        try:
            return self.get_image(name)
        except errors.NotFound:
            return None

    @staticmethod
    def _hash_files(
        manifest: image_manifest.Manifest, progress: PushProgress | None
    ) -> dict[Path, tuple[str, int]]:
        out: dict[Path, tuple[str, int]] = {}
        for path in manifest.files():
            if path in out:
                continue
            if not path.is_file():
                raise errors.InvalidArgument(f"{path}: {_not_a_file(path)}")

            def report(done: int, total: int, path: Path = path) -> None:
                if progress is not None:
                    progress("hash", str(path), done, total)

            report(0, path.stat().st_size)
            out[path] = image_manifest.sha256_file(path, report)
        return out

    def _send_missing(
        self, digests: Mapping[Path, tuple[str, int]], progress: PushProgress | None
    ) -> tuple[list[str], int]:
        missing = set(self.has_blobs(sorted({d for d, _ in digests.values()})))
        uploaded: list[str] = []
        sent = 0
        for path, (digest, size) in digests.items():
            if digest not in missing or digest in uploaded:
                if progress is not None:
                    progress("skip", str(path), size, size)
                continue

            def report(done: int, total: int, path: Path = path) -> None:
                if progress is not None:
                    progress("upload", str(path), done, total)

            try:
                ref = self.upload_blob(path, report, digest=digest)
            except errors.InvalidArgument as exc:
                if f"not {digest} as the upload said" in exc.message:
                    raise errors.InvalidArgument(
                        f"{path} changed while it was pushed (hashed {digest}, the service "
                        "received other bytes and stored nothing); push again"
                    ) from None
                raise
            if ref.digest != digest:  # (a service older than BlobChunk.digest stored it)
                raise errors.InvalidArgument(
                    f"{path} changed while it was pushed (hashed {digest}, sent {ref.digest}); "
                    "push again"
                )
            uploaded.append(digest)
            sent += ref.size_bytes
        return uploaded, sent


# How a service older than ImportImageRequest.check_only refuses the check (ops/images.py).
NOTHING_TO_BOOT = "nothing to boot (no partition, no kernel)"


def _blob_missing(exc: errors.NotFound) -> bool:
    """Whether an import was refused for a blob the repository no longer holds (for
    this caller), as ops/images.py says it."""
    return ": blob sha256:" in exc.message and (
        "has not been uploaded" in exc.message or "no longer in the repository" in exc.message
    )


def blank_partition(
    name: str, size_bytes: int, ext4: bool = False, fmt: str = ""
) -> common_pb2.Partition:
    """An extra blank partition for ``create_workspace(extra_partitions=...)``."""
    return common_pb2.Partition(
        name=name,
        size_bytes=size_bytes,
        mode=common_pb2.PARTITION_MODE_BLANK,
        ext4=ext4,
        format=fmt,
    )


BLANK_FORMAT = "NAME:SIZE[:ext4]"


def parse_blank(text: str) -> common_pb2.Partition:
    """``NAME:SIZE[:ext4]`` (``scratch:10GiB:ext4``) as an extra blank partition;
    ValueError saying what is wrong."""
    name, _, rest = text.partition(":")
    size_text, _, flag = rest.partition(":")
    if not name or not size_text or flag not in ("", "ext4"):
        raise ValueError(f"expected {BLANK_FORMAT}, got {text!r}")
    try:
        size = image_manifest.parse_size(size_text, name)
    except image_manifest.ManifestError as exc:
        raise ValueError(str(exc)) from None
    return blank_partition(name, size, ext4=flag == "ext4")


_MODES = {
    "cow": common_pb2.PARTITION_MODE_COW,
    "readonly": common_pb2.PARTITION_MODE_READONLY,
    "blank": common_pb2.PARTITION_MODE_BLANK,
}


def _not_a_file(path: Path) -> str:
    """Why ``path`` (not a regular file) cannot be pushed."""
    if path.is_dir():
        return "is a directory, not a disk image file"
    return "no such file" if not path.exists() else "not a regular file"


def _formats(manifest: image_manifest.Manifest) -> dict[str, str]:
    """Partition name -> raw | qcow2: as declared, else detected from the file."""
    out: dict[str, str] = {}
    for p in manifest.partitions:
        if p.file is None:
            continue
        if not p.file.is_file():
            raise errors.InvalidArgument(f"partition {p.name}: {p.file}: {_not_a_file(p.file)}")
        try:
            out[p.name] = p.format or image_manifest.detect_format(p.file)
        except image_manifest.ManifestError as exc:
            raise errors.InvalidArgument(f"partition {p.name}: {exc}") from None
    return out


def _inspect(manifest: image_manifest.Manifest, fmts: Mapping[str, str], limit: int) -> None:
    """The service's checks at import (images/formats.py; a blank partition's size), on
    the local files and the manifest: nothing is hashed or sent that it would refuse."""
    for p in manifest.partitions:
        if p.file is not None:
            try:
                info = formats.inspect(p.file, fmts[p.name], limit, f"partition {p.name}")
            except formats.UnsafeImage as exc:
                raise errors.InvalidArgument(f"{exc} ({p.file}); nothing sent") from None
            if not info.virtual_size_bytes and info.file_size_bytes:  # (empty: said before)
                raise errors.InvalidArgument(
                    f"partition {p.name}: a disk of 0 bytes (the qcow2's virtual size is 0), "
                    f"which boots and holds nothing ({p.file}); nothing sent"
                )
        elif p.size_bytes % 512 or not 0 < p.size_bytes <= limit:
            raise errors.InvalidArgument(
                f"partition {p.name}: a blank partition's size is a multiple of 512 bytes "
                f"from 512 to {limit} (the service's limits.max_virtual_bytes), not "
                f"{p.size_bytes}; nothing sent"
            )


def _check_sizes(
    manifest: image_manifest.Manifest, usage: images_pb2.RepositoryUsage, project_limit: int
) -> None:
    """ResourceExhausted, before anything is hashed, for a file larger than the service
    takes as a blob, or than the caller's repository quota or their project's image
    bytes (0: none) alone: no import of it could ever fit. InvalidArgument for an empty
    file (`wget -O` leaves one where a download failed), as `ws-admin image import`."""
    for path in dict.fromkeys(manifest.files()):
        if not path.is_file():
            continue  # said by _hash_files
        size = path.stat().st_size
        if not size:
            raise errors.InvalidArgument(f"{path}: is empty; nothing sent")
        for limit, what in (
            (usage.max_blob_bytes, "the service takes in a file (limits.max_blob_bytes)"),
            (usage.quota_bytes, "your repository quota (limits.repo_quota_bytes_per_user)"),
            (project_limit, "your project's image bytes quota"),
        ):
            if limit and size > limit:
                raise errors.ResourceExhausted(
                    f"{path}: {size} bytes, more than {what} of {limit} bytes; nothing sent"
                )


def _push_partitions(
    manifest: image_manifest.Manifest,
    digests: Mapping[Path, tuple[str, int]],
    fmts: Mapping[str, str],
) -> list[common_pb2.Partition]:
    out = []
    for p in manifest.partitions:
        if p.file is None:
            out.append(
                common_pb2.Partition(
                    name=p.name,
                    size_bytes=p.size_bytes,
                    format=p.format,
                    mode=_MODES[p.mode],
                    ext4=p.ext4,
                )
            )
            continue
        digest, size = digests[p.file]
        out.append(
            common_pb2.Partition(
                name=p.name,
                digest=digest,
                size_bytes=size,
                format=fmts[p.name],
                mode=_MODES[p.mode],
            )
        )
    return out


def _same_image(
    img: images_pb2.Image,
    parts: Sequence[common_pb2.Partition],
    boot: tuple[str, str, str],
    manifest: image_manifest.Manifest,
) -> bool:
    """Whether ``img`` is the image this push asks for: these partitions in this order
    (files by digest and format, blank ones by size, format and ext4), these boot files
    and cmdline, this context and login user. (The same files alone were taken as the
    same image: a manifest whose blank size, disk order, context or login user changed
    was "pushed", and the image kept the old ones.)"""

    def key(ps: Iterable[common_pb2.Partition]) -> list[tuple[object, ...]]:
        out: list[tuple[object, ...]] = []
        for p in ps:
            if p.mode == common_pb2.PARTITION_MODE_BLANK:
                fmt = "raw" if p.ext4 else (p.format or "qcow2")
                out.append((p.name, p.mode, "", fmt, p.size_bytes, p.ext4))
            else:
                out.append((p.name, p.mode, p.digest, p.format or "raw", 0, False))
        return out

    return (
        key(img.partitions) == key(parts)
        and (img.kernel_digest, img.initrd_digest, img.cmdline) == boot
        and (img.context or "none", img.login_user)
        == (manifest.context or "none", manifest.login_user)
    )


def _boot(
    manifest: image_manifest.Manifest, digests: Mapping[Path, tuple[str, int]]
) -> tuple[str, str, str]:
    kernel = digests[manifest.kernel][0] if manifest.kernel else ""
    initrd = digests[manifest.initrd][0] if manifest.initrd else ""
    return kernel, initrd, manifest.cmdline
