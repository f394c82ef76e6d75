"""A run folder has one writer, and a rerun in it resumes only the run its config describes.

- **One writer**: two jobs in one folder (two terminals, a sweep with a fixed `hydra.run.dir`) would write the
  same checkpoints and reports. The first job holds `run.lock` for the whole run (`filelock`: an OS lock, released
  when the process ends, however it ends) and names itself in `run.owner`; a second job stops at once with one
  sentence naming the folder and that process. Under DDP, rank 0 holds it for all ranks.
- **Resume what matches**: a run stopped part-way leaves `last.ckpt` and the `config.yaml` it ran with. A rerun
  there (or `ckpt_path=` pointing into a run folder) resumes only if its training config is the same; anything
  but the epoch budget, logging and hardware counts as a change, since the checkpoint's optimizer, schedule and
  epoch belong to the old one. A changed config stops with the changed keys and the two ways on (a new folder, or
  `resume=force`).
- **A finished run stays**: training again in a folder whose run finished (its `metrics.json` is there) would
  overwrite its checkpoints, metrics and report; it stops with one sentence unless `resume=overwrite` says to.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

from tl_lightning.utils import BadValue, UserError, write_text

LOCK, OWNER, CONFIG, FINISHED = "run.lock", "run.owner", "config.yaml", "metrics.json"
RESUME_CHOICES = (None, "force", "overwrite")
# Keys a resumed run may change: how long it trains, what it logs and where, and the hardware it runs on.
MAY_CHANGE = (
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.max_time",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.default_root_dir",
    "data.num_workers",
    "data.persistent_workers",
    "data.pin_memory",
    "logger",
    "paths",
    "hydra",
    "ckpt_path",
    "resume",
    "task_name",
)


class FolderInUse(UserError):
    """Another process holds the run folder."""


@contextmanager
def hold(folder: Path, writer: bool = True) -> Iterator[None]:
    """Hold `folder` for this process for the block (`writer=False`: a DDP rank other than 0, which holds nothing).

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with hold(folder):
    ...     (folder / OWNER).read_text().split()[0] == f"pid={os.getpid()}"
    True
    """
    if not writer:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        owner = (folder / OWNER).read_text().strip() if (folder / OWNER).is_file() else "another process"
        raise FolderInUse(
            f"The run folder {folder} is in use by another job ({owner}). Give this one its own folder "
            "(hydra.run.dir=...), or wait for that one to finish."
        ) from None
    try:
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        write_text(folder / OWNER, f"pid={os.getpid()} host={socket.gethostname()} started={started}\n")
        yield
    finally:
        (folder / OWNER).unlink(missing_ok=True)
        lock.release()


def check_not_finished(folder: Path, resume: str | None) -> None:
    """Refuse to train in `folder` when a finished run is there, unless `resume` is "overwrite"; then its
    `metrics.json` and checkpoints go first, so the new run neither resumes the old one's `last.ckpt` nor finds
    Lightning versioning its checkpoints beside the old ones (`best-v1.ckpt`). Rank 0's to call.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> check_not_finished(folder, None)  # nothing there yet
    >>> _ = (folder / FINISHED).write_text("{}")
    >>> try:
    ...     check_not_finished(folder, None)
    ... except BadValue as err:
    ...     print(str(err).startswith(f"{folder} holds a finished run ({FINISHED} of {time.strftime('%Y-%m-%d')}"))
    True
    >>> check_not_finished(folder, "overwrite")
    >>> (folder / FINISHED).exists()
    False
    """
    if resume not in RESUME_CHOICES:
        shown = ", ".join("null" if choice is None else choice for choice in RESUME_CHOICES)
        raise BadValue(f"resume must be one of {shown}; got {resume!r}.")
    finished = folder / FINISHED
    if not finished.is_file():
        return
    if resume == "overwrite":
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        finished.unlink()
        return
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(finished.stat().st_mtime))
    raise BadValue(
        f"{folder} holds a finished run ({FINISHED} of {when}): training here again would overwrite its "
        "checkpoints, metrics and report. Give this run its own folder (hydra.run.dir=...), or replace that run "
        "with resume=overwrite."
    )


def check_same_run(previous: Path, config: Mapping[str, Any], checkpoint: str) -> None:
    """Refuse to resume `checkpoint` under `config` when `previous` (the config.yaml the checkpoint's run wrote)
    differs in a key outside `MAY_CHANGE`. Both are compared as resolved values (the recipe's choices included,
    which are the same whenever the data and the config are).

    >>> import tempfile
    >>> saved = Path(tempfile.mkdtemp()) / CONFIG
    >>> _ = saved.write_text("model:\\n  lr: 0.001\\ntrainer:\\n  max_epochs: 15\\n")
    >>> check_same_run(saved, {"model": {"lr": 0.001}, "trainer": {"max_epochs": 30}}, "last.ckpt")
    >>> try:
    ...     check_same_run(saved, {"model": {"lr": 0.05}, "trainer": {"max_epochs": 15}}, "last.ckpt")
    ... except BadValue as err:
    ...     print(str(err).split(". ")[0])
    last.ckpt belongs to a run started with another config (model.lr: 0.001 then, 0.05 now)
    """
    before = _flat(yaml.safe_load(previous.read_text()) or {})
    now = _flat(yaml.safe_load(yaml.safe_dump(_plain(config))) or {})
    changed = sorted(
        key
        for key in before.keys() | now.keys()
        if before.get(key) != now.get(key) and not any(key == k or key.startswith(k + ".") for k in MAY_CHANGE)
    )
    if not changed:
        return
    shown = ", ".join(
        f"{key}: {before.get(key, '(absent)')} then, {now.get(key, '(absent)')} now" for key in changed[:5]
    )
    more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
    raise BadValue(
        f"{checkpoint} belongs to a run started with another config ({shown}{more}). Resuming would continue its "
        "optimizer, schedule and epoch under the new values. Start a new run folder (hydra.run.dir=...), or resume "
        "anyway with resume=force."
    )


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` as `{"a.b": 1}`; an empty mapping stays a value."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat |= _flat(value, f"{prefix}.{key}" if prefix else str(key))
    return flat
