"""Which versions a worker serves: the current one, and the previous one kept for pinned requests
and rollback. Follows ROOT/CURRENT and swaps without dropping a request.

Fallback at start: a worker that has nothing to serve yet and finds CURRENT's version refused serves
the newest version that passes its checks, PREVIOUS first, rather than nothing; it says so loudly (an
error log line, `on_fallback(True)`, the `quiver_snapshot_fallback` gauge) until CURRENT names a
version that passes, which is swapped in as usual. Health stays NOT_SERVING only when none passes.

`--verify background`: the version a worker starts with (nothing served yet) is opened after the size
check and served at once; its full check runs on a background thread. If that check fails, the next
refresh refuses the version as a full check would have: the fallback above, from the version served, or
nothing served (NOT_SERVING) when no version passes. Every later swap is checked in full first, off the
serving path, while the served version answers."""

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from rocksdict import Cache

from quiver.base.process import background_thread
from quiver.service.errors import NotReady, VersionNotLoaded, VersionRefused
from quiver.service.store import LoadedVersion, open_version
from quiver.snapshot.integrity import check_version
from quiver.snapshot.layout import SnapshotRoot
from quiver.snapshot.manifest import ManifestError

log = logging.getLogger("quiver.snapshots")


class Snapshots:
    def __init__(self, root: SnapshotRoot, cache: Cache, verify: str,
                 on_swap: Callable[[LoadedVersion, LoadedVersion | None], None] = lambda new, old: None,
                 on_refused: Callable[[str, str], None] = lambda v, why: None,
                 on_fallback: Callable[[bool], None] = lambda serving_fallback: None,
                 opener: Callable[[SnapshotRoot, str, Cache, str], LoadedVersion] = open_version,
                 prepare: Callable[[str, LoadedVersion], None] = lambda version, served: None,
                 ready: Callable[[LoadedVersion], None] = lambda version: None,
                 full_check: Callable[[SnapshotRoot, str], None] | None = None) -> None:
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
        # readies an opened version's mappings (blocking; warm.map_resident): before it takes traffic, or, for
        # the version a worker starts with, while it answers
        self._ready = ready
        self._refused: str | None = None
        # the refused CURRENT while serving a fallback instead of it, else None
        self.fallback_from: str | None = None
        # --verify background: the full check of a version served after its size check (raises ManifestError),
        # and what it found wrong, (version, why), for the next refresh to act on
        self._full_check = full_check or _full_check
        self._late: tuple[str, str] | None = None

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
        if self._late is not None:
            late, self._late = self._late, None
            if await self._refuse_served(*late):
                return True
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
                opened = self._opener(self.root, version, self.cache, self._level(served))
            except BaseException as e:  # handed to the awaiting coroutine, which raises it
                loop.call_soon_threadsafe(hand_over, None, e)
                return
            if served is not None:
                self._make_ready(opened)
            loop.call_soon_threadsafe(hand_over, opened, None)
            if served is None:
                self._make_ready(opened)

        threading.Thread(target=run, name=f"quiver-open-{version}", daemon=True).start()
        return await done

    def _make_ready(self, version: LoadedVersion) -> None:
        try:
            self._ready(version)
        except Exception:  # a version whose mappings cannot be filled is served as it is, never refused for it
            log.exception("readying %s failed; it is served as it is", version.version)

    def _level(self, served: LoadedVersion | None) -> str:
        """The check a version gets before it is served: --verify's, but only the size check for the
        version a worker starts with under --verify background (its full check follows, _check_later)."""
        if self.verify != "background":
            return self.verify
        return "size" if served is None else "full"

    def _check_later(self, version: str) -> None:
        """The full check of a version served after its size check, at background priority."""
        def run() -> None:
            background_thread()
            try:
                self._full_check(self.root, version)
            except ManifestError as e:
                self._late = (version, str(e))   # acted on by the next refresh, on the event loop
            except Exception as e:   # noqa: BLE001 - a check that cannot run refuses, as at open
                self._late = (version, f"version {version}: cannot check: {e}")

        threading.Thread(target=run, name=f"quiver-check-{version}", daemon=True).start()

    async def _refuse_served(self, version: str, why: str) -> bool:
        """A version served after its size check failed its full check: refused, and the fallback serves
        the newest version that passes, or nothing. True when what is served changed."""
        self._on_refused(version, why)
        bad = self.current
        if bad is None or bad.version != version:   # swapped out since: not kept for pinned reads either
            log.error("refused %s (its full check, in the background); no longer served", why)
            self._drop_previous(version)
            return False
        log.error("refused %s; it was served after its size check (--verify background) and is no longer "
                  "served", why)
        if self.root.current() == version:
            self._refused = version
        if await self._fall_back(version):
            self._drop_previous(version)   # the fallback's swap made it PREVIOUS
        else:
            self.current = None
            bad.retire()
        return True

    def _drop_previous(self, version: str) -> None:
        prev = self.previous
        if prev is not None and prev.version == version:
            self.previous = None
            prev.retire()

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
        if cur is None and self.verify == "background":
            self._check_later(new.version)
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


def _full_check(root: SnapshotRoot, version: str) -> None:
    started, hashed = time.monotonic(), [0, 0]

    def count(files: int, size: int) -> None:
        hashed[:] = [files, size]

    check_version(root, version, "full", prefix="online/", on_hashed=count)
    log.info("version %s: its full check passed in the background: hashed %d online files (%.1f MB) in %.1f s; "
             "the others were proven before", version, hashed[0], hashed[1] / 1e6, time.monotonic() - started)
