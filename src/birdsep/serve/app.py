"""The HTTP API behind the page (FastAPI) and ``birdsep serve`` itself (uvicorn).

Every endpoint that touches a file takes a recording ``id`` and goes through
:meth:`Library.resolve`; settings (``separator``, ``classifier``, ``mode``, ``combine``,
``min_conf``, ``lat``, ``lon``, ``week``) are query parameters checked by
:meth:`Library.settings`. Errors are JSON ``{"detail": one line}`` with 400 (bad choice), 403
(refused path), 404 (no such thing), 409 (not processed yet), 413 (upload too large), 422
(unreadable audio) or 500; none of them stops the server.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.requests import ClientDisconnect

from birdsep.version import __version__
from birdsep.errors import AudioError, UsageError
from birdsep.serve.jobs import JobManager
from birdsep.serve.library import SERVE_DIR, SERVE_RTYPES, Library, NotFound, Recording, Refused, Settings, TooLarge
from birdsep.serve.media import Media, track_colours, track_ids

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
DEFAULT_UPLOAD_LIMIT_MB = 1024
MEDIA_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
               ".oga": "audio/ogg", ".opus": "audio/ogg", ".png": "image/png", ".zip": "application/zip",
               ".txt": "text/plain; charset=utf-8", ".csv": "text/csv; charset=utf-8", ".json": "application/json"}


class NotReady(UsageError):
    """Asked for results that are not made yet (HTTP 409)."""


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    roots: list[str] = field(default_factory=list)
    out: str = "."
    classifiers: list[str] | None = None  # None: BirdNET when installed
    max_upload_mb: float = DEFAULT_UPLOAD_LIMIT_MB
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    allowed_hosts: list[str] = field(default_factory=list)  # --allowed-host: more names the page answers to


#: A Host header: a name or an IPv4 address, or an IPv6 address in brackets; then an optional port.
HOST_HEADER = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9_.\-]+))(?::(?P<port>[0-9]{1,5}))?")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def _host_key(name: str):
    """How a host name or address compares: an IP address as such (::1 = 0:0:0:0:0:0:0:1), a
    name in lower case without a trailing dot."""
    try:
        ip = ipaddress.ip_address(name.strip("[]"))
        return getattr(ip, "ipv4_mapped", None) or ip
    except ValueError:
        return name.lower().rstrip(".")


def host_allowed(header: str, allowed: frozenset, local_address: str | None = None) -> bool:
    """Whether a request's Host ``header`` names this server: one of ``allowed`` (keys of
    :func:`_host_key`), or the IP address the connection arrived at (``local_address``; a
    DNS-rebinding page always sends its own DNS name). Anything that is not a well-formed
    ``name[:port]`` or ``[v6][:port]`` (e.g. ``[::1]evil.example``) is refused."""
    m = HOST_HEADER.fullmatch(header or "")
    if m is None:
        return False
    key = _host_key(m["v6"] or m["name"])
    if m["v6"] is not None and not isinstance(key, (ipaddress.IPv6Address, ipaddress.IPv4Address)):
        return False
    if key in allowed:
        return True
    if local_address and not isinstance(key, str):
        try:
            return key == _host_key(local_address)
        except ValueError:
            return False
    return False


def allowed_host_names(host: str, extra: list[str] | tuple[str, ...] = ()) -> tuple[str, ...]:
    """The names the page answers to when listening on ``host``: the loopback names, ``host``
    itself (unless a wildcard), this machine's host names and the ``--allowed-host`` names;
    the address a connection arrives at is accepted besides (:func:`host_allowed`)."""
    names = [*LOOPBACK_NAMES, *extra]
    if host not in WILDCARD_HOSTS:
        names.append(host)
    if not _is_loopback(host):
        names += [socket.gethostname(), socket.getfqdn()]
    return tuple(dict.fromkeys(n for n in names if n))


def create_app(library: Library, jobs: JobManager, media: Media, upload_limit: int,
               allowed_hosts: tuple[str, ...] | None = None) -> FastAPI:
    """``allowed_hosts``: the names a request's Host header may give (None: any), besides the
    address the connection arrived at (:func:`host_allowed`), so that a web site cannot reach
    the API through a DNS name of its own pointed at this machine (DNS rebinding), whatever
    address the server listens on."""
    from birdsep.modes import MODES, POOLED, rule_names
    from birdsep.outputs import paths_of, read_table
    from birdsep.pipeline import RESULT_NAME, levels_db, plot_folder, track_files
    from birdsep.plots import SCALES

    app = FastAPI(title="birdsep", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json")
    names_of = _species_names()
    allowed = None if allowed_hosts is None else frozenset(_host_key(h) for h in allowed_hosts)

    status_codes = [(Refused, 403), (NotFound, 404), (TooLarge, 413), (NotReady, 409), (UsageError, 400),
                    (AudioError, 422)]
    for exc_type, code in status_codes:
        app.add_exception_handler(exc_type, lambda request, exc, code=code: JSONResponse(
            {"detail": str(exc)}, status_code=code))

    @app.middleware("http")
    async def this_machine_and_this_page_only(request: Request, call_next):
        host = request.headers.get("host", "")
        local = (request.scope.get("server") or (None,))[0]
        if allowed is not None and not host_allowed(host, allowed, local):
            shown = re.sub(r"[^\w.:\[\]\-]", "?", host[:100]) or "no host"
            return JSONResponse({"detail": f"refused: {shown} is not this server's address (birdsep serve "
                                           "--allowed-host NAME adds a name)"}, status_code=403)
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD") and origin and urlsplit(origin).netloc != host:
            return JSONResponse({"detail": "refused: a request from another site"}, status_code=403)
        return await call_next(request)

    @app.exception_handler(ClientDisconnect)
    async def abandoned(request, exc):  # the client went away mid-request (a closed tab, a lost network)
        if request.url.path == "/api/upload":  # nothing was stored: the body is spooled until it is whole
            what = f"{request.query_params.get('name', '')[:200]!r}: upload abandoned by the client"
        else:
            what = f"{request.url.path}: request abandoned by the client"
        log.warning("%s", what)
        return JSONResponse({"detail": what}, status_code=400)

    @app.exception_handler(Exception)
    async def internal(request, exc):  # logged; the page gets one line and the server goes on
        log.exception("internal error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}: {exc})"}, status_code=500)

    def settings(separator: str | None = None, classifier: str | None = None, mode: str | None = None,
                 min_conf: float | None = None, lat: float | None = None, lon: float | None = None,
                 week: int | None = None, combine: str | None = None) -> Settings:
        return library.settings(separator, classifier, mode, min_conf, lat, lon, week, combine)

    def recording(id: str) -> Recording:  # noqa: A002 (the query parameter's name)
        return library.resolve(id)

    def finished(rec: Recording, s: Settings) -> tuple[Path, dict]:
        result = library.separation(rec, s)
        if result is None:
            raise NotReady(f"{rec.id}: not separated yet with {s.separator}")
        return library.separated_dir(rec, s), result

    def status(rec: Recording, s: Settings) -> dict:
        job = jobs.current(rec, s)
        if job is not None and job.state in ("queued", "running", "failed"):
            out = job.to_dict()
        else:
            left = jobs.plan(rec, s)
            out = {"job": None, "state": "new" if left else "done", "stage": None, "note": None, "stages": list(left),
                   "percent": 0.0 if left else 100.0, "eta_s": None, "error": None}
        return {"id": rec.id, "name": rec.path.name, "settings": s.to_dict(), **out}

    def attachment(path: Path, filename: str) -> FileResponse:
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"),
                            filename=filename)

    def public_attachment(path: Path, filename: str) -> Response:
        """A table or JSON document as a download, naming no absolute server path
        (:meth:`Library.public`): files by their recording ids, outputs relative to the output folder."""
        import json
        from urllib.parse import quote

        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            text = json.dumps(library.public_json(json.loads(text)), indent=2) + "\n"
        else:
            text = library.public(text)
        quoted = quote(filename)
        disposition = (f'attachment; filename="{filename}"' if quoted == filename
                       else f"attachment; filename*=utf-8''{quoted}")
        return Response(text.encode("utf-8"), headers={"Content-Disposition": disposition},
                        media_type=MEDIA_TYPES.get(path.suffix.lower(), "text/plain; charset=utf-8"))

    # ------------------------------------------------------------------ the page
    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/config")
    def config():
        from birdsep.pretrained import EXAMPLE_RECORDING

        return {
            "version": __version__,
            "roots": [{"label": r.label, "kind": r.label if r.label in ("example", "uploads") else "root"}
                      for r in library.roots.values()],
            "separators": [{"name": n, "sources": d["sources"], "default": n == library.defaults.separator}
                           for n, d in library.separators.items()],
            # kind, and location: whether it takes lat, lon, week (as its backend says)
            "classifiers": [{"label": k, **library.capabilities(k)} for k in library.classifiers],
            "defaults": asdict(library.defaults),
            "modes": list(MODES),
            "rules": list(rule_names()),  # what `combine` takes: the pooling of mode `pooled_mode`
            "pooled_mode": POOLED,
            "scales": list(SCALES),
            "upload_limit_bytes": upload_limit,
            "example": f"example/{EXAMPLE_RECORDING.name}",
        }

    @app.get("/api/library")
    def listing(root: str, s: Settings = Depends(settings)):
        recs = library.listing(root, s)
        for r in recs:
            job = jobs.current(library.resolve(r["id"]), s)
            r["job"] = job.to_dict() if job is not None and job.state != "done" else None
        return {"root": root, "settings": s.to_dict(), "recordings": recs}

    @app.post("/api/upload")
    async def upload(request: Request, name: str):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > upload_limit:
            raise TooLarge(f"{name}: larger than the upload limit ({upload_limit / 1e6:g} MB)")
        spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > upload_limit:
                    raise TooLarge(f"{name}: larger than the upload limit ({upload_limit / 1e6:g} MB)")
                spool.write(chunk)
            spool.seek(0)
            rec = await run_in_threadpool(library.save_upload, name, iter(lambda: spool.read(1 << 20), b""),
                                          upload_limit)
        finally:
            spool.close()
        return {"id": rec.id, "name": rec.path.name}

    @app.post("/api/open")
    def open_recording(rec: Recording = Depends(recording), s: Settings = Depends(settings)):
        jobs.submit(rec, s)
        return status(rec, s)

    @app.get("/api/status")
    def get_status(rec: Recording = Depends(recording), s: Settings = Depends(settings)):
        return status(rec, s)

    @app.get("/api/jobs")
    def list_jobs():
        return [{"id": j.key[0], **j.to_dict()} for j in jobs.jobs()]

    @app.get("/api/result")
    def result(rec: Recording = Depends(recording), s: Settings = Depends(settings)):
        folder, res = finished(rec, s)
        levels = levels_db(res) or [None] * len(res["sources"])
        ids, colours = track_ids(res), track_colours(res)
        tracks = [{"id": "mix", "name": "mix", "colour": "#555555", "level_db": 0.0, "kind": "mix"}]
        for k, (tid, colour) in enumerate(zip(ids, colours)):
            is_source = k < len(res["sources"])
            tracks.append({"id": tid, "name": f"track {k + 1}" if is_source else "above the separator's band",
                           "colour": colour, "kind": "source" if is_source else "high_band",
                           "level_db": levels[k] if is_source else res.get("high_band_level_db")})
        csv = library.detections_csv(rec, s)
        detections = []
        for d in read_table(csv) if csv else []:
            common, scientific = names_of(d.species)
            detections.append({"start": d.start, "end": d.end, "label": d.species, "common": common,
                               "scientific": scientific, "confidence": round(d.confidence, 4), "track": d.channel})
        detections.sort(key=lambda d: (d["start"], -d["confidence"]))
        downloads = [{"what": "tracks", "format": f, "label": f"all tracks ({f.upper()}, zip)"} for f in ("wav", "flac")]
        downloads += [{"what": "track", "track": t, "format": f, "label": f"{t}.{f}"}
                      for t in ids for f in ("wav", "flac")]
        if csv:
            downloads += [{"what": "raven", "label": "Raven selection table"}, {"what": "csv", "label": "CSV"},
                          {"what": "audacity", "label": "Audacity labels"}]
        downloads += [{"what": "picture", "label": "picture (PNG)"}, {"what": "json", "label": RESULT_NAME}]
        return {"id": rec.id, "name": rec.path.name, "settings": s.to_dict(), "duration": res["duration_s"],
                "sample_rate": res["output_sample_rate"], "fmax": res["output_sample_rate"] / 2,
                "separator": s.separator, "classifier": s.classifier, "classified": csv is not None,
                "tracks": tracks, "detections": detections, "downloads": downloads}

    def scale_params(scale: str = "background", range_db: float | None = None) -> tuple[str, float | None]:
        if scale not in SCALES:
            raise UsageError(f"unknown level scale {scale!r} (choose from {', '.join(SCALES)})")
        if range_db is not None and not 3 <= range_db <= 120:
            raise UsageError("range_db must be between 3 and 120")
        return scale, range_db

    @app.get("/api/scale")
    def level_scale(rec: Recording = Depends(recording), s: Settings = Depends(settings),
                    sp: tuple = Depends(scale_params)):
        folder, res = finished(rec, s)
        return media.scale(folder, res, *sp).to_dict()

    @app.get("/api/spectrogram")
    def spectrogram(rec: Recording = Depends(recording), s: Settings = Depends(settings),
                    sp: tuple = Depends(scale_params), view: str = "combined", start: float = 0.0,
                    end: float | None = None, width: int = 3000):
        folder, res = finished(rec, s)
        if view != "combined" and view not in track_ids(res):
            raise NotFound(f"{view}: no such track")
        if not 16 <= width <= 8000:
            raise UsageError("width must be between 16 and 8000")
        png = media.spectrogram(folder, res, view, start, end, width, *sp)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=300"})

    @app.get("/api/audio")
    def audio_file(track: str = "mix", rec: Recording = Depends(recording), s: Settings = Depends(settings)):
        if track == "mix":
            path = media.playable(rec.real)
        else:
            folder, res = finished(rec, s)
            if track not in track_ids(res):
                raise NotFound(f"{track}: no such track")
            path = track_files(folder, res)[track_ids(res).index(track)]
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"))

    @app.get("/api/download")
    def download(what: str, track: str | None = None, format: str = "wav",  # noqa: A002
                 rec: Recording = Depends(recording), s: Settings = Depends(settings)):
        folder, res = finished(rec, s)
        stem = rec.path.stem
        if format not in ("wav", "flac"):
            raise UsageError(f"unknown format {format!r} (wav | flac)")
        if what in ("track", "tracks"):
            files, ids = track_files(folder, res), track_ids(res)
            if what == "tracks":
                return attachment(media.zipped(files, format, stem), f"{stem}_tracks_{format}.zip")
            if track not in ids:
                raise NotFound(f"{track}: no such track")
            return attachment(media.converted(files[ids.index(track)], format), f"{stem}_{track}.{format}")
        if what in ("raven", "csv", "audacity"):
            if library.detections_csv(rec, s) is None:
                raise NotReady(f"{rec.id}: not classified yet")
            path = paths_of(library.detections_base(rec, s), SERVE_RTYPES)["table" if what == "raven" else what]
            return public_attachment(path, path.name)
        if what == "picture":
            path = folder / "separation.png"
            if not path.is_file():
                plot_folder(folder)
            return attachment(path, f"{stem}_separation.png")
        if what == "json":
            return public_attachment(folder / RESULT_NAME, f"{stem}_{RESULT_NAME}")
        raise UsageError(f"unknown download {what!r}")

    return app


def _species_names():
    """label → (common, scientific), the checklists loaded once, on first use."""
    import functools

    cache = {}

    @functools.lru_cache(maxsize=20000)
    def names(label: str):
        if "taxonomy" not in cache:
            from birdsep.taxonomy import Taxonomy

            cache["taxonomy"] = Taxonomy.load()
        return cache["taxonomy"].names(label)

    return names


# ---------------------------------------------------------------------- the server


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def build(opts: ServeOptions) -> tuple[object, JobManager]:
    """The app for these options, and its job manager (to close)."""
    from birdsep.serve.work import Worker

    from birdsep.separation import runtime

    if opts.max_upload_mb <= 0:
        raise UsageError("--max-upload-mb must be positive")
    runtime.resolve_device(opts.device)  # --device cuda without a GPU: one line now, not in every job
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    library = Library.create(opts.roots, opts.out, opts.classifiers)
    worker = Worker(library, opts.device, opts.precision, opts.threads)
    jobs = JobManager(worker, worker.plan)
    media = Media(library.out / SERVE_DIR / "cache")
    hosts = allowed_host_names(opts.host, opts.allowed_hosts)
    return create_app(library, jobs, media, int(opts.max_upload_mb * 1e6), hosts), jobs


def serve(opts: ServeOptions) -> int:
    """``birdsep serve``: build, listen, print the address, serve until interrupted."""
    import uvicorn

    app, jobs = build(opts)
    sock = _bind(opts.host, opts.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"birdsep serve: http://{shown}:{port}/  (Ctrl+C to stop)", flush=True)
    if not _is_loopback(opts.host):
        print(f"birdsep serve: warning: listening on {opts.host}: other machines can open this page", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        jobs.close(timeout=0.1)
        sock.close()
    return 0
