"""`strongroom forget`: restic's keep-* policy over restore points, chains never broken, crash-safe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from retention_util import ENC, Built, layers_on_disk

from strongroom import Store
from strongroom.backup import engine, layout, lifecycle
from strongroom.backup.destinations import open_destinations
from strongroom.backup.owners import lock_content
from strongroom.backup.retention import RestorePoint, RetentionPolicy, Within, plan_forget
from strongroom.cli import main
from strongroom.errors import ConflictError, IntegrityError, UsageError
from strongroom.storage import open_storage

pytest_plugins = ("cloud_servers",)

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)  # a Monday
ROOT = Path(__file__).resolve().parent.parent


# -- plan_forget: properties ---------------------------------------------------------------------------


@st.composite
def collections(draw: st.DrawFn) -> tuple[list[RestorePoint], str]:
    """Restore points as backups make them: strictly increasing times; each event a new full or an
    incremental onto any existing full (BACKUP INTO '<subdir>' IN ...); LATEST names the newest full."""
    gaps = draw(st.lists(st.integers(1, 60 * 24 * 40), min_size=1, max_size=40))  # minutes, up to 40 days
    points: list[RestorePoint] = []
    fulls: list[str] = []
    t = T0
    for gap in gaps:
        t += timedelta(minutes=gap)
        if not fulls or draw(st.integers(0, 3)) == 0:
            full = layout.full_subdir(t)
            fulls.append(full)
            points.append(RestorePoint(full, full, t))
        else:
            full = draw(st.sampled_from(fulls))
            points.append(RestorePoint("/" + layout.incrementals_prefix(full) + layout.incremental_dirname(t), full, t))
    return points, fulls[-1]


counts = st.one_of(st.just(0), st.integers(1, 6), st.just(-1))
policies = st.builds(
    RetentionPolicy,
    last=counts,
    hourly=counts,
    daily=counts,
    weekly=counts,
    monthly=counts,
    yearly=counts,
    within=st.one_of(st.none(), st.builds(Within, days=st.integers(1, 20), hours=st.integers(0, 23))),
).filter(lambda p: not p.empty)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(collections(), policies)
def test_a_kept_point_keeps_its_chain_and_removals_are_chain_suffixes(
    coll: tuple[list[RestorePoint], str], policy: RetentionPolicy
) -> None:
    points, latest = coll
    decisions = plan_forget(points, policy, latest_full=latest)
    assert sorted(d.point.path for d in decisions) == sorted(p.path for p in points)
    kept = {d.point for d in decisions if d.keep}
    for p in kept:
        for q in points:
            if q.full == p.full and q.end_time < p.end_time:
                assert q in kept, f"{q.path} is needed by kept {p.path}"
    assert all(d.reasons for d in decisions if d.keep) and not any(d.reasons for d in decisions if not d.keep)
    newest = max(points, key=lambda p: p.end_time)
    assert newest in kept  # every keep-* option keeps the newest point
    latest_chain = [p for p in points if p.full == latest]
    assert set(latest_chain) <= kept  # its newest is kept, so all of it
    assert [d.point.end_time for d in decisions] == sorted((p.end_time for p in points), reverse=True)


def _with_reason(decisions: list[lifecycle.Decision], reason: str) -> list[RestorePoint]:
    return [d.point for d in decisions if reason in d.reasons]


@settings(max_examples=200, deadline=None)
@given(collections(), st.integers(1, 10))
def test_keep_last_n_is_exactly_the_newest_n(coll: tuple[list[RestorePoint], str], n: int) -> None:
    points, latest = coll
    decisions = plan_forget(points, RetentionPolicy(last=n), latest_full=latest)
    newest_n = sorted(points, key=lambda p: p.end_time, reverse=True)[:n]
    assert _with_reason(decisions, "last snapshot") == newest_n
    # without LATEST's rule and chains, nothing else would be kept: what else is, says why
    for d in decisions:
        if d.keep and d.point not in newest_n:
            assert all(r.startswith(("needed by", "newest of the LATEST")) for r in d.reasons), d.reasons


@settings(max_examples=200, deadline=None)
@given(collections(), st.sampled_from(["hourly", "daily", "weekly", "monthly", "yearly"]), st.integers(1, 8))
def test_bucket_options_keep_the_newest_of_each_of_the_newest_n_periods(
    coll: tuple[list[RestorePoint], str], unit: str, n: int
) -> None:
    points, _latest = coll
    decisions = plan_forget(points, RetentionPolicy(**{unit: n}))  # type: ignore[arg-type]

    def period(t: datetime) -> object:
        if unit == "weekly":
            return t.isocalendar()[:2]
        return t.timetuple()[: {"hourly": 4, "daily": 3, "monthly": 2, "yearly": 1}[unit]]

    newest_of: dict[object, RestorePoint] = {}
    for p in sorted(points, key=lambda p: p.end_time):
        newest_of[period(p.end_time)] = p  # the last one wins: the newest of its period
    wanted = [newest_of[k] for k in sorted(newest_of, key=lambda k: newest_of[k].end_time, reverse=True)[:n]]
    assert _with_reason(decisions, f"{unit} snapshot") == wanted
    oldest = min(points, key=lambda p: p.end_time)
    extra = _with_reason(decisions, f"oldest {unit} snapshot")
    # restic: counts left over at the oldest point keep it too
    assert extra == ([oldest] if len(newest_of) < n and oldest not in wanted else [])


@settings(max_examples=200, deadline=None)
@given(collections(), st.integers(1, 30))
def test_keep_within_is_measured_from_the_newest_point(coll: tuple[list[RestorePoint], str], days: int) -> None:
    points, _latest = coll
    decisions = plan_forget(points, RetentionPolicy(within=Within(days=days)))
    newest = max(p.end_time for p in points)
    expected = sorted((p for p in points if p.end_time > newest - timedelta(days=days)), key=lambda p: p.end_time)
    assert sorted(_with_reason(decisions, f"within {days}d"), key=lambda p: p.end_time) == expected


def test_an_empty_policy_is_refused_and_the_within_duration_counts_calendar_months() -> None:
    p = [RestorePoint("/2026/01/05-100000.00", "/2026/01/05-100000.00", T0)]
    with pytest.raises(UsageError, match="no retention policy"):
        plan_forget(p, RetentionPolicy())
    # restic's AddDate: 1m back from March 31 is "February 31", which rolls over to March 3
    assert Within(months=1).before(datetime(2026, 3, 31, tzinfo=UTC)) == datetime(2026, 3, 3, tzinfo=UTC)
    assert Within(years=1, days=2, hours=3).before(datetime(2026, 3, 3, 5, tzinfo=UTC)) == datetime(
        2025, 3, 1, 2, tzinfo=UTC
    )


def test_retention_parse_round_trips_and_names_bad_input() -> None:
    policy = RetentionPolicy.parse("keep-daily=7, keep-weekly=4,keep-within=30d, keep-last=unlimited")
    assert policy == RetentionPolicy(last=-1, daily=7, weekly=4, within=Within(days=30))
    assert RetentionPolicy.parse(str(policy)) == policy
    for bad in ("keep-daily=seven", "keep-dayly=7", "keep-daily", "keep-within=30x", "keep-daily=1,keep-daily=2", ""):
        with pytest.raises(UsageError) as exc:
            RetentionPolicy.parse(bad)
        assert str(exc.value).startswith(f"invalid retention {bad!r}: "), exc.value
    with pytest.raises(UsageError, match="keeps nothing"):
        RetentionPolicy.parse("keep-daily=0")
    with pytest.raises(UsageError, match="keep-daily must be a count"):
        RetentionPolicy(daily=-2)
    with pytest.raises(UsageError, match="positive duration"):
        RetentionPolicy(within=Within())


# -- real collections -----------------------------------------------------------------------------------


def _daily_chains(b: Built, days: int = 4, incrementals: int = 2) -> None:
    for day in range(days):
        b.take(T0 + timedelta(days=day))
        for h in range(1, incrementals + 1):
            b.take(T0 + timedelta(days=day, hours=h), incremental=True)


def _assert_every_point_restores(b: Built, tmp_path: Path) -> set[str]:
    left = layers_on_disk(b.coll)
    for point in sorted(left):
        assert b.restore_rows(point, tmp_path / "restored.db") == b.rows[point], point
    return left


def test_forget_keep_daily_removes_whole_old_chains_and_the_rest_restores(tmp_path: Path) -> None:
    b = Built(str(tmp_path / "coll"), tmp_path / "app.db")
    _daily_chains(b)
    before = layers_on_disk(b.coll)
    plan = lifecycle.forget(b.coll, RetentionPolicy(daily=2), dry_run=True)
    assert layers_on_disk(b.coll) == before  # a dry run changes nothing
    keep = {d.point.path for d in plan.decisions if d.keep}
    assert keep == {p for p in before if "01/07-" in p or "01/08-" in p}
    result = lifecycle.forget(b.coll, RetentionPolicy(daily=2))
    assert set(result.removed) == before - keep
    # newest first within each chain: every layer went before the layers it needs
    order = {p: i for i, p in enumerate(result.removed)}
    for p in result.removed:
        if p.startswith("/incrementals/"):
            assert order[p] < order["/" + "/".join(p.split("/")[2:5])]
    assert _assert_every_point_restores(b, tmp_path) == keep
    assert not [p for p in Path(b.coll).rglob("*") if "05-100000.00" in str(p) or "06-100000.00" in str(p)]
    latest = list((Path(b.coll) / layout.LATEST_DIR).iterdir())
    assert len(latest) == 2  # the removed fulls' LATEST files went with them
    assert [r.status for r in engine.check(b.coll, ENC)] == ["ok", "ok"]


def test_forget_keeps_latest_chain_and_trims_a_chain_tail(tmp_path: Path) -> None:
    """An old chain grown later (BACKUP INTO '<subdir>'): keep-last 1 keeps its newest point, and
    LATEST's chain's newest is kept by rule. A later incremental may go while an earlier one stays."""
    b = Built(str(tmp_path / "coll"), tmp_path / "app.db")
    old = b.take(T0)
    a1 = b.take(T0 + timedelta(hours=1), incremental=True)
    new = b.take(T0 + timedelta(days=1))
    n1 = b.take(T0 + timedelta(days=1, hours=1), incremental=True)
    a2 = b.take(T0 + timedelta(days=2), onto=old)  # the newest point, in the old chain
    result = lifecycle.forget(b.coll, RetentionPolicy(last=1))
    assert result.removed == []
    reasons = {d.point.path: d.reasons for d in result.decisions}
    assert reasons[a2] == ("last snapshot",) and reasons[n1] == ("newest of the LATEST chain",)
    assert reasons[a1][0].startswith("needed by") and reasons[new][0].startswith("needed by")

    b = Built(str(tmp_path / "coll2"), tmp_path / "app2.db")
    f = b.take(T0)
    i1 = b.take(T0 + timedelta(hours=1), incremental=True)
    i2 = b.take(T0 + timedelta(days=1, hours=1), incremental=True)
    i3 = b.take(T0 + timedelta(days=1, hours=2), incremental=True)
    g = b.take(T0 + timedelta(days=1, hours=3))  # the newest of day 2; i1 the newest of day 1
    result = lifecycle.forget(b.coll, RetentionPolicy(daily=2))
    assert result.removed == [i3, i2]
    assert _assert_every_point_restores(b, tmp_path) == {f, i1, g}
    assert engine.show_backup(engine.ShowBackupRequest(in_=(b.coll,), subdir=f, encryption=ENC)).manifests[
        -1
    ].layer_dir == i1.strip("/")


def test_a_running_backup_keeps_its_chain(tmp_path: Path) -> None:
    b = Built(str(tmp_path / "coll"), tmp_path / "app.db")
    _daily_chains(b, days=2, incrementals=1)
    old = b.fulls[0]
    lock = Path(b.coll) / layout.incrementals_prefix(old) / "20260106" / "090000.00" / f"{layout.LOCK_PREFIX}1"
    lock.parent.mkdir(parents=True)
    lock.write_bytes(lock_content())  # this process: alive, so the lock's backup is running
    result = lifecycle.forget(b.coll, RetentionPolicy(last=1))
    assert result.removed == []
    assert all("a backup is running in this chain" in d.reasons for d in result.decisions if d.point.full == old)
    lock.unlink()
    result = lifecycle.forget(b.coll, RetentionPolicy(last=1))
    assert set(result.removed) == {old, "/" + layout.incrementals_prefix(old) + "20260105/110000.00"}


def _tree(coll: str) -> dict[str, list[str]]:
    """Every completed layer and the names of its files."""
    return {p: sorted(x.name for x in (Path(coll) / p.strip("/")).rglob("*")) for p in layers_on_disk(coll)}


def test_a_forget_and_an_incremental_onto_the_same_chain_never_both_proceed(tmp_path: Path) -> None:
    """Each writes its lock, then looks for the other's: whichever comes second backs off."""
    b = Built(str(tmp_path / "coll"), tmp_path / "app.db")
    old = b.take(T0)
    tail = b.take(T0 + timedelta(hours=1), incremental=True)
    b.take(T0 + timedelta(days=1))
    before = _tree(b.coll)
    # a backup locked its layer in the old chain first: the forget's layer is left as it was
    running = Path(b.coll) / layout.incrementals_prefix(old) / "20260106" / "090000.00" / f"{layout.LOCK_PREFIX}1"
    running.parent.mkdir(parents=True)
    running.write_bytes(lock_content())
    dests = open_destinations(b.coll)
    try:
        assert lifecycle.delete_layer(dests, tail.strip("/"), old, job_id=42) is None
    finally:
        dests.close()
    after = _tree(b.coll)
    assert after == before
    running.unlink()
    # a forget locked the chain's tail first: an incremental onto that chain refuses, leaving nothing
    forget_lock = Path(b.coll) / tail.strip("/") / f"{layout.LOCK_PREFIX}2"
    forget_lock.write_bytes(lock_content("forget"))
    with pytest.raises(ConflictError, match=f"a forget is removing {tail}"):
        b.take(T0 + timedelta(days=2), onto=old)
    forget_lock.unlink()
    assert {
        p: sorted(x.name for x in (Path(b.coll) / p.strip("/")).rglob("*")) for p in layers_on_disk(b.coll)
    } == before
    assert not list((Path(b.coll) / layout.incrementals_prefix(old) / "20260107").rglob("*.pack"))
    # an incremental that completed after the forget planned: the layers it builds on stay
    b.take(T0 + timedelta(days=2), onto=old)
    now = _tree(b.coll)
    dests = open_destinations(b.coll)
    try:
        assert lifecycle.delete_layer(dests, tail.strip("/"), old, job_id=43) is None
        assert lifecycle.delete_layer(dests, old.strip("/"), old, job_id=44) is None
    finally:
        dests.close()
    assert _tree(b.coll) == now


def test_forget_refuses_a_tampered_collection(tmp_path: Path) -> None:
    b = Built(str(tmp_path / "coll"), tmp_path / "app.db")
    _daily_chains(b, days=2, incrementals=2)
    inc = sorted(p for p in b.rows if p.startswith("/incrementals/"))[0]
    (Path(b.coll) / inc.strip("/") / layout.MANIFEST).unlink()
    with pytest.raises(IntegrityError, match="MANIFEST is missing"):
        lifecycle.forget(b.coll, RetentionPolicy(last=1))


def _cli(*args: str, store: str | None = None) -> tuple[int, str]:
    extra = ["--store", store] if store else []
    out = CliRunner().invoke(main, [*args[:1], *extra, *args[1:]])
    return out.exit_code, out.output


def test_cli_dry_run_json_and_table_then_delete_with_prune(tmp_path: Path) -> None:
    b = Built(str(tmp_path / "coll"), tmp_path / "app.db")
    _daily_chains(b, days=3, incrementals=1)
    code, out = _cli("forget", b.coll, "--keep-daily", "1", "--keep-within", "1d1h", "--dry-run", "--format", "json")
    assert code == 0, out
    rows = json.loads(out)
    assert [r["action"] for r in rows] == ["keep", "keep", "keep", "keep", "remove", "remove"]
    assert rows[0]["reasons"] == "within 1d1h, daily snapshot, newest of the LATEST chain"
    assert rows[2]["reasons"] == "within 1d1h" and rows[3]["reasons"].startswith("needed by a kept incremental")
    code, out = _cli("forget", b.coll, "--keep-daily", "1", "--dry-run")
    assert code == 0 and "daily snapshot" in out and "remove" in out and "(6 rows)" in out
    code, out = _cli("forget", b.coll, "--keep-daily", "1", "--prune", "--format", "json")
    assert code == 0, out
    doc = json.loads(out)
    assert sum(r["action"] == "remove" for r in doc["forget"]) == 4 and doc["prune"] == []
    assert len(layers_on_disk(b.coll)) == 2
    code, out = _cli("forget", b.coll, "--keep-daily", "1", "--prune", "--format", "json")
    assert code == 0 and json.loads(out)["prune"] is None  # nothing removed: no prune (restic's rule)
    code, out = _cli("forget", b.coll)
    assert code == 2 and "no retention policy given" in out
    code, out = _cli("forget", b.coll, "--keep-daily", "many")
    assert code == 2 and "invalid --keep-daily 'many'" in out


def test_with_a_store_forget_and_prune_are_jobs(tmp_path: Path, store: Store) -> None:
    b = Built(str(tmp_path / "coll"), tmp_path / "app.db")
    _daily_chains(b, days=2, incrementals=1)
    result = store.backups.forget(b.coll, RetentionPolicy(last=1), prune=True)
    assert result.prune is not None and len(result.removed) == 2
    jobs = [(j.job_type, j.status, j.description) for j in store.jobs.list()]
    assert ("FORGET", "succeeded", f"FORGET IN '{b.coll}' WITH keep-last=1") in jobs
    assert ("PRUNE", "succeeded", f"PRUNE IN '{b.coll}' WITH older_than = '24h'") in jobs
    code, out = _cli("forget", b.coll, "--keep-last", "1", "--dry-run", store=str(store.path))
    assert code == 0 and out.count("keep") == 2
    assert sum(j.job_type == "FORGET" for j in store.jobs.list()) == 2


def test_forget_and_prune_on_s3(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    cloud = request.getfixturevalue("moto_s3")
    b = Built(cloud.uri(f"forget-{os.getpid()}-{time.monotonic_ns()}"), tmp_path / "app.db")
    _daily_chains(b, days=3, incrementals=1)
    result = lifecycle.forget(b.coll, RetentionPolicy(weekly=1, daily=1))
    assert len(result.removed) == 4
    assert lifecycle.prune(b.coll).actions == []
    assert _assert_every_point_restores(b, tmp_path) == {b.fulls[-1], max(b.rows)}
    code, out = _cli("forget", b.coll, "--keep-last", "1", "--dry-run")
    assert code == 0 and cloud.secret not in out


# -- crash safety ----------------------------------------------------------------------------------------


def _locks(coll: str) -> list[str]:
    return [n for n, _s in open_storage(coll).list("") if n.rsplit("/", 1)[1].startswith(layout.LOCK_PREFIX)]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_forget_killed_part_way_leaves_restorable_points_and_prune_finishes_it(
    tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    """Kill -9 a forget in a subprocess once its first deletion has begun (seen by polling the
    collection); whatever it left restores, and prune finishes what it began."""
    if where == "s3":
        coll = request.getfixturevalue("moto_s3").uri(f"crash-{os.getpid()}-{time.monotonic_ns()}")
        days, incrementals = 4, 2
    else:
        coll, days, incrementals = str(tmp_path / "coll"), 12, 3
    b = Built(coll, tmp_path / "app.db")
    _daily_chains(b, days=days, incrementals=incrementals)
    policy = ["--keep-last", "2"]
    plan = lifecycle.forget(b.coll, RetentionPolicy(last=2), dry_run=True)
    keep = {d.point.path for d in plan.decisions if d.keep}
    first_layer = next(d.point.path for d in plan.decisions if not d.keep).strip("/")
    storage = open_storage(b.coll)

    def deletion_begun() -> bool:
        if where == "local":  # a cheap look at one dir: a local forget is fast
            first = Path(b.coll) / first_layer
            return not first.exists() or any(n.startswith(layout.LOCK_PREFIX) for n in os.listdir(first))
        names = [n.rsplit("/", 1)[1] for n, _s in storage.list(first_layer + "/")]
        return layout.MANIFEST not in names or any(n.startswith(layout.LOCK_PREFIX) for n in names)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from strongroom.cli import main; main()", "forget", b.coll, *policy],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    begun = False
    while not begun and proc.poll() is None and time.monotonic() < deadline:
        begun = deletion_begun()
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert begun and killed, "the forget finished before it could be killed (make the collection bigger)"
    removed_already = {d.point.path for d in plan.decisions if not d.keep} - layers_on_disk(b.coll)
    print(f"killed with {len(removed_already)} of {len(plan.decisions) - len(keep)} points gone")
    left = layers_on_disk(b.coll)
    assert keep <= left
    # every point left is whole: it restores its own rows (the chain tails went first)
    for point in sorted(left):
        assert b.restore_rows(point, tmp_path / "restored.db") == b.rows[point], point
    half = _locks(b.coll)
    show = dict(engine.show_backups_detail(b.coll))
    assert "manifest missing" not in show.values()  # an interrupted forget is never taken for tampering
    pruned = lifecycle.prune(b.coll)
    assert len([a for a in pruned.actions if a.reason == "a forget was interrupted: finished"]) == len(half)
    assert not _locks(b.coll)
    lifecycle.forget(b.coll, RetentionPolicy(last=2))
    assert layers_on_disk(b.coll) == keep
    assert all(status == "complete" for status in dict(engine.show_backups_detail(b.coll)).values())
    for point in sorted(keep):
        assert b.restore_rows(point, tmp_path / "restored.db") == b.rows[point], point
