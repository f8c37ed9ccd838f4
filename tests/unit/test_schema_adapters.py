"""Run-time adapter registrations (``{P}:adapters`` values): what is accepted, what is not."""

from __future__ import annotations

import pytest

from schemas.adapters import InvalidRegistration, check_adapter_name, parse_registration


def test_a_registration_is_an_absolute_folder_and_extra_fields_are_ignored() -> None:
    assert parse_registration('{"path": "/srv/adapters/sql-v2"}').path == "/srv/adapters/sql-v2"
    assert parse_registration(b'{"path": "/a", "note": "by ops"}').path == "/a"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("not json", "Invalid JSON"),
        ("[]", "value: Input should be an object"),
        ("{}", "give exactly one of path (a worker folder) and uri"),
        ('{"path": 5}', "path: Input should be a valid string"),
        ('{"path": ""}', "path: String should have at least 1 character"),
        ('{"path": "adapters/sql"}', "path: must be an absolute path"),
        ('{"path": "/a\\u0000b"}', "path: must not contain NUL"),
        ('{"path": "/' + "a" * 5000 + '"}', "at most 4096 characters"),
    ],
)
def test_bad_registrations_say_why(raw: str, problem: str) -> None:
    with pytest.raises(InvalidRegistration, match=r"^invalid registration: ") as refused:
        parse_registration(raw)
    assert problem in str(refused.value)


@pytest.mark.parametrize("name", ["sql", "a", "Sql-v2.1_b", "9" * 128])
def test_good_names(name: str) -> None:
    assert check_adapter_name(name) == name


@pytest.mark.parametrize("name", ["", "../x", "/etc/passwd", "a/b", ".hidden", "-x", "a" * 129])
def test_names_that_could_be_paths_are_refused(name: str) -> None:
    with pytest.raises(InvalidRegistration, match="no path separators"):
        check_adapter_name(name)
