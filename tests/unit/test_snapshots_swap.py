"""service/snapshots.py's Snapshots, the versions one worker serves, driven in-process with a fake opener:
the root is a real SnapshotRoot in tmp_path (CURRENT and PREVIOUS written through its own API); only the
RocksDB open and its checks (store.open_version) are replaced by a table of versions that pass or fail,
and the versions opened are real LoadedVersions over fake database handles, so `reading` (retain, recheck,
release) and the close after the last reader are the real code. Reads on real RocksDB are in
test_service_reader.py. The process-level behaviour (health, metrics, logs of a running `quiver serve`) is in
tests/e2e/test_server_swaps.py and test_server_fallback.py."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from rocksdict import Cache

from quiver.service.errors import NotReady, VersionNotLoaded, VersionRefused
from quiver.service.snapshots import Snapshots
from quiver.service.store import LoadedVersion
from quiver.snapshot import FeatureSet, Manifest, SnapshotRoot
from quiver.snapshot.manifest import ManifestError

SCHEMA = FeatureSet.from_json({"entity": {"name": "user_id", "key_type": "int64"},
                               "views": [{"name": "v", "source": "v.parquet",
                                          "features": [{"name": "x", "type": "float64"}]}]})
# ids sort by as-of time: A oldest, E newest
A, B, C, D, E = (f"2026010{d}T000000Z-{str(d) * 12}" for d in range(1, 6))


def manifest(vid: str) -> Manifest:
    as_of = f"{vid[0:4]}-{vid[4:6]}-{vid[6:8]}T00:00:00Z"
    return Manifest(vid, as_of, as_of, SCHEMA, {}, {}, [])


class FakeDB:
    """Stands in for one group's Rdict: counts its closes."""

    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class FakeVersion(LoadedVersion):
    """A real LoadedVersion over a fake handle and a real (empty) RocksDB log folder; retire() is counted, and
    `before_retain` lets a test land a swap between a reader's pick and its retain."""

    def __init__(self, version: str) -> None:
        self.db = FakeDB()
        self.log_dir = Path(tempfile.mkdtemp(prefix="quiver-test-log-"))
        super().__init__(version, manifest(version), {"default": self.db}, str(self.log_dir))  # type: ignore[dict-item]
        self.retired = 0
        self.before_retain: Callable[[], None] | None = None   # runs once, just before the next retain

    def retire(self) -> None:
        self.retired += 1
        super().retire()

    def _retain(self) -> bool:
        hook, self.before_retain = self.before_retain, None
        if hook is not None:
            hook()
        return super()._retain()

    @property
    def closed(self) -> bool:
        """Its handle closed (once at most) and its log folder removed."""
        assert self.db.closed <= 1
        return self.db.closed == 1 and not self.log_dir.exists()

    def __repr__(self) -> str:
        return f"FakeVersion({self.version})"


@dataclass
class FakeOpener:
    """Opens every version not in `bad`; a bad one raises VersionRefused with its reason, as open_version does."""

    bad: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    args: list[tuple[Any, ...]] = field(default_factory=list)
    opened: dict[str, list[FakeVersion]] = field(default_factory=dict)

    def __call__(self, root: SnapshotRoot, version: str, cache: Cache, verify: str) -> LoadedVersion:
        self.calls.append(version)
        self.args.append((root, cache, verify))
        if version in self.bad:
            raise VersionRefused(f"version {version}: {self.bad[version]}")
        v = FakeVersion(version)
        self.opened.setdefault(version, []).append(v)
        return v


@dataclass
class World:
    root: SnapshotRoot
    opener: FakeOpener
    snapshots: Snapshots
    cache: Cache
    swaps: list[tuple[str, str | None]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    fallback: list[bool] = field(default_factory=list)

    def publish(self, *versions: str) -> None:
        """Published as the root sees it: a version folder with its manifest."""
        for vid in versions:
            d = self.root.version_dir(vid)
            d.mkdir(parents=True)
            (d / "manifest.json").write_bytes(manifest(vid).dumps())

    def refresh(self) -> bool:
        return asyncio.run(self.snapshots.refresh())

    def serve(self, *versions: str) -> None:
        """CURRENT names each version in turn, each followed by a refresh."""
        for vid in versions:
            self.root.set_current(vid)
            self.refresh()

    def opened(self, vid: str) -> FakeVersion:
        """The one time `vid` was opened."""
        [v] = self.opener.opened[vid]
        return v

    def served(self) -> tuple[str | None, str | None]:
        s = self.snapshots
        return (s.current.version if s.current else None, s.previous.version if s.previous else None)


@pytest.fixture
def world(tmp_path: Path) -> World:
    root = SnapshotRoot(tmp_path / "root")
    root.ensure()
    opener = FakeOpener()
    cache = Cache(1 << 20)
    w = World(root, opener, cast(Snapshots, None), cache)
    w.snapshots = Snapshots(root, cache, "size",
                            on_swap=lambda new, old: w.swaps.append((new.version, old.version if old else None)),
                            on_refused=lambda v, why: w.refused.append((v, why)),
                            on_fallback=w.fallback.append, opener=opener)
    return w


def test_nothing_is_served_until_current_names_a_version(world: World) -> None:
    world.publish(A)  # published, but CURRENT names nothing: nothing to serve, nothing opened
    assert world.refresh() is False
    assert world.opener.calls == []
    with pytest.raises(NotReady):
        world.snapshots.pick("")
    assert world.snapshots.loaded() == []


def test_first_open_serves_current_and_passes_the_root_cache_and_verify_mode(world: World) -> None:
    world.publish(A)
    world.root.set_current(A)
    assert world.refresh() is True
    assert world.served() == (A, None)
    assert world.swaps == [(A, None)]
    assert world.opener.calls == [A]
    assert world.opener.args == [(world.root, world.cache, "size")]
    v = world.opener.opened[A][0]
    assert world.snapshots.pick("") is v and world.snapshots.pick(A) is v
    # an unchanged CURRENT is neither reopened nor swapped again on the next polls
    assert world.refresh() is False and world.refresh() is False
    assert world.opener.calls == [A] and world.swaps == [(A, None)]
    assert world.refused == [] and world.fallback == []


def test_a_new_current_is_swapped_in_and_the_old_one_kept_for_pinned_reads(world: World) -> None:
    world.publish(A, B, C)
    world.serve(A)
    world.root.set_current(B)
    assert world.refresh() is True
    assert world.served() == (B, A)
    assert world.swaps == [(A, None), (B, A)]
    a, b = world.opener.opened[A][0], world.opener.opened[B][0]
    assert world.snapshots.pick("") is b
    assert world.snapshots.pick(A) is a          # pinned to the previous version: still answered
    assert world.snapshots.pick(B) is b
    assert a.retired == 0 and b.retired == 0
    assert [v.version for v in world.snapshots.loaded()] == [B, A]

    # a third version retires the oldest one, exactly once; a pin to it is now refused, naming what is loaded
    world.root.set_current(C)
    assert world.refresh() is True
    assert world.served() == (C, B)
    assert world.swaps[-1] == (C, B)
    assert (a.retired, b.retired) == (1, 0)
    with pytest.raises(VersionNotLoaded, match=rf"version '{A}' is not loaded on this replica \(loaded: {C}, {B}\)"):
        world.snapshots.pick(A)


def test_a_pin_to_an_unknown_version_is_version_not_loaded(world: World) -> None:
    world.publish(A)
    world.serve(A)
    unknown = "20990101T000000Z-000000000000"
    with pytest.raises(VersionNotLoaded, match=rf"version '{unknown}' is not loaded on this replica \(loaded: {A}\)"):
        world.snapshots.pick(unknown)
    assert world.opener.calls == [A]  # a pin never opens anything


def test_rollback_to_previous_swaps_without_reopening_or_retiring(world: World) -> None:
    world.publish(A, B)
    world.serve(A, B)
    world.root.set_current(A)   # the rollback: A is still open as the previous version
    assert world.refresh() is True
    assert world.served() == (A, B)
    assert world.opener.calls == [A, B]   # A was not opened a second time
    assert world.swaps[-1] == (A, B)
    a, b = world.opener.opened[A][0], world.opener.opened[B][0]
    assert world.snapshots.pick("") is a and world.snapshots.pick(B) is b
    assert a.retired == 0 and b.retired == 0


def test_a_refused_current_keeps_the_old_version_serving_and_is_not_retried(world: World) -> None:
    world.publish(A, B, C, D)
    world.opener.bad[B] = "online/default/000012.sst: size 100, manifest: 200"
    world.serve(A)
    world.root.set_current(B)
    assert world.refresh() is False
    assert world.served() == (A, None)
    assert world.refused == [(B, f"version {B}: online/default/000012.sst: size 100, manifest: 200")]
    assert world.swaps == [(A, None)]
    # a worker that is serving never falls back: C and D are published and good, but CURRENT names B
    assert world.fallback == [] and world.snapshots.fallback_from is None
    with pytest.raises(VersionNotLoaded):
        world.snapshots.pick(B)
    # not retried on every poll
    assert world.refresh() is False and world.refresh() is False
    assert world.opener.calls == [A, B] and len(world.refused) == 1
    # the next good CURRENT is swapped in as usual; the refused version never became the previous one
    world.root.set_current(C)
    assert world.refresh() is True
    assert world.served() == (C, A)
    assert world.swaps == [(A, None), (C, A)]
    assert world.opener.calls == [A, B, C]


def test_fallback_at_start_serves_previous_first_and_says_so(world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.publish(A, B, C, D)
    world.root.set_current(B)
    world.root.set_current(D)                  # PREVIOUS = B; C is newer than B, and good
    world.opener.bad[D] = "cannot open: Corruption"
    with caplog.at_level(logging.INFO, logger="quiver.snapshots"):
        assert world.refresh() is True
    assert world.served() == (B, None)
    assert world.opener.calls == [D, B]        # PREVIOUS before the newest other version
    assert world.refused == [(D, f"version {D}: cannot open: Corruption")]
    assert world.fallback == [True]
    assert world.snapshots.fallback_from == D
    assert world.swaps == [(B, None)]
    loud = [r for r in caplog.records if r.levelno == logging.ERROR and r.getMessage().startswith("FALLBACK")]
    assert len(loud) == 1 and D in loud[0].getMessage() and f"serving {B} instead" in loud[0].getMessage()
    # the fallback holds while CURRENT stays refused: nothing is retried, nothing swapped, said once
    assert world.refresh() is False and world.refresh() is False
    assert world.opener.calls == [D, B] and world.fallback == [True] and world.served() == (B, None)


def test_fallback_skips_a_refused_previous_for_the_newest_version_that_passes(world: World) -> None:
    world.publish(A, B, C, D, E)
    world.root.set_current(B)
    world.root.set_current(E)                  # PREVIOUS = B
    world.opener.bad.update({E: "bad E", B: "bad B", D: "bad D"})
    assert world.refresh() is True
    assert world.served() == (C, None)
    assert world.opener.calls == [E, B, D, C]  # CURRENT, PREVIOUS, then newest first; A never tried
    assert [v for v, _ in world.refused] == [E, B, D]
    assert world.fallback == [True] and world.snapshots.fallback_from == E


def test_fallback_candidates_are_previous_then_the_rest_newest_first(world: World) -> None:
    world.publish(A, B, C, D)
    assert world.snapshots.fallback_candidates(D) == [C, B, A]   # no PREVIOUS yet
    world.root.set_current(B)
    world.root.set_current(D)
    assert world.root.previous() == B
    assert world.snapshots.fallback_candidates(D) == [B, C, A]
    assert world.snapshots.fallback_candidates(B) == [D, C, A]   # a refused PREVIOUS is not a candidate


def test_the_fallback_ends_when_current_names_a_version_that_passes(world: World,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    world.publish(A, B, C)
    world.root.set_current(A)
    world.root.set_current(B)                  # PREVIOUS = A
    world.opener.bad[B] = "bad B"
    world.refresh()
    assert world.served() == (A, None) and world.fallback == [True]
    world.root.set_current(C)                  # the operator's fix: a new, good version
    with caplog.at_level(logging.INFO, logger="quiver.snapshots"):
        assert world.refresh() is True
    assert world.served() == (C, A)
    assert world.swaps == [(A, None), (C, A)]
    assert world.fallback == [True, False]
    assert world.snapshots.fallback_from is None
    assert f"fallback over: serving CURRENT {C}" in caplog.text
    assert world.refresh() is False and world.fallback == [True, False]   # cleared once


def test_the_fallback_ends_when_current_moves_to_the_version_served(world: World) -> None:
    world.publish(A, B)
    world.root.set_current(A)
    world.root.set_current(B)
    world.opener.bad[B] = "bad B"
    world.refresh()
    assert world.served() == (A, None) and world.fallback == [True]
    world.root.set_current(A)                  # the operator's rollback to what this worker already serves
    assert world.refresh() is False            # nothing to swap...
    assert world.fallback == [True, False]     # ...but no longer a fallback
    assert world.snapshots.fallback_from is None and world.opener.calls == [B, A]


def test_a_second_refused_current_during_a_fallback_keeps_it(world: World) -> None:
    world.publish(A, B, C)
    world.root.set_current(A)
    world.root.set_current(B)
    world.opener.bad.update({B: "bad B", C: "bad C"})
    world.refresh()
    world.root.set_current(C)
    assert world.refresh() is False
    assert world.served() == (A, None)
    assert world.snapshots.fallback_from == C  # the fallback now stands in for C
    assert world.fallback == [True]
    assert [v for v, _ in world.refused] == [B, C]


def test_nothing_passes_serves_nothing_until_a_good_current(world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.publish(A, B)
    world.root.set_current(A)
    world.root.set_current(B)
    world.opener.bad.update({A: "bad A", B: "bad B"})
    with caplog.at_level(logging.ERROR, logger="quiver.snapshots"):
        assert world.refresh() is False
    assert world.served() == (None, None)
    with pytest.raises(NotReady):
        world.snapshots.pick("")
    assert [v for v, _ in world.refused] == [B, A]
    assert world.fallback == [] and world.snapshots.fallback_from is None and world.swaps == []
    assert "no published version passes its checks" in caplog.text
    assert world.refresh() is False and world.opener.calls == [B, A]   # not retried on every poll
    world.publish(C)
    world.root.set_current(C)
    assert world.refresh() is True
    assert world.served() == (C, None) and world.swaps == [(C, None)] and world.fallback == []


def test_close_retires_every_loaded_version(world: World) -> None:
    world.publish(A, B)
    world.serve(A, B)
    world.snapshots.close()
    assert [(v.retired, v.closed) for v in (world.opened(A), world.opened(B))] == [(1, True), (1, True)]
    assert world.snapshots.loaded() == []
    with pytest.raises(NotReady):
        world.snapshots.pick("")


def test_a_refresh_that_fails_is_not_a_refusal_and_the_next_one_opens_the_version(world: World) -> None:
    """An unexpected error (not a refusal) leaves one refresh (the worker logs it and polls on); the version
    is not marked refused, so the next poll opens it."""
    world.publish(A)
    world.root.set_current(A)
    real, failures = world.opener, []

    def flaky(root: SnapshotRoot, version: str, cache: Cache, verify: str) -> LoadedVersion:
        if not failures:
            failures.append(version)
            raise OSError("too many open files")
        return real(root, version, cache, verify)

    world.snapshots._opener = flaky
    with pytest.raises(OSError, match="too many open files"):
        world.refresh()
    assert world.served() == (None, None) and world.refused == []
    assert world.refresh() is True
    assert failures == [A] and world.served() == (A, None) and real.calls == [A]


# ---------------------------------------------------------------------------------------------
# reading(pin): retain, recheck, released by the `with`
# ---------------------------------------------------------------------------------------------

def test_a_version_retired_while_read_closes_when_the_with_ends(world: World) -> None:
    world.publish(A, B, C)
    world.serve(A)
    a = world.opened(A)
    with world.snapshots.reading("") as first, world.snapshots.reading(A) as second:
        assert first is a and second is a
        world.serve(B, C)                      # the swap to C retires A while two reads hold it
        assert a.retired == 1 and not a.closed
    assert a.closed                            # the last reader's `with` closed it
    with world.snapshots.reading("") as c:
        assert c is world.opened(C)
    assert not c.closed and not world.opened(B).closed


def test_a_with_that_raises_still_lets_the_version_go(world: World) -> None:
    world.publish(A, B, C)
    world.serve(A)
    with pytest.raises(KeyError), world.snapshots.reading(""):
        raise KeyError("a bad request")
    world.serve(B, C)
    assert world.opened(A).closed              # no reader was left behind: retire closed it at once


def test_reading_with_nothing_served_or_an_unknown_pin_raises_and_holds_nothing(world: World) -> None:
    with pytest.raises(NotReady):
        world.snapshots.reading("")
    world.publish(A, B, C)
    world.serve(A)
    with pytest.raises(VersionNotLoaded):
        world.snapshots.reading(B)
    world.serve(B, C)
    assert world.opened(A).closed


@pytest.mark.parametrize("pinned", [False, True])
def test_a_version_retired_between_pick_and_retain_is_never_read(world: World, pinned: bool) -> None:
    """Retain-then-recheck: the retired version is let go and picked again, which names the version now
    current, or for a pin to the retired one raises VersionNotLoaded."""
    world.publish(A, B, C)
    world.serve(*((A, B) if pinned else (A,)))
    a = world.opened(A)
    # the event loop's refresh runs between the pick and the retain, as it may for a read on a thread
    a.before_retain = lambda: world.serve(*((C,) if pinned else (B, C)))   # either way A is retired
    if pinned:
        with pytest.raises(VersionNotLoaded, match=A):
            world.snapshots.reading(A)
    else:
        with world.snapshots.reading("") as v:
            assert v is world.opened(C)
    assert world.served() == (C, B) and a.closed


# --verify background: the first version is opened after its size check and checked in full afterwards


@dataclass
class FullCheck:
    """Stands in for the background full check: records its calls, fails for `bad`, and waits for `gate`."""

    bad: set[str] = field(default_factory=set)
    gate: threading.Event = field(default_factory=threading.Event)
    calls: list[str] = field(default_factory=list)

    def __call__(self, root: SnapshotRoot, version: str) -> None:
        self.calls.append(version)
        assert self.gate.wait(10)
        if version in self.bad:
            raise ManifestError(f"version {version}: online/default/000001.sst: checksum differs from the manifest")


def background_world(tmp_path: Path, check: FullCheck) -> World:
    root = SnapshotRoot(tmp_path / "root")
    root.ensure()
    w = World(root, FakeOpener(), cast(Snapshots, None), Cache(1 << 20))
    w.snapshots = Snapshots(root, w.cache, "background", on_refused=lambda v, why: w.refused.append((v, why)),
                            on_fallback=w.fallback.append, opener=w.opener, full_check=check)
    return w


def wait_late(w: World) -> None:
    for _ in range(500):
        if w.snapshots._late is not None:
            return
        time.sleep(0.01)
    raise AssertionError("the background check did not report")


def test_background_opens_the_first_version_at_size_then_checks_it_and_later_versions_in_full(
        tmp_path: Path) -> None:
    check = FullCheck()
    w = background_world(tmp_path, check)
    w.publish(A, B)
    w.serve(A)
    assert w.served() == (A, None) and w.opener.args[-1][2] == "size"
    check.gate.set()
    for _ in range(500):
        if check.calls:
            break
        time.sleep(0.01)
    assert check.calls == [A]
    w.serve(B)   # a swap: checked in full before it is served, never in the background
    assert w.served() == (B, A) and w.opener.args[-1][2] == "full"
    time.sleep(0.1)
    assert check.calls == [A] and w.refused == []


def test_a_first_version_failing_its_background_check_is_refused_and_the_fallback_serves(tmp_path: Path) -> None:
    check = FullCheck(bad={B})
    w = background_world(tmp_path, check)
    w.publish(A, B)
    w.root.set_current(A)
    w.root.set_current(B)   # PREVIOUS = A
    w.refresh()
    assert w.served() == (B, None)
    check.gate.set()
    wait_late(w)
    assert w.refresh() is True
    assert w.served() == (A, None) and w.opened(B).retired == 1
    assert [v for v, _ in w.refused] == [B] and w.fallback == [True]
    assert w.opener.args[-1][2] == "full"   # the fallback candidate was checked in full while B was served
    assert w.refresh() is False and w.served() == (A, None)   # CURRENT (B) is not opened again


def test_a_late_refusal_of_a_version_swapped_out_drops_it_from_previous(tmp_path: Path) -> None:
    check = FullCheck(bad={A})
    w = background_world(tmp_path, check)
    w.publish(A, B)
    w.serve(A, B)   # B is served before A's background check ends
    assert w.served() == (B, A)
    check.gate.set()
    wait_late(w)
    assert w.refresh() is False
    assert w.served() == (B, None) and w.opened(A).retired == 1 and w.opened(A).closed
    assert [v for v, _ in w.refused] == [A] and w.fallback == []


def test_a_new_version_is_readied_before_it_takes_traffic_and_the_first_while_it_answers(tmp_path: Path) -> None:
    root = SnapshotRoot(tmp_path / "root")
    root.ensure()
    seen: list[tuple[str, str | None]] = []   # (version readied, what was served then)
    first_readied = threading.Event()
    holder: list[Snapshots] = []

    def ready(version: LoadedVersion) -> None:
        s = holder[0]
        if version.version == A:   # the first: served without waiting for this (a wait here would block it)
            assert first_readied.wait(10), "the first version waited for its mappings to be filled"
        seen.append((version.version, s.current.version if s.current else None))
        if version.version == C:
            raise OSError("cannot map")   # served as it is, not refused

    s = Snapshots(root, Cache(1 << 20), "size", opener=FakeOpener(), ready=ready)
    holder.append(s)
    w = World(root, cast(FakeOpener, s._opener), s, s.cache)
    w.publish(A, B, C)
    root.set_current(A)

    async def first() -> None:
        assert await s.refresh()
        assert s.current is not None and s.current.version == A   # served before its mappings are filled
        first_readied.set()
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.01)

    asyncio.run(first())
    assert seen == [(A, A)]
    w.serve(B)
    assert seen[-1] == (B, A)   # B readied while A still answered
    w.serve(C)
    assert seen[-1] == (C, B) and w.served() == (C, B)
