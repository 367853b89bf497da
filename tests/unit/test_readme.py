"""The documentation: the desired-file reference is checked against the schema, the README
starts with the two commands, the site builds with no broken link, and the documents agree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from reconciler.core.spec import ProjectSpec, json_schema
from tests.conftest import REPO


def _reference() -> dict[str, object]:
    text = (REPO / "docs" / "desired-file.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block is not None
    data = yaml.safe_load(block.group(1))
    assert isinstance(data, dict)
    return data


def test_reference_is_a_valid_desired_file() -> None:
    ProjectSpec.model_validate(_reference())


def test_reference_names_every_field() -> None:
    schema = json_schema()
    reference = _reference()
    assert set(reference) == set(schema["properties"])
    for section in ("production", "build", "start", "health", "deploy"):
        ref = schema["properties"][section]["$ref"].rsplit("/", 1)[1]
        documented = reference[section]
        assert isinstance(documented, dict)
        assert set(documented) == set(schema["$defs"][ref]["properties"]), section


def test_readme_starts_with_the_two_commands() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert lines[2] == "```sh"
    assert lines[3].startswith("make run ") and lines[4].startswith("make test ")


def test_the_documentation_builds_with_no_broken_link(tmp_path: Path) -> None:
    """``mkdocs build --strict``: a link to a page or an anchor that is not there fails it."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "walkthrough" / "index.html").is_file()


def test_the_readme_links_resolve() -> None:
    """(A document left out of the site's nav fails the build above.)"""
    for target in re.findall(r"\]\(([^)#]+)", (REPO / "README.md").read_text()):
        assert "://" in target or (REPO / target).exists(), target


def test_the_documents_agree_on_who_serves_a_static_site() -> None:
    """The example and its desired file say what the docs say: the edge serves it."""
    for path in (REPO / "desired" / "hello.yaml", REPO / "examples" / "hello-site" / "README.md"):
        text = path.read_text()
        assert "built-in static server" not in text and "edge" in text, path
