"""Keeping reads inside the directory the user named. Names inside files we read (a shard index,
a store manifest) come from whoever wrote those files: `../../x`, an absolute path or a symlink
pointing out of the directory would make us read (or copy into a store) a file the user never
chose. Every such name goes through `confined`, which resolves it (symlinks included) and
refuses whatever lands outside.

One layout is let through on purpose: a Hugging Face hub cache snapshot
(`.../models--org--name/snapshots/<revision>/`) holds every file as a symlink to the
repository's content-addressed `.../models--org--name/blobs/<hash>`, so those blobs belong to
the checkpoint too.
"""

from pathlib import Path


def confined(directory: Path, name: str, what: str) -> Path:
    """directory/name resolved, if it stays inside `directory` (resolved too); else ValueError
    naming `what` (where the name came from) and the name."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what}: {name!r} is not a file name")
    root = directory.resolve()
    try:
        path = (root / name).resolve()
    except (OSError, RuntimeError, ValueError) as error:  # a symlink loop, an embedded NUL
        raise ValueError(f"{what}: {name!r} cannot be resolved ({error})") from None
    if path == root or not (path.is_relative_to(root) or path.parent == _hub_blobs(root)):
        raise ValueError(
            f"{what}: {name!r} resolves to {path}, outside {root}; only files inside the directory are read"
        )
    return path


def _hub_blobs(root: Path) -> Path | None:
    """The blob folder of a hub cache snapshot directory (resolved), or None for other folders."""
    snapshots, repository = root.parent, root.parent.parent
    if snapshots.name == "snapshots" and repository.name.startswith("models--"):
        return repository / "blobs"
    return None
