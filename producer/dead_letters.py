"""Dead letters of ``{P}:dead``: read them, requeue one, or purge them (operator verbs).

A dead entry is the copy ``finish.lua`` keeps of a job that failed for good, with the
fields ``id``, ``entry``, ``payload``, ``error``, ``attempts`` and ``ts``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from schemas import codec
from schemas.keys import Keys

# KEYS: 1 = {P}:dead, 2 = {P}:jobs, 3 = {P}:job:{id}, 4 = {P}:job:{id}:events,
#       5 = {P}:cancel:{id}
# ARGV: 1 = dead entry id, 2 = job id the caller read from it, 3 = record TTL (s)
# Returns 'ok', or why nothing changed: 'missing' (no such dead entry), 'changed' (the entry
# names another job), 'no_payload' (its payload is not a JSON object).
#
# The old events go so that a follower does not take the failed end for the new attempt's.
RETRY = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return 'missing'
end
local fields = {}
local raw = found[1][2]
for i = 1, #raw, 2 do
  fields[raw[i]] = raw[i + 1]
end
if fields['id'] ~= ARGV[2] then
  return 'changed'
end
local parsed, job = pcall(cjson.decode, fields['payload'] or '')
if not parsed or type(job) ~= 'table' then
  return 'no_payload'
end
local entry = redis.call('XADD', KEYS[2], '*', 'job', fields['payload'])
redis.call('HDEL', KEYS[3], 'result', 'error', 'finished_at')
redis.call('HSET', KEYS[3], 'status', 'queued', 'attempts', '0', 'entry', entry)
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('DEL', KEYS[4], KEYS[5])
redis.call('XDEL', KEYS[1], ARGV[1])
return 'ok'
"""

RETRY_PROBLEMS = {
    "missing": "no dead letter with this id",
    "changed": "the dead letter changed while it was read; try again",
    "no_payload": "its payload is not a JSON object, so it cannot be requeued",
}


class DeadLetterError(ValueError):
    """A dead letter that cannot be requeued; the message says why."""


@dataclass(frozen=True)
class DeadLetter:
    """One entry of ``{P}:dead``."""

    dead_id: str
    job_id: str
    entry_id: str
    payload: str
    error: Any
    attempts: int
    ts: float | None

    @classmethod
    def from_entry(cls, dead_id: Any, raw: Any) -> DeadLetter:
        """From an XRANGE item; missing or malformed fields become empty values."""
        fields = codec.decode_fields(raw or {})
        return cls(
            dead_id=codec.as_text(dead_id),
            job_id=fields.get("id", ""),
            entry_id=fields.get("entry", ""),
            payload=fields.get("payload", ""),
            error=_json_or_text(fields.get("error", "")),
            attempts=_number(fields.get("attempts", ""), int) or 0,
            ts=_number(fields.get("ts", ""), float),
        )

    def to_dict(self) -> dict[str, Any]:
        """As a JSON-ready dict."""
        return {
            "dead_id": self.dead_id,
            "id": self.job_id,
            "entry": self.entry_id,
            "attempts": self.attempts,
            "ts": self.ts,
            "error": self.error,
            "payload": self.payload,
        }

    def line(self) -> str:
        """One line of text: ids, attempts and the error."""
        error = self.error
        if isinstance(error, dict):
            error = f"{error.get('type', '?')}: {error.get('message', '')}"
        return f"{self.dead_id}  job {self.job_id or '?'}  attempts {self.attempts}  {error}"


def _json_or_text(text: str) -> Any:
    try:
        return codec.loads(text) if text else None
    except ValueError:
        return text


def _number(text: str, kind: type[int] | type[float]) -> Any:
    try:
        return kind(text)
    except ValueError:
        return None


class DeadLetters:
    """The dead-letter stream of one prefix, over a sync Redis client."""

    def __init__(self, client: redis.Redis, keys: Keys, *, job_ttl_s: int) -> None:
        self.client = client
        self.keys = keys
        self.job_ttl_s = job_ttl_s
        self._retry = client.register_script(RETRY)

    def oldest(self, limit: int) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters."""
        reply: Any = self.client.xrange(self.keys.dead, count=limit)
        return [DeadLetter.from_entry(dead_id, fields) for dead_id, fields in reply]

    def count(self) -> int:
        """How many dead letters there are."""
        return int(self.client.xlen(self.keys.dead))

    def retry(self, dead_id: str) -> str:
        """Requeue the job of one dead letter as a new attempt; returns its job id.

        Raises :class:`DeadLetterError` when there is no such entry or it has no payload.
        """
        try:
            reply: Any = self.client.xrange(self.keys.dead, dead_id, dead_id)
        except redis.ResponseError as exc:  # not a stream id
            raise DeadLetterError(f"{dead_id!r} is not a dead letter id: {exc}") from None
        if not reply:
            raise DeadLetterError(f"{dead_id}: {RETRY_PROBLEMS['missing']}")
        letter = DeadLetter.from_entry(*reply[0])
        job_id = letter.job_id
        outcome = codec.as_text(
            self._retry(
                keys=[
                    self.keys.dead,
                    self.keys.jobs,
                    self.keys.job(job_id),
                    self.keys.job_events(job_id),
                    self.keys.cancel(job_id),
                ],
                args=[dead_id, job_id, self.job_ttl_s],
            )
        )
        if outcome != "ok":
            raise DeadLetterError(f"{dead_id} (job {job_id}): {RETRY_PROBLEMS[outcome]}")
        return job_id

    def purge(self) -> int:
        """Delete every dead letter; returns how many there were."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.xlen(self.keys.dead)
            pipe.delete(self.keys.dead)
            count, _ = pipe.execute()
        return int(count)
