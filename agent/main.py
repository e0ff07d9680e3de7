"""`workspace-agent`: the daemon on every VMM node."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from agent.agent import Agent
from agent.netsetup import Networking, NullNetworking
from agent.virt import make_driver
from workspace import config, metrics_http, rpc, sole, version
from workspace.config import AgentConfig
from workspace.errors import ConfigError, WorkspaceError
from workspace.log import setup as setup_logging
from workspace.stopsignals import StopSignals

log = logging.getLogger("agent")


def make_networking(cfg: AgentConfig) -> Networking:
    if cfg.driver == "fake":
        return NullNetworking()
    from agent.net.node import BridgeNetworking

    return BridgeNetworking(cfg)


def check_transport(cfg: AgentConfig) -> None:
    """Refuse plaintext to the service and to peers unless insecure = true; say so
    loudly when plaintext is used (at ERROR off loopback or a unix socket)."""
    if rpc.check_listen(cfg.service, cfg.tls, cfg.insecure, what="service"):
        log.log(*rpc.insecure_warning("workspace-agent (to the service)", cfg.service))
    if cfg.peer_listen and rpc.check_listen(
        cfg.peer_listen, cfg.tls, cfg.insecure, what="peer_listen"
    ):
        log.log(*rpc.insecure_warning("workspace-agent (peer server)", cfg.peer_listen))
    elif cfg.peer_listen and not cfg.tls.crl_file:
        log.warning("[tls] crl_file is not set: peers with revoked certificates are served")


def check_addresses(cfg: AgentConfig) -> None:
    """ConfigError naming the first address of ``cfg`` the agent cannot listen on now."""
    if cfg.peer_listen:
        rpc.check_free(cfg.peer_listen, "peer_listen")
    if cfg.metrics_listen:
        metrics_http.check_free(cfg.metrics_listen)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="workspace-agent", description=__doc__)
    version.add_option(p)
    p.add_argument("--config", help="TOML config file (see conf/agent.toml)")
    p.add_argument(
        "--service",
        help="override `service`: the service's node_listen (host:port or unix:/path; "
        "several replicas: comma-separated, tried in turn)",
    )
    p.add_argument("--node", help="override `node` (the node name)")
    p.add_argument("--driver", choices=["fake", "libvirt"], help="override `driver`")
    p.add_argument("--state-dir", help="override `state_dir`")
    args = p.parse_args(argv)
    try:
        cfg = config.load(
            AgentConfig,
            args.config,
            service=args.service,
            node=args.node,
            driver=args.driver,
            state_dir=args.state_dir,
        )
    except ConfigError as exc:
        print(f"workspace-agent: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level, f"workspace-agent[{cfg.node}]", cfg.log_format, node=cfg.node)
    try:
        check_transport(cfg)
        # The node's VMs, bridges and dnsmasq are this process's alone (workspace/sole.py):
        # a second agent on the state directory refuses to start; the lock dies with us.
        Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
        node_lock = sole.hold_node(cfg.state_dir)
    except ConfigError as exc:
        log.error("cannot start: %s", exc.message)
        return 1
    except OSError as exc:  # state_dir a file, or not ours to write
        log.error("cannot start: state_dir %s: %s", cfg.state_dir, exc.strerror or exc)
        return 1
    try:
        # An address it cannot listen on (another process has it) is said now, before
        # the node's cache and state are opened; start() binds them.
        check_addresses(cfg)
    except ConfigError as exc:
        node_lock.release()
        log.error("cannot start: %s", exc.message)
        return 1
    try:
        agent = Agent(cfg, make_driver(cfg), make_networking(cfg))
    except WorkspaceError as exc:
        log.error("cannot start: %s", exc.message)
        return 1
    except OSError as exc:  # a directory it keeps (cache_dir, ...) cannot be made
        log.error("cannot start: %s: %s", exc.filename or "", exc.strerror or exc)
        return 1
    stops = StopSignals().install()
    try:
        agent.start()
    except ConfigError as exc:  # e.g. metrics_listen cannot be bound
        log.error("cannot start: %s", exc.message)
        agent.stop()
        stops.restore()
        return 1
    except OSError as exc:  # a file or directory it needs: one line naming it
        log.error("cannot start: %s: %s", exc.filename or "", exc.strerror or exc)
        agent.stop()
        stops.restore()
        return 1
    log.info(
        "workspace-agent %s for node %s started (driver %s, service %s)",
        version.version(),
        cfg.node,
        cfg.driver,
        cfg.service,
    )
    signum = stops.wait()
    node_lock.stopping()  # `ws-admin site up` meanwhile waits for us to go
    log.info("signal %d: shutting down (VMs keep running)", signum)
    agent.stop()
    node_lock.release()
    # The last line of a clean stop (workspace-service says the same).
    log.info("workspace-agent for node %s stopped", cfg.node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
