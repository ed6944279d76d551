"""Retention policies (restic's ``forget`` policy) applied to a collection's restore points.

A restore point is every completed layer: each full backup and each incremental, at its end time
(the layout's dir names encode it, so planning needs no key). The ``--keep-*`` options mean exactly
what restic's do, with buckets in UTC:

- ``keep-last n``: the newest n points.
- ``keep-hourly|daily|weekly|monthly|yearly n``: for the newest n hours (days, ISO weeks, months,
  years) that have a point, the newest point of each. If counts are left at the oldest point, it
  is kept too (restic keeps it as a plain "daily snapshot"; the reason here says "oldest daily
  snapshot"), so the history kept is as long as the counts allow.
- ``keep-within d``: every point newer than d before the *newest point* (not before now: a
  collection nobody backs up any more does not empty itself). d is restic's ``1y5m7d2h``.
- ``unlimited`` (or -1) for a count keeps every point of that kind.

The options combine by union. Then chains: an incremental restores only with its full and every
earlier incremental of its chain, so a kept point keeps every layer before it ("needed by a kept
incremental"); what is removed is always a suffix of a chain. And the newest point of the chain
LATEST names is always kept, so ``RESTORE FROM LATEST`` still restores what it did and a
``BACKUP INTO LATEST`` appends onto a layer that stays. ``plan_forget`` is pure: no storage, no
clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

from ..errors import UsageError

UNLIMITED = -1
_COUNTS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
_WITHIN = re.compile(r"^(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)d)?(?:(\d+)h)?$")


@dataclass(frozen=True)
class Within:
    """restic's duration: years, months, days, hours (``1y5m7d2h``), counted back on the calendar."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> Within:
        m = _WITHIN.match(text.strip())
        if not text.strip() or not m or not any(m.groups()):
            raise UsageError(f"invalid keep-within duration {text!r}: use restic's form, e.g. 30d, 1y6m, 2d12h")
        y, mo, d, h = (int(g or 0) for g in m.groups())
        return cls(y, mo, d, h)

    def __str__(self) -> str:
        parts = zip((self.years, self.months, self.days, self.hours), "ymdh", strict=True)
        return "".join(f"{n}{unit}" for n, unit in parts if n) or "0h"

    def before(self, t: datetime) -> datetime:
        """``t`` less this duration, as restic's ``AddDate(-y, -m, -d).Add(-h)`` (days past a month's
        end roll over, as Go's normalisation does)."""
        month0 = t.year * 12 + (t.month - 1) - self.years * 12 - self.months
        year, month = divmod(month0, 12)
        start = t.replace(year=year, month=month + 1, day=1)
        return start + timedelta(days=t.day - 1 - self.days, hours=-self.hours)

    @property
    def empty(self) -> bool:
        return not (self.years or self.months or self.days or self.hours)


@dataclass(frozen=True)
class RetentionPolicy:
    """Which restore points ``forget`` keeps; 0 (the default) means the option is not given."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Within | None = None

    def __post_init__(self) -> None:
        for name in _COUNTS:
            n = getattr(self, name)
            if not isinstance(n, int) or n < UNLIMITED:
                raise UsageError(f"keep-{name} must be a count of 0 or more, or unlimited (got {n!r})")
        if self.within is not None and self.within.empty:
            raise UsageError("keep-within must be a positive duration, e.g. 30d")

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) == 0 for name in _COUNTS) and self.within is None

    @classmethod
    def parse(cls, text: str) -> RetentionPolicy:
        """``keep-daily=7,keep-weekly=4,keep-within=30d`` (a schedule's ``retention = '...'``)."""
        values: dict[str, object] = {}
        for raw in text.split(","):
            item = raw.strip()
            key, sep, value = item.partition("=")
            name = key.strip().lower().removeprefix("keep-").replace("_", "-")
            value = value.strip()
            if not sep or not value or name not in (*_COUNTS, "within"):
                raise UsageError(
                    f"invalid retention {text!r}: expected keep-last|hourly|daily|weekly|monthly|yearly=N "
                    f"or keep-within=DURATION, separated by commas (at {item!r})"
                )
            if name in values:
                raise UsageError(f"invalid retention {text!r}: keep-{name} is given twice")
            try:
                values[name] = Within.parse(value) if name == "within" else parse_count(value, f"keep-{name}")
            except UsageError as exc:
                raise UsageError(f"invalid retention {text!r}: {exc}") from None
        policy = cls(**values)  # type: ignore[arg-type]
        if policy.empty:
            raise UsageError(f"invalid retention {text!r}: it keeps nothing")
        return policy

    def __str__(self) -> str:
        parts = [f"keep-{f.name}={_count_text(getattr(self, f.name))}" for f in fields(self) if f.name in _COUNTS]
        parts = [p for p, f in zip(parts, _COUNTS, strict=True) if getattr(self, f)]
        if self.within is not None:
            parts.append(f"keep-within={self.within}")
        return ",".join(parts)


def parse_count(value: str, what: str) -> int:
    """A ``--keep-*`` count: a number of 0 or more, or ``unlimited`` (restic's word; -1 too)."""
    v = value.strip().lower()
    if v in ("unlimited", "-1"):
        return UNLIMITED
    if not v.isdigit():
        raise UsageError(f"invalid {what} {value!r}: expected a count of 0 or more, or unlimited")
    return int(v)


def _count_text(n: int) -> str:
    return "unlimited" if n == UNLIMITED else str(n)


@dataclass(frozen=True)
class RestorePoint:
    """One completed layer: ``path`` as SHOW BACKUPS shows dirs (leading slash), ``full`` the full
    backup subdir of its chain (``path == full`` for the full itself), ``end_time`` in UTC."""

    path: str
    full: str
    end_time: datetime

    @property
    def kind(self) -> str:
        return "full" if self.path == self.full else "incremental"


@dataclass(frozen=True)
class Decision:
    point: RestorePoint
    keep: bool
    reasons: tuple[str, ...]

    def row(self) -> tuple[object, ...]:
        when = self.point.end_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return (self.point.path, self.point.kind, when, "keep" if self.keep else "remove", ", ".join(self.reasons))


DECISION_COLUMNS = ("path", "type", "end_time", "action", "reasons")


def _bucket(name: str) -> Callable[[datetime, int], object]:
    """restic's bucket of a point for each count option (``unique`` for keep-last)."""
    if name == "last":
        return lambda _t, nr: nr
    if name == "weekly":
        return lambda t, _nr: t.isocalendar()[:2]
    size = {"hourly": 4, "daily": 3, "monthly": 2, "yearly": 1}[name]
    return lambda t, _nr: t.timetuple()[:size]


def plan_forget(
    points: Sequence[RestorePoint], policy: RetentionPolicy, *, latest_full: str | None = None
) -> list[Decision]:
    """Keep or remove each point (newest first), with restic's reasons and the chain rules above.

    ``latest_full`` is the full subdir LATEST names: its chain's newest point is always kept."""
    if policy.empty:
        raise UsageError(
            "no retention policy given: forget keeps nothing it is not told to keep, so say what to keep "
            "(--keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within)"
        )
    order = sorted(points, key=lambda p: (p.end_time.astimezone(UTC), p.path), reverse=True)
    reasons: dict[RestorePoint, list[str]] = {p: [] for p in order}
    if order:
        newest = order[0].end_time.astimezone(UTC)
        if policy.within is not None:
            cutoff = policy.within.before(newest)
            for p in order:
                if p.end_time.astimezone(UTC) > cutoff:
                    reasons[p].append(f"within {policy.within}")
        for name in _COUNTS:
            count = getattr(policy, name)
            if count == 0:
                continue
            bucket, last = _bucket(name), object()
            reason = "last snapshot" if name == "last" else f"{name} snapshot"
            for nr, p in enumerate(order):
                if count == 0:
                    break
                value = bucket(p.end_time.astimezone(UTC), nr)
                if value != last:
                    reasons[p].append(reason)
                elif nr == len(order) - 1:  # counts left at the oldest point: it is kept too
                    reasons[p].append(f"oldest {reason}")
                else:
                    continue
                last = value
                if count > 0:
                    count -= 1
        if latest_full is not None:
            latest_chain = [p for p in order if p.full == latest_full]
            if latest_chain:
                reasons[latest_chain[0]].append("newest of the LATEST chain")
    # Chains: a kept point keeps every earlier layer of its chain. Walking newest first, the first
    # kept point of a chain marks everything older in it.
    needed: dict[str, RestorePoint] = {}
    for p in order:
        holder = needed.get(p.full)
        if holder is not None and not reasons[p]:
            reasons[p].append(f"needed by a kept incremental ({holder.path})")
        elif reasons[p] and holder is None:
            needed[p.full] = p
    return [Decision(p, bool(reasons[p]), tuple(reasons[p])) for p in order]


__all__ = [
    "DECISION_COLUMNS",
    "UNLIMITED",
    "Decision",
    "RestorePoint",
    "RetentionPolicy",
    "Within",
    "parse_count",
    "plan_forget",
]
