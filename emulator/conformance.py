"""Conformance mode and published limits: what a portal may do that a client must not rely on.

Conformance mode (seeded) varies the representation, never the served values:
- per request: chunk sizes (1 byte to 1 MB, each chunk flushed separately), gzip when the
  client accepts it, CRLF or LF and BOM or not in CSV exports, rate-limit windows answered
  with each portal's real 429 shape (no `Retry-After`);
- per dataset, a pure function of the seed: Data Fair code columns served as integers
  (`"01"` -> `1`, schema `type: integer`), the declared ODS type of `annee` on the two
  annual ODRE datasets (`date`, `int` or `text`), and multi-MB `geo_shape_region` texts.

Limits (not random): a Data Fair per-minute request limit and a per-portal bandwidth throttle.
"""

from __future__ import annotations

import collections
import math
import random
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from .protocol import Response
from .specs import DATAFAIR_PORTALS, PORTALS

DATA_KINDS = frozenset({"records", "export", "lines", "agg"})
CODE_COLUMNS = (
    "code_region",
    "code_departement",
    "code_commune",
    "code_iris",
    "code_epci",
    "code_secteur_naf2",
)
ANNUAL_ODRE = ("nationale_annuelle", "regionale_annuelle")
ANNEE_TYPES = ("date", "int", "text")
GEO_DATASET, GEO_FIELD, GEO_KEY = "regionale_annuelle", "geo_shape_region", "code_insee_region"
REGIMES = {"tiny": (1, 16), "medium": (100, 5000), "large": (64 * 1024, 1024 * 1024)}
TINY_BUDGET = 64 * 1024  # tiny chunks only for the first 64 kB of a body
ODS_RATE_MESSAGE = "Too many requests on the domain. Please contact the domain administrator."
DATAFAIR_RATE_MESSAGE = "Trop de requêtes dans un interval restreint, veuillez patienter."


# ----------------------------------------------------------------- real 429 shapes
def ods_rate_limited(reset_at: float, call_limit: int = 1000, unit: str = "minute") -> Response:
    """Opendatasoft's 429: JSON errorcode/error/reset_time/..., no Retry-After, no X-RateLimit."""
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(reset_at)))
    payload = {
        "errorcode": 10002,
        "error": ODS_RATE_MESSAGE,
        "reset_time": reset,
        "limit_time_unit": unit,
        "call_limit": call_limit,
    }
    return Response(429, body=orjson.dumps(payload))


def datafair_rate_limited() -> Response:
    """Data Fair's 429: French text/plain, no hint headers."""
    return Response(429, "text/plain; charset=utf-8", DATAFAIR_RATE_MESSAGE.encode())


def rate_limited(
    portal: str, reset_at: float, call_limit: int = 1000, unit: str = "minute"
) -> Response:
    """The real 429 of `portal`."""
    if portal in DATAFAIR_PORTALS:
        return datafair_rate_limited()
    return ods_rate_limited(reset_at, call_limit, unit)


# ----------------------------------------------------------------- per-dataset choices
@dataclass
class DatasetConformance:
    """Seed-derived representation choices for one dataset (attached to its DatasetState)."""

    owner: Conformance
    annee_type: str | None = None  # declared ODS type of `annee` (annual ODRE datasets)
    int_codes: tuple[str, ...] = ()  # Data Fair code columns served as integers
    geo: dict[str, str] | None = None  # code_insee_region -> geo_shape_region text

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "annee_type": self.annee_type,
            "int_codes": list(self.int_codes),
            "geo_bytes": {k: len(v) for k, v in (self.geo or {}).items()},
        }


def _digits_only(values: pa.Array) -> bool:
    values = values.drop_null()
    if len(values) == 0:
        return False
    if not pa.types.is_string(values.type):
        return False
    return bool(pc.all(pc.match_substring_regex(values, r"^\d+$")).as_py())


def eligible_int_codes(state: Any) -> list[str]:
    """Code columns of a Data Fair dataset whose served values are all digits."""
    names = {f.name for f in state.fields()}
    out = []
    for name in CODE_COLUMNS:
        if name not in names:
            continue
        parts = [p for p in state.partitions.values() if name in p.column_names()]
        if parts and all(_digits_only(p.column(name)) for p in parts):
            out.append(name)
    return out


def geo_text(rng: random.Random, target: int, label: str) -> str:
    """A valid GeoJSON Feature text of about `target` bytes with `;`, `"` and newlines."""
    lon, lat = rng.uniform(-4.5, 8.0), rng.uniform(42.0, 51.0)
    pieces: list[str] = []
    size = 0
    while size < target:
        lon += rng.uniform(-0.01, 0.01)
        lat += rng.uniform(-0.01, 0.01)
        piece = f"[{lon:.6f}, {lat:.6f}]"
        pieces.append(piece)
        size += len(piece) + 2
    pieces.append(pieces[0])
    name = orjson.dumps(f'{label}; contour "simplifié"; v2').decode()
    coords = ",\n".join(pieces)
    return (
        '{"type": "Feature",\n "properties": {"nom": ' + name + "},\n"
        ' "geometry": {"type": "Polygon", "coordinates": [[\n' + coords + "\n]]}}"
    )


# ----------------------------------------------------------------- framing of one answer
@dataclass
class Framing:
    """How one response body goes on the wire."""

    regime: str | None = None  # tiny, medium, large; None: one chunk per piece
    gzip: bool = False
    rng: random.Random | None = None
    throttle: Throttle | None = None

    @property
    def active(self) -> bool:
        """True if this changes anything compared with the plain writer."""
        return self.regime is not None or self.gzip or self.throttle is not None


class Throttle:
    """Shared bandwidth pacing of one portal (bytes per second, small burst allowed)."""

    def __init__(self, rate: float, burst_s: float = 0.2) -> None:
        self.rate = float(rate)
        self.burst_s = burst_s
        self._next = 0.0
        self._lock = threading.Lock()
        self.waited = 0.0

    def consume(self, nbytes: int) -> None:
        """Account for `nbytes` sent, sleeping as needed to stay under the rate."""
        if self.rate <= 0 or nbytes <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + nbytes / self.rate
            wait = self._next - now - self.burst_s
        if wait > 0:
            self.waited += wait
            time.sleep(wait)


# ----------------------------------------------------------------- statistics
def _portal_stats() -> dict[str, Any]:
    return {
        "requests": 0,
        "status_429": 0,
        "rate_windows": 0,
        "gzip": 0,
        "bytes_sent": 0,
        "chunks": 0,
        "regimes": {"plain": 0, "tiny": 0, "medium": 0, "large": 0},
        "throttle_wait_s": 0.0,
    }


class Stats:
    """Per-portal counters: requests, 429 answers, gzip answers, bytes, chunk regimes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = {p: _portal_stats() for p in PORTALS}

    def add(self, portal: str, key: str, amount: float = 1) -> None:
        """Increment one counter."""
        with self._lock:
            entry = self._data.setdefault(portal, _portal_stats())
            entry[key] += amount

    def regime(self, portal: str, name: str | None) -> None:
        """Count one answer of chunk regime `name` (None: plain)."""
        with self._lock:
            entry = self._data.setdefault(portal, _portal_stats())
            entry["regimes"][name or "plain"] += 1

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """A deep copy of the counters."""
        with self._lock:
            return {p: {**d, "regimes": dict(d["regimes"])} for p, d in self._data.items()}

    def clear(self) -> None:
        """Zero every counter."""
        with self._lock:
            self._data = {p: _portal_stats() for p in PORTALS}


# ----------------------------------------------------------------- conformance mode
class Conformance:
    """Seeded conformance mode of one emulator."""

    def __init__(
        self,
        seed: int,
        *,
        rate_window_s: float = 60.0,
        rate_limit_probability: float = 0.03,
        gzip_probability: float = 0.5,
        geo_bytes: tuple[int, int] = (1_000_000, 3_000_000),
    ) -> None:
        if not 0.0 <= rate_limit_probability <= 1.0:
            raise ValueError("rate_limit_probability must be within [0, 1]")
        self.seed = int(seed)
        self.rate_window_s = float(rate_window_s)
        self.rate_limit_probability = float(rate_limit_probability)
        self.gzip_probability = float(gzip_probability)
        self.geo_bytes = (int(geo_bytes[0]), int(geo_bytes[1]))
        self.rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._windows: dict[str, float] = {}

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings."""
        return {
            "seed": self.seed,
            "rate_window_s": self.rate_window_s,
            "rate_limit_probability": self.rate_limit_probability,
            "gzip_probability": self.gzip_probability,
        }

    def _draw(self) -> float:
        with self._lock:
            return self.rng.random()

    def sub_rng(self) -> random.Random:
        """An independent generator for one request, seeded from the emulator's."""
        with self._lock:
            return random.Random(self.rng.getrandbits(64))

    # per dataset: pure functions of the seed (and of the served data)
    def dataset_choices(self, state: Any) -> DatasetConformance:
        """The seed's representation choices for one dataset."""
        spec = state.spec
        out = DatasetConformance(self)
        if spec.protocol == "datafair":
            rng = random.Random(f"{self.seed}/{spec.short}/int_codes")
            eligible = eligible_int_codes(state)
            if eligible:
                k = rng.randint(1, len(eligible))
                chosen = set(rng.sample(eligible, k))
                out.int_codes = tuple(c for c in eligible if c in chosen)
        if spec.short in ANNUAL_ODRE:
            rng = random.Random(f"{self.seed}/{spec.short}/annee")
            out.annee_type = rng.choice(ANNEE_TYPES)
        if spec.short == GEO_DATASET:
            rng = random.Random(f"{self.seed}/{spec.short}/geo")
            codes = sorted(
                {
                    str(v)
                    for p in state.partitions.values()
                    if GEO_KEY in p.column_names()
                    for v in p.column(GEO_KEY).drop_null().to_pylist()
                }
            )
            big = rng.choice(codes) if codes else None
            low, high = self.geo_bytes
            out.geo = {
                code: geo_text(
                    rng,
                    rng.randint(low, high) if code == big else rng.randint(20_000, 100_000),
                    f"région {code}",
                )
                for code in codes
            }
        return out

    # per request
    def csv_style(self) -> tuple[bytes, bool]:
        """(line end, BOM) of one CSV export."""
        with self._lock:
            newline = b"\r\n" if self.rng.random() < 0.5 else b"\n"
            bom = self.rng.random() < 0.5
        return newline, bom

    def framing(self, accept_gzip: bool, small: bool) -> Framing:
        """Chunk regime and gzip of one answer (`small`: a body under 64 kB or a stream)."""
        rng = self.sub_rng()
        choices = ["tiny", "medium", "large"] if small else ["medium", "large"]
        regime = rng.choice(choices)
        gz = accept_gzip and rng.random() < self.gzip_probability
        return Framing(regime=regime, gzip=gz, rng=rng)

    def rate_check(self, portal: str, kind: str, now: float) -> tuple[float | None, bool]:
        """(end of the portal's rate-limited window or None, whether a window just opened)."""
        with self._lock:
            end = self._windows.get(portal, 0.0)
            if now < end:
                return end, False
            if kind in DATA_KINDS and self.rng.random() < self.rate_limit_probability:
                end = now + self.rate_window_s
                self._windows[portal] = end
                return end, True
        return None, False


class Limits:
    """Published anonymous limits: Data Fair requests per minute and a bandwidth throttle."""

    def __init__(
        self,
        *,
        requests_per_minute: int | None = 600,
        bandwidth: float | None = 500_000,
        window_s: float = 60.0,
        request_portals: tuple[str, ...] = DATAFAIR_PORTALS,
        bandwidth_portals: tuple[str, ...] = PORTALS,
    ) -> None:
        self.requests_per_minute = requests_per_minute
        self.bandwidth = bandwidth
        self.window_s = float(window_s)
        self.request_portals = tuple(request_portals)
        self.bandwidth_portals = tuple(bandwidth_portals)
        self._lock = threading.Lock()
        self._seen: dict[str, collections.deque[float]] = {}
        self.throttles = (
            {p: Throttle(bandwidth) for p in self.bandwidth_portals} if bandwidth else {}
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings."""
        return {
            "requests_per_minute": self.requests_per_minute,
            "bandwidth": self.bandwidth,
            "window_s": self.window_s,
            "request_portals": list(self.request_portals),
            "bandwidth_portals": list(self.bandwidth_portals),
        }

    def admit(self, portal: str, now: float) -> float | None:
        """None if the request is admitted, else when the oldest counted request expires."""
        if not self.requests_per_minute or portal not in self.request_portals:
            return None
        with self._lock:
            seen = self._seen.setdefault(portal, collections.deque())
            while seen and seen[0] <= now - self.window_s:
                seen.popleft()
            if len(seen) >= self.requests_per_minute:
                return seen[0] + self.window_s
            seen.append(now)
        return None

    def throttle(self, portal: str) -> Throttle | None:
        """The portal's bandwidth throttle, if any."""
        return self.throttles.get(portal)


# ----------------------------------------------------------------- body writer
class BodyWriter:
    """Writes a chunked body: random chunk sizes, optional gzip, throttle, byte counting."""

    def __init__(
        self,
        wfile: BinaryIO,
        framing: Framing | None,
        count: Any = None,
    ) -> None:
        self.wfile = wfile
        self.framing = framing if framing is not None and framing.active else None
        self.count = count
        self._gz = (
            zlib.compressobj(6, zlib.DEFLATED, 31)
            if self.framing is not None and self.framing.gzip
            else None
        )
        self._tiny_left = TINY_BUDGET

    def _frame(self, data: bytes | memoryview) -> None:
        if not len(data):
            return
        fr = self.framing
        if fr is not None and fr.throttle is not None:
            fr.throttle.consume(len(data))
        self.wfile.write(b"%x\r\n" % len(data))
        self.wfile.write(data)
        self.wfile.write(b"\r\n")
        self.wfile.flush()
        if self.count is not None:
            self.count(len(data))

    def _emit(self, data: bytes) -> None:
        fr = self.framing
        if fr is None or fr.regime is None or fr.rng is None:
            if fr is not None and fr.throttle is not None and len(data) > 65536:
                view = memoryview(data)
                for i in range(0, len(data), 65536):
                    self._frame(view[i : i + 65536])
                return
            self._frame(data)
            return
        view = memoryview(data)
        pos = 0
        rng = fr.rng
        while pos < len(view):
            regime = fr.regime
            if regime == "tiny" and self._tiny_left <= 0:
                regime = "medium"
            low, high = REGIMES[regime]
            n = rng.randint(low, high)
            if regime == "tiny":
                self._tiny_left -= n
            self._frame(view[pos : pos + n])
            pos += n

    def write(self, data: bytes) -> None:
        """Send one piece of the body."""
        if not data:
            return
        if self._gz is not None:
            data = self._gz.compress(bytes(data))
            if not data:
                return
        self._emit(data)

    def flush_partial(self) -> None:
        """Send what gzip holds (before a deliberate break)."""
        if self._gz is not None:
            self._emit(self._gz.flush(zlib.Z_SYNC_FLUSH))

    def finish(self) -> None:
        """Send the rest and the terminating chunk."""
        if self._gz is not None:
            self._emit(self._gz.flush())
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
