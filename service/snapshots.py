"""Which versions a worker serves: the current one, and the previous one kept for pinned requests
and rollback. Follows ROOT/CURRENT and swaps without dropping a request."""

import asyncio
import logging
from collections.abc import Callable

from rocksdict import Cache

from quiver.service.errors import NotReady, VersionNotLoaded, VersionRefused
from quiver.service.store import LoadedVersion, open_version
from quiver.snapshot.layout import SnapshotRoot

log = logging.getLogger("quiver.snapshots")


class Snapshots:
    def __init__(self, root: SnapshotRoot, cache: Cache, verify: str,
                 on_swap: Callable[[LoadedVersion, LoadedVersion | None], None] = lambda new, old: None,
                 on_refused: Callable[[str, str], None] = lambda v, why: None) -> None:
        self.root = root
        self.cache = cache
        self.verify = verify
        self.current: LoadedVersion | None = None
        self.previous: LoadedVersion | None = None
        self._on_swap = on_swap
        self._on_refused = on_refused
        self._refused: str | None = None

    def pick(self, pin: str) -> LoadedVersion:
        cur = self.current
        if cur is None:
            raise NotReady("no snapshot loaded yet")
        if not pin or pin == cur.version:
            return cur
        prev = self.previous
        if prev is not None and pin == prev.version:
            return prev
        loaded = [v.version for v in (cur, prev) if v is not None]
        raise VersionNotLoaded(f"version {pin!r} is not loaded on this replica (loaded: {', '.join(loaded)})")

    def loaded(self) -> list[LoadedVersion]:
        return [v for v in (self.current, self.previous) if v is not None]

    async def refresh(self) -> bool:
        """Follows CURRENT once; True when the served version changed."""
        target = self.root.current()
        cur = self.current
        if target is None or (cur is not None and target == cur.version) or target == self._refused:
            return False
        if self.previous is not None and self.previous.version == target:
            new = self.previous  # rollback: already open and checked
        else:
            try:
                new = await asyncio.to_thread(open_version, self.root, target, self.cache, self.verify)
            except VersionRefused as e:
                self._refused = target
                log.error("refused %s; still serving %s", e, cur.version if cur else "nothing")
                self._on_refused(target, str(e))
                return False
        # The swap is these assignments, done on the event loop between requests: a request holds
        # the version it picked (acquire/release), so the one retired here closes only after the
        # last in-flight read on it has finished.
        old_previous = self.previous
        self.previous, self.current = cur, new
        self._refused = None
        if old_previous is not None and old_previous is not new:
            old_previous.retire()
        log.info("serving %s (previous: %s)", new.version, cur.version if cur else "none")
        self._on_swap(new, cur)
        return True

    async def watch(self, poll_seconds: float) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # keep serving whatever happens to one refresh
                log.exception("refresh failed")
            await asyncio.sleep(poll_seconds)

    def close(self) -> None:
        for v in self.loaded():
            v.retire()
        self.current = self.previous = None
