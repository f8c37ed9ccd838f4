"""The accounting every chaos scenario ends with, read straight from Redis.

For every submitted id: exactly one final record (none lost, none left ``running``), an
events stream with exactly one final entry (its last), chunks since the latest start that
add up to the result, one final entry in ``{P}:events`` (no second answer), and, when it
succeeded, the text its adapter's rule predicts. For the group: nothing pending.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis

from schemas import FINAL_STATUSES, JobRecord, Keys, codec
from tests import figures

FINAL_VALUES = {status.value for status in FINAL_STATUSES}


@dataclass
class Tally:
    """What one scenario counted; ``problems`` is empty when every guarantee held."""

    scenario: str
    jobs: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    stuck: int = 0
    duplicates: int = 0
    wrong_output: int = 0
    pending: int = 0
    reruns: int = 0
    last_finished_at: float = 0.0
    problems: list[str] = field(default_factory=list)
    figures: dict[str, float | int | str] = field(default_factory=dict)

    def line(self) -> str:
        """The scenario's figures on one line, for the terminal summary."""
        statuses = " ".join(f"{k}={v}" for k, v in sorted(self.statuses.items()))
        extra = " ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in self.figures.items()
        )
        return (
            f"{self.scenario}: jobs={self.jobs} {statuses} lost={self.lost} stuck={self.stuck} "
            f"duplicates={self.duplicates} wrong={self.wrong_output} pending={self.pending} "
            f"reruns={self.reruns} {extra}"
        )

    def check(self) -> None:
        """Fail the scenario with the first problems found."""
        assert not self.problems, f"{len(self.problems)} problems: {self.problems[:10]}"


# Every scenario's tally, for the terminal summary (tests/figures.py).
FIGURES = figures.section("chaos figures")


def final_events(client: redis.Redis, keys: Keys) -> Counter[str]:
    """Final status entries per job id in ``{P}:events``."""
    counts: Counter[str] = Counter()
    last = "-"
    while True:
        batch = client.xrange(keys.events, min=last, count=10_000)
        if last != "-":
            batch = batch[1:]
        if not batch:
            return counts
        for _, raw in batch:
            fields = codec.decode_fields(raw)
            if fields.get("status") in FINAL_VALUES:
                counts[fields["id"]] += 1
        last = codec.as_text(batch[-1][0])


def streamed_text(events: list[dict[str, str]]) -> str | None:
    """The text a reader assembles: the chunks after the latest ``running`` entry (a job
    run again streams from the start); ``None`` when that attempt streamed nothing."""
    starts = [i for i, fields in enumerate(events) if fields.get("status") == "running"]
    after = events[starts[-1] + 1 :] if starts else events
    chunks = [fields["text"] for fields in after if fields.get("event") == "chunk"]
    return "".join(chunks) if chunks else None


def ran_as(record: JobRecord) -> str:
    """How a job ran, for a wrong answer's line: what tells one cause from another."""
    result = record.result
    ending = f"{result.finish_reason}, {result.completion_tokens} tokens" if result else "no result"
    return f"adapter {record.adapter}, attempt {record.attempts}, {ending}, on {record.worker}"


def account(
    client: redis.Redis, keys: Keys, expected: Mapping[str, str | None], scenario: str
) -> Tally:
    """Check every guarantee for the jobs in ``expected`` (id -> predicted text, or ``None``
    when any final status will do) and the group; the counts and problems found."""
    tally = Tally(scenario, jobs=len(expected))
    finals = final_events(client, keys)
    pipe = client.pipeline(transaction=False)
    for job_id in expected:
        pipe.hgetall(keys.job(job_id))
        pipe.xrange(keys.job_events(job_id))
    replies = pipe.execute()
    for index, (job_id, text) in enumerate(expected.items()):
        raw, events = replies[2 * index], replies[2 * index + 1]
        if not raw:
            tally.lost += 1
            tally.problems.append(f"{job_id}: no record")
            continue
        record = JobRecord.from_hash(job_id, raw)
        tally.statuses[record.status.value] += 1
        if record.status.value not in FINAL_VALUES:
            tally.stuck += 1
            tally.problems.append(f"{job_id}: still {record.status.value}")
            continue
        if record.attempts > 1:
            tally.reruns += 1
        tally.last_finished_at = max(tally.last_finished_at, record.finished_at or 0.0)
        decoded = [codec.decode_fields(f) for _, f in events]
        statuses = [fields["status"] for fields in decoded if fields.get("event") == "status"]
        ends = [s for s in statuses if s in FINAL_VALUES]
        if ends != [record.status.value] or decoded[-1].get("status") != record.status.value:
            kinds = [fields.get("status") or fields.get("event") for fields in decoded]
            tally.problems.append(f"{job_id}: events {kinds} for a {record.status.value} job")
        streamed = streamed_text(decoded)
        if record.result is not None and streamed is not None and streamed != record.result.text:
            tally.problems.append(
                f"{job_id}: streamed {streamed!r} since its last start, result "
                f"{record.result.text!r}"
            )
        if finals[job_id] != 1:
            tally.duplicates += finals[job_id] > 1
            tally.problems.append(f"{job_id}: {finals[job_id]} final entries in {keys.events}")
        if text is not None and record.status.value == "succeeded":
            got = record.result.text if record.result else None
            if got != text:
                tally.wrong_output += 1
                tally.problems.append(f"{job_id}: {got!r} instead of {text!r} ({ran_as(record)})")
    tally.pending = int(client.xpending(keys.jobs, keys.group)["pending"])
    if tally.pending:
        tally.problems.append(f"{tally.pending} entries still pending in {keys.group}")
    return tally
