"""The HTTP server: three portals on one port, fault injection and a request log."""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pandas as pd

from . import datafair, ods
from .conformance import Conformance, Framing, Limits, Stats, rate_limited
from .faults import DATA_FAULTS, FaultBoard, TransportFault, apply_data_fault
from .fixtures import DEFAULT_YEARS, partition_sources, served_frame
from .protocol import ApiError, Request, Response, Route
from .specs import DATASETS, PORTALS
from .store import LRU, DatasetState
from .transport import send

INITIAL_SIGNAL = datetime(2025, 1, 15, 6, 0, 0, tzinfo=UTC)
MAX_LOG = 100_000


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: PortalEmulator) -> None:
        self.emulator = emulator
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "PortalEmulator/1.0"
    timeout = 120
    server: _Server

    def do_GET(self) -> None:
        self.server.emulator._serve(self)

    def do_POST(self) -> None:
        self.server.emulator._serve(self)

    def do_DELETE(self) -> None:
        self.server.emulator._serve(self)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""


class PortalEmulator:
    """Local ODRE (Opendatasoft), Agence ORE and Enedis (Data Fair) portals on one port."""

    def __init__(
        self,
        years: Sequence[int] = DEFAULT_YEARS,
        adresse_rows: Mapping[int, int] | int | None = None,
        seed: int = 0,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        regional_daily_years: Sequence[int] | None = None,
        conformance: int | None = None,
        rate_window_s: float = 60.0,
        rate_limit_probability: float = 0.03,
        limits: bool = False,
        requests_per_minute: int | None = 600,
        bandwidth: float | None = 500_000,
    ) -> None:
        self.years = tuple(sorted(set(years)))
        # values_agg buckets returned at most (Data Fair: 1000); tests lower it to reach the cap
        self.agg_cap = datafair.MAX_AGG_SIZE
        if isinstance(adresse_rows, int):
            adresse_rows = {self.years[-1]: adresse_rows}
        sources = partition_sources(
            self.years,
            adresse_rows=adresse_rows,
            regional_daily_years=regional_daily_years,
            seed=seed,
        )
        self._states = {
            short: DatasetState(DATASETS[short], sources[short], INITIAL_SIGNAL)
            for short in DATASETS
        }
        self.cache = LRU(32)
        self._faults = FaultBoard()
        self._log: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._host, self._port = host, port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conformance: Conformance | None = None
        self._limits: Limits | None = None
        self._stats = Stats()
        if conformance is not None:
            self.conformance(
                conformance,
                rate_window_s=rate_window_s,
                rate_limit_probability=rate_limit_probability,
            )
        if limits:
            self.limits(requests_per_minute=requests_per_minute, bandwidth=bandwidth)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> PortalEmulator:
        """Bind and serve in a background thread."""
        if self._server is None:
            self._server = _Server((self._host, self._port), self)
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="portal-emulator", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def serve_forever(self) -> None:
        """Serve in the calling thread until `stop()` (from another thread) or Ctrl-C."""
        if self._server is None:
            self._server = _Server((self._host, self._port), self)
        self._server.serve_forever()

    def __enter__(self) -> PortalEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- addresses
    @property
    def port(self) -> int:
        """Bound port (after start)."""
        if self._server is None:
            raise RuntimeError("emulator not started")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://{self._host}:{self.port}"

    @property
    def urls(self) -> dict[str, str]:
        """Base URL of each portal: odre, ore, enedis."""
        return {portal: f"{self.base_url}/{portal}" for portal in PORTALS}

    @property
    def dataset_ids(self) -> dict[str, str]:
        """Short name -> dataset id used in URLs (the slug on Data Fair portals)."""
        return {short: spec.dataset_id for short, spec in DATASETS.items()}

    @property
    def datafair_ids(self) -> dict[str, str]:
        """Short name -> Data Fair internal id (what `next` links use) for Data Fair datasets."""
        return {s: d.internal_id for s, d in DATASETS.items() if d.protocol == "datafair"}

    @property
    def portals(self) -> dict[str, str]:
        """Short name -> portal (odre, ore, enedis)."""
        return {short: spec.portal for short, spec in DATASETS.items()}

    # ----------------------------------------------------------------- catalog
    def find(self, portal: str, ident: str) -> DatasetState | None:
        """Dataset served by `portal` under id or slug `ident`."""
        for state in self._states.values():
            spec = state.spec
            if spec.portal == portal and ident in (spec.dataset_id, spec.internal_id):
                return state
        return None

    def states(self, portal: str) -> list[DatasetState]:
        """Datasets of one portal."""
        return [s for s in self._states.values() if s.spec.portal == portal]

    def state(self, dataset: str) -> DatasetState:
        """State of one dataset by short name."""
        try:
            return self._states[dataset]
        except KeyError:
            raise KeyError(f"unknown dataset {dataset!r}; one of {sorted(DATASETS)}") from None

    # ----------------------------------------------------------------- served data
    def years_of(self, dataset: str) -> list[int]:
        """Years (partitions) served for a dataset."""
        return sorted(self.state(dataset).partitions)

    def count(self, dataset: str, year: int | None = None) -> int:
        """Rows served for a dataset (or one partition)."""
        state = self.state(dataset)
        if year is None:
            return state.count
        return state.partitions[year].num_rows

    def table(self, dataset: str, year: int) -> pd.DataFrame:
        """What is currently served for (dataset, year), with the portal's column names."""
        state = self.state(dataset)
        part = state.partitions[year]
        fields = part.fields()
        frame = served_frame(part.take_all(), {f.name: f.kind for f in fields})
        return frame.rename(columns={f.name: state.out_name(f.name) for f in fields})

    def signal(self, dataset: str) -> str:
        """Current change signal value (data_processed / dataUpdatedAt) as served."""
        state = self.state(dataset)
        if state.spec.protocol == "ods":
            return ods.metadata(state)["metas"]["default"]["data_processed"]
        return datafair.metadata(state, state.spec.portal, "localhost")["dataUpdatedAt"]

    # ----------------------------------------------------------------- faults
    def inject(
        self,
        kind: str,
        *,
        dataset: str | None = None,
        request: str | None = None,
        times: int | None = 1,
        status: int = 503,
        retry_after: float = 1.0,
        fraction: float = 0.5,
        delay: float = 0.0,
        chunk_delay: float = 0.0,
        message: str | None = None,
    ) -> TransportFault:
        """Arm a transport fault: status, reset, truncate, error_in_body or slow."""
        if dataset is not None:
            self.state(dataset)
        fault = TransportFault(
            kind,
            dataset=dataset,
            request=request,
            times=times,
            status=status,
            retry_after=retry_after,
            fraction=fraction,
            delay=delay,
            chunk_delay=chunk_delay,
        )
        if message:
            fault.message = message
        return self._faults.add(fault)

    @property
    def faults(self) -> list[TransportFault]:
        """Transport faults still armed."""
        return self._faults.active()

    def data_fault(
        self,
        kind: str,
        dataset: str,
        year: int,
        *,
        column: str | None = None,
        row: int = 0,
        value: Any = None,
        bump: bool = False,
    ) -> dict[str, Any]:
        """Apply a data fault (see DATA_FAULTS) to one partition; `bump` moves the signal."""
        with self._lock:
            state = self.state(dataset)
            info = apply_data_fault(state, kind, year, column=column, row=row, value=value)
            if bump:
                state.bump()
        return info

    def revise(self, dataset: str, year: int | None = None, factor: float = 1.1) -> None:
        """Scale the measures served for one partition (all if year=None) and bump the signal."""
        with self._lock:
            state = self.state(dataset)
            for y in [year] if year is not None else list(state.partitions):
                part = state.partitions[y]
                state.set_partition(y, part.with_mods(factor=part.mods.factor * factor))
            state.bump()

    def bump_signal(self, dataset: str, *, data: bool = True) -> None:
        """Move the dataset's change signal (data=False: only `modified`/`updatedAt`)."""
        with self._lock:
            self.state(dataset).bump(data=data)

    def alias_variant(self, dataset: str | None = None, enabled: bool = True) -> None:
        """Serve ODRE gas columns as `*_natran` instead of `*_grtgaz` (None: all ODRE datasets)."""
        with self._lock:
            targets = (
                [dataset] if dataset else [s for s, d in DATASETS.items() if d.portal == "odre"]
            )
            for short in targets:
                state = self.state(short)
                state.natran = enabled
                state.version += 1

    def clear_faults(self) -> None:
        """Disarm transport faults and undo data faults (revisions, signals, aliases stay)."""
        self._faults.clear()
        with self._lock:
            for state in self._states.values():
                for year, part in list(state.partitions.items()):
                    if (
                        part.mods
                        != part.with_mods(
                            dropped=(), extra=(), text_columns=(), cells=(), appended=()
                        ).mods
                    ):
                        state.set_partition(
                            year,
                            part.with_mods(
                                dropped=(), extra=(), text_columns=(), cells=(), appended=()
                            ),
                        )

    def reset(self) -> None:
        """Back to the initial state: no faults, no conformance mode, no limits, fixture data
        and signals, empty log and statistics."""
        self._faults.clear()
        self.conformance_off()
        self._limits = None
        self.agg_cap = datafair.MAX_AGG_SIZE
        with self._lock:
            for state in self._states.values():
                state.reset()
        self.cache.clear()
        self.clear_requests()
        self._stats.clear()

    # ----------------------------------------------------------------- conformance, limits
    def conformance(self, seed: int, **options: Any) -> dict[str, Any]:
        """Turn on seeded conformance mode; `options` are those of `conformance.Conformance`
        (rate_window_s, rate_limit_probability, gzip_probability, geo_bytes). Returns the
        choices made."""
        conf = Conformance(seed, **options)
        with self._lock:
            for state in self._states.values():
                state.conformance = conf.dataset_choices(state)
                state.version += 1
            self._conformance = conf
        self.cache.clear()
        return self.conformance_info()

    def conformance_off(self) -> None:
        """Back to clean framing and representation."""
        with self._lock:
            self._conformance = None
            for state in self._states.values():
                if state.conformance is not None:
                    state.conformance = None
                    state.version += 1

    def conformance_info(self) -> dict[str, Any] | None:
        """Settings and per-dataset choices of conformance mode (None when off)."""
        conf = self._conformance
        if conf is None:
            return None
        datasets = {
            short: state.conformance.describe()
            for short, state in self._states.items()
            if state.conformance is not None
        }
        return {**conf.describe(), "datasets": datasets}

    def limits(
        self,
        *,
        requests_per_minute: int | None = 600,
        bandwidth: float | None = 500_000,
        window_s: float = 60.0,
        request_portals: Sequence[str] = ("ore", "enedis"),
        bandwidth_portals: Sequence[str] = PORTALS,
    ) -> dict[str, Any]:
        """Emulate published limits: Data Fair requests per `window_s` (429 in the real shape
        when exceeded) and a bandwidth throttle in bytes/s per portal; None disables one."""
        self._limits = Limits(
            requests_per_minute=requests_per_minute,
            bandwidth=bandwidth,
            window_s=window_s,
            request_portals=tuple(request_portals),
            bandwidth_portals=tuple(bandwidth_portals),
        )
        return self._limits.describe()

    def limits_off(self) -> None:
        """No request limit, no throttle."""
        self._limits = None

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-portal statistics: requests, status_429, rate_windows, gzip, bytes_sent, chunks,
        regimes (plain/tiny/medium/large answers), throttle_wait_s."""
        out = self._stats.snapshot()
        if self._limits is not None:
            for portal, throttle in self._limits.throttles.items():
                out[portal]["throttle_wait_s"] = round(throttle.waited, 3)
        return out

    def clear_stats(self) -> None:
        """Zero the statistics."""
        self._stats.clear()

    # ----------------------------------------------------------------- request log
    @property
    def requests(self) -> list[dict[str, Any]]:
        """Logged portal requests (method, portal, path, query, kind, dataset, status, fault)."""
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        """Empty the request log."""
        with self._lock:
            self._log.clear()

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._log.append(entry)
            if len(self._log) > MAX_LOG:
                del self._log[: len(self._log) - MAX_LOG]

    # ----------------------------------------------------------------- admin API
    def apply(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Apply one fault/change described as JSON (the admin API's body)."""
        spec = dict(spec)
        kind = spec.pop("kind", None)
        if kind in DATA_FAULTS:
            return self.data_fault(kind, spec.pop("dataset"), int(spec.pop("year")), **spec)
        if kind == "revise":
            self.revise(spec["dataset"], spec.get("year"), float(spec.get("factor", 1.1)))
            return {"kind": kind, "dataset": spec["dataset"]}
        if kind == "bump_signal":
            self.bump_signal(spec["dataset"], data=bool(spec.get("data", True)))
            return {"kind": kind, "dataset": spec["dataset"]}
        if kind == "alias_variant":
            self.alias_variant(spec.get("dataset"), bool(spec.get("enabled", True)))
            return {"kind": kind, "dataset": spec.get("dataset")}
        if kind is None:
            raise ValueError("missing 'kind'")
        return self.inject(kind, **spec).describe()

    def _admin(self, req: Request) -> Response:
        path = req.path.rstrip("/")
        try:
            if path == "/_emulator/requests" and req.method == "GET":
                return _json(200, self.requests)
            if path == "/_emulator/requests" and req.method == "DELETE":
                self.clear_requests()
                return _json(200, {"ok": True})
            if path == "/_emulator/faults" and req.method == "GET":
                return _json(200, [f.describe() for f in self.faults])
            if path == "/_emulator/faults" and req.method == "POST":
                body = orjson.loads(req.body or b"{}")
                specs = body if isinstance(body, list) else [body]
                return _json(200, [self.apply(s) for s in specs])
            if path == "/_emulator/faults/clear" and req.method == "POST":
                self.clear_faults()
                return _json(200, {"ok": True})
            if path == "/_emulator/reset" and req.method == "POST":
                self.reset()
                return _json(200, {"ok": True})
            if path == "/_emulator/info" and req.method == "GET":
                return _json(200, self._info())
            if path == "/_emulator/conformance" and req.method == "GET":
                return _json(200, self.conformance_info())
            if path == "/_emulator/conformance" and req.method == "POST":
                body = orjson.loads(req.body or b"{}")
                seed = body.pop("seed")
                if seed is None:
                    self.conformance_off()
                    return _json(200, None)
                if "geo_bytes" in body:
                    body["geo_bytes"] = tuple(body["geo_bytes"])
                return _json(200, self.conformance(int(seed), **body))
            if path == "/_emulator/conformance" and req.method == "DELETE":
                self.conformance_off()
                return _json(200, {"ok": True})
            if path == "/_emulator/limits" and req.method == "GET":
                return _json(200, self._limits.describe() if self._limits else None)
            if path == "/_emulator/limits" and req.method == "POST":
                return _json(200, self.limits(**orjson.loads(req.body or b"{}")))
            if path == "/_emulator/limits" and req.method == "DELETE":
                self.limits_off()
                return _json(200, {"ok": True})
            if path == "/_emulator/stats" and req.method == "GET":
                return _json(200, self.stats())
            if path == "/_emulator/stats" and req.method == "DELETE":
                self.clear_stats()
                return _json(200, {"ok": True})
        except (ValueError, KeyError, TypeError) as exc:
            return _json(400, {"error": str(exc)})
        return _json(404, {"error": f"unknown admin endpoint {req.method} {path}"})

    def _info(self) -> dict[str, Any]:
        return {
            "urls": self.urls,
            "dataset_ids": self.dataset_ids,
            "datafair_ids": self.datafair_ids,
            "counts": {s: {y: p.num_rows for y, p in st.partitions.items()}
                       for s, st in self._states.items()},
        }  # fmt: skip

    # ----------------------------------------------------------------- HTTP
    def _serve(self, handler: _Handler) -> None:
        url = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        segments = url.path.lstrip("/").split("/", 1)
        portal = segments[0]
        req = Request(
            handler.command,
            portal,
            url.path,
            parse_qsl(url.query, keep_blank_values=True),
            handler.headers.get("Host") or f"{self._host}:{self.port}",
            body,
        )
        if portal == "_emulator":
            send(handler, self._admin(req), None)
            return
        route = self._route(req, segments[1] if len(segments) > 1 else "")
        kind = route.kind if route else "unknown"
        dataset = route.dataset if route else None
        limited = self._rate_limit(portal, kind) if portal in PORTALS else None
        fault = self._faults.take(dataset, kind) if route and limited is None else None
        if fault is not None and fault.kind == "slow" and fault.delay > 0:
            time.sleep(fault.delay)
        resp = limited if limited is not None else self._respond(req, route, fault)
        # Logged before the body is written, so a client that saw the response sees the entry.
        self._record(
            {
                "method": req.method,
                "portal": portal,
                "path": req.path,
                "query": req.query,
                "kind": kind,
                "dataset": dataset,
                "status": resp.status,
                "fault": fault.kind if fault else ("rate_limit" if limited else None),
                "time": time.time(),
            }
        )
        framing = self._framing(handler, portal, resp)
        stats = self._stats
        if portal in PORTALS:
            stats.add(portal, "requests")
            if resp.status == 429:
                stats.add(portal, "status_429")
            stats.regime(portal, framing.regime if framing else None)
            if framing is not None and framing.gzip:
                stats.add(portal, "gzip")
            if resp.stream is None and (framing is None or not framing.active):
                stats.add(portal, "bytes_sent", len(resp.body))

        def count(n: int) -> None:
            stats.add(portal, "bytes_sent", n)
            stats.add(portal, "chunks")

        send(handler, resp, fault, framing, count if portal in PORTALS else None)

    def _rate_limit(self, portal: str, kind: str) -> Response | None:
        """The portal's real 429 when a conformance window or the request limit applies."""
        now = time.time()
        conf = self._conformance
        if conf is not None:
            end, opened = conf.rate_check(portal, kind, now)
            if opened:
                self._stats.add(portal, "rate_windows")
            if end is not None:
                return rate_limited(portal, end)
        limits = self._limits
        if limits is not None:
            end = limits.admit(portal, now)
            if end is not None:
                return rate_limited(portal, end, limits.requests_per_minute or 1000)
        return None

    def _framing(self, handler: _Handler, portal: str, resp: Response) -> Framing | None:
        if portal not in PORTALS:
            return None
        conf, limits = self._conformance, self._limits
        framing: Framing | None = None
        if conf is not None:
            accept = handler.headers.get("Accept-Encoding") or ""
            small = resp.stream is not None or len(resp.body) < 64 * 1024
            framing = conf.framing("gzip" in accept.lower(), small)
        if limits is not None and limits.throttle(portal) is not None:
            framing = framing or Framing()
            framing.throttle = limits.throttle(portal)
        return framing

    def _route(self, req: Request, rest: str) -> Route | None:
        if req.portal == "odre":
            return ods.route(self, req.portal, rest)
        if req.portal in ("ore", "enedis"):
            return datafair.route(self, req.portal, rest)
        return None

    def _error(self, portal: str, status: int, message: str, code: str = "") -> Response:
        if portal in ("ore", "enedis"):
            return datafair.error(status, message)
        return ods.error(status, message, code or _ods_code(status))

    def _respond(self, req: Request, route: Route | None, fault: TransportFault | None) -> Response:
        if route is None:
            return self._error(req.portal, 404, f"Ressource introuvable : {req.path}", "NotFound")
        if fault is not None and fault.kind == "status":
            return self._status_fault(req.portal, fault)
        if fault is not None and fault.kind == "quota":
            return rate_limited(
                req.portal, time.time() + fault.retry_after, unit="day", call_limit=5000
            )
        if req.method != "GET":
            return self._error(req.portal, 405, "Méthode non autorisée", "MethodNotAllowed")
        try:
            return route.handler(req)
        except ApiError as exc:
            return self._error(req.portal, exc.status, exc.message, exc.code)
        except Exception as exc:  # an emulator bug: answer 500 rather than drop the socket
            traceback.print_exc(file=sys.stderr)
            return self._error(req.portal, 500, f"Erreur interne de l'émulateur : {exc}")

    def _status_fault(self, portal: str, fault: TransportFault) -> Response:
        if fault.status == 429:
            if portal == "odre":
                return ods.quota_error(fault.retry_after)
            return datafair.rate_limited(fault.retry_after)
        messages = {
            500: "Erreur interne du serveur.",
            502: "Mauvaise passerelle.",
            503: "Service temporairement indisponible.",
            504: "Délai d'attente de la passerelle dépassé.",
        }
        resp = self._error(portal, fault.status, messages.get(fault.status, "Erreur."))
        if fault.status in (503, 429):
            resp.headers.append(("Retry-After", str(max(0, round(fault.retry_after)))))
        return resp


def _ods_code(status: int) -> str:
    return {
        400: "InvalidRESTParameterError",
        404: "NotFound",
        405: "MethodNotAllowed",
        429: "TooManyRequests",
    }.get(status, "InternalServerError" if status >= 500 else "Error")


def _json(status: int, payload: Any) -> Response:
    return Response(status, body=orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS))
