"""The local all-in-one site: launcher (local.py), its record (record.py), config files
(configs.py), talking to its service (status.py) and host environment (hostenv.py)."""
