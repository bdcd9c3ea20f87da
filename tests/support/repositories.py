"""Git repositories for the tests of git servers: one commit, a known message."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def one_commit_repository(
    folder: Path, message: str, *, owner: int | None = None
) -> Path:
    """``folder`` made a repository whose one commit adds a README; ``owner``
    (a uid, its gid alike) then owns it all, as a sandbox user must."""
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("hello\n")
    git = ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "README.md"], ["commit", "-qm", message]):
        subprocess.run([*git, *args], check=True, capture_output=True)

    if owner is not None:
        for entry in [folder, *folder.rglob("*")]:
            os.lchown(entry, owner, owner)

    return folder
