"""The node's content-addressed blob cache."""

from agent.cache.blobs import BlobCache

__all__ = ["BlobCache"]
