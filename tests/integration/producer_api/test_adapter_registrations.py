"""`loraq adapters list | add | remove` and :class:`AdapterRegistrations` on real Redis."""

from __future__ import annotations

import orjson
import pytest
import redis

from producer import Producer
from producer.adapter_registrations import AdapterRegistrations
from producer.cli import main
from schemas import Keys
from schemas.adapters import InvalidRegistration


def cli(redis_url: str, prefix: str, *args: str) -> int:
    return main(["--redis-url", redis_url, "--prefix", prefix, "adapters", *args])


def test_add_is_idempotent_and_re_points_only_when_asked(r: redis.Redis, keys: Keys) -> None:
    registrations = AdapterRegistrations(r, keys)
    assert registrations.add("sql-v2", "/srv/adapters/sql-v2") is True
    assert registrations.add("sql-v2", "/srv/adapters/sql-v2") is False
    with pytest.raises(InvalidRegistration, match="already registered elsewhere"):
        registrations.add("sql-v2", "/srv/adapters/sql-v3")
    # The stored value is the protocol's JSON, readable by any client.
    assert orjson.loads(r.hget(keys.adapters, "sql-v2") or b"") == {"path": "/srv/adapters/sql-v2"}
    assert registrations.remove("sql-v2") is True
    assert registrations.remove("sql-v2") is False
    assert registrations.add("sql-v2", "/srv/adapters/sql-v3") is True
    # Re-pointed on purpose, to a remote folder (v1.3): replicas switch within the sync.
    assert registrations.add("sql-v2", "s3://bucket/tenants/sql", replace=True) is True
    assert orjson.loads(r.hget(keys.adapters, "sql-v2") or b"") == {
        "uri": "s3://bucket/tenants/sql"
    }
    with pytest.raises(InvalidRegistration, match="credentials"):
        registrations.add("leaky", "s3://key:secret@bucket/x")
    assert r.hget(keys.adapters, "leaky") is None


@pytest.mark.parametrize(
    ("name", "path", "problem"),
    [
        ("../x", "/srv/a", "no path separators"),
        ("a/b", "/srv/a", "no path separators"),
        ("sql", "relative/folder", "path: must be an absolute path"),
        ("sql", "", "path: String should have at least 1 character"),
    ],
)
def test_bad_names_and_paths_are_refused_and_nothing_is_written(
    r: redis.Redis, keys: Keys, name: str, path: str, problem: str
) -> None:
    with pytest.raises(InvalidRegistration, match=problem):
        AdapterRegistrations(r, keys).add(name, path)
    assert r.exists(keys.adapters) == 0


def test_list_shows_registrations_and_says_what_is_wrong_with_raw_ones(
    r: redis.Redis, keys: Keys
) -> None:
    registrations = AdapterRegistrations(r, keys)
    registrations.add("upper-v2", "/srv/upper")
    # What an operator could write with redis-cli: not JSON, a relative path, a bad name.
    r.hset(keys.adapters, mapping={"broken": "nope", "rel": '{"path": "x"}', "../up": "{}"})
    found = {item.name: item for item in registrations.all()}
    assert list(found) == ["../up", "broken", "rel", "upper-v2"]
    assert found["upper-v2"].path == "/srv/upper" and found["upper-v2"].problem is None
    assert "Invalid JSON" in (found["broken"].problem or "")
    assert "absolute path" in (found["rel"].problem or "")
    assert "no path separators" in (found["../up"].problem or "")


def test_cli_verbs(
    redis_url: str,
    prefix: str,
    producer: Producer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The workers' roots, as the CLI reads them: folders elsewhere are refused up front.
    monkeypatch.setenv("LORAQ_ADAPTER_DIR", "/srv")
    assert cli(redis_url, prefix, "add", "x", "/etc") == 2
    assert "outside the configured adapter roots" in capsys.readouterr().err
    assert cli(redis_url, prefix, "add", "title-v2", "/srv/title") == 0
    assert "registered title-v2" in capsys.readouterr().err
    assert cli(redis_url, prefix, "add", "title-v2", "/srv/title") == 0
    assert "already registered there" in capsys.readouterr().err
    assert cli(redis_url, prefix, "add", "title-v2", "/srv/other") == 2
    assert "already registered elsewhere" in capsys.readouterr().err
    assert cli(redis_url, prefix, "add", "../etc", "/etc") == 2
    assert "no path separators" in capsys.readouterr().err

    assert cli(redis_url, prefix, "list", "--json") == 0
    out, err = capsys.readouterr()
    assert [orjson.loads(line) for line in out.splitlines()] == [
        {"name": "title-v2", "path": "/srv/title", "uri": None, "problem": None}
    ]
    assert "1 adapters registered" in err
    assert cli(redis_url, prefix, "list") == 0
    assert capsys.readouterr().out == "title-v2  /srv/title\n"

    assert cli(redis_url, prefix, "remove", "title-v2") == 0
    assert "removed title-v2" in capsys.readouterr().err
    assert cli(redis_url, prefix, "remove", "title-v2") == 1
    assert "was not registered" in capsys.readouterr().err
    assert producer.client.exists(producer.keys.adapters) == 0
