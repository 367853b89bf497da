"""A desired file's mistakes come with what to fix: a misspelled key gets the key it was
probably meant to be, wherever it is in the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.stores.desired import DesiredFileError, parse


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("source: x\nproducton:\n  state: running\n",
                     "2:1: unknown key 'producton' in the top level; did you mean 'production'?",
                     id="top"),
        pytest.param("source: x\nbuild:\n  comand: make\n",
                     "3:3: unknown key 'comand' in build; did you mean 'command'?", id="nested"),
        pytest.param("source: {git: /r, reff: main}\n",
                     "1:19: unknown key 'reff' in source; did you mean 'ref'?", id="git-source"),
        pytest.param("source: x\ndeploy:\n  placement:\n    constraint: []\n",
                     "4:5: unknown key 'constraint' in deploy.placement; did you mean "
                     "'constraints'?", id="deep"),
        pytest.param("source: x\nbogus: 1\n", "2:1: unknown key 'bogus' in the top level",
                     id="nothing-close"),
    ],
)  # fmt: skip
def test_an_unknown_key_names_the_one_it_was_probably_meant_to_be(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "www.yaml"
    with pytest.raises(DesiredFileError) as info:
        parse(path, text.encode())
    assert [str(p) for p in info.value.problems] == [f"{path}:{message}"]
