"""Training logs: CSV files (always) and TensorBoard (when ``torch.utils.tensorboard`` imports)."""

from __future__ import annotations

import csv
from pathlib import Path

from mddose.utils.log import log_once


class RunLogger:
    """Appends rows to ``<dir>/train.csv`` (step, epoch, loss, lr, time) and ``<dir>/val.csv``.

    ``resume_step``: rows after that step (written after the checkpoint a resumed run starts from)
    are dropped so the CSV matches the continued run.
    """

    TRAIN = ("step", "epoch", "loss", "lr", "time")
    VAL = ("step", "epoch", "val_mae_gy", "time")

    def __init__(self, log_dir: str | Path, resume_step: int | None = None, enabled: bool = True):
        self.enabled, self.dir = enabled, Path(log_dir)
        self.tb = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._files = {}
        for name, cols in (("train", self.TRAIN), ("val", self.VAL)):
            path = self.dir / f"{name}.csv"
            rows = []
            if resume_step is not None and path.is_file():
                with open(path, newline="") as fh:
                    rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
            fh = open(path, "w", newline="")
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
            fh.flush()
            self._files[name] = (fh, w)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.dir / "tensorboard"))
        except Exception:  # tensorboard not installed
            log_once("train.tensorboard", "tensorboard not available; logging to CSV only")

    def _row(self, name: str, row: dict) -> None:
        fh, w = self._files[name]
        w.writerow(row)
        fh.flush()

    def train(self, step: int, epoch: int, loss: float, lr: float, time: float) -> None:
        if not self.enabled:
            return
        self._row("train", {"step": step, "epoch": epoch, "loss": f"{loss:.6g}", "lr": f"{lr:.6g}",
                            "time": f"{time:.3f}"})
        if self.tb is not None:
            self.tb.add_scalar("train/loss", loss, step)
            self.tb.add_scalar("train/lr", lr, step)

    def val(self, step: int, epoch: int, score: float, time: float) -> None:
        if not self.enabled:
            return
        self._row("val", {"step": step, "epoch": epoch, "val_mae_gy": f"{score:.6g}", "time": f"{time:.3f}"})
        if self.tb is not None:
            self.tb.add_scalar("val/mae_gy", score, step)

    def close(self) -> None:
        if not self.enabled:
            return
        for fh, _ in self._files.values():
            fh.close()
        if self.tb is not None:
            self.tb.close()
