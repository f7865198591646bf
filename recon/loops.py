"""Online loop closure (ARCHITECTURE §4): keyframes into the place database, verified revisits checked against
the chain of joins, then a loop edge in the pose graph and a re-optimisation."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from recon.align import WindowFit, median_depth, registered_frames
from recon.places import Keyframe, LoopMatch, PlaceConfig, PlaceDatabase
from recon.posegraph import EdgeNoise, PoseGraph
from recon.stage_clock import StageClock
from recon.types import Sim3, WindowPrediction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopGate:
    """A verified loop edge must also agree with where the chain of joins puts the two windows, within the
    drift the chain can have accumulated: look-alike streets pass every single-view check (same facades at
    the same distance), but not this one. Within the gate a loop is trusted (no robust kernel): a correct
    loop after real drift is far outside any kernel tuned to the edge's own small residual."""

    max_drift_rel: float = 0.1  # translation disagreement / path length between the two windows
    max_rotation_deg: float = 30.0
    max_scale_ratio: float = 2.0


class LoopCloser:
    """The place database of a run and the loops it closed. `keyframe_every`: new frames between keyframes."""

    def __init__(self, places: PlaceConfig, gate: LoopGate, keyframe_every: int) -> None:
        self.places = PlaceDatabase(places)
        self.gate, self.keyframe_every = gate, keyframe_every
        self.loops: list[dict[str, Any]] = []
        self.rejected: deque[dict[str, Any]] = deque(maxlen=200)  # the latest: an endless stream keeps no full log
        self._pairs: set[tuple[int, int]] = set()
        self._keyframes = 0

    def close(
        self,
        k: int,
        pred: WindowPrediction,
        fit: WindowFit,
        window_from_cam: np.ndarray,
        colors: np.ndarray,
        shared: int,
        graph: PoseGraph,
        breaks: set[int],
        detached_from: int | None,
        clock: StageClock,
    ) -> tuple[dict[str, Any] | None, int | None]:
        """Every `keyframe_every`-th new frame of window k goes into the place database (a revisit is then
        never more than a few metres from a keyframe); the best verified loop that agrees with the chain
        becomes a graph edge and the graph is re-optimised. Keyframes of windows from `detached_from` on (after
        a break) may match any earlier window. -> (the loop closed or None, the windows still detached)."""
        with clock("places"):
            reg = registered_frames(pred)
            every = self.keyframe_every
            matches: list[LoopMatch] = []
            for j in range(shared + every // 2, len(pred), every):
                if not reg[j]:
                    continue
                kf = Keyframe(
                    keyframe_id=self._keyframes,
                    window_id=k,
                    image_gray=cv2.cvtColor(np.ascontiguousarray(colors[j]), cv2.COLOR_RGB2GRAY),
                    K=pred.K[j].double().cpu().numpy(),
                    depth=fit.local_depth(pred, j).float().cpu().numpy(),
                    conf=pred.points_conf[j].float().cpu().numpy(),
                    window_from_cam=window_from_cam[j],
                )
                self._keyframes += 1
                matches += self.places.add_and_query(kf, before_window=detached_from)
        for m in sorted(matches, key=lambda m: -m.inliers):
            pair = (m.match_window, m.query_window)
            if pair in self._pairs:
                continue
            if (reason := self._disagrees(graph, breaks, *pair, m.match_window_from_query_window)) is not None:
                self.rejected.append({"window": m.query_window, "match_window": m.match_window, "reason": reason})
                log.info("loop candidate window %d -> %d rejected: %s", m.query_window, m.match_window, reason)
                continue
            with clock("graph"):
                # The loop's uncertainty: its 3D residual (relative to depth) spread over its inliers.
                sigma = max(m.rmse_rel / np.sqrt(m.inliers), 0.002)
                noise = EdgeNoise(
                    rot_rad=max(sigma, np.radians(0.1)),
                    trans=sigma * median_depth(fit.local_depth(pred)) * m.match_window_from_query_window.s,
                    log_scale=max(sigma, 0.005),
                )
                graph.add_edge(*pair, m.match_window_from_query_window, noise, loop=True)
                graph.optimize()
            self._pairs.add(pair)
            if detached_from is not None and pair[0] < detached_from <= pair[1]:
                detached_from = None  # relocalised: the windows since the break hang on the map again
            info = {
                "window": m.query_window,
                "match_window": m.match_window,
                "inliers": m.inliers,
                "rmse_rel": m.rmse_rel,
                "score": m.score,
            }
            self.loops.append(info)
            log.info("loop closed: window %d -> window %d (%d inliers)", m.query_window, m.match_window, m.inliers)
            return info, detached_from
        return None, detached_from

    def summary(self) -> dict[str, Any]:
        """What the place database did: queries, candidates verified, why they were rejected, loops the
        drift gate refused (the latest)."""
        st = self.places.stats
        return {
            "keyframes": len(self.places),
            "queries": st.queries,
            "candidates": st.candidates,
            "verified": st.verified,
            "rejected": dict(st.rejected),
            "gate_rejected": list(self.rejected),
        }

    def _disagrees(self, graph: PoseGraph, breaks: set[int], a: int, b: int, a_from_b: Sim3) -> str | None:
        """Why the loop edge a_from_b disagrees with the graph's a^-1 b beyond the drift the chain between
        them can have (None: it agrees)."""
        if any(a < w <= b for w in breaks):
            return None  # the chain crosses a break: it says nothing about where b lies from a
        gate = self.gate
        W = {w: graph.estimate(w) for w in range(a, b + 1)}
        predicted = W[a].inverse() @ W[b]
        path = sum(float(np.linalg.norm(W[w + 1].t - W[w].t)) for w in range(a, b))
        rot = float(np.degrees(np.arccos(np.clip((np.trace(predicted.R.T @ a_from_b.R) - 1) / 2, -1, 1))))
        drift = float(np.linalg.norm(predicted.t - a_from_b.t)) * W[a].s
        ratio = max(predicted.s / a_from_b.s, a_from_b.s / predicted.s)
        if rot > gate.max_rotation_deg:
            return f"rotation {rot:.1f} deg from the chain's"
        if ratio > gate.max_scale_ratio:
            return f"scale x{ratio:.2f} from the chain's"
        if drift > gate.max_drift_rel * path:
            return f"{drift:.3g} from the chain's position over a path of {path:.3g}"
        return None
