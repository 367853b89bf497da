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


@pytest.mark.parametrize(
    ("text", "where", "words", "pointer"),
    [
        pytest.param("source: x\nproduction\n  state: running\n", "2:1",
                     "a key without ':'; write 'key: value'", "    production\n    ^",
                     id="key-without-colon"),
        pytest.param("source: x\nproduction:\n  state: running\n   version: latest\n", "4:11",
                     "a ':' where a value was expected; usual causes: this line is indented "
                     "deeper", "       version: latest\n              ^", id="over-indented"),
        pytest.param("source: x\nbuild:\n    command: make\n  output: dist\n", "4:3",
                     "this line is indented differently from the lines of its block",
                     "      output: dist\n      ^", id="under-indented"),
        pytest.param('source: "x\nkeep: 2\n', "1:9", "a quote that is never closed",
                     '    source: "x\n            ^', id="open-quote"),
        pytest.param("source: x\nenv: {A: 1\n", "3:1",
                     "a '{' that is never closed with '}' (it opens on line 2)", "",
                     id="open-brace"),
    ],
)  # fmt: skip
def test_a_syntax_error_is_said_in_plain_words_with_its_line_and_a_caret(
    tmp_path: Path, text: str, where: str, words: str, pointer: str
) -> None:
    path = tmp_path / "www.yaml"
    with pytest.raises(DesiredFileError) as info:
        parse(path, text.encode())
    (problem,) = info.value.problems
    assert f"{problem.line}:{problem.column}" == where
    assert problem.message.startswith(f"YAML syntax: {words}")
    assert problem.message.endswith(pointer)


def test_a_key_glued_to_its_value_is_told_to_take_a_space(tmp_path: Path) -> None:
    with pytest.raises(DesiredFileError, match=r"a key needs a space after its colon"):
        parse(tmp_path / "www.yaml", b"source:./site\n")
