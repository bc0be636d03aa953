"""Which versions a worker serves: the current one, and the previous one kept for pinned requests
and rollback. Follows ROOT/CURRENT and swaps without dropping a request.

Fallback at start: a worker that has nothing to serve yet and finds CURRENT's version refused serves
the newest version that passes its checks, PREVIOUS first, rather than nothing; it says so loudly (an
error log line, `on_fallback(True)`, the `quiver_snapshot_fallback` gauge) until CURRENT names a
version that passes, which is swapped in as usual. Health stays NOT_SERVING only when none passes."""

import asyncio
import logging
import threading
from collections.abc import Callable

from rocksdict import Cache

from quiver.base.process import background_thread
from quiver.service.errors import NotReady, VersionNotLoaded, VersionRefused
from quiver.service.store import LoadedVersion, open_version
from quiver.snapshot.layout import SnapshotRoot

log = logging.getLogger("quiver.snapshots")


class Snapshots:
    def __init__(self, root: SnapshotRoot, cache: Cache, verify: str,
                 on_swap: Callable[[LoadedVersion, LoadedVersion | None], None] = lambda new, old: None,
                 on_refused: Callable[[str, str], None] = lambda v, why: None,
                 on_fallback: Callable[[bool], None] = lambda serving_fallback: None,
                 opener: Callable[[SnapshotRoot, str, Cache, str], LoadedVersion] = open_version,
                 prepare: Callable[[str, LoadedVersion], None] = lambda version, served: None) -> None:
        self.root = root
        self.cache = cache
        self.verify = verify
        self.current: LoadedVersion | None = None
        self.previous: LoadedVersion | None = None
        self._on_swap = on_swap
        self._on_refused = on_refused
        self._on_fallback = on_fallback
        self._opener = opener  # opens and checks one version (blocking); tests pass a fake
        # readies a version for traffic while another is served (blocking; warm.py), before it is opened:
        # RocksDB's open holds the GIL (rocksdict) while it reads each SST's footer, index and filter, so
        # those reads should hit the page cache. Not at start, when serving at once beats serving warm.
        self._prepare = prepare
        self._refused: str | None = None
        # the refused CURRENT while serving a fallback instead of it, else None
        self.fallback_from: str | None = None

    def reading(self, pin: str) -> LoadedVersion:
        """The version `pin` names (empty: the current one), retained for reading until the `with` ends:
        `with snapshots.reading(pin) as version:`. Retain-then-recheck, as Venice's ConcurrentRef: a
        version retired by a swap between the pick and the retain (this may run on a reader thread) is
        not read; the pick is made again and names the version now served, or raises."""
        version = self.pick(pin)
        while not version._retain():
            version = self.pick(pin)
        return version

    def pick(self, pin: str) -> LoadedVersion:
        """The version `pin` names, not retained: for what a closed version still answers (its manifest)."""
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
        if cur is not None and target == cur.version:
            self._end_fallback()
        if target is None or (cur is not None and target == cur.version) or target == self._refused:
            return False
        if self.previous is not None and self.previous.version == target:
            new = self.previous  # rollback: already open and checked
        else:
            try:
                new = await self._open(target)
            except VersionRefused as e:
                self._refused = target
                log.error("refused %s; still serving %s", e, cur.version if cur else "nothing")
                self._on_refused(target, str(e))
                if cur is None:
                    return await self._fall_back(target)
                if self.fallback_from is not None:
                    self.fallback_from = target
                return False
        self._swap(new)
        self._end_fallback()
        return True

    async def _open(self, version: str) -> LoadedVersion:
        """Warms (while another version is served), checks and opens `version` on a thread of its own at
        background priority (SCHED_IDLE, idle IO): hashing what is not yet proven, opening RocksDB and reading
        its files compete with nothing the served version answers, which keeps serving until this returns."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[LoadedVersion] = loop.create_future()

        def hand_over(opened: LoadedVersion | None, error: BaseException | None) -> None:
            if done.cancelled():   # the worker is stopping: nobody will serve it
                if opened is not None:
                    opened.retire()
            elif error is not None:
                done.set_exception(error)
            else:
                done.set_result(opened)  # type: ignore[arg-type]

        def run() -> None:
            background_thread()
            served = self.current
            if served is not None:
                try:
                    self._prepare(version, served)
                except Exception:  # a version that cannot be warmed is served cold, never refused for it
                    log.exception("preparing %s failed; it is opened as it is", version)
            try:
                opened = self._opener(self.root, version, self.cache, self.verify)
            except BaseException as e:  # handed to the awaiting coroutine, which raises it
                loop.call_soon_threadsafe(hand_over, None, e)
                return
            loop.call_soon_threadsafe(hand_over, opened, None)

        threading.Thread(target=run, name=f"quiver-open-{version}", daemon=True).start()
        return await done

    def _swap(self, new: LoadedVersion) -> None:
        cur = self.current
        # The swap is these assignments, done on the event loop between requests: a request reads
        # inside `with self.reading(pin)`, so the version retired here closes only after the last
        # in-flight read on it has finished.
        old_previous = self.previous
        self.previous, self.current = cur, new
        self._refused = None
        if old_previous is not None and old_previous is not new:
            old_previous.retire()
        log.info("serving %s (previous: %s)", new.version, cur.version if cur else "none")
        self._on_swap(new, cur)

    def fallback_candidates(self, refused: str) -> list[str]:
        """Versions to try instead of a refused CURRENT: PREVIOUS, then every other published
        version newest first (ids sort by as-of time)."""
        previous = self.root.previous()
        rest = sorted((v for v in self.root.versions() if v not in (refused, previous)), reverse=True)
        return [v for v in (previous, *rest) if v is not None and v != refused]

    async def _fall_back(self, refused: str) -> bool:
        for candidate in self.fallback_candidates(refused):
            try:
                new = await self._open(candidate)
            except VersionRefused as e:
                log.error("fallback candidate refused too: %s", e)
                self._on_refused(candidate, str(e))
                continue
            self._swap(new)
            self._refused = refused  # _swap cleared it: do not retry CURRENT on every poll
            self.fallback_from = refused
            log.error("FALLBACK: CURRENT names %s, which was refused; serving %s instead until CURRENT names "
                      "a version that passes its checks", refused, candidate)
            self._on_fallback(True)
            return True
        log.error("no published version passes its checks (CURRENT %s refused); serving nothing", refused)
        return False

    def _end_fallback(self) -> None:
        if self.fallback_from is not None:
            log.info("fallback over: serving CURRENT %s", self.current.version if self.current else "?")
            self.fallback_from = None
            self._on_fallback(False)

    def close(self) -> None:
        for v in self.loaded():
            v.retire()
        self.current = self.previous = None
