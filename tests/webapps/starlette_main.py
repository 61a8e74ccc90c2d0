"""A Starlette app as anyone writes it."""

import os

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def index(request):
    return PlainTextResponse(f"pid {os.getpid()}")


app = Starlette(routes=[Route("/", index)])
