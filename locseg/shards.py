"""How per-image stages split a split's ids into shards (jobs): round-robin, so shards stay balanced."""

from __future__ import annotations


def shard_ids(ids: list[str], shard: int, shards: int) -> list[str]:
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} out of range for {shards} shards")
    return list(ids[shard::shards])


def shard_names(shards: int) -> list[str]:
    """File stems of a split's shards; the count is in config, so it is never guessed from disk."""
    return [f"{i:03d}" for i in range(shards)]
