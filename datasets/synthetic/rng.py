"""Deterministic randomness keyed by (seed, names, indices).

Everything the renderer draws is a pure function of such a key, so any frame or route segment can be
produced on its own, in any order, bit-identically (random access, no hidden stream state)."""

from __future__ import annotations

import zlib

import numpy as np

_MASK64 = (1 << 64) - 1


def _word(key: int | str) -> int:
    if isinstance(key, str):
        return zlib.crc32(key.encode()) | (1 << 40)  # tag strings so "3" and 3 differ
    k = int(key)
    # Zigzag: SeedSequence takes non-negative words only; segment indices may be negative.
    return (k << 1) if k >= 0 else ((-k << 1) - 1)


def rng_for(seed: int, *keys: int | str) -> np.random.Generator:
    """An independent generator for (seed, *keys)."""
    entropy = [_word(seed)] + [_word(k) for k in keys]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_uniform(seed: int, tag: str, index: np.ndarray | int) -> np.ndarray:
    """Uniform [0, 1) per integer index, vectorised: cheap enough to recompute whole route prefixes."""
    idx = np.asarray(index, dtype=np.int64).astype(np.uint64)  # two's complement keeps negatives distinct
    base = np.uint64((_word(seed) * 0x9E3779B1 + zlib.crc32(tag.encode())) & _MASK64)
    with np.errstate(over="ignore"):
        h = _splitmix64(_splitmix64(idx ^ base) + base)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
