"""The upload helpers on their own: model paths from part file names, and size options."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from mlwarden.api.upload import model_member
from mlwarden.http.errors import ApiError
from mlwarden.http.limits import GiB, KiB, Limits, MiB, describe_size, parse_size


@pytest.mark.parametrize(
    ("name", "expected"),
    [("model.safetensors", ("model.safetensors",)), ("weights/part-1.bin", ("weights", "part-1.bin"))],
)
def test_model_member_accepts_relative_paths(name: str, expected: tuple[str, ...]) -> None:
    assert model_member(name) == PurePosixPath(*expected)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/passwd",
        "../escape",
        "a/../../b",
        "a//b",
        "./a",
        "a/",
        "dir\\file",
        "bad\x00name",
        "tab\tname",
        "x" * 256,
    ],
)
def test_model_member_refuses_unsafe_paths(name: str) -> None:
    with pytest.raises(ApiError) as info:
        model_member(name)
    assert info.value.status == 422


@pytest.mark.parametrize(
    ("text", "size"),
    [("2GiB", 2 * GiB), ("500MiB", 500 * MiB), ("64kib", 64 * KiB), ("1G", GiB), ("1048576", MiB), (" 3 MB ", 3 * MiB)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "-1GiB", "1.5GiB", "1TiB", "lots"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("size", "text"), [(2 * GiB, "2 GiB"), (MiB, "1 MiB"), (1536, "1536 bytes"), (4 * KiB, "4 KiB")]
)
def test_describe_size(size: int, text: str) -> None:
    assert describe_size(size) == text


def test_limits_pick_the_upload_limit_for_uploads_only() -> None:
    limits = Limits(max_upload_bytes=10 * MiB, max_body_bytes=KiB)
    assert limits.body_limit("POST", "/v1/models/fraud/versions") == 10 * MiB
    assert limits.body_limit("POST", "/v1/models/fraud/versions/1/deploy") == KiB
    assert limits.body_limit("GET", "/v1/models/fraud/versions") == KiB
    with pytest.raises(ValueError, match="max_body_bytes"):
        Limits(max_body_bytes=0)
