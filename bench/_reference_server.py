"""The reference for bench/protocol.py: the least a server can do to speak v1.

Reads one request line, writes N precomputed token lines and a done line. No
validation, no admission, no backend: the ceiling for NDJSON over this socket.
"""

from __future__ import annotations

import asyncio
import json
import sys


def main() -> None:
    path, n_tokens = sys.argv[1], int(sys.argv[2])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line = await reader.readline()
            if not line:
                break
            rid = json.loads(line).get("id", "")
            token = json.dumps({"type": "token", "id": rid, "content": "tok "}, separators=(",", ":")).encode() + b"\n"
            done = json.dumps({"type": "done", "id": rid, "content": "tok " * n_tokens,
                               "usage": {"prompt_tokens": 0, "completion_tokens": n_tokens},
                               "stop_reason": "end", "backend": "ref"}, separators=(",", ":")).encode() + b"\n"
            for _ in range(n_tokens):
                writer.write(token)
                if writer.transport.get_write_buffer_size():
                    await writer.drain()
            writer.write(done)
            await writer.drain()
        writer.close()

    async def serve() -> None:
        server = await asyncio.start_unix_server(handle, path=path)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    try:
        import uvloop

        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())


if __name__ == "__main__":
    main()
