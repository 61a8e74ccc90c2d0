"""A FastAPI app as anyone writes it; the tests run it unchanged."""

import asyncio
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse, StreamingResponse

EVENTS = os.environ.get("LIFESPAN_LOG")


def _log(what: str) -> None:
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(f"{what} {os.getpid()}\n")


@asynccontextmanager
async def lifespan(app: FastAPI):
    _log("startup")
    yield
    _log("shutdown")


app = FastAPI(lifespan=lifespan)


@app.get("/", response_class=PlainTextResponse)
async def index() -> str:
    return f"pid {os.getpid()}"


@app.get("/sleep", response_class=PlainTextResponse)
async def sleep(ms: int = 5) -> str:
    await asyncio.sleep(ms / 1000)
    return f"pid {os.getpid()}"


@app.post("/echo")
async def echo(request: Request) -> PlainTextResponse:
    return PlainTextResponse(await request.body())


@app.get("/stream")
async def stream(n: int = 5) -> StreamingResponse:
    async def chunks():
        for i in range(n):
            yield f"chunk {i}\n"
            await asyncio.sleep(0.01)

    return StreamingResponse(chunks(), media_type="text/plain")


@app.get("/where", response_class=PlainTextResponse)
async def where(request: Request) -> str:
    return f"{request.scope.get('root_path')} {request.url.scheme} {request.client.host}"


@app.websocket("/ws")
async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(f"{os.getpid()} {text}")
    except WebSocketDisconnect as exc:
        _log(f"ws-closed-{exc.code}")
