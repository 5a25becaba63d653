"""A candidate adapter at the evaluation review is not served when it re-leaks an earlier request."""

from __future__ import annotations

import pytest

from service.gateway.names import _releaks_earlier


@pytest.mark.parametrize(
    ("metrics", "releaks"),
    [
        ({}, False),  # nothing deployed before it: nothing to bring back
        ({"earlier_n": 12, "earlier_leaks_after": 0}, False),
        ({"earlier_n": 12, "earlier_leaks_after": 1}, True),
        ({"earlier_n": 12}, True),  # counted but not measured: fail closed
        ({"earlier_n": 12, "earlier_leaks_after": "0"}, True),
    ],
)
def test_releaks_earlier(metrics: dict[str, object], releaks: bool) -> None:
    assert _releaks_earlier(metrics) is releaks
