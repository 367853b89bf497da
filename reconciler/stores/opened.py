"""The one way to open the stores for a ``Config``: the daemon, the API, the CLI's local
client and the operations all call ``open_stores``, so they agree on where desired state
comes from and on every path under the data dir."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.core.config import Config
from reconciler.stores.desired import DesiredStore
from reconciler.stores.desired.git import ConfigRepo, forget_settings
from reconciler.stores.releases import ReleaseStore
from reconciler.stores.state import StateDB
from reconciler.stores.vault import Vault


@dataclass(frozen=True)
class Stores:
    db: StateDB
    desired: DesiredStore
    releases: ReleaseStore
    config_repo: ConfigRepo | None  # desired state from git (--desired-git), else None
    vault: Vault  # secrets the desired files refer to

    def close(self) -> None:
        self.db.close()


def open_stores(config: Config, *, applies: bool = False, db: StateDB | None = None) -> Stores:
    """The stores ``config`` names. ``applies``: the caller is the daemon, whose flags alone
    say where desired state comes from (it keeps them in a settings file); every other
    caller follows that file, so the API and the CLI write commits exactly when the daemon
    applies a configuration repository."""
    layout = config.layout
    layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # made here: owner only
    repo: ConfigRepo | None
    if applies:
        repo = None
        if config.desired_git:
            repo = ConfigRepo(
                layout.desired_git,
                config.desired_git,
                config.desired_git_ref,
                author=config.git_author,
            )
        else:
            forget_settings(layout.desired_git)
    elif config.desired_git:
        repo = ConfigRepo(
            layout.desired_git, config.desired_git, config.desired_git_ref, author=config.git_author
        )
    else:
        repo = ConfigRepo.from_data_dir(layout.root)
    desired = DesiredStore(
        repo.current if repo else config.desired_dir,
        lock_dir=layout.locks,
        committer=repo,
        derived=layout.previews / "desired",
    )
    return Stores(
        db=db if db is not None else StateDB(layout.state_db),
        desired=desired,
        releases=ReleaseStore(layout.releases),
        config_repo=repo,
        vault=Vault(layout.vault),
    )
