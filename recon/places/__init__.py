"""Place recognition and geometric verification for online loop closure (ARCHITECTURE §4), without learned weights.

Per keyframe: ORB features; the camera-frame z-depth of each keypoint where the window's depth is valid
and confident. Recognition: a bag of binary words (DBoW-like) with an inverted index and tf-idf weights.
No pre-trained vocabulary exists, so it is built online: k-majority clustering (binary k-means, Hamming
distance, bitwise-majority centres) of the descriptors of the first `vocabulary_keyframes` keyframes, as
a 2-level tree, then frozen together with its idf. Until then, candidates are scored by brute-force
Hamming matching against the (few) stored keyframes.

Scores are DBoW's L1 score, s(a, b) = 1 - |a - b|_1 / 2 = sum_w min(a_w, b_w) for L1-normalised tf-idf
vectors, divided by the query's score against the previously added keyframe (DBoW's normalisation): how
much the candidate resembles the query compared with a view of the same place moments ago. That makes one
`min_score` work across textured and bland scenes.

Verification of a candidate (query q, stored m): mutual ratio-test ORB matches; an essential matrix by
RANSAC on normalised coordinates; then a Sim(3) between the two cameras' 3D points (each in its own
window's units) for the essential inliers with depth in both, by RANSAC over minimal 3-point Umeyama
samples + weighted refit, with an inlier threshold relative to depth. It is accepted when there are
enough inliers, a large enough inlier share, inliers spread over the image, a plausible scale, the
Sim(3) rotation (and, with enough baseline, its translation direction) agrees with the essential matrix,
and a small depth thumbnail of each view, moved by the Sim(3), agrees with the other's (dense check).
A verified pair is reported once a consistent second query confirms it (temporal consistency, as DBoW).

Known limit: perceptual aliasing of generic street structure (the same facade texture at the same
distance over the same road plane, ~180 m apart) can pass all of this; only the pose graph's prior (the
relative pose odometry predicts, within its drift) can tell, so the core should gate loop edges by it.

Memory is capped at `max_keyframes`: when full, the keyframe most similar to its successor in insertion
order (the least distinctive: its neighbour stands in for it) is evicted, never one of the recent ones.
A long drive is thereby thinned evenly; a car standing still loses its duplicates first.

Modules: `contracts` (settings, `Keyframe`, `LoopMatch`), `vocabulary` (binary words, inverted index),
`entry` (what a stored keyframe keeps), `verify` (geometric verification), `database` (`PlaceDatabase`)."""

from recon.places.contracts import Keyframe, LoopMatch, PlaceConfig
from recon.places.database import PlaceDatabase, PlaceStats
from recon.places.vocabulary import BinaryVocabulary, bow_score, k_majority

__all__ = [
    "BinaryVocabulary",
    "Keyframe",
    "LoopMatch",
    "PlaceConfig",
    "PlaceDatabase",
    "PlaceStats",
    "bow_score",
    "k_majority",
]
