"""What a followed source says when its ref is not in the repository."""

from __future__ import annotations

from reconciler.sources.follow import missing_ref


def test_a_ref_never_seen_is_waited_for_and_a_seen_one_is_gone() -> None:
    assert missing_ref("main", ever_seen=False) == (
        "waiting for the first push to 'main' (the repository has no 'main' yet): "
        "git push <remote> HEAD:main"
    )
    assert missing_ref("main", ever_seen=True).startswith("'main' is gone from the repository")
