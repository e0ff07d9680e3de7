"""The node's content-addressed blob cache."""

from agent.cache.blobs import BlobCache, CacheInfo, Fetcher, Source

__all__ = ["BlobCache", "CacheInfo", "Fetcher", "Source"]
