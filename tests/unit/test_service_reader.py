"""FeatureReader against real versions (loaded in-process from small Parquet, opened read-only) when a
swap lands between picking a version and reading it: the read never touches a closed RocksDB."""

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from rocksdict import Cache

from quiver.loader.load import LoadOptions, load
from quiver.service.errors import VersionNotLoaded
from quiver.service.reader import FeatureReader
from quiver.service.snapshots import Snapshots
from quiver.service.store import LoadedVersion, open_version
from quiver.snapshot import SnapshotRoot
from quiver.v1 import quiver_pb2 as pb


class SwapAfterPick(Snapshots):
    """Snapshots whose next pick() is followed at once by a swap, as if the event loop's refresh ran
    between the pick and the read on the reader's thread."""

    swap: Callable[[], None] | None = None

    def pick(self, pin: str) -> LoadedVersion:
        picked = super().pick(pin)
        swap, self.swap = self.swap, None
        if swap is not None:
            swap()
        return picked


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> tuple[SnapshotRoot, list[str]]:
    """Three versions of one view `v` over int64 `user_id`; x is the day of the version."""
    d = tmp_path_factory.mktemp("reader")
    root = SnapshotRoot(d / "root")
    ids = []
    for day in (1, 2, 3):
        src = d / f"src-{day}"
        src.mkdir()
        pq.write_table(pa.table({"user_id": pa.array([1, 2, 3], pa.int64()), "x": pa.array([float(day)] * 3)}),
                       src / "v.parquet")
        doc = {"entity": {"name": "user_id", "key_type": "int64"},
               "views": [{"name": "v", "source": "v.parquet", "features": [{"name": "x", "type": "float64"}]}]}
        (src / "features.yaml").write_text(yaml.safe_dump(doc))
        ids.append(load(src / "features.yaml", root.path,
                        LoadOptions(workers=1, as_of=datetime(2026, 1, day, tzinfo=UTC))).version)
    return root, ids


@pytest.fixture
def versions(root: tuple[SnapshotRoot, list[str]]) -> Iterator[tuple[SwapAfterPick, list[LoadedVersion]]]:
    snapshots = SwapAfterPick(root[0], Cache(8 << 20), "full")
    opened = [open_version(root[0], v, snapshots.cache, "full") for v in root[1]]
    snapshots.previous, snapshots.current = opened[0], opened[1]
    yield snapshots, opened
    for v in opened:
        v.retire()


def swap_to(snapshots: Snapshots, new: LoadedVersion) -> Callable[[], None]:
    def swap() -> None:  # what Snapshots.refresh does on a swap
        old_previous = snapshots.previous
        snapshots.previous, snapshots.current = snapshots.current, new
        if old_previous is not None:
            old_previous.retire()
    return swap


def test_pinned_version_retired_after_pick_is_failed_precondition(versions: tuple[SwapAfterPick, list[LoadedVersion]]
                                                                  ) -> None:
    snapshots, (v1, v2, v3) = versions
    reader = FeatureReader(snapshots, 100)
    snapshots.swap = swap_to(snapshots, v3)  # retires v1, the pinned previous version
    with pytest.raises(VersionNotLoaded, match=v1.version):
        reader.get_features(pb.GetFeaturesRequest(int64_ids=[1, 2], version=v1.version))


def test_current_version_retired_after_pick_reads_the_new_current(versions: tuple[SwapAfterPick,
                                                                                  list[LoadedVersion]]) -> None:
    snapshots, (v1, v2, v3) = versions
    snapshots.previous, snapshots.current = None, v1

    def two_swaps() -> None:  # v1 -> v2 -> v3 while the read is on its way: v1 is retired
        swap_to(snapshots, v2)()
        swap_to(snapshots, v3)()
    snapshots.swap = two_swaps
    reader = FeatureReader(snapshots, 100)
    resp = pb.GetFeaturesResponse.FromString(reader.get_features(pb.GetFeaturesRequest(int64_ids=[1, 2])))
    assert resp.version == v3.version and all(r.found[0] for r in resp.rows)
    assert pb.ViewRow.FromString(resp.rows[0].views[0].SerializeToString()).float64s[0] == 3.0
