from __future__ import annotations

import pytest

from reconciler.core.redact import redact, scrub, secrets_of


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://alice:s3cret-pw@host/r.git", "https://alice:***@host/r.git"),
        ("https://ghp_t0ken@github.com/o/r.git", "https://***@github.com/o/r.git"),
        ("https://host/r.git?token=t0k&ref=x#top", "https://host/r.git?token=***&ref=***#top"),
        ("https://u:p@host/r?private_token=abc", "https://u:***@host/r?private_token=***"),
        ("https://ghp_t0ken:x-oauth-basic@github.com/o/r", "https://***:***@github.com/o/r"),
        ("https://glpat-t0ken:@gitlab.com/o/r.git", "https://***:***@gitlab.com/o/r.git"),
        ("https://dave:pw%40s3cret@host/r.git", "https://dave:***@host/r.git"),
        ("git://eve:pw-s3cret@host/r.git", "git://eve:***@host/r.git"),
        ("ssh://git@host/r.git", "ssh://git@host/r.git"),
        ("ssh://git:pw@host/r.git", "ssh://git:***@host/r.git"),
        ("bob:pw-secret@host.example:o/r.git", "bob:***@host.example:o/r.git"),
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),
        ("file:///srv/r.git", "file:///srv/r.git"),
        ("../r.git", "../r.git"),
    ],
)
def test_every_credential_form_is_masked(url: str, shown: str) -> None:
    assert redact(url) == shown
    for secret in secrets_of(url):
        assert secret not in shown


def test_credentials_are_masked_inside_free_text() -> None:
    text = (
        "fatal: unable to access 'https://host/r.git?token=tok-1234/': 403\n"
        "also https://alice:pw-5678@h/x, https://tok-9012@h/y and carol:pw-3456@h.example:o/r"
    )
    said = scrub(text)
    for secret in ("tok-1234", "pw-5678", "tok-9012", "pw-3456"):
        assert secret not in said
    assert "https://host/r.git?token=***" in said and "carol:***@h.example:o/r" in said
    assert scrub("nothing to hide: a@b c:d") == "nothing to hide: a@b c:d"
