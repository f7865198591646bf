"""The table `recon eval` (and `recon run` on a source with ground truth) prints from metrics.json."""

from __future__ import annotations

import math
from typing import Any


def _f(v: Any, spec: str = ".4g") -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def format_table(metrics: dict[str, Any]) -> str:
    t = metrics["trajectory"]
    unit = "m" if t.get("gt_metric") else "gt units"
    aligned = (
        "SE(3) (the run is metric)"
        if t["alignment"] == "se3"
        else f"Sim(3) Umeyama, scale {_f(t['scale'])} (the run has its own units)"
    )
    ate, rot = t["ate"], t["ate"]["rotation_deg_orientation_aligned"]
    rows = [
        ("poses compared", f"{t['frames']} (ground truth: {metrics['ground_truth']})"),
        ("alignment to ground truth", f"{aligned}; errors in {unit}; path {_f(t['path_length'], '.1f')} {unit}"),
        (
            "ATE RMSE / mean / median / max",
            f"{_f(ate['rmse'])} / {_f(ate['mean'])} / {_f(ate['median'])} / {_f(ate['max'])} {unit}"
            f"  ({_f(ate['rmse_percent_of_path'], '.2f')}% of path)",
        ),
        ("ATE rotation RMSE / max", f"{_f(rot['rmse'])} / {_f(rot['max'])} deg  (orientations aligned)"),
        (
            "RPE per frame: trans RMSE / rot RMSE",
            f"{_f(t['rpe_frame']['translation']['rmse'])} {unit} / {_f(t['rpe_frame']['rotation_deg']['rmse'])} deg",
        ),
        (
            f"RPE per {_f(t['rpe_distance']['delta'])} {unit} of path: trans / rot",
            f"{_f(t['rpe_distance']['translation']['rmse'])} {unit} / "
            f"{_f(t['rpe_distance']['rotation_deg']['rmse'])} deg",
        ),
    ]
    k = t["kitti_drift"]
    if "skipped" in k:
        rows.append(("KITTI drift", f"not reported: {k['skipped']}"))
    else:
        rows.append(
            (
                "KITTI drift: trans % / rot deg per 100 m",
                f"{_f(k['translation_percent'], '.2f')}% / {_f(k['rotation_deg_per_100m'], '.3f')}  "
                f"({k['segments']} segments, {k['lengths_source']} lengths)",
            )
        )
    d = metrics.get("depth")
    if isinstance(d, dict):
        rows.append(
            (
                f"depth ({d['frames']} frames, {d['scale_mode']} scale)",
                f"AbsRel {_f(d['abs_rel'], '.4f')}, δ<1.25 {_f(d['delta1'], '.3f')}, "
                f"RMSE {_f(d['rmse'], '.3f')}, coverage {_f(100 * d['coverage'], '.1f')}%",
            )
        )
        c = d["confident_half"]
        rows.append(
            (
                "depth, more confident half of pixels",
                f"AbsRel {_f(c['abs_rel'], '.4f')}, δ<1.25 {_f(c['delta1'], '.3f')}, RMSE {_f(c['rmse'], '.3f')}",
            )
        )
    else:
        rows.append(("depth", f"not evaluated: {metrics.get('depth_skipped', 'no ground-truth depth')}"))
    p = metrics.get("pointmap")
    if isinstance(p, dict):
        rows.append(
            (
                "point map: accuracy / completeness",
                f"mean {_f(p['accuracy_mean'])} / {_f(p['completeness_mean'])}, "
                f"median {_f(p['accuracy_median'])} / {_f(p['completeness_median'])}",
            )
        )
        rows.append(
            (
                "point map: precision / recall / F",
                f"{_f(p['precision'], '.3f')} / {_f(p['recall'], '.3f')} / {_f(p['fscore'], '.3f')} "
                f"within {_f(p['threshold'])}",
            )
        )
        rows.append(
            ("point map: Chamfer / normal consistency", f"{_f(p['chamfer'])} / {_f(p['normal_consistency'], '.3f')}")
        )
    else:
        rows.append(("point map", f"not evaluated: {metrics.get('pointmap_skipped', 'no ground-truth depth')}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
