"""A bag of binary words built online (see recon.places): k-majority clustering of ORB descriptors into a
2-level tree, tf-idf vectors, DBoW's L1 score and an inverted index over the stored keyframes."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def _nearest(desc: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (Hamming) for each descriptor; cv2's matcher uses SIMD popcount."""
    if len(centres) == 1:
        return np.zeros(len(desc), dtype=np.int64)
    matches = cv2.BFMatcher(cv2.NORM_HAMMING).match(desc, centres)
    out = np.empty(len(desc), dtype=np.int64)
    out[[m.queryIdx for m in matches]] = [m.trainIdx for m in matches]
    return out


def _majority_centres(bits: np.ndarray, label: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Bitwise majority of each cluster's unpacked descriptors bits [N,256] -> packed centres [k,32];
    an empty cluster keeps its old centre. One sort + reduceat instead of a loop over clusters."""
    k = len(old)
    order = np.argsort(label, kind="stable")
    counts = np.bincount(label, minlength=k)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    nonempty = counts > 0
    sums = np.add.reduceat(bits[order], starts[nonempty], axis=0, dtype=np.uint16)  # n < 65536: see k_majority
    centres = old.copy()
    centres[nonempty] = np.packbits(2 * sums > counts[nonempty, None], axis=1)
    return centres


def k_majority(
    desc: np.ndarray, k: int, iterations: int, rng: np.random.Generator, max_points: int = 8192
) -> np.ndarray:
    """Binary k-means: Hamming assignment, bitwise-majority centres. k-means++ seeding spreads the
    initial centres (distinct descriptors far from each other). Clusters a random subsample of at most
    `max_points` (plenty for k centres, and bounds the cost). Returns centres [<=k, 32] uint8."""
    if len(desc) > max_points:
        desc = desc[rng.choice(len(desc), max_points, replace=False)]
    n = len(desc)
    if n <= k:
        return np.unique(desc, axis=0)
    centres = [desc[rng.integers(n)]]
    dist = _hamming_to(desc, centres[0]).astype(np.float64)
    for _ in range(k - 1):
        if dist.sum() == 0:
            break
        centres.append(desc[rng.choice(n, p=dist**2 / (dist**2).sum())])
        dist = np.minimum(dist, _hamming_to(desc, centres[-1]))
    C = np.stack(centres)
    bits = np.unpackbits(desc, axis=1)
    for _ in range(iterations):
        new = _majority_centres(bits, _nearest(desc, C), C)
        if np.array_equal(new, C):
            break
        C = new
    return C


def _hamming_to(desc: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Hamming distances [N] of descriptors [N,32] to one descriptor, 64 bits at a time."""
    x = np.bitwise_xor(np.ascontiguousarray(desc).view(np.uint64), np.ascontiguousarray(centre).view(np.uint64))
    return np.bitwise_count(x).sum(axis=1, dtype=np.int32)


@dataclass
class BinaryVocabulary:
    """A frozen 2-level tree of binary words with idf weights. Word id = parent * k2 + child."""

    centres1: np.ndarray  # [k1', 32]
    centres2: list[np.ndarray]  # per parent [<=k2, 32]
    k2: int
    idf: np.ndarray  # [k1' * k2] float32

    @staticmethod
    def train(descs: list[np.ndarray], shape: tuple[int, int], iterations: int, seed: int) -> BinaryVocabulary:
        """Cluster the descriptors of training images; idf_w = log(N_images / images containing w), as
        DBoW does (words no training image holds get the largest idf)."""
        rng = np.random.default_rng(seed)
        all_desc = np.concatenate(descs)
        C1 = k_majority(all_desc, shape[0], iterations, rng)
        label = _nearest(all_desc, C1)
        C2 = [k_majority(all_desc[label == j], shape[1], iterations, rng) for j in range(len(C1))]
        voc = BinaryVocabulary(C1, C2, shape[1], np.zeros(len(C1) * shape[1], dtype=np.float32))
        df = np.zeros(len(voc.idf))
        for d in descs:
            df[np.unique(voc.words(d))] += 1
        voc.idf = np.log(len(descs) / np.maximum(df, 1)).astype(np.float32) + np.float32(1e-3)
        return voc

    def words(self, desc: np.ndarray) -> np.ndarray:
        parent = _nearest(desc, self.centres1)
        out = np.empty(len(desc), dtype=np.int64)
        for j in np.unique(parent):
            sel = parent == j
            out[sel] = j * self.k2 + _nearest(desc[sel], self.centres2[j])
        return out

    def bow(self, desc: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        """L1-normalised tf-idf vector as (sorted word ids int32, weights float32), and the level-1 node
        of each descriptor (uint8 when k1 <= 256)."""
        words = self.words(desc)
        ids, counts = np.unique(words, return_counts=True)
        w = counts * self.idf[ids]
        node = (words // self.k2).astype(np.uint8 if len(self.centres1) <= 256 else np.int32)
        return (ids.astype(np.int32), (w / max(float(w.sum()), 1e-12)).astype(np.float32)), node

    @property
    def nbytes(self) -> int:
        return int(self.centres1.nbytes + sum(c.nbytes for c in self.centres2) + self.idf.nbytes)


def bow_score(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """DBoW L1 score of two L1-normalised vectors: sum over shared words of min(a_w, b_w)."""
    _, ia, ib = np.intersect1d(a[0], b[0], assume_unique=True, return_indices=True)
    return float(np.minimum(a[1][ia], b[1][ib]).sum())


class InvertedIndex:
    """word -> (slots, weights) of the keyframes holding it; arrays grow by doubling."""

    def __init__(self, num_words: int) -> None:
        self.slots: list[np.ndarray] = [np.empty(0, np.int32) for _ in range(num_words)]
        self.weights: list[np.ndarray] = [np.empty(0, np.float32) for _ in range(num_words)]
        self.size = np.zeros(num_words, dtype=np.int64)

    def add(self, slot: int, bow: tuple[np.ndarray, np.ndarray]) -> None:
        for w, x in zip(bow[0].tolist(), bow[1].tolist()):
            n = self.size[w]
            if n == len(self.slots[w]):
                cap = max(4, 2 * n)
                self.slots[w] = np.resize(self.slots[w], cap)
                self.weights[w] = np.resize(self.weights[w], cap)
            self.slots[w][n], self.weights[w][n] = slot, x
            self.size[w] = n + 1

    def remove(self, slot: int, bow: tuple[np.ndarray, np.ndarray]) -> None:
        for w in bow[0].tolist():
            n = self.size[w]
            hit = np.flatnonzero(self.slots[w][:n] == slot)
            if len(hit):  # swap with the last entry: order within a posting list is irrelevant
                i = hit[0]
                self.slots[w][i], self.weights[w][i] = self.slots[w][n - 1], self.weights[w][n - 1]
                self.size[w] = n - 1

    def scores(self, bow: tuple[np.ndarray, np.ndarray], num_slots: int) -> np.ndarray:
        """L1 score of the query against every slot, touching only the shared words' posting lists."""
        slots, mins = [], []
        for w, x in zip(bow[0].tolist(), bow[1].tolist()):
            n = self.size[w]
            if n:
                slots.append(self.slots[w][:n])
                mins.append(np.minimum(self.weights[w][:n], x))
        if not slots:
            return np.zeros(num_slots)
        return np.bincount(np.concatenate(slots), weights=np.concatenate(mins), minlength=num_slots)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.slots) + sum(a.nbytes for a in self.weights) + self.size.nbytes)
