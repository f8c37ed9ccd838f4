"""The Redis connection modes and durable writes: parsing and checks, no Redis."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from producer.connection import describe, primary_options
from producer.durability import Durability, ReplicationTimeoutError
from producer.redis_modes import RedisMode, hash_tag, mode_problems, parse_sentinels
from producer.settings import ClientSettings


def test_sentinel_addresses_parse_and_bad_ones_are_named() -> None:
    assert parse_sentinels("10.0.0.1:26379, s2:26380,[::1]:5000") == [
        ("10.0.0.1", 26379),
        ("s2", 26380),
        ("::1", 5000),
    ]
    for bad in ("s1", "s1:", ":26379", "s1:port", "s1:70000"):
        with pytest.raises(ValueError, match="is not host:port"):
            parse_sentinels(f"ok:1,{bad}")


@pytest.mark.parametrize(
    ("key", "tag"),
    [("{q1}:jobs", "q1"), ("app{q}:jobs", "q"), ("{}:jobs", None), ("loraq:jobs", None),
     ("{a}{b}", "a"), ("{a", None)],
)  # fmt: skip
def test_hash_tag_reads_the_key_as_redis_does(key: str, tag: str | None) -> None:
    assert hash_tag(key) == tag


def test_the_mode_follows_the_settings() -> None:
    assert ClientSettings(redis_url="redis://h:1/0").redis_mode is RedisMode.PLAIN
    sentinel = ClientSettings(redis_sentinels="a:1,b:2", redis_sentinel_service="main")
    assert sentinel.redis_mode is RedisMode.SENTINEL
    assert describe(sentinel) == "sentinel service 'main' via a:1,b:2"
    cluster = ClientSettings(redis_url="redis://:pw@n1:7000/0", redis_cluster=True, prefix="{q}")
    assert cluster.redis_mode is RedisMode.CLUSTER
    assert describe(cluster) == "cluster via redis://:***@n1:7000/0"


def test_cluster_mode_refuses_a_prefix_without_braces_and_says_why() -> None:
    with pytest.raises(ValidationError, match=r"no hash tag in braces.*LORAQ_PREFIX='\{jobs\}'"):
        ClientSettings(redis_cluster=True, prefix="jobs")
    assert not mode_problems(sentinels=None, cluster=True, prefix="{jobs}", min_replicas=0)


def test_settings_that_cannot_work_together_are_refused() -> None:
    both = mode_problems(sentinels="a:1", cluster=True, prefix="{q}", min_replicas=0)
    assert both and "both set" in both[0]
    wait = mode_problems(sentinels=None, cluster=True, prefix="{q}", min_replicas=1)
    assert wait and "LORAQ_REDIS_MIN_REPLICAS" in wait[0]
    with pytest.raises(ValidationError, match="is not host:port"):
        ClientSettings(redis_sentinels="nohost")


def test_in_sentinel_mode_the_url_gives_the_primary_its_db_user_password_and_tls() -> None:
    url = "rediss://app:pw@ignored:1/3?ssl_cert_reqs=none"
    options = primary_options(ClientSettings(redis_sentinels="a:1", redis_url=url))
    assert options == {
        "db": 3, "username": "app", "password": "pw", "ssl": True, "ssl_cert_reqs": "none"
    }  # fmt: skip
    assert primary_options(ClientSettings(redis_sentinels="a:1")) == {}


def test_the_sentinel_password_is_never_shown() -> None:
    settings = ClientSettings(redis_sentinels="a:1", redis_sentinel_password="s3cret")
    assert "s3cret" not in repr(settings) and "s3cret" not in describe(settings)


class Pipe:
    def __init__(self) -> None:
        self.waits: list[tuple[int, int]] = []

    def wait(self, num_replicas: int, timeout: int) -> Any:
        self.waits.append((num_replicas, timeout))


def test_no_wait_without_replicas_asked_for() -> None:
    pipe = Pipe()
    Durability().add_wait(pipe)
    assert pipe.waits == []
    assert Durability().split([1, 0], ["a", "b"]) == [1, 0]


def test_wait_goes_last_and_a_short_count_is_an_error() -> None:
    durability = Durability(min_replicas=2, timeout_ms=250)
    pipe = Pipe()
    durability.add_wait(pipe)
    assert pipe.waits == [(2, 250)]
    assert durability.split([1, 0, 2], ["a", "b"]) == [1, 0]
    with pytest.raises(ReplicationTimeoutError, match=r"1 of 2 replicas .* 250 ms .* a, b") as err:
        durability.split([1, 0, 1], ["a", "b"])
    assert err.value.ids == ["a", "b"] and isinstance(err.value, OSError)
    failed = ConnectionError("reset")
    with pytest.raises(ConnectionError):
        durability.split([1, failed], ["a"])


def test_durability_comes_from_the_settings() -> None:
    settings = ClientSettings(redis_min_replicas=1, redis_wait_timeout_ms=500)
    assert Durability.of(settings) == Durability(1, 500)
