"""Code blocks of the docs that a test runs exactly as they are printed.

A doc marks such a block with the line
``<!-- the block below runs as it is in tests/functional/TEST_FILE -->`` right above its
```` ```python ```` fence. ``marked_block`` returns the code inside that fence;
``run_example`` runs it as a program of its own (a fresh interpreter, this checkout on
its path) with the environment a test gives it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.functional.harness import ROOT

# Variables through which the user's own environment could point an example elsewhere.
_CALLER_ENV = ("WS_SERVICE", "WS_IDENTITY", "WS_TLS_CA", "WS_TLS_CERT", "WS_TLS_KEY")


def marked_block(doc: str, test_file: str) -> str:
    """The Python block of ``doc`` (a path under the repository) marked for ``test_file``."""
    text = (ROOT / doc).read_text()
    mark = f"<!-- the block below runs as it is in tests/functional/{test_file} -->\n```python\n"
    assert text.count(mark) == 1, f"{doc} has no Python block marked for {test_file}, or several"
    code, fence, _ = text.split(mark, 1)[1].partition("\n```")
    assert fence, f"the block of {doc} marked for {test_file} is not closed"
    return code + "\n"


def run_example(
    code: str, tmp: Path, env: dict[str, str], timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a script in ``tmp`` (also its HOME) with ``env`` added to this
    process's environment, less the variables that choose a service or an identity."""
    script = tmp / "example.py"
    script.write_text(code)
    full = {k: v for k, v in os.environ.items() if k not in _CALLER_ENV}
    full.update(PYTHONPATH=str(ROOT), HOME=str(tmp), **env)
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=full,
        cwd=tmp,
        timeout=timeout_s,
    )
