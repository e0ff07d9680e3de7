"""Every option of ws and ws-admin says in its --help what it does: `--on-expiry`,
`ws cluster scale --role` and `ws cluster autoscale --role/--min/--max` were listed with
no word (the site admin and the scientist read --help, not the code)."""

from __future__ import annotations

import argparse

import pytest

from workspace.cli import admin, common, ws


def _options(
    parser: argparse.ArgumentParser, path: tuple[str, ...]
) -> list[tuple[str, argparse.Action]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _options(sub, (*path, name))
        elif action.option_strings and action.help != argparse.SUPPRESS:
            out.append((" ".join(path), action))
    return out


@pytest.mark.parametrize("cli", [ws, admin], ids=["ws", "ws-admin"])
def test_every_option_has_a_help_text(cli: object) -> None:
    parser = cli.build_parser(cli.Commands(common.default_connect))  # type: ignore[attr-defined]
    silent = [
        f"{where} {'/'.join(a.option_strings)}"
        for where, a in _options(parser, (cli.PROG,))  # type: ignore[attr-defined]
        if not (a.help or "").strip()
    ]
    assert silent == []


def test_ws_admin_site_says_it_runs_an_agent_per_node() -> None:
    """`site up --nodes N` starts N agents; the help still said "service + one agent"."""
    text = admin.build_parser(admin.Commands(common.default_connect)).format_help()
    assert "one agent" not in text and "an agent per node" in text
