"""Accuracy and speed of the classical model (issue: the embedded default).

Synthetic street (640x192) and room (640x480): per-window relative-pose errors, depth AbsRel over pixels
whose confidence is above the window's median (one scale per window), the share of confident pixels,
and frames/s with a per-stage breakdown. Real captures (../shared/data/real fox, temple): per-window
poses vs the reference after a Sim(3) fit, and a coloured depth map PNG of one window each.

Run: .venv/bin/python bench/bench_classical.py [--windows N] [--window-size L]"""

from __future__ import annotations

import argparse
import time
from itertools import islice
from pathlib import Path

import cv2
import numpy as np

from recon.datasets import open_source
from recon.datasets.synthetic import SyntheticSource
from recon.eval.window import depth_abs_rel_scaled, relative_pose_errors
from recon.geometry import invert_rigid, rotation_angle_deg
from recon.models.classical import ClassicalModel
from recon.pose_fit import umeyama_sim3

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
OUT = Path(__file__).resolve().parent / "out"
STAGES = ("tracking_s", "pose_s", "ba_s", "dense_s", "packing_s")


def windows(source, L: int, count: int, gap: int):
    """`count` windows of L consecutive frames, `gap` frames apart."""
    it = iter(source)
    for _ in range(count):
        win = list(islice(it, L))
        if len(win) < L:
            return
        yield win
        list(islice(it, gap))


def synthetic(scene: str, n_windows: int, L: int) -> dict:
    source = SyntheticSource(scene=scene, num_frames=n_windows * (L + 20), seed=1)
    model = ClassicalModel()
    rot, tdir, absrel, share, times, stages, flags = [], [], [], [], [], dict.fromkeys(STAGES, 0.0), 0
    for win in windows(source, L, n_windows, 20):
        t0 = time.perf_counter()
        pred = model.infer(win)
        times.append(time.perf_counter() - t0)
        for k in STAGES:
            stages[k] += pred.info["timings"].get(k, 0.0)
        flags += bool(pred.flags)
        r, d = relative_pose_errors(pred.cam_from_world.double().numpy(), np.stack([f.gt_cam_from_world for f in win]))
        rot += r.tolist()
        tdir += d[np.isfinite(d)].tolist()
        depth, conf = pred.depth.numpy(), pred.depth_conf.numpy()
        gt = np.stack([cv2.resize(f.gt_depth_m, depth.shape[1:][::-1], interpolation=cv2.INTER_NEAREST) for f in win])
        ar, _ = depth_abs_rel_scaled(depth, gt, conf > np.median(conf))
        absrel.append(ar)
        share.append(float(np.mean(conf > 0.5)))
    n = len(times)
    return dict(
        scene=scene,
        windows=n,
        rot_med=np.median(rot),
        tdir_med=np.median(tdir),
        absrel=np.median(absrel),
        absrel_max=np.max(absrel),
        share=np.mean(share),
        fps=L * n / sum(times),
        stages={k: v / n for k, v in stages.items()},
        flagged=flags,
        hw=win[0].hw,
    )


def real(name: str, L: int) -> dict | None:
    seq = REAL / "sequences" / name
    if not seq.exists():
        return None
    frames = list(open_source(str(seq)))
    model = ClassicalModel()
    rot, mag, tdir, pos, reg = [], [], [], [], []
    OUT.mkdir(exist_ok=True)
    for k, start in enumerate(range(0, len(frames) - L + 1, L // 2)):
        win = frames[start : start + L]
        pred = model.infer(win)
        ok = np.array(pred.info["registered"])
        reg.append(ok.mean())
        est_wfc = invert_rigid(pred.cam_from_world.double().numpy())[ok]
        gt_wfc = invert_rigid(np.stack([f.gt_cam_from_world for f in win]))[ok]
        if ok.sum() < 3:
            continue
        sim = umeyama_sim3(est_wfc[:, :3, 3], gt_wfc[:, :3, 3])
        aligned = sim.apply_to_world_from_cam(est_wfc)
        extent = np.linalg.norm(gt_wfc[:, :3, 3] - gt_wfc[:, :3, 3].mean(0), axis=1).max()
        pos += (np.linalg.norm(aligned[:, :3, 3] - gt_wfc[:, :3, 3], axis=1) / max(extent, 1e-9)).tolist()
        # Rotations relative to the window's first frame: free of the Sim(3) fit, which only sees centres.
        r, d = relative_pose_errors(invert_rigid(est_wfc), invert_rigid(gt_wfc))
        rot += r.tolist()
        tdir += d[np.isfinite(d)].tolist()
        # Rotation magnitudes alone do not depend on how the reference's camera axes are defined.
        est_rel, gt_rel = invert_rigid(est_wfc) @ est_wfc[0], invert_rigid(gt_wfc) @ gt_wfc[0]
        mag += np.abs(rotation_angle_deg(est_rel[1:, :3, :3]) - rotation_angle_deg(gt_rel[1:, :3, :3])).tolist()
        if k == 0:
            _write_depth_png(
                OUT / f"depth_{name}.png",
                win[L // 2].image_rgb,
                pred.depth[L // 2].numpy(),
                pred.depth_conf[L // 2].numpy(),
            )
    return dict(
        name=name,
        frames=len(frames),
        rot_med=np.median(rot),
        mag_med=np.median(mag),
        tdir_med=np.median(tdir),
        pos_med=np.median(pos),
        registered=np.mean(reg),
    )


def _write_depth_png(path: Path, rgb: np.ndarray, depth: np.ndarray, conf: np.ndarray) -> None:
    valid = conf > 0.2
    lo, hi = np.percentile(depth[valid], [2, 98]) if valid.any() else (0, 1)
    norm = np.clip((depth - lo) / max(hi - lo, 1e-9), 0, 1)
    colour = cv2.applyColorMap((255 * (1 - norm)).astype(np.uint8), cv2.COLORMAP_TURBO)
    colour[~valid] = (colour[~valid] * 0.25).astype(np.uint8)
    img = cv2.resize(rgb[..., ::-1], colour.shape[1::-1])
    cv2.imwrite(str(path), np.hstack([img, colour]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--window-size", type=int, default=16)
    args = ap.parse_args()
    L = args.window_size
    print(f"classical model, windows of {L} frames, this machine ({cv2.getNumberOfCPUs()} cores)")
    print(
        "target: rot median <= 0.2 deg, t-dir median <= 2 deg, AbsRel (conf > median) <= 0.05, >= 10 frames/s at 640x192"
    )
    for scene in ("street", "room"):
        r = synthetic(scene, args.windows, L)
        st = " ".join(f"{k[:-2]} {1000 * v:.0f}ms" for k, v in r["stages"].items())
        print(
            f"{scene:7s} {r['hw'][1]}x{r['hw'][0]} windows {r['windows']}: rot median {r['rot_med']:.3f} deg | t-dir median "
            f"{r['tdir_med']:.2f} deg | AbsRel median {r['absrel']:.4f} (worst window {r['absrel_max']:.4f}) | "
            f"conf>0.5 share {100 * r['share']:.1f}% | {r['fps']:.1f} frames/s | flagged windows {r['flagged']}"
        )
        print(f"        per window: {st}")
    for name in ("fox", "temple"):
        r = real(name, L)
        if r is None:
            print(f"{name}: ../shared/data/real not found, skipped")
            continue
        print(
            f"{name:7s} {r['frames']} frames, windows of {L}: relative rotation error median {r['rot_med']:.2f} deg "
            f"(rotation-angle error {r['mag_med']:.2f} deg), t-dir error median {r['tdir_med']:.2f} deg, position error after "
            f"Sim(3) median {100 * r['pos_med']:.2f}% of the window's extent, frames registered {100 * r['registered']:.0f}% "
            f"-> depth map {OUT / f'depth_{name}.png'}"
        )


if __name__ == "__main__":
    main()
