"""predict_fred.py's outputs, written as frames come (constant memory): an annotated video, annotated frames, a
YOLO .txt per frame, detections.json (COCO style) and skipped.txt (the frames that could not be read)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile

import cv2
import numpy as np

from datasets.event_frames import fused_bgr
from inference.sources import SourceFrame

LOGGER = logging.getLogger(__name__)
VIDEO_NAME = "annotated.mp4"
SKIPPED_NAME = "skipped.txt"
BOX_COLOURS = ((56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72))  # BGR
BLANK = 114  # grey of the video frame standing for an unreadable source frame


def draw_detections(frame: np.ndarray, dets: np.ndarray, class_names: list[str], copy: bool = True) -> np.ndarray:
    """A BGR frame with dets [N, 6] (x1, y1, x2, y2 in its pixels, score, class) drawn: box, name, score; on a copy,
    or on the frame itself when copy is False."""
    out = frame.copy() if copy else frame
    thickness = max(1, round(max(frame.shape[:2]) / 640))
    for x1, y1, x2, y2, score, cls in dets.tolist():
        colour = BOX_COLOURS[int(cls) % len(BOX_COLOURS)]
        name = class_names[int(cls)] if 0 <= int(cls) < len(class_names) else str(int(cls))
        cv2.rectangle(out, (round(x1), round(y1)), (round(x2), round(y2)), colour, thickness, cv2.LINE_AA)
        cv2.putText(out, f"{name} {score:.2f}", (round(x1), max(10, round(y1) - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35 * thickness, colour, thickness, cv2.LINE_AA)
    return out


def _file_stem(name: str) -> str:
    """The output file stem of a frame name (its base name without the extension)."""
    return os.path.splitext(os.path.basename(name))[0]


class Outputs:
    """The outputs of one prediction run in out_dir; write() each frame in order, close() at the end (also after
    Ctrl-C: the video is then playable and detections.json complete up to the last frame written)."""

    def __init__(self, out_dir: str, class_names: list[str], fps: float, video: bool = False, frames: bool = False,
                 txt: bool = False, json: bool = False):
        """Outputs in out_dir (made): video (VIDEO_NAME at fps, mp4v), frames (frames/<stem>.jpg), txt
        (labels/<stem>.txt), json (detections.json)."""
        self.out_dir, self.class_names, self.fps = out_dir, list(class_names), float(fps)
        os.makedirs(out_dir, exist_ok=True)
        self.video, self.frames_dir, self.labels_dir = video, None, None
        if frames:
            self.frames_dir = os.path.join(out_dir, "frames")
            os.makedirs(self.frames_dir, exist_ok=True)
        if txt:
            self.labels_dir = os.path.join(out_dir, "labels")
            os.makedirs(self.labels_dir, exist_ok=True)
        self._writer: cv2.VideoWriter | None = None
        self._video_hw: tuple[int, int] | None = None
        self._blanks = 0  # unreadable frames before the first readable one: written once the video's size is known
        self._json = None
        if json:  # images and annotations go to two temporary files, joined into detections.json by close()
            self._json = [tempfile.TemporaryFile("w+", dir=out_dir), tempfile.TemporaryFile("w+", dir=out_dir)]
            self._json_counts = [0, 0]
        self._skipped = None
        self.skipped = 0

    def write(self, frame: SourceFrame, dets: np.ndarray | None) -> None:
        """One frame's outputs: dets [N, 6] x1, y1, x2, y2 (source pixels), score, class, or None for an unreadable
        frame (listed in skipped.txt; a grey frame in the video, so that frames in and out stay one to one). The
        boxes are drawn on the frame's own image (no copy: a frame is done with once written; a fused frame's RGB
        frame, made BGR)."""
        if frame.image is None:
            self._skip(frame)
            return
        bgr = fused_bgr(frame.image) if isinstance(frame.image, tuple) else frame.image
        if self.video or self.frames_dir:
            annotated = draw_detections(bgr, dets, self.class_names, copy=False)  # the frame is not used after this
            if self.frames_dir:
                cv2.imwrite(os.path.join(self.frames_dir, _file_stem(frame.name) + ".jpg"), annotated)
            if self.video:
                self._video_frame(annotated)
        h, w = frame.size
        if self.labels_dir:
            xyxy = dets[:, :4]
            cxcywh = np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2 / w, (xyxy[:, 1] + xyxy[:, 3]) / 2 / h,
                               (xyxy[:, 2] - xyxy[:, 0]) / w, (xyxy[:, 3] - xyxy[:, 1]) / h], 1)
            with open(os.path.join(self.labels_dir, _file_stem(frame.name) + ".txt"), "w") as f:
                f.writelines(f"{int(c)} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f} {s:.5f}\n"
                             for (x, y, bw, bh), s, c in zip(cxcywh.tolist(), dets[:, 4].tolist(),
                                                              dets[:, 5].tolist()))
        if self._json:
            self._json_row(0, {"id": frame.index, "file_name": frame.name, "width": int(w), "height": int(h)})
            for x1, y1, x2, y2, score, cls in dets.tolist():
                bbox = [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)]
                self._json_row(1, {"id": self._json_counts[1] + 1, "image_id": frame.index,
                                   "category_id": int(cls) + 1, "bbox": bbox, "area": round(bbox[2] * bbox[3], 3),
                                   "score": round(score, 5)})

    def _json_row(self, k: int, obj: dict) -> None:
        """One object into the temporary file of the images (0) or the annotations (1)."""
        self._json[k].write(("," if self._json_counts[k] else "") + json.dumps(obj))
        self._json_counts[k] += 1

    def _skip(self, frame: SourceFrame) -> None:
        """List an unreadable frame, and stand a grey frame for it in the video."""
        if self._skipped is None:
            self._skipped = open(os.path.join(self.out_dir, SKIPPED_NAME), "w", encoding="utf-8")
        self._skipped.write(f"{frame.name}: {frame.reason}\n")
        LOGGER.warning("skipped %s: %s", frame.name, frame.reason)
        self._skipped.flush()
        self.skipped += 1
        if not self.video:
            return
        if self._writer is None:
            self._blanks += 1
        else:
            self._writer.write(np.full(self._video_hw + (3,), BLANK, np.uint8))

    def _video_frame(self, img: np.ndarray) -> None:
        """Append a frame to the video (opened at the first frame's size; other sizes are resized to it)."""
        if self._writer is None:
            self._video_hw = img.shape[:2]
            path = os.path.join(self.out_dir, VIDEO_NAME)
            self._writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                           (img.shape[1], img.shape[0]))
            if not self._writer.isOpened():
                raise OSError(f"{path}: OpenCV cannot write an mp4v video here (check the folder and OpenCV's build)")
            for _ in range(self._blanks):
                self._writer.write(np.full(img.shape[:2] + (3,), BLANK, np.uint8))
        if img.shape[:2] != self._video_hw:
            img = cv2.resize(img, self._video_hw[::-1], interpolation=cv2.INTER_AREA)
        self._writer.write(img)

    def close(self) -> None:
        """Finish every file: the video closed (playable), detections.json written; safe to call twice."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._skipped is not None:
            self._skipped.close()
            self._skipped = None
        if self._json:
            categories = [{"id": i + 1, "name": n} for i, n in enumerate(self.class_names)]
            path = os.path.join(self.out_dir, "detections.json")
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                for k, key in enumerate(("images", "annotations")):
                    f.write(("{" if k == 0 else ", ") + json.dumps(key) + ": [")
                    self._json[k].seek(0)
                    shutil.copyfileobj(self._json[k], f)
                    self._json[k].close()
                    f.write("]")
                f.write(", \"categories\": " + json.dumps(categories) + "}")
            os.replace(path + ".tmp", path)
            self._json = None
