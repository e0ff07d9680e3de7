"""The central workspace service."""
