"""Site set-up: the local all-in-one site (local.py) and its host environment (hostenv.py)."""
