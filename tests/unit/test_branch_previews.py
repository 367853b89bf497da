"""The branch previews' names and desired files: a project id per branch that never collides,
and the parent's spec for the branch, following it."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core.spec import ProjectId, ProjectSpec, check_project_id
from reconciler.sources.previews import preview_id, preview_text
from reconciler.stores.desired.parse import parse

PARENT = ProjectSpec.model_validate({
    "source": {"git": "https://git.example.com/team/site.git", "ref": "main"},
    "production": {"state": "running", "generation": 7},
    "domains": ["www.example.com"], "env": {"MODE": "preview"},
    "previews": {"branches": ["feature/*"], "max": 3},
})  # fmt: skip


@pytest.mark.parametrize(
    ("branch", "expected"),
    [
        ("fix-12", "site--fix-12"),
        ("feature/login", None),
        ("Feature-Login", None),
        ("x" * 80, None),
    ],
)
def test_a_preview_id_per_branch(branch: str, expected: str | None) -> None:
    found = preview_id(ProjectId("site"), branch)
    assert check_project_id(found) == found and len(found) <= 63 and found.startswith("site--")
    if expected is not None:
        assert found == expected
    else:  # lossy: a hash of the exact name keeps two branches apart
        assert found != preview_id(ProjectId("site"), branch + "2")
    assert preview_id(ProjectId("site"), "feature/login") != preview_id(
        ProjectId("site"), "feature-login"
    )


def test_the_preview_file_is_the_parents_spec_for_the_branch(tmp_path: Path) -> None:
    text = preview_text(ProjectId("site"), "feature/login", PARENT)
    assert text.startswith("# a branch preview, written by reconciler: site at feature/login ")
    path = tmp_path / "site--x.yaml"
    spec = parse(path, text.encode(), settled=True)  # as the daemon reads it
    assert spec.git is not None and spec.git.ref == "feature/login"
    assert spec.git.git == PARENT.git.git  # type: ignore[union-attr]
    assert spec.production.follow and spec.production.state == "running"
    assert spec.domains == [] and not spec.previews.wanted
    assert spec.env == {"MODE": "preview"}
    assert spec.sleep.after == 900


def test_a_relative_repository_is_resolved_beside_the_parents_file(tmp_path: Path) -> None:
    parent = ProjectSpec.model_validate({
        "source": {"git": "../repos/site.git", "ref": "main"},
        "previews": {"branches": ["*"]},
    })  # fmt: skip
    assert parent.git is not None
    where = parent.git.location(tmp_path / "desired" / "site.yaml")
    assert where == str(tmp_path / "repos" / "site.git")
    text = preview_text(ProjectId("site"), "fix", parent, where)
    spec = parse(tmp_path / "site--fix.yaml", text.encode(), settled=True)
    assert spec.git is not None and spec.git.git == where
