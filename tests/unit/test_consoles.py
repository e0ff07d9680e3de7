"""Console logs pushed to the service as they grow (agent/consoles.py), against a sink
that keeps what it is sent as the service does (workspace/ops/consoles.py)."""

from __future__ import annotations

import threading
from pathlib import Path

from agent.consoles import Consoles
from agent.disks import WorkspaceFiles

WID = "w" * 32


class Service:
    """The service's copy of each console log: the bytes, appended where they continue."""

    def __init__(self) -> None:
        self.logs: dict[str, bytearray] = {}

    def connected(self) -> bool:
        return True

    def push_console(
        self, workspace_id: str, offset: int, data: bytes = b"", reset: bool = False
    ) -> int:
        log = self.logs.setdefault(workspace_id, bytearray())
        if reset:
            log.clear()
        if offset == len(log) and data:
            log += data
        return len(log)


def pushed(consoles: Consoles, times: int = 10) -> None:
    for _ in range(times):
        consoles.push(WID)


def test_a_log_rotated_by_virtlogd_goes_on_where_it_was(tmp_path: Path) -> None:
    """virtlogd moves a console log past its max_size (2 MiB by default) to
    console.log.0 and starts a new one: the service's copy gets the rest of the old one,
    then the new one, and nothing stops there (it got nothing more until the new file
    outgrew the old, then only what came after that offset)."""
    files = WorkspaceFiles(tmp_path / "workspaces")
    files.dir(WID).mkdir()
    service = Service()
    consoles = Consoles(files, service, lambda: [WID], threading.Event())
    log = files.make_console_log(WID)
    with log.open("ab") as f:
        f.write(b"boot\n")
    pushed(consoles)
    with log.open("ab") as f:
        f.write(b"the last line before the rotation\n")
    log.rename(log.with_name(log.name + ".0"))  # as virtlogd rotates it
    files.make_console_log(WID)
    with log.open("ab") as f:
        f.write(b"after\n")
    pushed(consoles)
    assert bytes(service.logs[WID]) == b"boot\nthe last line before the rotation\nafter\n"
    with log.open("ab") as f:
        f.write(b"more\n")
    pushed(consoles)
    assert bytes(service.logs[WID]).endswith(b"after\nmore\n")


def test_a_log_recreated_while_disconnected_starts_the_services_copy_again(
    tmp_path: Path,
) -> None:
    files = WorkspaceFiles(tmp_path / "workspaces")
    files.dir(WID).mkdir()
    service = Service()
    service.logs[WID] = bytearray(b"an older, longer log than the file now\n")
    consoles = Consoles(files, service, lambda: [WID], threading.Event())
    log = files.make_console_log(WID)
    with log.open("ab") as f:
        f.write(b"fresh\n")
    pushed(consoles)
    assert bytes(service.logs[WID]) == b"fresh\n"


def test_a_large_log_is_sent_in_chunks_from_where_the_service_is(tmp_path: Path) -> None:
    files = WorkspaceFiles(tmp_path / "workspaces")
    files.dir(WID).mkdir()
    service = Service()
    service.logs[WID] = bytearray(b"0123")
    consoles = Consoles(files, service, lambda: [WID], threading.Event())
    log = files.make_console_log(WID)
    data = b"0123" + bytes(range(256)) * 2048  # over two chunks
    log.write_bytes(data)
    pushed(consoles, 5)
    assert bytes(service.logs[WID]) == data
