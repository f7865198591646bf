"""Online Sim(3) pose graph over windows (ARCHITECTURE §4), solved incrementally by GTSAM's iSAM2.

Nodes are windows; a node's value is `world_from_window`. Node values live in GTSAM as `Similarity3`;
every join between windows is a `BetweenFactorSimilarity3` weighted by the uncertainty of its fit, loop
edges additionally get a robust kernel. The first node added is the world and is pinned (pose and scale).

GTSAM facts this module relies on (checked in tests/test_posegraph.py):
- `Similarity3(R, t_g, s)` is the matrix [[R, t_g], [0, 1/s]], i.e. it maps x -> s (R x + t_g). Ours maps
  x -> s R x + t, so t = s * t_g.
- Tangent vector order: [rotation (3), translation (3), log-scale (1)], perturbing on the right
  (`retract(xi) = X * Expmap(xi)`).
- `BetweenFactor(a, b, m)` measures `X_a^-1 X_b`; with X = world_from_node that is `a_from_b`. Its error is
  `Logmap(m^-1 X_a^-1 X_b)`, a perturbation expressed in node b's frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gtsam
import numpy as np

from recon.types import Sim3

_PRIOR_SIGMA = 1e-6  # the world node: tight enough to fix the gauge, loose enough for a well-conditioned Cholesky


def sim3_to_gtsam(target_from_source: Sim3) -> gtsam.Similarity3:
    return gtsam.Similarity3(
        gtsam.Rot3(target_from_source.R), target_from_source.t / target_from_source.s, target_from_source.s
    )


def sim3_from_gtsam(g: gtsam.Similarity3) -> Sim3:
    s = float(g.scale())
    return Sim3(s, np.asarray(g.rotation().matrix()), s * np.asarray(g.translation()))


@dataclass(frozen=True)
class EdgeNoise:
    """1-sigma errors of a relative Sim(3) `a_from_b`, from its fit."""

    rot_rad: float  # rotation error
    trans: float  # translation error, in units of the edge's target node (a) frame
    log_scale: float  # error of log(s)

    def __post_init__(self) -> None:
        for name in ("rot_rad", "trans", "log_scale"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"EdgeNoise.{name} must be finite and > 0, got {v}")


@dataclass(frozen=True)
class PoseGraphConfig:
    # A false loop that passed verification must not wreck the map. Solved by IRLS from the odometry
    # initialisation, Cauchy accepts a loop whose distance under the graph's and the edge's uncertainty together
    # is below roughly 2-3 widths (so edge sigmas must be honest), and a loop r metres off pulls the map by only
    # ~ width^2 * sigma_graph^2 / r. Redescending kernels (Geman-McClure) also rejected correct loops after
    # drift in our tests; width 2 failed to close a loop with 40% scale drift, 3 closed one with 50%.
    loop_kernel: str = "cauchy"  # "cauchy", "huber" or "none"
    loop_kernel_width: float = 3.0  # whitened units
    relinearize_threshold: float = 1e-3  # tangent units; below this a variable keeps its linearisation point
    loop_iterations: int = 10  # extra iSAM2 updates after a loop edge, so the (nonlinear) correction converges

    def __post_init__(self) -> None:
        if self.loop_kernel not in ("cauchy", "huber", "none"):
            raise ValueError(f"unknown loop kernel {self.loop_kernel!r}")
        if not (self.loop_kernel_width > 0 and self.relinearize_threshold > 0 and self.loop_iterations >= 0):
            raise ValueError(f"bad PoseGraphConfig {self}")


class PoseGraph:
    """Incremental Sim(3) pose graph. Add nodes and edges, then `optimize()` once per new window."""

    def __init__(self, config: PoseGraphConfig = PoseGraphConfig()) -> None:
        self.config = config
        params = gtsam.ISAM2Params()
        params.setRelinearizeThreshold(config.relinearize_threshold)
        params.relinearizeSkip = 1  # check every update: a loop correction must propagate without waiting
        # QR, not Cholesky: along a chain the newest window's rotation and scale uncertainty, times its lever
        # arm to the world, outgrows its joins' translation sigmas, and Cholesky (which squares the condition
        # number) declared a plain chain of ~600 windows at the join floors indeterminate (~9k frames).
        params.setFactorization("QR")
        self._isam = gtsam.ISAM2(params)
        self._new_factors = gtsam.NonlinearFactorGraph()
        self._new_values = gtsam.Values()
        self._nodes: set[int] = set()
        self._world: int | None = None  # the first node, pinned by a prior
        self._pending: set[int] = set()  # added but not yet handed to iSAM2
        self._seeded: set[int] = set()  # pending nodes whose initial value already came from an edge
        self._constrained: set[int] = set()  # nodes with at least one factor (iSAM2 cannot solve a loose one)
        self._estimate = gtsam.Values()
        # Building a validated Sim3 costs ~0.1 ms; most nodes do not move in an update, so keep the last one
        # per node with the GTSAM matrix it came from (comparing matrices is ~50x cheaper).
        self._cache: dict[int, tuple[np.ndarray, Sim3]] = {}
        self._loop_pending = False
        self._num_loop_edges = 0

    @staticmethod
    def _key(node: int) -> int:
        return gtsam.symbol("w", node)

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def num_loop_edges(self) -> int:
        return self._num_loop_edges

    def add_node(self, node: int, world_from_node_guess: Sim3) -> None:
        if node < 0 or node in self._nodes:
            raise ValueError(f"node {node} is negative or already in the graph")
        key = self._key(node)
        value = sim3_to_gtsam(world_from_node_guess)
        if self._world is None:  # the world: fix the gauge (7 dof, including scale)
            self._world = node
            noise = gtsam.noiseModel.Isotropic.Sigma(7, _PRIOR_SIGMA)
            self._new_factors.add(gtsam.PriorFactorSimilarity3(key, value, noise))
            self._constrained.add(node)
        self._new_values.insert(key, value)
        self._nodes.add(node)
        self._pending.add(node)

    def add_edge(self, a: int, b: int, a_from_b: Sim3, noise: EdgeNoise, loop: bool = False) -> None:
        if a == b or a not in self._nodes or b not in self._nodes:
            raise ValueError(f"edge {a}->{b}: both nodes must be in the graph and distinct")
        # GTSAM's error is a perturbation in b's frame (see module doc): a translation sigma in a's units
        # shrinks by the edge's scale. Rotation and log-scale sigmas do not depend on the frame.
        sigmas = np.array([noise.rot_rad] * 3 + [noise.trans / a_from_b.s] * 3 + [noise.log_scale])
        model: gtsam.noiseModel.Base = gtsam.noiseModel.Diagonal.Sigmas(sigmas)
        if loop:
            model = self._robust(model)
            self._loop_pending = True
            self._num_loop_edges += 1
        else:
            self._seed(a, b, a_from_b)
        measured = sim3_to_gtsam(a_from_b)
        self._new_factors.add(gtsam.BetweenFactorSimilarity3(self._key(a), self._key(b), measured, model))
        self._constrained.update((a, b))

    def _robust(self, base: gtsam.noiseModel.Base) -> gtsam.noiseModel.Base:
        kind, k = self.config.loop_kernel, self.config.loop_kernel_width
        if kind == "none":
            return base
        estimators = {"cauchy": gtsam.noiseModel.mEstimator.Cauchy, "huber": gtsam.noiseModel.mEstimator.Huber}
        return gtsam.noiseModel.Robust.Create(estimators[kind].Create(k), base)  # type: ignore[attr-defined]

    def _seed(self, a: int, b: int, a_from_b: Sim3) -> None:
        """A new node's linearisation point is its neighbour's current estimate composed with the first sequential
        edge to it, not the caller's guess: a chain then starts at zero error (so it is exact), and a window
        arriving after a loop correction starts on the corrected map instead of the drifted one."""
        if not self._placed(b) and self._placed(a):
            self._set_initial(b, self.estimate(a) @ a_from_b)
        elif not self._placed(a) and self._placed(b):
            self._set_initial(a, self.estimate(b) @ a_from_b.inverse())

    def _placed(self, node: int) -> bool:
        """Whether the node's initial value is trustworthy: optimised, seeded by an edge, or the world itself."""
        return node not in self._pending or node in self._seeded or node == self._world

    def _set_initial(self, node: int, world_from_node: Sim3) -> None:
        self._new_values.update(self._key(node), sim3_to_gtsam(world_from_node))
        self._seeded.add(node)

    def optimize(self) -> None:
        """One incremental iSAM2 update with everything added since the last call. After a loop edge, a few more
        updates (each relinearises what moved and refreshes the robust weights) until nothing moves past the
        relinearisation threshold: one Gauss-Newton step does not close a nonlinear Sim(3) loop."""
        if self._new_factors.size() == 0 and self._new_values.size() == 0:
            return
        loose = self._pending - self._constrained
        if loose:
            raise ValueError(f"nodes {sorted(loose)} have no edge yet; add one before optimize()")
        self._isam.update(self._new_factors, self._new_values)
        if self._loop_pending:
            for _ in range(self.config.loop_iterations):
                if self._isam.update().getVariablesRelinearized() == 0:  # every step is below the threshold
                    break
        self._estimate = self._isam.calculateEstimate()
        self._new_factors = gtsam.NonlinearFactorGraph()
        self._new_values = gtsam.Values()
        self._pending.clear()
        self._seeded.clear()
        self._loop_pending = False

    def estimate(self, node: int) -> Sim3:
        """world_from_node: the optimised value, or the initial value if `optimize()` has not seen the node yet."""
        key = self._key(node)
        if node in self._pending:
            return sim3_from_gtsam(self._new_values.atSimilarity3(key))
        if node not in self._nodes:
            raise KeyError(node)
        g = self._estimate.atSimilarity3(key)
        M = g.matrix()
        cached = self._cache.get(node)
        if cached is not None and np.array_equal(cached[0], M):
            return cached[1]
        world_from_node = sim3_from_gtsam(g)
        self._cache[node] = (M, world_from_node)
        return world_from_node

    def estimates(self) -> dict[int, Sim3]:
        return {node: self.estimate(node) for node in sorted(self._nodes)}

    def marginal_log_scale_sigma(self, node: int) -> float:
        """1-sigma of log(scale) of world_from_node, relative to the world (diagnostics: scale drift since node 0)."""
        if node in self._pending or node not in self._nodes:
            raise KeyError(f"node {node} has not been optimised yet")
        cov = self._isam.marginalCovariance(self._key(node))
        return float(math.sqrt(max(cov[6, 6], 0.0)))
