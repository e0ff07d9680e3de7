"""Command-line interfaces: ``ws`` (users) and ``ws-admin`` (operators)."""
