"""The README's desired-file reference is checked against the schema."""

from __future__ import annotations

import re

import yaml

from reconciler.core.spec import ProjectSpec, json_schema
from tests.conftest import REPO


def _reference() -> dict[str, object]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Desired state", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
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
