"""The annotation web app (FastAPI): the annotation page, the live leaderboard and their JSON API.

Security model: every write (and every image) needs an annotator token, sent as the HttpOnly,
SameSite=Strict cookie set by ``POST /api/login`` or as ``Authorization: Bearer <token>``; writes
must be JSON (or empty) and, when the browser sends an ``Origin``, come from this server's own origin. Images
are served only by the random public id of an item registered in the database (never by a path, and
never by a number that reveals the registration order). The leaderboard (generator names and
strengths) needs the separate leaderboard token unless the app is made with ``public_leaderboard=True``:
annotator tokens do not open it, so annotators stay blind. Request bodies are capped at
:data:`MAX_BODY_BYTES` before they are read (413 beyond). The pages are self-contained (inline CSS/JS,
no CDN) under a strict Content-Security-Policy that allows exactly their inline code by hash.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from .db import Annotator, Store, StoreError
from .report import leaderboard

COOKIE = "prefscore_token"
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1"]
#: the largest request body accepted (the app's JSON bodies are a few hundred bytes)
MAX_BODY_BYTES = 16 * 1024


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413 before they are read.

    A ``Content-Length`` over the limit is refused at once; a body without one (chunked) is read only up
    to the limit (then refused), and the bytes read are handed on to the app, so no request can make the
    server hold more than ``limit`` bytes of body.
    """

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await self._refuse(send, 400, "invalid Content-Length")
            if declared > self.limit:
                return await self._refuse(send, 413, f"request body over {self.limit} bytes")
        body, more = [], True
        size = 0
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await self._refuse(send, 413, f"request body over {self.limit} bytes")
            body.append(chunk)
            more = message.get("more_body", False)
        data = b"".join(body)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()  # after the body: wait for the disconnect as usual

        return await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send, status: int, detail: str) -> None:
        import json

        payload = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=256)


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    assignment_id: int = Field(ge=1, le=2**62)
    choice: Literal["left", "right", "tie", "skip"]


def _csp_hash(code: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(code.encode("utf-8")).digest()).decode() + "'"


class Page:
    """A static HTML page with its Content-Security-Policy (hashes of its inline script and style)."""

    def __init__(self, name: str):
        self.html = resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")
        scripts = re.findall(r"<script>(.*?)</script>", self.html, re.S)
        styles = re.findall(r"<style>(.*?)</style>", self.html, re.S)
        self.csp = ("default-src 'none'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; "
                    f"frame-ancestors 'none'; script-src {' '.join(map(_csp_hash, scripts)) or chr(39) + 'none' + chr(39)}; "
                    f"style-src {' '.join(map(_csp_hash, styles)) or chr(39) + 'none' + chr(39)}")

    def response(self) -> HTMLResponse:
        return HTMLResponse(self.html, headers={"Content-Security-Policy": self.csp, "Cache-Control": "no-store"})


def create_app(store: Store, allowed_hosts: list[str] | None = None, secure_cookie: bool = False,
               public_leaderboard: bool = False, max_body: int = MAX_BODY_BYTES) -> FastAPI:
    """The app over ``store``. ``allowed_hosts``: accepted ``Host`` headers (guards against DNS
    rebinding; ``None`` accepts any, which the CLI only does when binding a non-loopback address).
    ``secure_cookie``: mark the login cookie Secure (behind an HTTPS proxy). ``public_leaderboard``:
    serve the leaderboard data without its token. ``max_body``: request body limit in bytes."""
    app = FastAPI(title="prefscore annotate", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    allowed = None if allowed_hosts is None else {h.strip("[]").lower() for h in allowed_hosts}
    annotate_page = Page("annotate.html")
    board_page = Page("leaderboard.html")

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if allowed is not None and _hostname(request.headers.get("host", "")) not in allowed:
            return JSONResponse({"detail": "invalid Host header"}, status_code=400)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            empty = not ctype and request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers
            if ctype != "application/json" and not empty:
                return JSONResponse({"detail": "write requests must be application/json"}, status_code=415)
            origin = request.headers.get("origin")
            if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
                return JSONResponse({"detail": "cross-origin write refused"}, status_code=403)
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    app.add_middleware(BodyLimit, limit=max_body)  # outermost: before anything reads the body

    @app.exception_handler(StoreError)
    async def store_error(_request: Request, exc: StoreError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    def annotator(request: Request) -> Annotator:
        token = request.cookies.get(COOKIE)
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        who = store.authenticate(token)
        if who is None:
            raise HTTPException(401, "missing or invalid annotator token")
        return who

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return annotate_page.response()

    @app.get("/leaderboard", include_in_schema=False)
    def board() -> HTMLResponse:
        return board_page.response()

    @app.get("/api/health")
    def health() -> dict:
        return {"ok": True, **store.counts()}

    @app.post("/api/login")
    def login(body: Login, response: Response) -> dict:
        who = store.authenticate(body.token)
        if who is None:
            raise HTTPException(401, "unknown or revoked token")
        response.set_cookie(COOKIE, body.token, httponly=True, samesite="strict", secure=secure_cookie, max_age=30 * 86400)
        return {"annotator": who.name}

    @app.post("/api/logout")
    def logout(response: Response) -> dict:
        response.delete_cookie(COOKIE, samesite="strict")
        return {"ok": True}

    @app.get("/api/me")
    def me(who: Annotator = Depends(annotator)) -> dict:
        return {"annotator": who.name, "progress": store.progress(who.id)}

    @app.post("/api/next")
    def next_pair(who: Annotator = Depends(annotator)) -> dict:
        pair = store.next_assignment(who.id)
        return {"done": pair is None, "pair": pair, "progress": store.progress(who.id)}

    @app.post("/api/answer")
    def answer(body: Answer, who: Annotator = Depends(annotator)) -> dict:
        result = store.answer(who.id, body.assignment_id, body.choice)
        pair = store.next_assignment(who.id)
        return {**result, "done": pair is None, "pair": pair, "progress": store.progress(who.id)}

    @app.post("/api/undo")
    def undo(who: Annotator = Depends(annotator)) -> dict:
        pair = store.undo(who.id)
        return {"done": False, "pair": pair, "progress": store.progress(who.id)}

    @app.get("/api/image/{public_id}")
    def image(public_id: str, who: Annotator = Depends(annotator)) -> FileResponse:
        path = store.image_path(public_id)
        if path is None or not Path(path).is_file():
            raise HTTPException(404, "no such image")
        return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/leaderboard")
    def board_data(request: Request) -> dict:
        if not public_leaderboard:
            auth = request.headers.get("authorization", "")
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
            if not store.check_leaderboard_token(token):
                raise HTTPException(401, "the leaderboard needs its own token (the leaderboard link printed by "
                                         "`prefscore annotate serve` or `prefscore annotate leaderboard-link`)")
        return leaderboard(store)

    return app


def _hostname(host_header: str) -> str:
    """The host part of a ``Host`` header (``[::1]:8000`` -> ``::1``), lower-case; ``""`` if malformed."""
    try:
        return (urlsplit("//" + host_header).hostname or "").lower()
    except ValueError:
        return ""


def hosts_for(bind: str) -> list[str] | None:
    """Host headers to accept when binding ``bind``: the loopback names for a loopback address,
    anything (``None``) otherwise."""
    if bind in ("127.0.0.1", "localhost", "::1") or bind.startswith("127."):
        return sorted(set(LOOPBACK_HOSTS + [bind]))
    return None
