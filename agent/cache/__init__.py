"""The node's content-addressed blob cache."""

from agent.cache.blobs import BlobCache, Fetcher, Source

__all__ = ["BlobCache", "Fetcher", "Source"]
