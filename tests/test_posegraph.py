"""The online Sim(3) pose graph (recon/posegraph.py) and the GTSAM conventions it relies on."""

from __future__ import annotations

import math

import gtsam
import numpy as np
import pytest

from recon.posegraph import EdgeNoise, PoseGraph, PoseGraphConfig, sim3_from_gtsam, sim3_to_gtsam
from recon.types import Sim3


def _rot(axis: np.ndarray, angle: float) -> np.ndarray:
    return np.asarray(gtsam.Rot3.Rodrigues(np.asarray(axis, dtype=float) / np.linalg.norm(axis) * angle).matrix())


def _rz(yaw: float) -> np.ndarray:
    return _rot(np.array([0.0, 0.0, 1.0]), yaw)


def _random_sim3(rng: np.random.Generator, log_s: float = 0.4, angle: float = math.pi, t: float = 3.0) -> Sim3:
    return Sim3(math.exp(rng.normal(0, log_s)), _rot(rng.normal(size=3), rng.uniform(0, angle)), rng.normal(0, t, 3))


def _close(a: Sim3, b: Sim3, atol: float) -> bool:
    return bool(np.allclose(a.matrix(), b.matrix(), atol=atol))


LOOSE = EdgeNoise(rot_rad=0.01, trans=0.05, log_scale=0.02)


def test_conversion_round_trip_and_action() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = _random_sim3(rng), _random_sim3(rng)
        ga, gb = sim3_to_gtsam(a), sim3_to_gtsam(b)
        assert _close(sim3_from_gtsam(ga), a, 1e-12)
        x = rng.normal(size=3)
        # GTSAM's Similarity3 acts as x -> s (R x + t_g): the conversion must make it act exactly like ours
        np.testing.assert_allclose(ga.transformFrom(x), a.apply(x), atol=1e-12)
        assert ga.scale() == pytest.approx(a.s)
        assert _close(sim3_from_gtsam(ga.compose(gb)), a @ b, 1e-10)
        assert _close(sim3_from_gtsam(ga.inverse()), a.inverse(), 1e-10)


def test_tangent_order_is_rotation_translation_logscale() -> None:
    g = sim3_to_gtsam(Sim3(2.0, _rz(0.3), np.array([1.0, 2.0, 3.0])))
    assert sim3_from_gtsam(g.retract(np.array([0, 0, 0, 0, 0, 0, 0.1]))).s == pytest.approx(2.0 * math.exp(0.1))
    xi = gtsam.Similarity3.Logmap(sim3_to_gtsam(Sim3(1.0, _rz(0.2), np.zeros(3))))
    np.testing.assert_allclose(xi, [0, 0, 0.2, 0, 0, 0, 0], atol=1e-12)


def test_between_factor_measures_a_from_b() -> None:
    rng = np.random.default_rng(1)
    world_from_a, a_from_b = _random_sim3(rng), _random_sim3(rng)
    values = gtsam.Values()
    values.insert(0, sim3_to_gtsam(world_from_a))
    values.insert(1, sim3_to_gtsam(world_from_a @ a_from_b))
    noise = gtsam.noiseModel.Isotropic.Sigma(7, 1.0)
    assert gtsam.BetweenFactorSimilarity3(0, 1, sim3_to_gtsam(a_from_b), noise).error(values) < 1e-20
    assert gtsam.BetweenFactorSimilarity3(1, 0, sim3_to_gtsam(a_from_b), noise).error(values) > 1e-2

    # Through the graph, with the world node away from identity and an edge given in the reverse direction
    graph = PoseGraph()
    graph.add_node(0, world_from_a)
    graph.add_node(1, Sim3())
    graph.add_node(2, Sim3())
    graph.add_edge(0, 1, a_from_b, LOOSE)
    c_from_b = _random_sim3(rng)
    graph.add_edge(2, 1, c_from_b, LOOSE)
    graph.optimize()
    assert _close(graph.estimate(1), world_from_a @ a_from_b, 1e-9)
    assert _close(graph.estimate(2), world_from_a @ a_from_b @ c_from_b.inverse(), 1e-9)
    assert _close(graph.estimate(0), world_from_a, 1e-9)


@pytest.mark.parametrize("optimize_each", [True, False])
def test_chain_equals_composition_of_edges(optimize_each: bool) -> None:
    rng = np.random.default_rng(2)
    graph = PoseGraph()
    graph.add_node(0, Sim3())
    truth = [Sim3()]
    for i in range(1, 60):
        edge = _random_sim3(rng, log_s=0.1, angle=1.0, t=1.0)  # windows of one run: scales stay within ~e^+-1
        graph.add_node(i, _random_sim3(rng))  # a bad guess must not matter
        graph.add_edge(i - 1, i, edge, LOOSE)
        truth.append(truth[-1] @ edge)
        if optimize_each:
            graph.optimize()
    graph.optimize()
    assert len(graph) == 60 and graph.num_loop_edges == 0
    for i, world_from_i in graph.estimates().items():
        assert _close(world_from_i, truth[i], 1e-9 * max(1.0, float(np.abs(truth[i].matrix()).max())))


def test_a_long_chain_of_drives_stays_solvable() -> None:
    # 1 m steps, tight translations, loose rotation and scale: the newest node's lever arm to the world soon
    # dwarfs its joins' translation sigmas. Cholesky declared this system indeterminate after ~120 windows
    # (at the join floors after ~600: a 9k-frame drive); the graph must keep going, and stay exact.
    rng = np.random.default_rng(3)
    graph = PoseGraph(PoseGraphConfig(loop_kernel="none"))
    graph.add_node(0, Sim3())
    truth = [Sim3()]
    for i in range(1, 400):
        edge = Sim3(math.exp(rng.normal(0, 0.01)), _rot(rng.normal(size=3), 0.01), np.array([0.0, 0.0, 1.0]))
        graph.add_node(i, truth[-1] @ edge)
        graph.add_edge(i - 1, i, edge, EdgeNoise(rot_rad=0.003, trans=0.01, log_scale=0.1))
        truth.append(truth[-1] @ edge)
        graph.optimize()
    assert _close(graph.estimate(399), truth[399], 1e-6 * float(np.abs(truth[399].matrix()).max()))


def test_translation_sigma_is_in_units_of_the_target_node() -> None:
    """A displacement of one sigma, measured in node a's frame, must cost exactly one whitened unit, whatever
    the edge's scale (GTSAM measures the error in node b's frame, `scale` times smaller units)."""
    rng = np.random.default_rng(4)
    world_from_a, a_from_b = _random_sim3(rng), Sim3(5.0, _rz(0.7), np.array([1.0, 2.0, 0.5]))
    graph = PoseGraph()
    graph.add_node(0, world_from_a)
    graph.add_node(1, Sim3())
    graph.add_edge(0, 1, a_from_b, EdgeNoise(rot_rad=0.01, trans=0.1, log_scale=0.01))
    factor = graph._new_factors.at(1)  # [prior, between]
    values = gtsam.Values()
    values.insert(PoseGraph._key(0), sim3_to_gtsam(world_from_a))
    shifted = Sim3(1.0, np.eye(3), 0.1 * np.array([0.6, 0.0, 0.8])) @ a_from_b  # 0.1 along a unit axis of a
    values.insert(PoseGraph._key(1), sim3_to_gtsam(world_from_a @ shifted))
    assert factor.error(values) == pytest.approx(0.5, rel=1e-9)  # 0.5 * whitened_norm^2


def _two_node_conflict(noise_1: EdgeNoise, edge_1: Sim3, noise_2: EdgeNoise, edge_2: Sim3) -> Sim3:
    graph = PoseGraph()
    graph.add_node(0, Sim3())
    graph.add_node(1, Sim3())
    graph.add_edge(0, 1, edge_1, noise_1)
    graph.add_edge(0, 1, edge_2, noise_2)
    graph.optimize()
    for _ in range(5):  # two edges on one pair are nonlinear in the conflict: let it converge
        graph._isam.update()
    return sim3_from_gtsam(graph._isam.calculateEstimate().atSimilarity3(PoseGraph._key(1)))


def test_sigmas_reach_the_right_tangent_components() -> None:
    """Each edge is tight in one component only and must win that one. Fails if the sigma vector's order is wrong."""
    tight, loose = 1e-3, 1.0
    scale_edge = Sim3(1.0, np.eye(3), np.array([1.0, 0.0, 0.0]))
    other_edge = Sim3(1.5, _rz(0.5), np.array([1.0, 0.5, 0.0]))
    est = _two_node_conflict(
        EdgeNoise(rot_rad=loose, trans=loose, log_scale=tight), scale_edge,
        EdgeNoise(rot_rad=tight, trans=tight, log_scale=loose), other_edge,
    )  # fmt: skip
    assert est.s == pytest.approx(1.0, abs=0.01)
    assert np.allclose(est.R, _rz(0.5), atol=0.01)
    assert np.allclose(est.t, [1.0, 0.5, 0.0], atol=0.02)

    trans_edge = Sim3(1.5, _rz(0.5), np.array([2.0, 0.0, 0.0]))
    est = _two_node_conflict(
        EdgeNoise(rot_rad=loose, trans=tight, log_scale=loose), trans_edge,
        EdgeNoise(rot_rad=tight, trans=loose, log_scale=tight), other_edge,
    )  # fmt: skip
    assert est.s == pytest.approx(1.5, abs=0.01)
    assert np.allclose(est.t, [2.0, 0.0, 0.0], atol=0.02)


def _circle(n: int = 40, radius: float = 10.0) -> list[Sim3]:
    """Ground truth world_from_node around a circle; each window has its own (arbitrary) scale."""
    out = []
    for i in range(n):
        th = 2 * math.pi * i / n
        centre = radius * np.array([math.cos(th), math.sin(th), 0.0])
        out.append(Sim3(math.exp(0.2 * math.sin(3 * th)), _rz(th + math.pi / 2), centre))
    out[0] = Sim3()  # node 0 is the world
    return out


def _drifting_edges(truth: list[Sim3]) -> list[Sim3]:
    """Sequential edges that accumulate +20% scale and +4 degrees of yaw over the loop, plus small noise."""
    rng = np.random.default_rng(3)
    n = len(truth)
    ds, dyaw = math.log(1.2) / (n - 1), math.radians(4.0) / (n - 1)
    edges = []
    for i in range(1, n):
        R_err = _rz(dyaw) @ _rot(rng.normal(size=3), rng.normal(0, 0.003))
        err = Sim3(math.exp(ds + rng.normal(0, 0.003)), R_err, rng.normal(0, 0.01, 3))
        edges.append(truth[i - 1].inverse() @ truth[i] @ err)
    return edges


def _loop_graph(truth: list[Sim3], loop_edge: Sim3 | None, config: PoseGraphConfig = PoseGraphConfig()) -> PoseGraph:  # noqa: B008 - frozen
    graph = PoseGraph(config)
    graph.add_node(0, Sim3())
    for i, edge in enumerate(_drifting_edges(truth), start=1):
        graph.add_node(i, Sim3())
        graph.add_edge(i - 1, i, edge, LOOSE)
        graph.optimize()
    if loop_edge is not None:
        graph.add_edge(len(truth) - 1, 0, loop_edge, EdgeNoise(rot_rad=0.002, trans=0.01, log_scale=0.002), loop=True)
        graph.optimize()
    return graph


def _pose_error(est: Sim3, true: Sim3) -> float:
    return float(np.linalg.norm(est.t - true.t) + abs(math.log(est.s / true.s)) + np.linalg.norm(est.R - true.R))


def test_loop_corrects_rotation_translation_and_scale_drift() -> None:
    truth = _circle()
    last = len(truth) - 1
    drifted = _loop_graph(truth, None)
    graph = _loop_graph(truth, truth[last].inverse() @ truth[0])  # an accurate loop edge, under the default kernel
    assert graph.num_loop_edges == 1 and drifted.num_loop_edges == 0

    before, after = _pose_error(drifted.estimate(last), truth[last]), _pose_error(graph.estimate(last), truth[last])
    assert before > 1.0  # the drift is real
    assert after * 5 <= before, (before, after)
    scale_err_before = abs(math.log(drifted.estimate(last).s / truth[last].s))
    scale_err_after = abs(math.log(graph.estimate(last).s / truth[last].s))
    assert scale_err_before > 0.15 and scale_err_after * 5 <= scale_err_before

    # The scale correction is spread along the loop, not dumped on one edge: it grows steadily from node 0
    correction = np.array([math.log(graph.estimate(i).s / drifted.estimate(i).s) for i in range(len(truth))])
    steps = np.diff(correction)
    assert np.all(steps < 0) and np.abs(steps).max() < 0.1 * abs(correction[-1]), steps
    assert correction[last // 2] == pytest.approx(correction[last] / 2, rel=0.25)
    assert graph.marginal_log_scale_sigma(last // 2) > graph.marginal_log_scale_sigma(last) > 0


def test_robust_kernel_contains_a_false_loop() -> None:
    truth = _circle()
    last = len(truth) - 1
    drifted = _loop_graph(truth, None).estimates()

    def moved(graph: PoseGraph) -> float:
        return max(float(np.linalg.norm(w_from_i.t - drifted[i].t)) for i, w_from_i in graph.estimates().items())

    correct = truth[last].inverse() @ truth[0]
    # A verified-but-false loop: claims the last window sees the place across the circle, at another scale
    wrong = Sim3(1.5, _rz(1.0), np.array([0.0, 0.0, 0.0])) @ truth[last].inverse() @ truth[last // 2]
    no_kernel = PoseGraphConfig(loop_kernel="none")
    moved_correct = moved(_loop_graph(truth, correct, no_kernel))
    moved_wrong_robust = moved(_loop_graph(truth, wrong))
    moved_wrong_plain = moved(_loop_graph(truth, wrong, no_kernel))
    # measured: 0.52 m vs 2.17 m (Cauchy's pull falls off as 1/distance but never reaches zero), 23 m without kernel
    assert moved_wrong_robust * 3 < moved_correct, (moved_wrong_robust, moved_correct)
    assert moved_wrong_plain > moved_correct  # without the kernel the false loop does wreck the map


def test_fresh_node_after_a_loop_starts_on_the_corrected_map() -> None:
    truth = _circle()
    last = len(truth) - 1
    graph = _loop_graph(truth, truth[last].inverse() @ truth[0])
    edge = Sim3(1.0, np.eye(3), np.array([1.0, 0.0, 0.0]))
    graph.add_node(last + 1, Sim3())  # the caller's guess (from the uncorrected chain) is ignored
    graph.add_edge(last, last + 1, edge, LOOSE)
    graph.optimize()
    assert _close(graph.estimate(last + 1), graph.estimate(last) @ edge, 1e-6)


def test_rejects_bad_input() -> None:
    graph = PoseGraph()
    graph.add_node(0, Sim3())
    with pytest.raises(ValueError):
        graph.add_node(0, Sim3())
    with pytest.raises(ValueError):
        graph.add_edge(0, 1, Sim3(), LOOSE)
    graph.add_node(1, Sim3())
    with pytest.raises(ValueError):
        graph.optimize()  # node 1 has no edge
    graph.add_edge(0, 1, Sim3(), LOOSE)
    graph.optimize()
    with pytest.raises(ValueError):
        PoseGraphConfig(loop_kernel="tukey")
    with pytest.raises(ValueError):
        EdgeNoise(rot_rad=0.0, trans=1.0, log_scale=1.0)
