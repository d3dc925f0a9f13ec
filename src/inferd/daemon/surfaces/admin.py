"""The admin surface: one subscriber connection, fed by the StatusBroadcaster (status.py)."""

from __future__ import annotations

import asyncio
import logging

from ..net.conn import PeerConnection
from ..status import StatusBroadcaster

log = logging.getLogger("inferd.admin")


async def serve_admin(conn: PeerConnection, broadcaster: StatusBroadcaster) -> None:
    """Daemon -> client only. Anything the client writes is read and ignored."""
    sub = broadcaster.subscribe()

    async def watch_eof() -> None:
        try:
            while await conn.reader.read(65536):
                pass
        except (ConnectionError, OSError):
            pass
        broadcaster.unsubscribe(sub)

    watcher = asyncio.create_task(watch_eof())
    try:
        while True:
            frame = await sub.next()
            if frame is None:
                break
            await conn.send(frame)
    except (ConnectionError, OSError):
        pass
    finally:
        broadcaster.unsubscribe(sub)
        watcher.cancel()
        await conn.close()
