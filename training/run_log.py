"""What a training run leaves in its folder: TensorBoard scalars, results.csv, curve PNGs and epoch_map.txt."""
import csv
import math
import os

import cv2
import numpy as np
from torch.utils.tensorboard import SummaryWriter

RESULT_COLUMNS = ["epoch", "phase", "batch_size", "lr", "train_loss", "train_box", "train_cls", "train_dfl",
                  "val_loss", "val_box", "val_cls", "val_dfl", "mAP50", "mAP50_95", "fitness", "img_per_s",
                  "epoch_s", "gpu_mem_GB", "skipped_steps", "data_wait_pct"]

# TensorBoard tag for each results.csv column that is plotted there.
TB_TAGS = {"train_box": "train/box", "train_cls": "train/cls", "train_dfl": "train/dfl", "train_loss": "train/loss",
           "val_loss": "val/loss", "lr": "lr", "mAP50": "metrics/mAP50", "mAP50_95": "metrics/mAP50_95",
           "img_per_s": "speed/img_per_s", "data_wait_pct": "speed/data_wait_pct", "epoch_s": "time/epoch_s",
           "gpu_mem_GB": "gpu/mem_GB"}

_COLOURS = [(200, 90, 30), (40, 40, 220), (40, 160, 40), (160, 40, 160)]  # BGR


class RunLog:
    """Writer for one run folder; `start_epoch` > 0 (a resume) drops rows and events of later epochs."""

    def __init__(self, run_dir: str, start_epoch: int = 0):
        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        self.csv_path = os.path.join(run_dir, "results.csv")
        self.rows = [r for r in read_results(self.csv_path) if int(r["epoch"]) <= start_epoch]
        self._write_csv()
        self.tb = SummaryWriter(run_dir, purge_step=start_epoch + 1 if start_epoch else None)

    def _write_csv(self) -> None:
        with open(self.csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
            w.writeheader()
            w.writerows(self.rows)

    def log_epoch(self, row: dict) -> None:
        """Record one finished epoch (keys of RESULT_COLUMNS; missing ones stay empty) and redraw the curves."""
        row = {k: _fmt(row.get(k)) for k in RESULT_COLUMNS}
        self.rows.append(row)
        self._write_csv()
        epoch = int(row["epoch"])
        for key, tag in TB_TAGS.items():
            if row[key] != "":
                self.tb.add_scalar(tag, float(row[key]), epoch)
        self.tb.flush()
        self.draw_curves()

    def log_map(self, epoch: int, metrics: dict) -> None:
        """Append one evaluation to epoch_map.txt."""
        with open(os.path.join(self.run_dir, "epoch_map.txt"), "a") as f:
            f.write(f"epoch {epoch}: " + " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()) + "\n")

    def draw_curves(self) -> None:
        """Write loss.png (train and val loss) and map.png (mAP50, mAP50:95) from the rows so far."""
        def series(key: str) -> tuple[list, list]:
            pts = [(int(r["epoch"]), float(r[key])) for r in self.rows if r[key] not in ("", "nan")]
            return [p[0] for p in pts], [p[1] for p in pts]
        draw_curve_png({"train loss": series("train_loss"), "val loss": series("val_loss")},
                       "loss", os.path.join(self.run_dir, "loss.png"))
        draw_curve_png({"mAP50": series("mAP50"), "mAP50:95": series("mAP50_95")},
                       "mAP (val)", os.path.join(self.run_dir, "map.png"), y_range=(0.0, 1.0))

    def close(self) -> None:
        """Flush and close TensorBoard."""
        self.tb.close()


def _fmt(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def read_results(path: str) -> list[dict]:
    """Rows of a results.csv (empty list if there is none)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return [{k: r.get(k, "") or "" for k in RESULT_COLUMNS} for r in csv.DictReader(f)]


def draw_curve_png(curves: dict[str, tuple[list, list]], title: str, path: str,
                   y_range: tuple[float, float] | None = None, size: tuple[int, int] = (480, 720)) -> None:
    """Draw y-against-epoch line curves with axes, ticks and a legend into a PNG (OpenCV only).

    y_range fixes the y axis (e.g. (0, 1) for mAP); otherwise it fits the data with a 5% margin.
    """
    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 70, 20, 50, 50
    font, black = cv2.FONT_HERSHEY_SIMPLEX, (0, 0, 0)
    xs = [x for cx, _ in curves.values() for x in cx]
    ys = [y for _, cy in curves.values() for y in cy if math.isfinite(y)]
    cv2.putText(img, title, (left, 22), font, 0.6, black, 1, cv2.LINE_AA)
    lx = left + cv2.getTextSize(title, font, 0.6, 1)[0][0] + 30
    for n, name in enumerate(curves):  # legend above the plot, left to right
        colour = _COLOURS[n % len(_COLOURS)]
        cv2.line(img, (lx, 17), (lx + 30, 17), colour, 2)
        cv2.putText(img, name, (lx + 36, 22), font, 0.5, black, 1, cv2.LINE_AA)
        lx += 56 + cv2.getTextSize(name, font, 0.5, 1)[0][0]
    cv2.rectangle(img, (left, top), (w - right, h - bottom), black, 1)
    if xs and ys:
        x0, x1 = min(xs), max(max(xs), min(xs) + 1)
        if y_range is not None:
            y0, y1 = y_range
        else:
            pad = (max(ys) - min(ys)) * 0.05 or abs(max(ys)) * 0.05 or 1.0
            y0, y1 = min(ys) - pad, max(ys) + pad

        def to_px(x: float, y: float) -> tuple[int, int]:
            px = left + (x - x0) / (x1 - x0) * (w - left - right)
            py = h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)
            return int(round(px)), int(round(py))

        for k in range(5):
            yv = y0 + (y1 - y0) * k / 4
            _, py = to_px(x0, yv)
            cv2.line(img, (left - 4, py), (left, py), black, 1)
            cv2.putText(img, f"{yv:.3g}", (4, py + 4), font, 0.4, black, 1, cv2.LINE_AA)
        for xv in sorted({int(round(x0 + (x1 - x0) * k / 5)) for k in range(6)}):
            px, _ = to_px(xv, y0)
            cv2.line(img, (px, h - bottom), (px, h - bottom + 4), black, 1)
            cv2.putText(img, str(xv), (min(px - 8, w - right - 16), h - bottom + 18), font, 0.4, black, 1, cv2.LINE_AA)
        cv2.putText(img, "epoch", (w // 2 - 20, h - 10), font, 0.5, black, 1, cv2.LINE_AA)
        for n, (cx, cy) in enumerate(curves.values()):
            colour = _COLOURS[n % len(_COLOURS)]
            pts = [to_px(x, y) for x, y in zip(cx, cy) if math.isfinite(y)]
            if len(pts) > 1:
                cv2.polylines(img, [np.array(pts, np.int32)], False, colour, 2, cv2.LINE_AA)
            for p in pts:
                cv2.circle(img, p, 3, colour, -1, cv2.LINE_AA)
    cv2.imwrite(path, img)
