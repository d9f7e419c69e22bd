"""`ports --publish [LOCAL:]PORT`, parsed."""

from __future__ import annotations

import pytest

from jackin_remote.errors import UsageError
from jackin_remote.ports import Publish, parse_publish


def test_publish_forms() -> None:
    assert parse_publish("8000") == Publish(8000, 8000)
    assert parse_publish("0:8000") == Publish(0, 8000)
    assert parse_publish("9000:80") == Publish(9000, 80)


@pytest.mark.parametrize("bad", ["", "x", "1:2:3", "0", "70000", "-1:80", "80:0", "a:80"])
def test_bad_publish_is_refused(bad: str) -> None:
    with pytest.raises(UsageError, match="--publish"):
        parse_publish(bad)
