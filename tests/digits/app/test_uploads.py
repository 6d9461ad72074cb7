"""Names of uploaded files: safe on disk, kept (as text) as the item's source."""

from __future__ import annotations

import pytest

from digits.app.uploads import disk_name, source_name


@pytest.mark.parametrize(
    ("raw", "source", "disk"),
    [
        ("scan.png", "scan.png", "0001-scan.png"),
        (
            "<img src=x onerror=alert(1)>.png",
            "<img src=x onerror=alert(1)>.png",
            "0001-_img_src_x_onerror_alert_1_.png",
        ),
        ("../../etc/passwd.png", "passwd.png", "0001-passwd.png"),
        ("C:\\Users\\ana\\seven.jpg", "seven.jpg", "0001-seven.jpg"),
        (".hidden.png", ".hidden.png", "0001-hidden.png"),
        ("..", "..", "0001-file"),
        ("", "unnamed", "0001-unnamed"),
        ("a\nb\x00.png", "a\\x0ab\\x00.png", "0001-a_x0ab_x00.png"),
        ("été 7.tiff", "été 7.tiff", "0001-_t_7.tiff"),
        ("x" * 300 + ".png", "x" * 100 + "…" + "x" * 146 + ".png", "0001-" + "x" * 96 + ".png"),
    ],
)
def test_a_name_is_kept_as_text_and_made_safe_for_the_disk(
    raw: str, source: str, disk: str
) -> None:
    assert source_name(raw) == source
    assert disk_name(1, source_name(raw)) == disk
