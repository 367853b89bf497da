"""The preview address is chosen once and kept; a token exists exactly when the edge listens
beyond loopback, and survives restarts."""

from __future__ import annotations

import stat
from pathlib import Path

from reconciler.core.spec import ProjectId
from reconciler.stores.previews import choose_preview, read_preview


def test_the_port_is_chosen_once_and_the_token_follows_the_bind_address(tmp_path: Path) -> None:
    assert read_preview(tmp_path, "localhost") is None
    first = choose_preview(
        tmp_path, range(5000, 5010), domain="localhost", token=False, free=lambda p: p != 5009
    )
    assert (first.port, first.token) == (5008, None), "the highest free port"
    again = choose_preview(
        tmp_path, range(5000, 5010), domain="localhost", token=True, free=lambda p: False
    )
    assert again.port == 5008 and again.token, "kept; a token once beyond loopback"
    assert stat.S_IMODE((tmp_path / "preview-token").stat().st_mode) == 0o600
    kept = choose_preview(tmp_path, range(1), domain="p.example.org", token=True, free=bool)
    assert kept.token == again.token
    assert kept.url(ProjectId("www"), "0123abcd") == (
        f"http://0123abcd.www.p.example.org:5008/?token={again.token}"
    )
    back = choose_preview(tmp_path, range(1), domain="localhost", token=False, free=bool)
    assert back.token is None and read_preview(tmp_path, "localhost") == back
