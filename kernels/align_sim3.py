"""Robust Sim(3) between point sets: weighted Umeyama + IRLS with a Huber kernel, batched torch kernel (its
plain float64 numpy reference, on `recon/pose_fit.py`, is tests/support/align_reference.py); plus the robust 1-D scale that layer-wise
scale alignment fits per layer link, grouped so all links are fitted in one vectorised pass.

IRLS, the same in kernel and reference: fit with the base weights c; then `iterations` times:
residual r = |s R x + t - y|, weight c * min(1, delta / r), refit. So `iterations` + 1 closed-form fits.

Precision: the per-point work (transform, residuals, weights) runs in float32 on the inputs' device.
The data are centred once near their base-weighted centroids so that float32 holds the spread, not the
absolute offset; the moments Umeyama needs are float32 GEMMs over chunks of 4096 points whose partial
sums accumulate in float64 (error independent of N), and the 3x3 closed form is float64."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recon.types import Sim3

_TINY = 1e-30


@dataclass(frozen=True)
class Sim3Fit:
    """Quality of a robust fit. Residuals are in target units; weights are the base weights."""

    residual_rms: float  # over all correspondences
    inlier_rms: float  # over those with residual <= delta
    inlier_share: float  # weight share with residual <= delta
    num_points: int  # correspondences with weight > 0
    huber_delta: float
    rank_ratio: float  # 2nd / 1st singular value of the cross-covariance; ~0: collinear, rotation ill-defined
    valid: bool  # enough weighted, non-collinear points for a unique fit

    def as_dict(self) -> dict[str, float | int | bool]:
        return dict(self.__dict__)


@dataclass
class Sim3Batch:
    """B similarities `target_from_source` plus their fit quality, all tensors with leading dim B."""

    s: torch.Tensor  # [B] float64, CPU
    R: torch.Tensor  # [B,3,3] float64
    t: torch.Tensor  # [B,3] float64
    residual_rms: torch.Tensor  # [B]
    inlier_rms: torch.Tensor  # [B]
    inlier_share: torch.Tensor  # [B]
    num_points: torch.Tensor  # [B] int64
    huber_delta: torch.Tensor  # [B]
    rank_ratio: torch.Tensor  # [B]

    def __len__(self) -> int:
        return int(self.s.shape[0])

    def valid(self) -> torch.Tensor:
        """[B] bool: the fit is unique (>= 3 weighted points, not collinear, finite)."""
        finite = torch.isfinite(self.s) & torch.isfinite(self.R).flatten(1).all(1) & torch.isfinite(self.t).all(1)
        return finite & (self.num_points >= 3) & (self.rank_ratio > 1e-6) & (self.s > 0)

    def sim3(self, i: int = 0) -> Sim3:
        """Item i as a `Sim3`; an invalid fit becomes the identity (check `valid()` / `fit(i)` first)."""
        if not bool(self.valid()[i]):
            return Sim3.identity()
        return Sim3(float(self.s[i]), self.R[i].cpu().numpy(), self.t[i].cpu().numpy())

    def fit(self, i: int = 0) -> Sim3Fit:
        return Sim3Fit(
            residual_rms=float(self.residual_rms[i]),
            inlier_rms=float(self.inlier_rms[i]),
            inlier_share=float(self.inlier_share[i]),
            num_points=int(self.num_points[i]),
            huber_delta=float(self.huber_delta[i]),
            rank_ratio=float(self.rank_ratio[i]),
            valid=bool(self.valid()[i]),
        )


# --------------------------------------------------------------------------------------------- torch
_CHUNK = 4096  # points per float32 partial sum; partials are summed in float64


def _solve_from_moments(M: np.ndarray, with_scale: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted Umeyama from moments M [B,4,5] = sum_i w_i [y_i; 1] [x_i; 1; |x_i|^2]^T (float64, x and y
    centred near their means so the covariance below does not cancel). Returns s [B], R [B,3,3], t [B,3],
    rank ratio [B] (2nd / 1st singular value; 0 when there is no weight). The 3x3 algebra runs in numpy:
    it is tiny, and per-op overhead of torch would dominate it on a CPU."""
    wsum = M[:, 3, 3]
    inv = 1.0 / np.maximum(wsum, _TINY)
    mu_x = M[:, 3, :3] * inv[:, None]
    mu_y = M[:, :3, 3] * inv[:, None]
    cov = M[:, :3, :3] * inv[:, None, None] - mu_y[:, :, None] * mu_x[:, None, :]
    var_x = np.maximum(M[:, 3, 4] * inv - (mu_x**2).sum(1), 0.0)
    U, D, Vt = np.linalg.svd(cov)
    # Reflection guard: flip the weakest axis when U V^T is a reflection.
    E = np.ones_like(D)
    E[:, 2] = np.where(np.linalg.det(U) * np.linalg.det(Vt) < 0, -1.0, 1.0)
    R = (U * E[:, None, :]) @ Vt
    s = (D * E).sum(1) / np.maximum(var_x, _TINY) if with_scale else np.ones_like(var_x)
    s = np.where(var_x > 0, s, 1.0)
    t = mu_y - s[:, None] * np.einsum("bij,bj->bi", R, mu_x)
    rank_ratio = np.where(wsum > 0, D[:, 1] / np.maximum(D[:, 0], _TINY), 0.0)
    return s, R, t, rank_ratio


def robust_sim3_batched(
    source: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
    huber_delta: float | torch.Tensor = 0.1,
    iterations: int = 5,
    with_scale: bool = True,
) -> Sim3Batch:
    """Robust `target_from_source` for B point sets at once: source, target [B,N,3], weights [B,N] >= 0
    (0 pads sets of different sizes), huber_delta scalar or [B] in target units (<= 0 or inf: plain
    weighted Umeyama). Any float dtype/device; the result is float64 on the CPU.

    Layout: coordinates-major [B,3,N] internally, so every per-point op runs over contiguous N-vectors
    (reductions over a trailing dim of 3 are ~5x slower on CPU). One float32 GEMM per iteration yields
    all moments Umeyama needs, in chunks of `_CHUNK` points whose partial sums are added in float64.
    The 3x3 closed form runs on the host: on a GPU that is one tiny device-to-host copy per iteration."""
    if source.ndim != 3 or source.shape != target.shape or source.shape[-1] != 3:
        raise ValueError(
            f"robust_sim3_batched: source/target must both be [B,N,3], got {tuple(source.shape)} / {tuple(target.shape)}"
        )
    B, N, _ = source.shape
    dev = source.device
    c = torch.ones(B, N, device=dev) if weights is None else weights.to(device=dev, dtype=torch.float32)
    if c.shape != (B, N):
        raise ValueError(f"robust_sim3_batched: weights must be [B,N]={B, N}, got {tuple(c.shape)}")
    K = min(_CHUNK, max(N, 1))
    C = -(-max(N, 1) // K)
    Np = C * K  # padded with weight-0 points so chunks tile N exactly
    xy = torch.zeros(B, 6, Np, device=dev)  # [x; y] stacked: one GEMM gives s R x + t - y
    xy[:, :3, :N] = source.transpose(1, 2)
    xy[:, 3:, :N] = target.transpose(1, 2)
    cw = torch.zeros(B, Np, device=dev)
    cw[:, :N] = c
    if not bool(torch.isfinite(xy.sum() + cw.sum())):  # rare: zero the weight of non-finite points
        ok = torch.isfinite(xy).all(1) & torch.isfinite(cw)
        cw = torch.where(ok, cw, torch.zeros_like(cw))
        xy = torch.where(ok[:, None], xy, torch.zeros_like(xy))
    cw = cw.clamp_min(0.0)

    # Centre once near the base-weighted centroids: float32 then holds the spread, not the absolute
    # offset of the points. The offset need not be exact (the moments re-derive the exact means from
    # it), so one float32 GEMV does.
    csum = cw.sum(1).clamp_min(_TINY)  # [B]
    oxy = torch.bmm(xy, cw[:, :, None])[..., 0] / csum[:, None]  # [B,6]
    xy -= oxy[:, :, None]
    oxy64 = oxy.double().cpu().numpy()
    ox, oy = oxy64[:, :3], oxy64[:, 3:]
    x = xy[:, :3]
    one = torch.ones(B, 1, Np, device=dev)
    A = torch.cat([x, one, (x * x).sum(1, keepdim=True)], 1)  # [B,5,Np]
    A = A.view(B, 5, C, K).permute(0, 2, 3, 1).reshape(B * C, K, 5)  # chunk-major for bmm
    Yc = torch.cat([xy[:, 3:], one], 1).view(B, 4, C, K).permute(0, 2, 1, 3).contiguous()  # [B,C,4,K]

    def solve(w: torch.Tensor) -> tuple[np.ndarray, ...]:
        partial = torch.bmm((Yc * w.view(B, C, 1, K)).view(B * C, 4, K), A)  # [B*C,4,5] float32
        M = partial.view(B, C, 4, 5).sum(1, dtype=torch.float64)
        return _solve_from_moments(M.cpu().numpy(), with_scale)

    delta = torch.as_tensor(huber_delta, dtype=torch.float64).cpu().expand(B).clone()
    robust = torch.isfinite(delta) & (delta > 0)
    delta_eff = torch.where(robust, delta, torch.full_like(delta, 1e30)).float().to(dev)[:, None]  # [B,1]
    c_delta = cw * delta_eff
    delta_sq = delta_eff * delta_eff
    minus_eye = -torch.eye(3, dtype=torch.float64).expand(B, 3, 3).numpy()

    def residuals_sq(s: np.ndarray, R: np.ndarray, t: np.ndarray) -> torch.Tensor:
        G = torch.from_numpy(np.concatenate([s[:, None, None] * R, minus_eye], 2)).float().to(dev)  # [B,3,6]
        tt = torch.from_numpy(t).float().to(dev)[:, :, None]
        e = torch.baddbmm(tt, G, xy)  # [B,3,Np] = s R x + t - y
        return e.mul_(e).sum(1)  # [B,Np] (mul_, not square_: pow is ~4x slower on CPU)

    def huber_weights(r2: torch.Tensor) -> torch.Tensor:
        # c * min(1, delta / r) == c * delta / max(r, delta), without a sqrt
        return r2.clamp_min_(delta_sq).rsqrt_().mul_(c_delta)

    s, R, t, rank = solve(cw)
    for _ in range(iterations):
        s, R, t, rank = solve(huber_weights(residuals_sq(s, R, t)))

    r2 = residuals_sq(s, R, t)
    # Diagnostics: one float32 GEMM per set (plenty for a share and an rms).
    cols = torch.stack([cw, cw * (r2 <= delta_sq), (cw > 0).float()], 1)  # [B,3,Np]
    sums = torch.bmm(cols, torch.stack([torch.ones_like(r2), r2], 2)).double().cpu().numpy()  # [B,3,2]
    csum_, isum, count = sums[:, 0, 0], sums[:, 1, 0], np.rint(sums[:, 2, 0])
    rss, irss = sums[:, 0, 1], sums[:, 1, 1]
    # Back from the centred frames: y + oy = s R (x + ox) + t  =>  t' = t + oy - s R ox.
    t = t + oy - s[:, None] * np.einsum("bij,bj->bi", R, ox)
    f64 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))  # noqa: E731
    return Sim3Batch(
        s=f64(s),
        R=f64(R),
        t=f64(t),
        residual_rms=f64(np.sqrt(rss / np.maximum(csum_, _TINY))),
        inlier_rms=f64(np.sqrt(irss / np.maximum(isum, _TINY))),
        inlier_share=f64(isum / np.maximum(csum_, _TINY)),
        num_points=torch.from_numpy(count.astype(np.int64)),
        huber_delta=delta.double(),
        rank_ratio=f64(rank),
    )


def robust_sim3(
    source: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
    huber_delta: float = 0.1,
    iterations: int = 5,
    with_scale: bool = True,
) -> tuple[Sim3, Sim3Fit]:
    """Robust `target_from_source` for one point set: source, target [N,3], weights [N] (torch, any
    device). Returns the Sim3 (identity when the fit is not unique: see `Sim3Fit.valid`) and its fit."""
    w = None if weights is None else weights[None]
    batch = robust_sim3_batched(source[None], target[None], w, huber_delta, iterations, with_scale)
    return batch.sim3(0), batch.fit(0)


def robust_log_scale_grouped(
    source: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    groups: torch.Tensor,
    num_groups: int,
    huber_delta: float = 0.05,
    iterations: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group g, the robust scale k_g with target ≈ k_g * source, for positive values [N] (depths).
    Residuals are log-ratios log(target / (k source)) — symmetric and unit-free, so one delta fits near
    and far layers — with Huber IRLS started from the weighted mean log-ratio (least squares).
    Returns scales [G] float32 (1 for groups without weight) and support [G] (weighted sample count)."""
    if num_groups <= 0:
        return torch.zeros(0, device=source.device), torch.zeros(0, device=source.device)
    ok = (source > 0) & (target > 0) & (weights > 0) & torch.isfinite(source) & torch.isfinite(target)
    v = torch.log(torch.where(ok, target, torch.ones_like(target)) / torch.where(ok, source, torch.ones_like(source)))
    c = torch.where(ok, weights.float(), torch.zeros_like(v)).double()
    v = v.double()
    g = groups.long().clamp(0, max(num_groups - 1, 0))
    c = torch.where((groups >= 0) & (groups < num_groups), c, torch.zeros_like(c))
    csum = torch.zeros(num_groups, dtype=torch.float64, device=v.device).index_add_(0, g, c)
    count = torch.zeros(num_groups, dtype=torch.float64, device=v.device).index_add_(0, g, (c > 0).double())

    def mean(w: torch.Tensor) -> torch.Tensor:
        num = torch.zeros_like(csum).index_add_(0, g, w * v)
        den = torch.zeros_like(csum).index_add_(0, g, w)
        return torch.where(den > 0, num / den.clamp_min(_TINY), torch.zeros_like(num))

    m = mean(c)
    for _ in range(iterations):
        r = (v - m[g]).abs()
        m = mean(c * (huber_delta / r.clamp_min(1e-12)).clamp(max=1.0))
    return torch.exp(m).float(), count.float()
