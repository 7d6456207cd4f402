"""Resume bookkeeping of one training run: history rows, backups, best checkpoint, callbacks.

Rerunning a killed training job resumes from its last finished epoch (``BackupAndRestore``); the
history and the early-stopping state continue where they were.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import keras

from quiltflow.core.errors import UserError


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that continues the patience count of epochs run before a resume."""

    def __init__(self, prior_best: float | None, prior_wait: int, prior_best_epoch: int, **kwargs):
        super().__init__(**kwargs)
        self._prior = (prior_best, prior_wait, prior_best_epoch)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        best, wait, best_epoch = self._prior
        if best is not None:
            self.best, self.wait, self.best_epoch = best, wait, best_epoch


def read_history(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_history(path: Path, rows: list[dict[str, str]]) -> None:
    if not rows:
        path.unlink(missing_ok=True)
        return
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def backed_up_epoch(backup_dir: Path) -> int:
    """Epochs finished according to a BackupAndRestore folder (0 if none)."""
    meta = backup_dir / "training_metadata.json"
    if not meta.is_file():
        return 0
    return int(json.loads(meta.read_text())["epoch"])


def keep_finished_rows(history: Path, resume_epoch: int, backup: Path) -> list[dict[str, str]]:
    """Keep the history rows of the ``resume_epoch`` backed-up epochs (a kill can land between
    the CSV row and the backup); a mismatch is a one-line error naming the files."""
    rows = [r for r in read_history(history) if int(r["epoch"]) < resume_epoch]
    if len(rows) != resume_epoch:
        raise UserError(
            f"{history}: has {len(rows)} rows for {resume_epoch} backed-up epochs; delete {backup} to start from scratch"
        )
    write_history(history, rows)
    return rows


def prior_val_state(rows: list[dict[str, str]]) -> tuple[float | None, int, int]:
    """(best finite val loss, epochs since it, its 0-based epoch) from history rows.

    Rows without a val loss, or with NaN/inf (a diverged epoch), never count as the best.
    """
    scored = [(float(r["val_loss"]), int(r["epoch"])) for r in rows if r.get("val_loss") not in (None, "")]
    finite = [(loss, epoch) for loss, epoch in scored if math.isfinite(loss)]
    if not finite:
        return None, 0, 0
    best_loss, best_epoch = min(finite, key=lambda item: item[0])  # first of equal losses
    return best_loss, len(scored) - 1 - scored.index((best_loss, best_epoch)), best_epoch


class TrainingRun:
    """Paths and resume state of one training run in ``out_dir``."""

    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir)
        # Epoch rows are appended to an undeclared file: Snakemake deletes a rerun job's declared
        # outputs (history.csv) before it starts, and a resumed run needs the earlier rows.
        self.history = self.out / "history.partial.csv"
        self.final_history = self.out / "history.csv"
        self.best = self.out / "checkpoints" / "best.keras"
        self.backup = self.out / "backup"
        self.tensorboard = self.out / "tensorboard"

    def start(self, resume_epoch: int) -> list[dict[str, str]]:
        """Keep history rows of finished epochs only (a kill can land between the CSV row and
        the backup); a fresh start clears stale outputs of an older run."""
        self.best.parent.mkdir(parents=True, exist_ok=True)
        if resume_epoch == 0:
            self.history.unlink(missing_ok=True)
            self.final_history.unlink(missing_ok=True)
            self.best.unlink(missing_ok=True)
            shutil.rmtree(self.backup, ignore_errors=True)
            return []
        return keep_finished_rows(self.history, resume_epoch, self.backup)

    def callbacks(self, backup_dir: Path, patience: int | None) -> list[keras.callbacks.Callback]:
        """Callbacks in ``on_epoch_end`` order: the CSV row lands before the backup, so a kill
        between them leaves a duplicate row (dropped on resume), never a gap."""
        rows = read_history(self.history)
        best, wait, best_epoch = prior_val_state(rows)
        callbacks: list[keras.callbacks.Callback] = [
            keras.callbacks.CSVLogger(str(self.history), append=bool(rows)),
            keras.callbacks.ModelCheckpoint(
                str(self.best), monitor="val_loss", save_best_only=True, initial_value_threshold=best
            ),
            keras.callbacks.TensorBoard(str(self.tensorboard), write_graph=False, profile_batch=0),
        ]
        if patience is not None:
            callbacks.append(
                ResumableEarlyStopping(
                    best, wait, best_epoch, monitor="val_loss", patience=patience, restore_best_weights=True
                )
            )
        callbacks.append(keras.callbacks.BackupAndRestore(str(backup_dir), double_checkpoint=True))
        return callbacks

    def finish_history(self) -> list[dict[str, str]]:
        """Move the epoch rows to the declared history.csv; return them."""
        rows = read_history(self.history)
        write_history(self.final_history, rows)
        self.history.unlink(missing_ok=True)
        return rows
