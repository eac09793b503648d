"""Blobs written by earlier releases still read, record by record.

``tests/data/wire/<release>-icechunk-<version>/`` holds the blobs of two
real jobs as that release sealed them (``write_blobs.py`` there says how).
A change to how records are encoded must keep reading all of them: the
formats are versioned, and a job's blobs outlive the image that wrote them
(a pod restarted after an upgrade reads its peers' results).

A pickled record holds icechunk sessions, which only the icechunk version
that wrote them may load: under any other version the blob is refused by
name (``IcechunkVersionError``), never half-read.
"""

from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path

import pytest

from icechunk_coop.errors import IcechunkVersionError
from icechunk_coop.rendezvous import Rendezvous
from icechunk_coop.wire import Sealer
from icechunk_coop.wire._markers import Committed, Failure, ZarrCommitted
from icechunk_coop.wire._records import (
    IcechunkSetup,
    Plan,
    Record,
    Result,
    Setup,
    SetupHeader,
    ZarrSetup,
)

DATA = Path(__file__).parent / "data" / "wire"
RELEASES = sorted(p.name for p in DATA.iterdir() if p.is_dir())
SECRET = b"wire-compat-0123456789abcdef0123456789abcdef"  # write_blobs.py's


def kind_of(name: str) -> type[Record]:
    if name.endswith(".failed"):
        return Failure
    if name.startswith("result-"):
        return Result
    if name.startswith("committed-"):
        return ZarrCommitted
    return {"setup": Setup, "plan": Plan, "committed": Committed}[name]


def read(release: str, job: str, name: str, tmp_path: Path) -> Record:
    """``name`` of ``job`` through a rendezvous, the way a worker reads it."""
    root = tmp_path / "rv"
    if not root.exists():
        shutil.copytree(DATA / release, root)
    rv = Rendezvous.for_job(str(root), job_id=job, sealer=Sealer(job_id=job, secret=SECRET))
    kind = kind_of(name)
    wire = rv.read(name, content=kind.CONTENT)
    assert wire is not None, f"{release}/{job}/{name} is missing"
    return kind.from_wire(wire, rv.location(name))


def test_there_are_blobs_of_a_release() -> None:
    assert RELEASES, f"no release's blobs under {DATA}"
    for release in RELEASES:
        assert {p.name for p in (DATA / release / "done-u").iterdir()} == {
            "setup", "result-0", "result-1", "plan", "committed", "committed-plain"
        }  # fmt: skip


def same_icechunk(release: str) -> bool:
    return release.endswith(f"-icechunk-{metadata.version('icechunk')}")


@pytest.mark.parametrize("release", RELEASES)
def test_json_markers_read(release: str, tmp_path: Path) -> None:
    committed = read(release, "done-u", "committed", tmp_path)
    assert isinstance(committed, Committed)
    assert set(committed.snapshots) == {"primary", "plain"}
    assert committed.workers_total == 2
    assert set(committed.timeline) == {0, 1}
    assert all(began <= ended for steps in committed.timeline.values()
               for began, ended in steps.values())  # fmt: skip
    assert committed.job_start is not None
    plain = read(release, "done-u", "committed-plain", tmp_path)
    assert isinstance(plain, ZarrCommitted)
    assert plain.target == "plain"
    assert "a/zarr.json" in plain.keys
    failure = read(release, "failed-u", "result-1.failed", tmp_path)
    assert isinstance(failure, Failure)
    assert failure.name == "result-1"
    assert failure.worker == 1
    assert "ZeroDivisionError" in failure.summary


@pytest.mark.parametrize("release", RELEASES)
def test_the_setup_header_reads_without_the_body(release: str, tmp_path: Path) -> None:
    blob = (DATA / release / "done-u" / "setup").read_bytes()
    sealer = Sealer(job_id="done-u", secret=SECRET)
    header = SetupHeader.from_frame(sealer.open_header(blob, name="setup", location="x"), "x")
    assert header is not None
    assert header.workers_total == 2
    assert header.icechunk == release.rsplit("-icechunk-", 1)[1]


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("name", ["setup", "result-0", "result-1", "plan"])
def test_pickled_records_read_or_are_refused_by_version(
    release: str, name: str, tmp_path: Path
) -> None:
    if not same_icechunk(release):
        with pytest.raises(IcechunkVersionError, match=release.rsplit("-icechunk-", 1)[1]):
            read(release, "done-u", name, tmp_path)
        return
    record = read(release, "done-u", name, tmp_path)
    if isinstance(record, Setup):
        assert record.job == "done-u"
        assert record.workers_total == 2
        assert record.decision == "decision of worker 0"
        assert isinstance(record.targets["primary"], IcechunkSetup)
        assert isinstance(record.targets["plain"], ZarrSetup)
        assert "a/zarr.json" in record.targets["plain"].metadata
        return
    results = record.results if isinstance(record, Plan) else (record,)
    assert isinstance(record, Plan | Result)
    for result in results:
        assert isinstance(result, Result)
        i = result.index
        assert result.value == {"rows": i}
        assert result.workers_total == 2
        assert set(result.forks) == {"primary"}
        assert set(result.writes) == {"primary", "plain"}
        assert f"a/c/{i}" in result.writes["plain"].keys
        assert "work" in result.timeline
    if isinstance(record, Plan):
        assert [r.index for r in record.results] == [0, 1]
