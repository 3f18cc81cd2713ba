"""Deterministic synthetic traffic: what one xray exporter would report.

Every counter is a closed-form function of (seed, node, user, tag, direction,
snapshot index). Any window anywhere in time therefore costs O(window), two
exporters built from the same shape serve identical data, and a test can
recompute exactly what the pipeline should have seen.

Counter model, per series (user, tag) and direction, at snapshot index
``k`` (``collected_at = k * interval_s`` seconds since the epoch, UTC):

* ``g(k) = rate * k + h(k)`` where ``h(k) = splitmix64(salt ^ k) % (rate // 2)``
  is jitter in ``[0, rate // 2)``; ``g`` is strictly increasing for
  ``rate > 0`` and constant (0) for idle users.
* ``total(k) = g(k) - g(b)`` where ``b`` is the counter's birth: the last
  exporter restart at or before ``k`` (one per ``restart_every_s`` epoch, at a
  seeded offset inside it) or, for a late-joining user, its join point of the
  current UTC day if that is later. A counter reads 0 at its birth snapshot,
  so the counter-reset rule of DESIGN.md ("total < previous: delta = total")
  reproduces the generator's own usage exactly.
* With ``restart_every_s=None`` the exporter never restarts: counters count
  from the Unix epoch and are correspondingly large.

Late joiners model accounts that come online mid-day: each UTC day they are
absent from snapshots before their seeded time of day, and their counter is
born (at 0) on the first snapshot they appear in.

User identities (uuid, email, tags, idle, late join) depend on the seed only,
so exporters of several nodes sharing a seed serve the same users; rates,
jitter and restarts also depend on ``(node_id, env)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import numpy as np

from billing_assets.exporter import rfc3339

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB
_CHUNK_ROWS = 256
_DAY_S = 86_400
_DOWN_MIN, _DOWN_MAX = 50_000, 5_000_000  # bytes per interval
_UP_MIN = 10_000
_MID = ',"downlink_bytes_total":'


def splitmix64(x: int) -> int:
    """Scalar splitmix64: a stable, seedable hash (Python's hash() is salted
    per process, which would break determinism across runs)."""
    z = (x + _GOLDEN) & _M64
    z = ((z ^ (z >> 30)) * _MUL1) & _M64
    z = ((z ^ (z >> 27)) * _MUL2) & _M64
    return z ^ (z >> 31)


def _splitmix64_array(x: np.ndarray) -> np.ndarray:
    """splitmix64 over a uint64 array; numpy wraps on overflow, as the
    algorithm requires, so results equal the scalar version bit for bit."""
    z = x + np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MUL1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MUL2)
    return z ^ (z >> np.uint64(31))


def _key(*parts: int | str) -> int:
    acc = 0x243F6A8885A308D3
    for part in parts:
        if isinstance(part, str):
            part = int.from_bytes(hashlib.blake2b(part.encode(), digest_size=8).digest(), "big")
        acc = splitmix64(acc ^ (part & _M64))
    return acc


def _unit(value: int) -> float:
    return value / 2.0**64


def _pick(count: int, fraction: float, *salt: int | str) -> set[int]:
    """Exactly round(count * fraction) members chosen by seeded rank, so a
    fraction is a fact a test can count on, not a probability."""
    wanted = int(count * fraction + 0.5)
    ranked = sorted(range(count), key=lambda i: _key(*salt, i))
    return set(ranked[:wanted])


@dataclass(frozen=True, kw_only=True)
class TrafficShape:
    """The parameters of one exporter's synthetic traffic (hashable, so the
    precomputed model is cached per shape)."""

    node_id: str
    env: str
    source_id: str
    seed: int = 1
    users: int = 20
    tags_per_user: float = 1.5
    interval_s: int = 15
    tags: tuple[str, ...] = ("vless-in", "vmess-in", "trojan-in")
    restart_every_s: int | None = 6 * 3600
    late_join_fraction: float = 0.2
    idle_fraction: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", tuple(self.tags))
        if not 1 <= self.interval_s <= 3600:
            raise ValueError("interval_s must be within 1..3600")
        if self.users < 0:
            raise ValueError("users must be >= 0")
        if not self.tags or len(set(self.tags)) != len(self.tags):
            raise ValueError("tags must be non-empty and distinct")
        if self.tags_per_user < 1:
            raise ValueError("tags_per_user must be >= 1")
        for name in ("late_join_fraction", "idle_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        if self.restart_every_s is not None and self.restart_every_s < self.interval_s:
            raise ValueError("restart_every_s must be >= interval_s (or None)")

    @property
    def model(self) -> TrafficModel:
        return _model_for(self)

    def snapshot_at(self, ts: datetime) -> list[dict]:
        return self.model.snapshot_at(ts)

    def iter_items(self, since: datetime, until: datetime) -> Iterator[dict]:
        return self.model.iter_items(since, until)


@lru_cache(maxsize=64)
def _model_for(shape: TrafficShape) -> TrafficModel:
    return TrafficModel(shape)


class TrafficModel:
    """Per-series constants computed once, then whole blocks of snapshots
    evaluated with numpy; the server renders pages from these blocks."""

    def __init__(self, shape: TrafficShape) -> None:
        self.shape = shape
        self.interval_s = shape.interval_s
        seed = shape.seed
        node = _key(seed, "node", shape.node_id, shape.env)
        n_tags = len(shape.tags)

        idle = _pick(shape.users, shape.idle_fraction, seed, "idle")
        late = _pick(shape.users, shape.late_join_fraction, seed, "late")
        base_tags = int(shape.tags_per_user)
        extra = _pick(shape.users, shape.tags_per_user - base_tags, seed, "extra-tag")
        interval = shape.interval_s
        first_slot = -(-3600 // interval)
        slots = max(1, (_DAY_S - 3600) // interval - first_slot)

        series_user, series_tag, late_flags, join_tod = [], [], [], []
        rates_up, rates_down, salts_up, salts_down, prefixes = [], [], [], [], []
        self.users: list[tuple[str, str]] = []
        for i in range(shape.users):
            user_uuid = str(uuid.UUID(int=(_key(seed, "uuid", i, 0) << 64) | _key(seed, "uuid", i, 1), version=4))
            email = f"user{i}@example.test"
            self.users.append((user_uuid, email))
            count = min(n_tags, base_tags + (i in extra))
            start = _key(seed, "tag-start", i) % n_tags
            user_tags = sorted({(start + j) % n_tags for j in range(count)})
            joins_at = interval * (first_slot + _key(seed, "join", i) % slots) if i in late else 0
            for t in user_tags:
                down = up = 0
                if i not in idle:
                    spread = math.log(_DOWN_MAX / _DOWN_MIN)
                    down = int(_DOWN_MIN * math.exp(spread * _unit(_key(node, "rate-down", i, t))))
                    up = max(_UP_MIN, int(down * (0.05 + 0.45 * _unit(_key(node, "rate-up", i, t)))))
                series_user.append(i)
                series_tag.append(shape.tags[t])
                late_flags.append(i in late)
                join_tod.append(joins_at)
                rates_up.append(up)
                rates_down.append(down)
                salts_up.append(_key(node, "jitter-up", i, t))
                salts_down.append(_key(node, "jitter-down", i, t))
                prefixes.append(
                    '{"uuid":%s,"email":%s,"inbound_tag":%s,"uplink_bytes_total":'
                    % (json.dumps(user_uuid), json.dumps(email), json.dumps(shape.tags[t]))
                )

        self.series_count = len(series_user)
        self._series_user = series_user
        self._series_tag = series_tag
        self._prefixes = prefixes
        self._late = np.array(late_flags, dtype=bool)
        self._any_late = bool(self._late.any())
        self._join_tod = np.array(join_tod, dtype=np.int64)
        self._rate_up = np.array(rates_up, dtype=np.int64)
        self._rate_down = np.array(rates_down, dtype=np.int64)
        self._salt_up = np.array(salts_up, dtype=np.uint64)
        self._salt_down = np.array(salts_down, dtype=np.uint64)
        self._half_up = np.maximum(self._rate_up // 2, 1).astype(np.uint64)
        self._half_down = np.maximum(self._rate_down // 2, 1).astype(np.uint64)
        self._restart_period = (
            None if shape.restart_every_s is None else shape.restart_every_s // interval
        )
        self._restart_salt = np.uint64(_key(node, "restart"))
        self._pattern_cache: dict[bytes, tuple[np.ndarray, list[str]]] = {}

    # -- index arithmetic ------------------------------------------------

    def index_at_or_before(self, ts: datetime) -> int:
        return rfc3339.to_us(ts) // (self.interval_s * 1_000_000)

    def index_range(self, since: datetime, until: datetime) -> range:
        """Snapshot indices with since <= collected_at < until."""
        step = self.interval_s * 1_000_000
        first = -(-rfc3339.to_us(since) // step)
        stop = -(-rfc3339.to_us(until) // step)
        return range(first, max(first, stop))

    def collected_at(self, k: int) -> str:
        return rfc3339.format_epoch_seconds(k * self.interval_s)

    def restart_indices(self, ks: np.ndarray) -> np.ndarray:
        """Index of the last exporter restart at or before each k."""
        if self._restart_period is None:
            return np.zeros_like(ks)
        period = self._restart_period
        epoch = ks // period
        here = epoch * period + self._restart_offset(epoch)
        before = (epoch - 1) * period + self._restart_offset(epoch - 1)
        return np.where(here <= ks, here, before)

    def _restart_offset(self, epoch: np.ndarray) -> np.ndarray:
        mixed = _splitmix64_array(self._restart_salt ^ epoch.astype(np.uint64))
        return (mixed % np.uint64(self._restart_period)).astype(np.int64)

    def restarts_between(self, since: datetime, until: datetime) -> list[datetime]:
        """Exporter restarts with since <= t < until (counters read 0 there)."""
        if self._restart_period is None:
            return []
        window = self.index_range(since, until)
        ks = np.arange(window.start, window.stop, dtype=np.int64)
        hits = ks[self.restart_indices(ks) == ks]
        return [rfc3339.from_us(int(k) * self.interval_s * 1_000_000) for k in hits]

    # -- counters ----------------------------------------------------------

    def _g(self, k: np.ndarray, rate: np.ndarray, salt: np.ndarray, half: np.ndarray) -> np.ndarray:
        jitter = (_splitmix64_array(salt ^ k.astype(np.uint64)) % half).astype(np.int64)
        return rate * k + jitter

    def _block(self, k0: int, k1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Totals for snapshots k0..k1-1 as (up, down, present) matrices of
        shape (snapshots, series); present is None when every series shows."""
        ks = np.arange(k0, k1, dtype=np.int64)
        now = ks[:, None]
        born = self.restart_indices(ks)[:, None]
        present = None
        if self._any_late:
            seconds = ks * self.interval_s
            tod = seconds % _DAY_S
            present = ~self._late[None, :] | (self._join_tod[None, :] <= tod[:, None])
            joined = -(-((seconds - tod)[:, None] + self._join_tod[None, :]) // self.interval_s)
            born = np.where(self._late[None, :], np.maximum(born, joined), born)
        else:
            born = np.broadcast_to(born, (len(ks), self.series_count))
        up = self._g(now, self._rate_up, self._salt_up, self._half_up) - self._g(
            born, self._rate_up, self._salt_up, self._half_up
        )
        down = self._g(now, self._rate_down, self._salt_down, self._half_down) - self._g(
            born, self._rate_down, self._salt_down, self._half_down
        )
        return up, down, present

    def _chunks(self, k0: int, k1: int) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
        for start in range(k0, k1, _CHUNK_ROWS):
            stop = min(k1, start + _CHUNK_ROWS)
            up, down, present = self._block(start, stop)
            yield start, up, down, present

    def _visible(self, row: np.ndarray | None) -> tuple[np.ndarray | None, list[str]]:
        if row is None or row.all():
            return None, self._prefixes
        key = row.tobytes()
        hit = self._pattern_cache.get(key)
        if hit is None:
            idx = np.flatnonzero(row)
            hit = (idx, [self._prefixes[i] for i in idx])
            if len(self._pattern_cache) < 4096:
                self._pattern_cache[key] = hit
        return hit

    # -- public views --------------------------------------------------------

    def items(self, k0: int, k1: int) -> list[dict]:
        """Snapshot items for indices k0..k1-1 as JSON-ready dicts."""
        out = []
        for start, up, down, present in self._chunks(k0, k1):
            for r in range(up.shape[0]):
                idx, _ = self._visible(None if present is None else present[r])
                series = range(self.series_count) if idx is None else idx.tolist()
                ups, downs = up[r].tolist(), down[r].tolist()
                samples = []
                for s in series:
                    user_uuid, email = self.users[self._series_user[s]]
                    samples.append(
                        {
                            "uuid": user_uuid,
                            "email": email,
                            "inbound_tag": self._series_tag[s],
                            "uplink_bytes_total": ups[s],
                            "downlink_bytes_total": downs[s],
                        }
                    )
                out.append({"collected_at": self.collected_at(start + r), "samples": samples})
        return out

    def items_json(self, k0: int, k1: int) -> list[str]:
        """The same items pre-rendered as compact JSON (equal to
        ``json.dumps(item, separators=(",", ":"))``): the server's hot path,
        because per-sample dicts plus json.dumps cap throughput well below
        what a benchmark of the pipeline needs."""
        out = []
        mid = _MID
        for start, up, down, present in self._chunks(k0, k1):
            for r in range(up.shape[0]):
                idx, prefixes = self._visible(None if present is None else present[r])
                ups, downs = (up[r], down[r]) if idx is None else (up[r][idx], down[r][idx])
                samples = ",".join(
                    [f"{p}{u}{mid}{d}}}" for p, u, d in zip(prefixes, ups.tolist(), downs.tolist())]
                )
                out.append(f'{{"collected_at":"{self.collected_at(start + r)}","samples":[{samples}]}}')
        return out

    def snapshot_at(self, ts: datetime) -> list[dict]:
        """Samples of the snapshot at ``ts`` (or the last one before it when
        ``ts`` is off the interval grid)."""
        k = self.index_at_or_before(ts)
        return self.items(k, k + 1)[0]["samples"]

    def iter_items(self, since: datetime, until: datetime) -> Iterator[dict]:
        """Items with since <= collected_at < until, oldest first."""
        window = self.index_range(since, until)
        for start in range(window.start, window.stop, _CHUNK_ROWS):
            yield from self.items(start, min(window.stop, start + _CHUNK_ROWS))
