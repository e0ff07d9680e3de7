"""The node's content-addressed blob cache."""

from agent.cache.blobs import BlobCache, BlobCorrupted, Fetcher, Source

__all__ = ["BlobCache", "BlobCorrupted", "Fetcher", "Source"]
