"""What a run reports while it trains: ``training_log.csv``, the TensorBoard event log and the curves PNG.

The CSV has one row per ``log_every`` steps (and one at every validation and at the end) with the means of the
loss terms and monitors over the interval and, on validation rows, the validation metrics. An empty cell is a
value that was not measured at that step or is undefined (see :mod:`pixeldino.metrics`).
"""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path
from typing import Any

from pixeldino.io import atomic_output
from pixeldino.train.params import TrainConfig


def is_number(value: Any) -> bool:
    """True for a float log value that was computed (not blank, not undefined, not NaN)."""
    return isinstance(value, float) and math.isfinite(value)


def log_columns(config: TrainConfig) -> list[str]:
    """The columns of ``training_log.csv`` for ``config``'s mode."""
    columns = ["step", "lr", "loss", "loss_labelled"]
    if config.semi:
        columns += ["loss_unlabelled", "ema_momentum", "ema_horizon_steps"]
    if config.mode == "pixeldino":
        columns += ["usage_entropy", "teacher_entropy", "agreement"]
    if config.mode == "fixmatch":
        columns += ["confident_fraction"]
    columns += ["val_iou", "val_f1", "val_precision", "val_recall"]
    if config.semi:
        columns += ["val_student_iou", "val_teacher_iou"]
    return columns + ["seconds"]


class TrainingLog:
    """``training_log.csv`` (appended row by row), the rows in memory, and the TensorBoard event log if any."""

    def __init__(self, path: Path, columns: list[str], final: Path | None = None) -> None:
        """A log written to ``path`` as the run goes, with ``columns``; :meth:`publish` copies it to ``final`` when
        the run is complete. Nothing is written until :meth:`append`."""
        self.path = path
        self.final = final
        self.columns = columns
        self.history: list[dict[str, Any]] = []
        self.tensorboard: Any = None

    def clear(self) -> None:
        """Forget every row and delete the CSV (a fresh start)."""
        self.history = []
        self.path.unlink(missing_ok=True)
        if self.final is not None:
            self.final.unlink(missing_ok=True)

    def restore(self, up_to_step: int) -> None:
        """Reload the CSV of a resumed run, dropping rows written after the checkpoint it resumes from."""
        self.history = []
        source = self.path if self.path.exists() else self.final  # a finished run being extended has only the final
        if source is None or not source.exists():
            return
        with source.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if int(row["step"]) > up_to_step:
                    continue
                parsed: dict[str, Any] = {k: (float(v) if v not in ("", None) else "") for k, v in row.items()}
                parsed["step"] = int(row["step"])
                self.history.append(parsed)
        with atomic_output(self.path) as tmp:
            with tmp.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore")
                writer.writeheader()
                for row in self.history:
                    writer.writerow(row)

    def publish(self) -> None:
        """Move the log to its final path, atomically (the run is complete; extending it later restores from
        there)."""
        if self.final is not None and self.path.exists():
            with atomic_output(self.final) as tmp:
                shutil.copyfile(self.path, tmp)
            self.path.unlink()

    def open_tensorboard(self, log_dir: Path, step: int) -> None:
        """Start (or continue after ``step``) the TensorBoard event log in ``log_dir``, if tensorboard imports."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional: without it there is simply no event log
            return
        self.tensorboard = SummaryWriter(log_dir=str(log_dir), purge_step=step + 1)

    def close(self) -> None:
        """Flush and close the TensorBoard event log."""
        if self.tensorboard is not None:
            self.tensorboard.close()

    def append(self, row: dict[str, Any]) -> None:
        """Write one row (keys: :attr:`columns`; None and "" are empty cells) to the CSV and the event log."""
        new_file = not self.path.exists()
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            if new_file:
                writer.writeheader()
            writer.writerow(row)
        self.history.append(row)
        if self.tensorboard is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, float) and not math.isnan(v):
                    self.tensorboard.add_scalar(k, v, row["step"])

    def summary(self, seconds: float) -> dict[str, Any]:
        """The history part of the final metrics: validations, the best one, the last training losses."""
        val_rows = [r for r in self.history if is_number(r.get("val_iou"))]
        best = max(val_rows, key=lambda r: r["val_iou"], default=None)
        last = self.history[-1] if self.history else {}
        return {
            "n_val": len(val_rows),
            "best_val_iou": best["val_iou"] if best else None,
            "best_val_step": best["step"] if best else None,
            "final_train": {k: last[k] for k in self.columns if k.startswith("loss") and is_number(last.get(k))},
            "seconds": round(seconds, 1),
        }

    def plot(self, png: Path, mode: str) -> None:
        """The curves PNG: losses, validation metrics and (PixelDINO) collapse monitors over steps."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def series(key: str) -> tuple[list[int], list[float]]:
            pts = [(r["step"], r[key]) for r in self.history if is_number(r.get(key))]
            return [p[0] for p in pts], [p[1] for p in pts]

        panels = [
            ("losses", ["loss", "loss_labelled", "loss_unlabelled"]),
            ("validation", ["val_iou", "val_f1", "val_student_iou", "val_teacher_iou"]),
        ]
        if mode == "pixeldino":
            panels.append(("collapse monitors", ["usage_entropy", "teacher_entropy", "agreement"]))
        if mode == "fixmatch":
            panels.append(("pseudo-labels", ["confident_fraction"]))
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
        for ax, (title, keys) in zip(axes[0], panels):
            for key in keys:
                xs, ys = series(key)
                if xs:
                    ax.plot(xs, ys, label=key, marker="o" if key.startswith("val_") else None, ms=3)
            ax.set_title(title)
            ax.set_xlabel("step")
            if title == "losses":
                ax.set_yscale("log")
            if ax.get_lines():
                ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        fig.suptitle(f"pixeldino training ({mode})")
        fig.tight_layout()
        with atomic_output(png) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
