"""Sizes as the client prints them: client/output.py `human_size`."""

import pytest

from client.output import human_size


@pytest.mark.parametrize(("size", "shown"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (1024 ** 2 - 1, "1024.0 KiB"), (1024 ** 2, "1.0 MiB"), (5 * 1024 ** 3, "5.0 GiB"),
    (3 * 1024 ** 5, "3145728.0 GiB"), (-2048, "-2.0 KiB"),
])
def test_human_size_uses_the_largest_unit_below_1024(size, shown):
    assert human_size(size) == shown
