"""The keyframe database for online loop closure (see recon.places): query then add per keyframe, candidates
by bag-of-words score, verification, temporal consistency, and eviction of the least distinctive keyframe."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from recon.places.contracts import Keyframe, LoopMatch, PlaceConfig
from recon.places.entry import DESC_BYTES, Entry, confidence_floor, keypoint_depth, thumbnail
from recon.places.verify import keyframe_matches, verify
from recon.places.vocabulary import BinaryVocabulary, InvertedIndex, bow_score


@dataclass
class _Pending:
    query_seq: int
    match_seq: int
    match: LoopMatch
    reported: bool = False


@dataclass
class PlaceStats:
    """Counters for reports: queries, candidates verified, verified loops, rejections by failed check,
    and the time spent (s) per stage."""

    queries: int = 0
    candidates: int = 0
    verified: int = 0  # passed geometric verification
    confirmed: int = 0  # reported: also temporally consistent
    evicted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def tick(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - since
        return now


class PlaceDatabase:
    """Keyframe database for online loop closure: `add_and_query` per keyframe (query, then add)."""

    def __init__(self, config: PlaceConfig = PlaceConfig()) -> None:
        self.config = config
        self.stats = PlaceStats()
        self.vocabulary: BinaryVocabulary | None = None
        self._index: InvertedIndex | None = None
        self._slots: list[Entry | None] = [None] * (config.max_keyframes + 1)
        self._order: list[int] = []  # slots in insertion order
        self._rng = np.random.default_rng(config.seed)
        self._orb = cv2.ORB.create(nfeatures=config.orb_features)
        self._pending: list[_Pending] = []  # verified, not yet confirmed by a consistent later query

    def __len__(self) -> int:
        return len(self._order)

    def _entry(self, slot: int) -> Entry:
        """The keyframe in `slot`: every slot in `_order` holds one."""
        entry = self._slots[slot]
        assert entry is not None, f"slot {slot} is empty"
        return entry

    @property
    def nbytes(self) -> int:
        """Bytes of the numpy payloads held: keyframes, inverted index, vocabulary (object overhead aside)."""
        total = sum(self._entry(s).nbytes for s in self._order)
        if self._index is not None:
            total += self._index.nbytes
        if self.vocabulary is not None:
            total += self.vocabulary.nbytes
        return int(total)

    @property
    def keyframe_ids(self) -> list[int]:
        """Stored keyframe ids in insertion order."""
        return [self._entry(s).keyframe_id for s in self._order]

    def add_and_query(self, kf: Keyframe, before_window: int | None = None) -> list[LoopMatch]:
        """Query the database with `kf` (recent keyframes excluded), then add it. Returns the verified loops,
        best (most inliers) first: usually none or one. `before_window`: relocalise instead, against every
        keyframe of the windows before it, recent ones included (the stream broke there: no join ties the
        query to them)."""
        cfg, clock = self.config, time.perf_counter()
        self.stats.queries += 1
        entry = self._extract(kf)
        clock = self.stats.tick("features", clock)
        eligible = (
            self._eligible(entry)
            if before_window is None
            else [s for s in self._order if self._entry(s).window_id < before_window]
        )
        scores, prev_score = self._score(entry, eligible)
        clock = self.stats.tick("score", clock)
        verified: list[_Pending] = []
        for slot, score in self._candidates(eligible, scores, prev_score):
            self.stats.candidates += 1
            verdict = verify(entry, self._entry(slot), score, cfg, self._rng)
            if verdict.match is not None:
                verified.append(_Pending(entry.seq, self._entry(slot).seq, verdict.match))
            else:
                self.stats.rejected[verdict.reason] = self.stats.rejected.get(verdict.reason, 0) + 1
        self.stats.verified += len(verified)
        # A relocalisation takes a single verified view: after a break nothing else can place the query.
        matches = self._confirm(entry.seq, verified) if before_window is None else [v.match for v in verified]
        self.stats.confirmed += len(matches)
        clock = self.stats.tick("verify", clock)
        self._add(entry, prev_score)
        self.stats.tick("add", clock)
        return sorted(matches, key=lambda m: (-m.inliers, m.rmse_rel))

    def _confirm(self, seq: int, verified: list[_Pending]) -> list[LoopMatch]:
        """Temporal consistency (as DBoW / ORB-SLAM): a verified loop is reported once `min_consistent`
        queries within `consistency_gap` of each other matched keyframes within `consistency_distance`
        of each other. Views of perceptually aliased places (identical facades, symmetric corners) verify
        one at a time; a true revisit keeps matching consecutive keyframes. Once confirmed, the earlier,
        consistent matches are returned as well (each names its own query keyframe and window)."""
        cfg = self.config
        self._pending = [p for p in self._pending if seq - p.query_seq <= cfg.consistency_gap]
        out: list[LoopMatch] = []
        for v in verified:
            support = [p for p in self._pending if abs(p.match_seq - v.match_seq) <= cfg.consistency_distance]
            if len({p.query_seq for p in support}) + 1 >= cfg.min_consistent:
                v.reported = True
                out.append(v.match)
                for p in support:
                    if not p.reported:
                        p.reported = True
                        out.append(p.match)
        self._pending += verified
        return out

    # features ------------------------------------------------------------------------------------------
    def _extract(self, kf: Keyframe) -> Entry:
        kps, desc = self._orb.detectAndCompute(kf.image_gray, None)
        if desc is None or len(kps) == 0:
            uv, desc = np.zeros((0, 2), np.float32), np.zeros((0, DESC_BYTES), np.uint8)
        else:
            uv = np.array([k.pt for k in kps], dtype=np.float32)
        conf_min = confidence_floor(kf, self.config)
        entry = Entry(
            int(kf.keyframe_id),
            int(kf.window_id),
            self.stats.queries,
            np.asarray(kf.K, np.float64).copy(),
            np.asarray(kf.window_from_cam, np.float64).copy(),
            uv,
            keypoint_depth(kf, uv, conf_min, self.config),
            desc,
            *thumbnail(kf, conf_min, self.config.thumbnail_width),
        )
        if self.vocabulary is not None and len(desc):
            entry.bow, entry.node = self.vocabulary.bow(desc)
        return entry

    # scoring -------------------------------------------------------------------------------------------
    def _similarity(self, a: Entry, b: Entry) -> float:
        """BoW L1 score once the vocabulary exists; before, the share of a's features with a mutual match."""
        if a.bow is not None and b.bow is not None:
            return bow_score(a.bow, b.bow)
        return len(keyframe_matches(a, b, self.config.ratio)) / max(len(a.desc), 1)

    def _score(self, q: Entry, eligible: list[int]) -> tuple[np.ndarray, float]:
        """Raw scores of q against every slot (NaN where not computed) and against the last added keyframe."""
        scores = np.full(len(self._slots), np.nan)
        if not self._order:
            return scores, 0.0
        if self._index is not None and q.bow is not None:
            scores[:] = self._index.scores(q.bow, len(self._slots))
        else:  # no vocabulary yet: brute force over the few eligible keyframes
            for slot in eligible:
                scores[slot] = self._similarity(q, self._entry(slot))
        return scores, self._similarity(q, self._entry(self._order[-1]))

    def _eligible(self, q: Entry) -> list[int]:
        cfg = self.config
        old = self._order[: max(len(self._order) - cfg.exclude_recent, 0)]
        return [s for s in old if q.window_id - self._entry(s).window_id >= cfg.min_window_gap]

    def _candidates(self, eligible_slots: list[int], scores: np.ndarray, prev_score: float) -> list[tuple[int, float]]:
        """Up to top_k eligible slots whose score, normalised by the previous keyframe's, reaches min_score,
        best first, at most one per run of `candidate_separation` neighbouring keyframes (like DBoW's
        islands: the budget goes to distinct places, not to three views of one). A floor on the
        normaliser keeps a bland previous view from inflating every score."""
        cfg = self.config
        eligible = np.array(eligible_slots, dtype=np.int64)
        if len(eligible) == 0:
            return []
        norm = scores[eligible] / max(prev_score, 0.01)
        position = {slot: i for i, slot in enumerate(self._order)}
        chosen: list[tuple[int, float]] = []
        for i in np.argsort(-np.nan_to_num(norm, nan=-1.0), kind="stable"):
            if len(chosen) == cfg.top_k or not norm[i] >= cfg.min_score:
                break
            slot = int(eligible[i])
            if all(abs(position[slot] - position[c]) > cfg.candidate_separation for c, _ in chosen):
                chosen.append((slot, float(norm[i])))
        return chosen

    # storage -------------------------------------------------------------------------------------------
    def _add(self, entry: Entry, prev_score: float) -> None:
        if self._order:
            self._entry(self._order[-1]).redundancy = prev_score
        slot = self._slots.index(None)
        self._slots[slot] = entry
        self._order.append(slot)
        if self._index is not None and entry.bow is not None:
            self._index.add(slot, entry.bow)
        if self.vocabulary is None and len(self._order) >= self.config.vocabulary_keyframes:
            self._build_vocabulary()
        while len(self._order) > self.config.max_keyframes:
            self._evict()

    def _build_vocabulary(self) -> None:
        cfg, clock = self.config, time.perf_counter()
        entries = [self._entry(s) for s in self._order]
        descs = [e.desc for e in entries if len(e.desc)]
        if sum(len(d) for d in descs) < cfg.vocabulary_shape[0] * 4:
            return  # too few features to cluster yet (a blank start): try again with the next keyframe
        self.vocabulary = BinaryVocabulary.train(descs, cfg.vocabulary_shape, cfg.vocabulary_iterations, cfg.seed)
        self._index = InvertedIndex(len(self.vocabulary.idf))
        for slot, e in zip(self._order, entries):
            if len(e.desc):
                e.bow, e.node = self.vocabulary.bow(e.desc)
                self._index.add(slot, e.bow)
        for a, b in zip(entries[:-1], entries[1:]):  # redundancies in the new score's units
            a.redundancy = self._similarity(a, b)
        self.stats.tick("vocabulary", clock)

    def _evict(self) -> None:
        """Drop the least distinctive old keyframe: the one most similar to its successor."""
        candidates = self._order[: len(self._order) - self.config.exclude_recent - 1]
        pos = int(np.argmax([self._entry(s).redundancy for s in candidates]))
        slot = self._order.pop(pos)
        gone = self._entry(slot)
        self._slots[slot] = None
        if self._index is not None and gone is not None and gone.bow is not None:
            self._index.remove(slot, gone.bow)
        if pos > 0:  # the predecessor's successor changed
            before, after = self._entry(self._order[pos - 1]), self._entry(self._order[pos])
            before.redundancy = self._similarity(before, after)
        self.stats.evicted += 1
