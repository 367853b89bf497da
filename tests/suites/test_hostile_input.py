"""Hostile input: the API under schemathesis (every operation, generated and mutated requests:
no 5xx, every answer as the OpenAPI document says), and the desired-file loader under
hypothesis (arbitrary bytes and near-YAML text: a located refusal or a valid spec, never a
crash). ``make hostile`` runs more examples (HOSTILE_EXAMPLES=500); ``make test`` a slice.

The traversal, symlink, CSRF and slowloris cases live beside the code they guard
(tests/integration/test_static.py, tests/unit/test_desired.py, tests/unit/test_api.py).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from reconciler.api.app import create_app
from reconciler.core.config import Config
from reconciler.core.kinds import EdgeMode
from reconciler.core.spec import ProjectSpec
from reconciler.stores.desired import DesiredFileError, parse

EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "25"))
SITE = "# hostile\nsource: ../site\nproduction:\n  state: stopped\n  generation: 1\n"


def _app(root: Path) -> object:
    (root / "desired").mkdir(parents=True, exist_ok=True)
    (root / "desired" / "www.yaml").write_text(SITE)
    (root / "site" / "dist").mkdir(parents=True, exist_ok=True)
    config = Config(desired_dir=root / "desired", data_dir=root / "data", edge=EdgeMode.OFF)
    app = create_app(config)
    ops = app.extensions["reconciler"]
    ops.rollback_grace = 0.0  # a pinned version nobody serves answers at once
    ops.down_limit = 0.0  # no daemon runs: an event stream ends at once
    return app


# The schema is loaded at import (schemathesis parametrizes from it), so the app under test
# gets its own temporary data dir here, removed when the session ends.
_ROOT = Path(tempfile.mkdtemp(prefix="hostile-api-"))
atexit.register(shutil.rmtree, _ROOT, True)
schema = schemathesis.openapi.from_wsgi("/openapi.json", _app(_ROOT))


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_never_answers_5xx_and_keeps_to_its_document(case: schemathesis.Case[Any]) -> None:
    # the WSGI transport does not decode a gzipped body (tests/unit/test_api.py checks it).
    # A body carrying a desired file's text (or a source to work one out from) may match its
    # schema and still be refused: no schema says what a valid desired file is. Every other
    # check holds for those too (no 5xx, documented statuses and bodies).
    # A body past its path's size limit is refused with 413 (documented), whatever else is
    # wrong with it: a rejection, though not among the codes the negative check expects.
    semantic = case.operation.path in TEXT_BODIES and case.method.upper() in ("POST", "PUT")
    headers = {"Accept-Encoding": "identity"}
    response = case.call(headers=headers)
    excluded = [positive_data_acceptance] if semantic else []
    if response.status_code == 413:
        excluded.append(negative_data_rejection)
    case.validate_response(response, headers=headers, excluded_checks=excluded or None)


TEXT_BODIES = (
    "/api/projects", "/api/projects/{id}/desired", "/api/projects/{id}/env", "/api/drafts",
)  # fmt: skip


NEAR_YAML = st.lists(
    st.sampled_from(
        [
            "source: ../site\n",
            "production:\n",
            "  state: running\n",
            "  state: up\n",
            "  version: latest\n",
            "  version: 1a2b3c4d\n",
            "  generation: 3\n",
            "  generation: -1\n",
            "build:\n",
            "  command: make\n",
            "  output: dist\n",
            "  output: ../x\n",
            "start:\n",
            "  command: null\n",
            "  port: 99999\n",
            "health:\n",
            "  path: /\n",
            "  timeout: 0\n",
            "keep: 2\n",
            "env:\n",
            "  A: b\n",
            "domains: [a.example]\n",
            "&x ",
            "*x\n",
            "!!python/object:os.system\n",
            "\t",
            "- ",
            "? ",
            ": ",
            "{",
            "}",
            "[",
            "]",
            "'",
            '"',
            "#",
            "\ufeff",
            "\x00",
            "bogus: 1\n",
            "source: ../site\n",
            "    deeper: 1\n",
        ]
    ),
    max_size=25,
).map("".join)


@settings(max_examples=EXAMPLES * 8, deadline=None)
@given(st.one_of(st.binary(max_size=2048), NEAR_YAML.map(str.encode)))
def test_the_loader_refuses_with_a_location_or_returns_a_valid_spec(data: bytes) -> None:
    path = Path("/desired/www.yaml")
    try:
        spec = parse(path, data)
    except DesiredFileError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.path == path and problem.line >= 1 and problem.column >= 1
            assert problem.message
        return
    assert isinstance(spec, ProjectSpec)
    again = ProjectSpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec


SPECS = st.fixed_dictionaries(
    {"source": st.just("../site")},
    optional={
        "production": st.fixed_dictionaries(
            {},
            optional={
                "state": st.sampled_from(["running", "stopped"]),
                "version": st.sampled_from(["latest", "1a2b3c4d"]),
                "generation": st.integers(0, 10**6),
            },
        ),
        "keep": st.integers(1, 20),
        "env": st.dictionaries(
            st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True),
            st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=20),
            max_size=4,
        ),
    },
)


@settings(max_examples=EXAMPLES * 4, deadline=None)
@given(SPECS)
def test_every_valid_document_reads_back_as_itself(document: dict[str, object]) -> None:
    text = yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
    spec = parse(Path("/desired/www.yaml"), text.encode())
    assert spec == ProjectSpec.model_validate(document)
