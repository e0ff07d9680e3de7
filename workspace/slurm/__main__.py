"""python -m workspace.slurm: the ws-slurm program."""

import sys

from workspace.slurm.cli import main

sys.exit(main())
