"""ws-slurm: Slurm elastic compute on workspaces (docs/design/slurm.md).

``cli`` (the program), ``program`` (resume/suspend over the client), ``settings`` (the
config and mapping files), ``hostlist``, ``resumefile``, ``context`` (the user-data that
starts slurmd), ``scontrol``.
"""
