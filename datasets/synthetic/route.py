"""Street routes: straight segments joined by 90-degree arcs, addressable by arc length.

Segment k runs from corner P_k to corner P_{k+1}; "unit" k is its straight part followed by the arc
around corner k+1, so the units tile the path. Two shapes:

- `OpenRoute`: an endless staircase (east, north, east, ...: left and right turns alternate), segment
  lengths hashed from (seed, k). It is monotone in x and y, so it never comes back near itself and
  anything far along it is far away in space.
- `LoopRoute`: a closed rectilinear "diamond" (four staircases) whose length equals the requested drive,
  so the last frame arrives back at the first one; it has both turn directions too.

Positions are pure functions of arc length; the open route keeps a prefix-sum index of its segment
lengths (16 bytes per segment, i.e. per ~100 m), extended on demand."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .rng import hash_uniform

_HALF_PI = 0.5 * math.pi


def _left(h: np.ndarray) -> np.ndarray:
    return np.array([-h[1], h[0]])


@dataclass(frozen=True)
class Unit:
    """Segment k (corner P_k -> P_{k+1}) as driven: its straight part, then the arc at corner k+1."""

    index: int
    s_start: float  # route arc length where the straight part begins
    corner: np.ndarray  # P_k [2]
    seg_len: float  # |P_{k+1} - P_k|
    heading: float  # radians, direction of the segment
    radius: float  # of the arcs at both of its corners
    turn: int  # +1 left, -1 right at corner k+1

    @property
    def direction(self) -> np.ndarray:
        return np.array([math.cos(self.heading), math.sin(self.heading)])

    @property
    def straight_start(self) -> np.ndarray:
        return self.corner + self.radius * self.direction

    @property
    def straight_len(self) -> float:
        return self.seg_len - 2.0 * self.radius

    @property
    def arc_len(self) -> float:
        return self.radius * _HALF_PI

    @property
    def length(self) -> float:
        return self.straight_len + self.arc_len

    @property
    def end_corner(self) -> np.ndarray:
        return self.corner + self.seg_len * self.direction

    @property
    def arc_center(self) -> np.ndarray:
        h = self.direction
        return self.end_corner - self.radius * h + self.turn * self.radius * _left(h)

    def at(self, sigma: float) -> tuple[np.ndarray, float]:
        """Position [2] and heading at distance sigma from the start of this unit."""
        h = self.direction
        if sigma <= self.straight_len:
            return self.straight_start + sigma * h, self.heading
        phi = min((sigma - self.straight_len) / self.radius, _HALF_PI) * self.turn
        c = self.arc_center
        a = -self.turn * self.radius * _left(h)  # centre -> arc start
        cs, sn = math.cos(phi), math.sin(phi)
        return c + np.array([cs * a[0] - sn * a[1], sn * a[0] + cs * a[1]]), self.heading + phi

    def sample_points(self, spacing_m: float) -> np.ndarray:
        """Points [n,2] along the straight part and the arc, at most spacing_m apart."""
        n = max(int(math.ceil(self.length / spacing_m)), 1)
        return np.array([self.at(s)[0] for s in np.linspace(0.0, self.length, n + 1)])


class Route:
    closed: bool
    length_m: float

    def unit(self, k: int) -> Unit:
        raise NotImplementedError

    def locate(self, s: float) -> tuple[int, float]:
        """(unit index, distance into it) of arc length s."""
        raise NotImplementedError

    def candidate_units(self, k_hint: int) -> range:
        raise NotImplementedError

    def canonical(self, k: int) -> int:
        return k

    def units_near(self, xy: np.ndarray, radius_m: float, k_hint: int) -> list[int]:
        """Units whose segment (corner to corner) passes within radius_m of xy."""
        out = []
        for k in self.candidate_units(k_hint):
            u = self.unit(k)
            a, b = u.corner, u.end_corner
            ab = b - a
            s = np.clip(np.dot(xy - a, ab) / max(np.dot(ab, ab), 1e-12), 0.0, 1.0)
            if np.linalg.norm(a + s * ab - xy) <= radius_m:
                out.append(k)
        return out


class OpenRoute(Route):
    closed = False
    length_m = math.inf
    _K_MIN = -16  # units before the start exist too (behind the camera at frame 0)

    def __init__(self, seed: int, seg_min_m: float, seg_max_m: float, radius_m: float) -> None:
        if seg_min_m < 2.0 * radius_m + 1.0:
            raise ValueError(f"segments ({seg_min_m} m) must be longer than two turn radii ({radius_m} m)")
        self.seed, self.seg_min_m, self.seg_max_m, self.radius_m = seed, seg_min_m, seg_max_m, radius_m
        self._corners = np.zeros((0, 2))
        self._s = np.zeros(0)
        self._extend(256)

    def _extend(self, count: int) -> None:
        k = np.arange(self._K_MIN, self._K_MIN + count)
        L = self.seg_min_m + (self.seg_max_m - self.seg_min_m) * hash_uniform(self.seed, "segment-length", k)
        step = np.where((k % 2 == 0)[:, None], [1.0, 0.0], [0.0, 1.0]) * L[:, None]  # east, north, east, ...
        corners = np.vstack([[0.0, 0.0], np.cumsum(step, 0)])
        s = np.concatenate([[0.0], np.cumsum(L - 2 * self.radius_m + self.radius_m * _HALF_PI)])
        i0 = -self._K_MIN
        self._corners, self._s, self._L = corners - corners[i0], s - s[i0], L

    def _ensure(self, k: int) -> None:
        while k - self._K_MIN + 2 > len(self._L):
            self._extend(2 * len(self._L))

    def unit(self, k: int) -> Unit:
        if k < self._K_MIN:
            raise ValueError(f"route unit {k} is before the route's start")
        self._ensure(k)
        i = k - self._K_MIN
        turn = 1 if k % 2 == 0 else -1
        return Unit(
            k,
            float(self._s[i]),
            self._corners[i].copy(),
            float(self._L[i]),
            0.0 if k % 2 == 0 else _HALF_PI,
            self.radius_m,
            turn,
        )

    def locate(self, s: float) -> tuple[int, float]:
        while s >= self._s[-2]:
            self._extend(2 * len(self._L))
        i = int(np.searchsorted(self._s, s, side="right")) - 1
        return i + self._K_MIN, float(s - self._s[i])

    def candidate_units(self, k_hint: int) -> range:
        # Segments are >= seg_min_m long and the route is monotone: 12 units either side is far enough.
        return range(max(k_hint - 12, self._K_MIN), k_hint + 13)


class LoopRoute(Route):
    closed = True
    MIN_LENGTH_M = 60.0

    def __init__(self, length_m: float, radius_m: float, step_target_m: float = 110.0) -> None:
        if length_m < self.MIN_LENGTH_M:
            raise ValueError(
                f"a closed street route needs at least {self.MIN_LENGTH_M:.0f} m of driving, got {length_m:.1f} m"
            )
        n = max(1, int(round(length_m / (8.0 * step_target_m))))
        E, N, W, S = (1, 0), (0, 1), (-1, 0), (0, -1)
        moves = [E, N] * n + [N, W] * n + [W, S] * n + [S, E] * n
        moves = [moves[-1]] + moves[:-1]  # start at the beginning of a straight run east
        dirs: list[tuple[int, int]] = []
        counts: list[int] = []
        for m in moves:
            if dirs and dirs[-1] == m:
                counts[-1] += 1
            else:
                dirs.append(m)
                counts.append(1)
        M = len(dirs)
        # Rounded corners shorten the polyline by r (2 - pi/2) each; solve for the step a.
        cut = 2.0 - _HALF_PI
        a0 = length_m / (8.0 * n)
        r = min(radius_m, 0.4 * a0)
        a = (length_m + M * r * cut) / (8.0 * n)
        self.radius_m, self.step_m, self.length_m = r, a, float(length_m)
        d = np.array(dirs, np.float64)
        L = np.array(counts, np.float64) * a
        self._corners = np.vstack([[0.0, 0.0], np.cumsum(d * L[:, None], 0)])[:M]
        self._L = L
        self._heading = np.arctan2(d[:, 1], d[:, 0])
        nxt = np.roll(d, -1, 0)
        self._turn = np.sign(d[:, 0] * nxt[:, 1] - d[:, 1] * nxt[:, 0]).astype(int)
        self._s = np.concatenate([[0.0], np.cumsum(L - 2 * r + r * _HALF_PI)])
        self.num_units = M

    def canonical(self, k: int) -> int:
        return k % self.num_units

    def unit(self, k: int) -> Unit:
        i = k % self.num_units
        return Unit(
            i,
            float(self._s[i]),
            self._corners[i].copy(),
            float(self._L[i]),
            float(self._heading[i]),
            self.radius_m,
            int(self._turn[i]),
        )

    def locate(self, s: float) -> tuple[int, float]:
        s = s % self.length_m
        i = min(int(np.searchsorted(self._s, s, side="right")) - 1, self.num_units - 1)
        return i, float(s - self._s[i])

    def candidate_units(self, k_hint: int) -> range:
        return range(self.num_units)
