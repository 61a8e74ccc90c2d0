"""A small HTTP/1.1 app on clusterui's worker helper (also the benchmark worker).

Every request gets ``hello from web instance N pid P``. Keep-alive aware; while
the worker drains it answers with ``Connection: close``. Runs under clusterui
(cluster mode, any dispatch) or alone: ``python examples/web.py --port 8000``
(``--reuseport`` lets several copies share the port, for the benchmarks).
"""

from __future__ import annotations

import argparse
import asyncio
import os

from clusterui import worker


def build_handler(greeting: str):
    body = f"{greeting} from web instance {worker.instance()} pid {os.getpid()}\n".encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(body)
    keep_alive = head + b"\r\n" + body
    close = head + b"Connection: close\r\n\r\n" + body

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    request = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lower = request.lower()
                # Minimal parsing: enough for keep-alive and a request body.
                at = lower.find(b"\r\ncontent-length:")
                if at >= 0:
                    end = lower.find(b"\r\n", at + 2)
                    try:
                        await reader.readexactly(int(lower[at + 17 : end]))
                    except (ValueError, asyncio.IncompleteReadError, ConnectionError):
                        return
                line_end = lower.find(b"\r\n")
                if lower[line_end - 8 : line_end] == b"http/1.1":
                    keep = b"\r\nconnection: close" not in lower
                else:
                    keep = b"\r\nconnection: keep-alive" in lower
                if not keep or worker.is_draining():
                    writer.write(close)
                    return
                writer.write(keep_alive)
                if writer.transport.get_write_buffer_size() > 65536:
                    await writer.drain()
        finally:
            writer.close()

    return handle


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--greeting", default=os.environ.get("GREETING", "hello"))
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=None, help="standalone only ($PORT wins)")
    parser.add_argument("--reuseport", action="store_true", help="standalone: SO_REUSEPORT")
    args = parser.parse_args()
    server = await worker.start_server(
        build_handler(args.greeting), host=args.host, port=args.port, reuse_port=args.reuseport
    )
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
