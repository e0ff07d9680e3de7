"""ws-slurm's config and mapping files, SLURM_RESUME_FILE and the node user-data."""

from __future__ import annotations

import dataclasses
import email
import json
from pathlib import Path

import pytest
import yaml

from workspace.slurm import context
from workspace.slurm.hostlist import expand
from workspace.slurm.resumefile import ResumeFileError, feature_names, parse
from workspace.slurm.settings import (
    ConfigError,
    Settings,
    SlurmConfig,
    Unmapped,
    load,
    parse_rules,
)

MAPPING = """
[[node]]
feature = "bigmem"
image = "slurm-big"
cpus = 4
memory_mib = 16384

[[node]]
names = "gpu[01-04]"
image = "slurm-gpu"
requirements = { gpu = "1" }

[[node]]
names = "c*"
image = "slurm"
cpus = 1
memory_mib = 1024
"""


def write_config(tmp: Path, mapping: str = MAPPING, **extra: object) -> Path:
    (tmp / "nodes.toml").write_text(mapping)
    values: dict[str, object] = {
        "service": "unix:/x.sock",
        "controller": "10.0.0.1",
        "mapping_file": "nodes.toml",
        **extra,
    }
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = tmp / "slurm.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rules_are_tried_in_order(tmp_path: Path) -> None:
    s = load(write_config(tmp_path))
    assert s.mapping_file == "nodes.toml" and len(s.rules) == 3
    big = s.resolve("c1", frozenset({"bigmem"}))
    assert (big.image, big.cpus, big.memory_mib, big.rule) == ("slurm-big", 4, 16384, 0)
    plain = s.resolve("c7")
    assert (plain.image, plain.cpus, plain.memory_mib) == ("slurm", 1, 1024)
    gpu = s.resolve("gpu03")
    assert gpu.image == "slurm-gpu" and gpu.requirements == {"gpu": "1"}


def test_a_node_no_rule_matches_is_named(tmp_path: Path) -> None:
    s = load(write_config(tmp_path))
    with pytest.raises(Unmapped, match=r"Slurm node gpu09 \(features: ib\) maps to no image"):
        s.resolve("gpu09", frozenset({"ib"}))


def test_a_rule_with_no_condition_matches_everything() -> None:
    rules = parse_rules({"node": [{"image": "any"}]}, "m")
    assert Settings(rules=tuple(rules)).resolve("x1").image == "any"


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ('[[node]]\nimage = "a"\nimgae = "b"\n', "unknown key 'imgae'"),
        ("[[node]]\ncpus = 2\n", "has no image"),
        ('[[node]]\nimage = "a"\ncpus = -1\n', "cpus must not be negative"),
        ('[[node]]\nimage = "a"\nnames = "c[1-"\n', "names:"),
        ('[[node]]\nimage = "a"\ncpus = "two"\n', "cpus has the wrong type"),
        ('[[nodes]]\nimage = "a"\n', "only \\[\\[node\\]\\]"),
        ("[[node]\n", "not valid TOML"),
    ],
)
def test_bad_mapping_files_are_refused(tmp_path: Path, mapping: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write_config(tmp_path, mapping))


def test_bad_config_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"slurm\.toml: unknown key\(s\) sevice \(known: service,"
    ):
        load(write_config(tmp_path, sevice="x"))
    with pytest.raises(ConfigError, match="affinity 'sideways' is not a known affinity"):
        load(write_config(tmp_path, affinity="sideways"))
    with pytest.raises(ConfigError, match="replace_wait_s: must be 0 or more, got -1"):
        load(write_config(tmp_path, replace_wait_s=-1))
    with pytest.raises(ConfigError, match="controller_port: expected int, got '6817'"):
        load(write_config(tmp_path, controller_port="6817"))
    with pytest.raises(ConfigError, match=r"networks\[0\]: expected str"):
        load(write_config(tmp_path, networks=[1]))
    with pytest.raises(ConfigError, match=r"missing\.toml not found"):
        load(tmp_path / "missing.toml")
    path = write_config(tmp_path, mapping_file="/nonexistent/nodes.toml")
    with pytest.raises(ConfigError, match=r"mapping file /nonexistent/nodes\.toml does not exist"):
        load(path)
    assert load(path, need_mapping=False).controller == "10.0.0.1"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # As the service's and agent's config files: no interval beyond 10 years (1e300
        # overflowed the waits), none negative or (a call's timeout) zero.
        ({"timeout_s": 1e300}, r"timeout_s: must be at most 315360000 \(10 years\)"),
        ({"replace_wait_s": 1e300}, r"replace_wait_s: must be at most 315360000"),
        ({"timeout_s": 0}, "timeout_s: must be more than 0"),
        ({"lease_s": -1}, "lease_s: must be 0 or more"),
        ({"lease_s": 10**12}, "lease_s: must be at most"),
        ({"controller_port": 70000}, "controller_port: 70000 is not a port"),
        # A job's cluster is <cluster_prefix><job id>: a prefix no cluster name can start
        # with made every multi-node job "refused by the service" and its nodes DOWN.
        ({"cluster_prefix": "Slurm_"}, "cluster_prefix 'Slurm_': a job's cluster is"),
        ({"cluster_prefix": "-slurm-"}, "cluster_prefix '-slurm-'"),
        ({"cluster_prefix": "s" * 29}, "cluster_prefix 's+': a job's cluster is"),
        # slurmctld runs its programs in its own working directory: a relative path
        # named a file there, not next to the config.
        ({"identity": "slurm-identity"}, "identity: 'slurm-identity' is a relative path"),
        ({"log_file": "ws-slurm.log"}, "log_file: 'ws-slurm.log' is a relative path"),
        ({"lock_file": "nodes.lock"}, "lock_file: 'nodes.lock' is a relative path"),
        # The runs lock their nodes on it: none would let two runs act on one node.
        ({"lock_file": ""}, "lock_file: must name a file: ws-slurm runs lock their nodes"),
        ({"munge_key_file": "munge.key"}, "munge_key_file: 'munge.key' is a relative path"),
        ({"slurm_conf_file": "slurm.conf"}, "slurm_conf_file: 'slurm.conf' is a relative"),
        ({"scontrol": "bin/scontrol"}, "scontrol: 'bin/scontrol' is a relative path"),
        ({"service": "unix:run/ws.sock"}, "service: 'run/ws.sock' is a relative path"),
    ],
)
def test_out_of_range_values_and_relative_paths_are_refused(
    tmp_path: Path, extra: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=r"slurm\.toml: " + message):
        load(write_config(tmp_path, **extra))


def test_absolute_paths_a_home_identity_and_a_bare_scontrol_are_taken(tmp_path: Path) -> None:
    s = load(
        write_config(
            tmp_path,
            identity="~slurm/identity",
            log_file="/var/log/x.log",
            scontrol="scontrol",
            lease_s=20 * 365 * 86400,  # a site's max_lease_s may be longer than 10 years
        )
    )
    assert (s.identity, s.scontrol, s.mapping_file) == ("~slurm/identity", "scontrol", "nodes.toml")


def test_the_readme_shows_every_key_with_its_default() -> None:
    """An admin reads the README's ws-slurm table for what the config may set."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows.setdefault(cells[0].strip("`"), cells[1])
    for f in dataclasses.fields(SlurmConfig):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        if isinstance(default, float) and default.is_integer():
            default = int(default)
        shown = json.dumps(default)
        assert rows.get(f.name) == f"`{shown}`", f"README: {f.name} should show `{shown}`"


def test_config_values_and_defaults(tmp_path: Path) -> None:
    s = load(write_config(tmp_path, networks=["a", "b"], timeout_s=5, affinity="soft-anti"))
    assert s.networks == ["a", "b"] and s.timeout_s == 5.0 and s.affinity == "soft-anti"
    assert (s.controller_port, s.cluster_prefix, s.lease_s) == (6817, "slurm-", 0)
    assert s.log_file == "/var/log/ws-slurm.log"
    assert s.replace_wait_s == 60.0
    # The empty prefix: a job's cluster is named by its id alone ("7").
    assert load(write_config(tmp_path, cluster_prefix="")).cluster_prefix == ""


def test_an_unreadable_config_file_is_a_config_error(tmp_path: Path) -> None:
    # (Permission denied takes the same path; as root every file is readable.)
    with pytest.raises(ConfigError, match=r"config file .*: Is a directory"):
        load(tmp_path)


# -- SLURM_RESUME_FILE ---------------------------------------------------------------------

RESUME = {
    "all_nodes_resume": "cloud[1-3,7-8]",
    "jobs": [
        {
            "extra": "An arbitrary string from --extra",
            "features": "c1,c2",
            "job_id": 140814,
            "nodes_alloc": "cloud[1-4]",
            "nodes_resume": "cloud[1-3]",
            "oversubscribe": "OK",
            "partition": "cloud",
            "reservation": "resv_1234",
        },
        {
            "extra": None,
            "features": None,
            "job_id": 140815,
            "nodes_alloc": "cloud[7-8]",
            "nodes_resume": "cloud[7-8]",
            "oversubscribe": "OK",
            "partition": "cloud",
            "reservation": None,
        },
    ],
}


def test_resume_file_as_slurm_writes_it() -> None:
    f = parse(json.dumps(RESUME))
    assert f.all_nodes == ("cloud1", "cloud2", "cloud3", "cloud7", "cloud8")
    first, second = f.jobs
    assert first.job_id == 140814 and first.nodes == ("cloud1", "cloud2", "cloud3")
    assert first.features == {"c1", "c2"} and first.partition == "cloud"
    assert first.extra == "An arbitrary string from --extra"
    assert second.features == frozenset() and second.extra == ""


def test_resume_file_older_key_names() -> None:
    f = parse(json.dumps({"all_nodes": "c[1-2]", "jobs": [{"job_id": 1, "nodes": "c[1-2]"}]}))
    assert f.all_nodes == ("c1", "c2") and f.jobs[0].nodes == ("c1", "c2")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"jobs": {}}', "jobs is not a list"),
        ('{"jobs": [{"job_id": "7"}]}', "job_id is not a number"),
        ('{"jobs": [{"job_id": 7, "nodes_resume": "c[1-"}]}', "nodes_resume"),
    ],
)
def test_bad_resume_files(text: str, message: str) -> None:
    with pytest.raises(ResumeFileError, match=message):
        parse(text)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("bigmem", {"bigmem"}),
        ("bigmem&ib", {"bigmem", "ib"}),
        ("[rack1|rack2]", {"rack1", "rack2"}),
        ("[rack1*2&rack2*4]", {"rack1", "rack2"}),
        ("(a|b)&c", {"a", "b", "c"}),
        (None, set()),
    ],
)
def test_feature_names(expr: str | None, names: set[str]) -> None:
    assert feature_names(expr) == names


# -- user-data -----------------------------------------------------------------------------


def test_configless_user_data_starts_slurmd_with_the_node_name(tmp_path: Path) -> None:
    s = load(write_config(tmp_path))
    data = context.user_data(s.resolve("c1"), s).decode()
    assert data.startswith("#cloud-config\n")
    doc = yaml.safe_load(data)
    assert doc["hostname"] == "c1"
    files = {f["path"]: f for f in doc["write_files"]}
    opts = files["/etc/default/slurmd"]["content"]
    assert opts == 'SLURMD_OPTIONS="--conf-server 10.0.0.1:6817 -N c1"\n'
    assert "ConditionPathExists=\n" in files[context.SLURMD_DROPIN_PATH]["content"]
    assert doc["runcmd"] == [["systemctl", "daemon-reload"], ["systemctl", "start", "slurmd"]]


def test_written_config_and_munge_key(tmp_path: Path) -> None:
    (tmp_path / "slurm.conf").write_text("ClusterName=x\n")
    (tmp_path / "munge.key").write_bytes(b"\x00secret")
    s = load(
        write_config(
            tmp_path,
            slurm_conf_file=str(tmp_path / "slurm.conf"),
            munge_key_file=str(tmp_path / "munge.key"),
        )
    )
    doc = yaml.safe_load(context.user_data(s.resolve("c2"), s))
    files = {f["path"]: f for f in doc["write_files"]}
    assert files["/etc/default/slurmd"]["content"] == 'SLURMD_OPTIONS="-N c2"\n'
    assert files["/etc/slurm/slurm.conf"]["content"] == "ClusterName=x\n"
    key = files["/etc/munge/munge.key"]
    assert key["encoding"] == "b64" and key["permissions"] == "0400"
    assert ["systemctl", "restart", "munge"] in doc["runcmd"]


def test_user_data_needs_a_controller_or_a_config(tmp_path: Path) -> None:
    s = load(write_config(tmp_path, controller=""))
    with pytest.raises(context.ContextError, match="no controller"):
        context.user_data(s.resolve("c1"), s)


def test_a_rules_own_user_data_comes_first(tmp_path: Path) -> None:
    mapping = '[[node]]\nimage = "slurm"\nuser_data = "#!/bin/sh\\necho hi\\n"\n'
    s = load(write_config(tmp_path, mapping))
    data = context.user_data(s.resolve("c1"), s).decode()
    assert data.startswith("Content-Type: multipart/mixed")
    assert data.index("x-shellscript") < data.index("cloud-config")


def test_the_shipped_examples_parse() -> None:
    conf = Path(__file__).resolve().parents[2] / "conf" / "slurm"
    s = load(conf / "ws-slurm.toml")
    assert s.controller and s.identity and len(s.rules) == 2
    assert s.resolve("cloud3").cpus == 2
    assert s.resolve("bigmem1", frozenset({"bigmem"})).memory_mib == 32768
    data = context.user_data(s.resolve("cloud3"), s)
    assert data == context.user_data(s.resolve("cloud3"), s)  # stable bytes
    parts = [p.get_payload(decode=True) for p in email.message_from_bytes(data).walk()]
    assert any(b"/etc/motd" in p for p in parts if isinstance(p, bytes))


def test_the_shipped_fragment_powers_down_cloud_nodes_only() -> None:
    """slurm.conf(5): a global SuspendTime makes every idle node of the cluster one to
    power down, the site's own too (slurmctld ran ws-slurm suspend for them, counted
    them powered down, and ws-slurm resume later marked them DOWN: no rule maps them).
    The fragment sets SuspendTime on partitions whose nodes are all State=CLOUD."""
    conf = Path(__file__).resolve().parents[2] / "conf" / "slurm" / "slurm.conf.fragment"
    lines = [ln.split("#", 1)[0].split() for ln in conf.read_text().splitlines()]
    lines = [words for words in lines if words]
    fields = [dict(w.split("=", 1) for w in words if "=" in w) for words in lines]
    globals_ = [f for f in fields if not {"NodeName", "PartitionName"} & set(f)]
    assert not [f for f in globals_ if "SuspendTime" in f], "SuspendTime set cluster-wide"
    cloud = {
        n for f in fields if f.get("State") == "CLOUD" and "NodeName" in f
        for n in expand(f["NodeName"])
    }  # fmt: skip
    suspending = [f for f in fields if "PartitionName" in f and "SuspendTime" in f]
    assert suspending, "no partition sets SuspendTime: power saving would be off"
    for f in suspending:
        assert set(expand(f["Nodes"])) <= cloud, f


def test_the_shipped_fragment_gives_plain_jobs_the_small_nodes_first() -> None:
    """Slurm allocates the nodes of lowest Weight first. The fragment's partition had
    cloud[1-16] (4 GiB workspaces) and bigmem[1-4] (32 GiB) at the same weight, and a
    plain `sbatch -N2` got bigmem[1-2]: 64 GiB, refused by the README's example quota
    (memory-mib=32768), both nodes DOWN. In a partition, a node the shipped mapping makes
    bigger weighs more."""
    conf = Path(__file__).resolve().parents[2] / "conf" / "slurm"
    s = load(conf / "ws-slurm.toml")
    lines = [
        ln.split("#", 1)[0].split()
        for ln in (conf / "slurm.conf.fragment").read_text().splitlines()
    ]
    fields = [dict(w.split("=", 1) for w in words if "=" in w) for words in lines if words]
    nodes: dict[str, tuple[int, int]] = {}  # node -> (weight, memory_mib)
    for f in fields:
        if "NodeName" in f:
            features = frozenset(f.get("Feature", "").split(",")) - {""}
            for n in expand(f["NodeName"]):
                nodes[n] = (int(f.get("Weight", "1")), s.resolve(n, features).memory_mib or 0)
    for f in fields:
        if "PartitionName" in f:
            sizes = sorted(nodes[n] for n in expand(f["Nodes"]))
            by_weight = [memory for _, memory in sizes]
            assert by_weight == sorted(by_weight), (f["PartitionName"], sizes)
            assert len({w for w, _ in sizes}) == len({m for _, m in sizes}), sizes


def _env_file_value(line: str) -> str:
    """One ``NAME="..."`` line as systemd's EnvironmentFile reader takes it (v252,
    src/basic/env-file.c): inside double quotes a backslash escapes ``\\ " ` $`` and is
    kept before any other character."""
    name, _, raw = line.rstrip("\n").partition("=")
    assert name == "SLURMD_OPTIONS" and raw.startswith('"') and raw.endswith('"'), line
    out, escaped = [], False
    for c in raw[1:-1]:
        if escaped:
            out.append(c if c in '"\\`$' else "\\" + c)
            escaped = False
        elif c == "\\":
            escaped = True
        else:
            assert c != '"', f"the value ends early: {line}"
            out.append(c)
    return "".join(out)


def _systemd_split(value: str) -> list[str]:
    """An unquoted ``$SLURMD_OPTIONS`` in ExecStart=, split as systemd splits it
    (replace_env_argv: extract_first_word with EXTRACT_RELAX|EXTRACT_UNQUOTE): whitespace
    separates, single and double quotes group and go, a backslash (quoted or not) keeps
    the next character."""
    words: list[str] = []
    word: list[str] = []
    quote, escaped, started = "", False, False
    for c in value:
        if escaped:
            word.append(c)
            escaped = False
        elif quote:
            if c == quote:
                quote = ""
            elif c == "\\":
                escaped = True
            else:
                word.append(c)
        elif c in "'\"":
            quote, started = c, True
        elif c == "\\":
            escaped, started = True, True
        elif c.isspace():
            if started or word:
                words.append("".join(word))
            word, started = [], False
        else:
            word.append(c)
    if started or word:
        words.append("".join(word))
    return words


@pytest.mark.parametrize(
    "controller",
    ["10.0.0.1", "ctl.example.org", "[fd00::1]", "it's", 'a"b', "a\\b", "a$b`c", "two words"],
)
def test_slurmd_gets_the_controller_as_one_argument(tmp_path: Path, controller: str) -> None:
    """/etc/default/slurmd is read by systemd, not a shell: what slurmd gets is what
    systemd makes of the line (before, shell quoting: a ``"`` ended the value, a backslash
    was lost)."""
    s = load(write_config(tmp_path, controller=controller))
    doc = yaml.safe_load(context.user_data(s.resolve("c1"), s))
    line = {f["path"]: f for f in doc["write_files"]}["/etc/default/slurmd"]["content"]
    argv = _systemd_split(_env_file_value(line))
    assert argv == ["--conf-server", f"{controller}:6817", "-N", "c1"], line
