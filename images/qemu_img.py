"""qemu-img, one function per verb: explicit formats always, resource limits, typed errors."""

from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

QEMU_IMG = "qemu-img"
_LIMIT_AS_BYTES = 2 * 1024**3
_LIMIT_CPU_S = 60
_FORMATS = ("raw", "qcow2")


class QemuImgError(RuntimeError):
    pass


def _command(args: list[str], cpu_s: int = _LIMIT_CPU_S) -> list[str]:
    # Limits through prlimit(1) rather than preexec_fn: no fork() of a threaded gRPC process.
    return ["prlimit", f"--as={_LIMIT_AS_BYTES}", f"--cpu={cpu_s}", QEMU_IMG, *args]


def _run(args: list[str], timeout_s: float = 120.0, cpu_s: int = _LIMIT_CPU_S) -> str:
    try:
        proc = subprocess.run(
            _command(args, cpu_s),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except FileNotFoundError as exc:
        raise QemuImgError("qemu-img is not installed (Debian package qemu-utils)") from exc
    except subprocess.TimeoutExpired as exc:
        raise QemuImgError(f"qemu-img {args[0]} timed out after {timeout_s} s") from exc
    if proc.returncode != 0:
        raise QemuImgError(f"qemu-img {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout


def _fmt(fmt: str) -> str:
    if fmt not in _FORMATS:
        raise QemuImgError(f"format {fmt!r} is not allowed (raw, qcow2)")
    return fmt


def _size(size_bytes: int) -> str:
    if size_bytes <= 0:
        raise QemuImgError(f"size must be positive, got {size_bytes}")
    return str(size_bytes)


def create_overlay(base: Path, base_format: str, path: Path, size_bytes: int = 0) -> None:
    """A qcow2 overlay on ``base`` (O(1): no data is copied).

    ``size_bytes`` > 0 gives the overlay that virtual size (a grown partition: the guest
    sees zeros past the end of the base); 0 keeps the base's size.
    """
    args = ["create", "-q", "-f", "qcow2", "-b", str(base), "-F", _fmt(base_format), str(path)]
    _run([*args, _size(size_bytes)] if size_bytes else args)


def flatten(
    overlay: Path,
    path: Path,
    timeout_s: float,
    on_progress: Callable[[float], None] | None = None,
) -> None:
    """``overlay`` (a qcow2, with whatever backing chain its header names) copied into a
    new self-contained qcow2 ``path`` of the same virtual size; clusters that read as
    zeros are not written, so the copy stays sparse. CPU time is limited to the
    timeout (a copy of a large disk takes longer than the other verbs).
    ``on_progress``: told each figure qemu-img prints of how far it is (percent); an
    exception it raises kills qemu-img and is raised (the copy is stopped)."""
    args = ["convert", "-f", "qcow2", "-O", "qcow2", str(overlay), str(path)]
    cpu_s = max(_LIMIT_CPU_S, int(timeout_s))
    if on_progress is None:
        _run(["convert", "-q", *args[1:]], timeout_s, cpu_s)
    else:
        _run_with_progress(["convert", "-p", *args[1:]], timeout_s, cpu_s, on_progress)


# What ``qemu-img convert -p`` prints (and ends with a carriage return): "    (45.02/100%)".
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def progress_figures(text: bytes) -> list[float]:
    """The percentages in what ``qemu-img convert -p`` printed."""
    return [float(m[1]) for m in _PROGRESS.finditer(text)]


def _run_with_progress(
    args: list[str], timeout_s: float, cpu_s: int, on_progress: Callable[[float], None]
) -> None:
    """``_run`` reading qemu-img's progress from its output as it comes."""
    deadline = time.monotonic() + timeout_s
    try:
        proc = subprocess.Popen(
            _command(args, cpu_s), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except FileNotFoundError as exc:
        raise QemuImgError("qemu-img is not installed (Debian package qemu-utils)") from exc
    out, err = proc.stdout, proc.stderr
    assert out is not None and err is not None
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(err.read()), daemon=True)
    reader.start()
    pending = b""
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise QemuImgError(f"qemu-img {args[0]} timed out after {timeout_s} s")
                data = os.read(out.fileno(), 4096)
                if not data:
                    break
                *done, pending = (pending + data).split(b"\r")
                for figure in progress_figures(b"\r".join(done)):
                    on_progress(figure)
        for figure in progress_figures(pending):
            on_progress(figure)
    except BaseException:
        # Timed out, or ``on_progress`` raised to stop the copy: qemu-img is not left
        # running (it was, writing on for up to its CPU limit).
        proc.kill()
        proc.wait()
        reader.join(5)
        out.close()
        err.close()
        raise
    code = proc.wait()
    reader.join(5)
    out.close()
    err.close()
    if code != 0:
        message = b"".join(errors).decode(errors="replace").strip()
        raise QemuImgError(f"qemu-img {args[0]} failed: {message}")


def create_blank(path: Path, size_bytes: int, fmt: str = "qcow2") -> None:
    _run(["create", "-q", "-f", _fmt(fmt), str(path), _size(size_bytes)])


def info(path: Path, fmt: str) -> dict[str, Any]:
    out = _run(["info", "--output=json", "-f", _fmt(fmt), str(path)])
    result: dict[str, Any] = json.loads(out)
    return result


def available() -> bool:
    return any(
        os.access(os.path.join(d, QEMU_IMG), os.X_OK)
        for d in os.environ.get("PATH", "/usr/bin").split(os.pathsep)
    )
