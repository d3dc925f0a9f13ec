"""Who is on the other end of a local socket (THREAT_MODEL F-7).

The kernel vouches for the peer of a Unix socket: Linux SO_PEERCRED gives
uid/gid/pid as of connect(); macOS LOCAL_PEERCRED gives uid and groups and
LOCAL_PEERPID the pid. Upstream only *records* this identity in the activity
log and leaves access control to the socket mode and directory permissions;
`PeerPolicy` is an extra, optional gate the listeners may apply on top.

Reading credentials never raises: a failure yields None and the caller decides
(upstream serves the connection with an empty identity).
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CREDENTIALS_SUPPORTED",
    "PeerCred",
    "PeerPolicy",
    "peer_credentials",
    "resolve_group",
]

_LINUX = sys.platform.startswith("linux")
_DARWIN = sys.platform == "darwin"
_FREEBSD = sys.platform.startswith("freebsd")

#: Whether this platform can tell us who a peer is. Where it cannot, an unknown
#: identity is the normal case and PeerPolicy does not hold it against the peer.
CREDENTIALS_SUPPORTED = _LINUX or _DARWIN or _FREEBSD

# struct ucred { pid_t pid; uid_t uid; gid_t gid; }
_UCRED = struct.Struct("iII")
# struct xucred { u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]; }
_XUCRED = struct.Struct("IIh16I")
_XUCRED_VERSION = 0
# <sys/un.h> on macOS/FreeBSD; the socket module does not export them everywhere.
_SOL_LOCAL = getattr(socket, "SOL_LOCAL", 0)
_LOCAL_PEERCRED = getattr(socket, "LOCAL_PEERCRED", 0x001)
_LOCAL_PEERPID = getattr(socket, "LOCAL_PEERPID", 0x002)
# (uid_t)-1 / (gid_t)-1: what Linux reports for a socket that has no peer.
_NO_ID = 0xFFFFFFFF


@dataclass(frozen=True)
class PeerCred:
    """Kernel-reported identity of a socket peer; a field is None when unknown."""

    uid: int | None
    gid: int | None
    pid: int | None

    @property
    def label(self) -> str:
        """`unix:<uid>:<pid>` as in upstream's `peer` log field; `?` marks an unknown part."""
        uid = "?" if self.uid is None else str(self.uid)
        pid = "?" if self.pid is None else str(self.pid)
        return f"unix:{uid}:{pid}"


def _id_or_none(value: int) -> int | None:
    return None if value == _NO_ID else value


def _linux_cred(sock: Any) -> PeerCred | None:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw[: _UCRED.size])
    cred = PeerCred(uid=_id_or_none(uid), gid=_id_or_none(gid), pid=pid if pid > 0 else None)
    if cred.uid is None and cred.pid is None:
        return None
    return cred


def _bsd_cred(sock: Any) -> PeerCred | None:
    raw = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, _XUCRED.size)
    if len(raw) < _XUCRED.size:
        return None
    version, uid, ngroups, *groups = _XUCRED.unpack(raw[: _XUCRED.size])
    if version != _XUCRED_VERSION:
        return None
    # cr_groups[0] is the effective gid.
    gid = groups[0] if ngroups > 0 else None
    pid = None
    if _DARWIN:
        try:
            (pid,) = struct.unpack("i", sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERPID, 4)[:4])
        except (OSError, struct.error):
            pid = None  # best effort: the uid alone is still worth recording
        if pid is not None and pid <= 0:
            pid = None
    return PeerCred(uid=uid, gid=gid, pid=pid)


def peer_credentials(sock: socket.socket) -> PeerCred | None:
    """The peer identity of a connected Unix socket, or None if it cannot be read.

    Accepts anything with `family` and `getsockopt` (asyncio hands listeners a
    TransportSocket via `transport.get_extra_info("socket")`). Never raises.
    """
    try:
        if sock.family != getattr(socket, "AF_UNIX", None):
            return None
        if _LINUX:
            return _linux_cred(sock)
        if _DARWIN or _FREEBSD:
            return _bsd_cred(sock)
    except Exception:
        # F-7: a failed lookup is recorded as "unknown", never fatal.
        return None
    return None


def _current_uid() -> int:
    getuid = getattr(os, "getuid", None)
    return getuid() if getuid is not None else -1


def _supplementary_gids(uid: int, gid: int | None) -> frozenset[int]:
    """Groups the peer's *user* belongs to per the group database.

    This is the configured membership, not the peer process's live group set
    (SO_PEERCRED does not report that); a process that dropped a group is still
    judged by its user's membership.
    """
    try:
        import pwd

        entry = pwd.getpwuid(uid)
        base = entry.pw_gid if gid is None else gid
        return frozenset(os.getgrouplist(entry.pw_name, base))
    except (ImportError, KeyError, OSError, AttributeError):
        return frozenset()


@dataclass(frozen=True)
class PeerPolicy:
    """Which peers a listener serves.

    Admitted: our own uid; any uid in `allow_uids`; with `group_gid` set, a peer
    whose effective gid is that group or whose user is a member of it. Root
    peers are admitted only when we run as root or uid 0 is listed in
    `allow_uids` (group membership alone never admits root). A peer of unknown
    identity is admitted only where the platform cannot report identities
    (`CREDENTIALS_SUPPORTED` is false, e.g. Windows pipes guarded by their DACL);
    where it can, an unreadable identity is treated as a refusal.
    """

    uid: int = field(default_factory=_current_uid)
    allow_uids: frozenset[int] = frozenset()
    group_gid: int | None = None

    def __post_init__(self) -> None:
        # Callers naturally pass a set or list; freeze it so the policy is hashable.
        object.__setattr__(self, "allow_uids", frozenset(self.allow_uids))

    def quick_verdict(self, cred: PeerCred | None) -> bool | None:
        """The verdict from the credentials alone, or None when it takes a group-database
        lookup (which may block on NSS: callers on the event loop run `admits` in a thread)."""
        if cred is None or cred.uid is None:
            return not CREDENTIALS_SUPPORTED
        peer = cred.uid
        if peer == 0:
            return self.uid == 0 or 0 in self.allow_uids
        if peer == self.uid or peer in self.allow_uids:
            return True
        if self.group_gid is None:
            return False
        if cred.gid == self.group_gid:
            return True
        return None

    def admits(self, cred: PeerCred | None) -> bool:
        verdict = self.quick_verdict(cred)
        if verdict is not None:
            return verdict
        assert cred is not None and cred.uid is not None and self.group_gid is not None
        return self.group_gid in _supplementary_gids(cred.uid, cred.gid)


def resolve_group(name: str) -> int:
    """The gid of group `name` (e.g. the conventional `inferd-users`)."""
    try:
        import grp
    except ImportError as exc:  # pragma: no cover - Windows
        raise ValueError(f"groups are not supported on this platform (asked for {name!r})") from exc
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"unknown group {name!r}") from None
