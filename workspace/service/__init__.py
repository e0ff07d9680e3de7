"""The central workspace service: the process (main.py) that wires the store, the
operations (workspace/ops) and the servicers (workspace/edge) together."""
