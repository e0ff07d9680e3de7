"""scripts/install-deps.sh installs what the README's set-up steps then need.

`make demo` and "A real multi-node site" step 0 install the `libvirt` extra into a venv
after `install-deps.sh demo`. libvirt-python is published as source only (no wheel on
PyPI), so pip compiles its C module: on a fresh Debian 12 that needs a C compiler and
Python's headers beside libvirt's (libvirt-dev, pkg-config), else pip stops at
"command 'gcc' failed" or "Python.h: No such file or directory".
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install-deps.sh"


def packages(kind: str) -> set[str]:
    """The Debian packages `install-deps.sh KIND` installs, as the script itself says."""
    text = SCRIPT.read_text()
    head = text[: text.index("missing=")]  # the lists and the choice, nothing installed
    out = subprocess.run(
        ["sh", "-c", f'{head}\necho "$PKGS"', "install-deps.sh", kind],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_the_demo_packages_build_the_libvirt_extra() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    libvirt = extras["optional-dependencies"]["libvirt"]
    assert any(re.match(r"libvirt-python\b", req) for req in libvirt)
    for kind in ("demo", "all"):
        missing = {"gcc", "python3-dev", "libvirt-dev", "pkg-config"} - packages(kind)
        assert not missing, f"install-deps.sh {kind} does not install {sorted(missing)}"


def test_every_make_target_the_tree_names_is_in_the_makefile() -> None:
    """A skip message or a doc that says `make X` sends its reader to a target that runs."""
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = {}
    for path in ROOT.rglob("*"):
        if path.suffix in (".py", ".md", ".sh", ".toml") and ".venv" not in path.parts:
            for target in re.findall(r"`make ([a-z][\w-]*)", path.read_text(errors="replace")):
                named.setdefault(target, path.relative_to(ROOT))
    wrong = {t: str(p) for t, p in named.items() if t not in targets}
    assert not wrong, f"`make TARGET` named but not in the Makefile: {wrong}"
