"""``reconciler history`` prints each version's preview link under it."""

from __future__ import annotations

import argparse
import io
from typing import Any

from reconciler.cli.commands import cmd_history


class Answers:
    def history(self, project: str) -> dict[str, Any]:
        return {
            "versions": [
                {"hash": "0123abcd", "isActive": True, "createdAt": "2026-12-07T01:00:00Z",
                 "previewUrl": "http://0123abcd.www.localhost:29998/", "served": True},
                {"hash": "89abcdef", "isActive": False, "createdAt": "2026-12-06T01:00:00Z"},
            ]
        }  # fmt: skip


def test_history_prints_the_preview_link_of_a_version() -> None:
    out = io.StringIO()
    args = argparse.Namespace(project="www", json=False)
    assert cmd_history(Answers(), args, out) == 0  # type: ignore[arg-type]
    assert out.getvalue().splitlines() == [
        "* 0123abcd  2026-12-07T01:00:00Z  (active)",
        "      preview: http://0123abcd.www.localhost:29998/",
        "  89abcdef  2026-12-06T01:00:00Z",
        "      never served",
    ]
