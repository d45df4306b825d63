"""The MTCNN cascade (Zhang et al. 2016) run on facenet-pytorch's P/R/O-Net weights, with OpenCV doing the
resampling.

facenet-pytorch's own ``MTCNN.detect`` resamples the image pyramid and every candidate crop with
``torch.nn.functional.interpolate(mode="area")``, one call per crop: on this 2-core CPU that is ~3.6 ms per crop
and 0.6 s of a 1.9 s detection on a 704×612 portrait (160 crops; profiled). Here the pyramid and the crops are
resized by ``cv2.resize(INTER_AREA)`` (the same area averaging, on uint8) and the crops of a stage go through
their network in one batch. The stages, thresholds and box arithmetic are MTCNN's: P-Net on a pyramid of scale
factor 0.709 from 12 / ``min_face_size`` (cells of 12 px, stride 2), NMS 0.5 per scale and 0.7 across scales,
box regression, squaring, R-Net on 24×24 crops, ONet on 48×48 crops with 5 landmarks, a final NMS on the overlap
of the smaller box. ``tests/data/test_detection.py`` checks the boxes against facenet-pytorch's ``detect``.
"""
from __future__ import annotations

import numpy as np
import torch

from fastfer.data.decode import import_cv2

FACTOR = 0.709  # pyramid step (MTCNN's)
THRESHOLDS = (0.6, 0.7, 0.7)  # P-, R-, O-Net face-probability thresholds (MTCNN's)


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, by_smaller: bool = False) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first. Overlap = IoU, or intersection / the
    smaller area with ``by_smaller``. Boxes (N, 4) x1, y1, x2, y2 in inclusive pixel coordinates."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    if not by_smaller:
        import torchvision

        keep = torchvision.ops.nms(torch.from_numpy(boxes).float(), torch.from_numpy(scores).float(), threshold)
        return keep.numpy()
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        order = rest[w * h / np.minimum(area[i], area[rest]) <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _regress(boxes: np.ndarray, reg: np.ndarray, inclusive: bool = True) -> np.ndarray:
    """Apply the networks' box offsets (fractions of the box side)."""
    w = boxes[:, 2] - boxes[:, 0] + (1 if inclusive else 0)
    h = boxes[:, 3] - boxes[:, 1] + (1 if inclusive else 0)
    out = boxes.copy()
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes made square around their centre (side = the longer side)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out = boxes.copy()
    out[:, 0] = boxes[:, 0] + (w - side) / 2
    out[:, 1] = boxes[:, 1] + (h - side) / 2
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _normalise(batch: np.ndarray, device) -> torch.Tensor:
    """uint8 (N, H, W, 3) → the networks' input (N, 3, H, W), (x − 127.5) / 128."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float()
    return (x - 127.5) * 0.0078125


def _crops(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 3) crops of the in-image part of each box, and which boxes had one."""
    cv2 = import_cv2()
    h, w = image.shape[:2]
    out, ok = [], []
    for x1, y1, x2, y2 in boxes.astype(np.int64):  # trunc like the reference; 1-based inclusive → slices
        xa, ya, xb, yb = max(x1, 1) - 1, max(y1, 1) - 1, min(x2, w), min(y2, h)
        if xb > xa and yb > ya:
            out.append(cv2.resize(image[ya:yb, xa:xb], (size, size), interpolation=cv2.INTER_AREA))
            ok.append(True)
        else:
            ok.append(False)
    return (np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)), np.asarray(ok, dtype=bool)


@torch.inference_mode()
def detect(image: np.ndarray, pnet, rnet, onet, min_face_size: int = 20, thresholds=THRESHOLDS,
           factor: float = FACTOR, device="cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MTCNN on one RGB uint8 (H, W, 3) image → boxes (F, 4) x1, y1, x2, y2, scores (F,), landmarks (F, 5, 2)."""
    cv2 = import_cv2()
    h, w = image.shape[:2]
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))
    scale = 12.0 / min_face_size
    side = min(h, w) * scale
    candidates = []
    while side >= 12:  # stage 1: P-Net, fully convolutional, on each pyramid level
        level = cv2.resize(image, (int(w * scale + 1), int(h * scale + 1)), interpolation=cv2.INTER_AREA)
        reg, prob = pnet(_normalise(level[None], device))
        prob, reg = prob[0, 1].cpu().numpy(), reg[0].cpu().numpy()
        ys, xs = np.nonzero(prob >= thresholds[0])
        if len(ys):
            cells = np.stack([xs, ys], 1).astype(np.float64)
            boxes = np.concatenate([np.floor((2 * cells + 1) / scale), np.floor((2 * cells + 12) / scale)], 1)
            scores = prob[ys, xs]
            offsets = reg[:, ys, xs].T
            keep = _nms(boxes, scores, 0.5)
            candidates.append(np.concatenate([boxes[keep], scores[keep, None], offsets[keep]], 1))
        scale *= factor
        side *= factor
    if not candidates:
        return empty
    cand = np.concatenate(candidates)
    cand = cand[_nms(cand[:, :4], cand[:, 4], 0.7)]
    boxes = _square(_regress(cand[:, :4], cand[:, 5:9], inclusive=False))

    for stage, (net, size) in enumerate(((rnet, 24), (onet, 48)), start=1):  # stages 2 and 3 on crops
        crops, ok = _crops(image, boxes, size)
        boxes = boxes[ok]
        if len(boxes) == 0:
            return empty
        out = net(_normalise(crops, device))
        reg, prob = out[0].cpu().numpy(), out[-1][:, 1].cpu().numpy()
        passed = prob > thresholds[stage]
        boxes, reg, scores = boxes[passed], reg[passed], prob[passed]
        if stage == 1:
            keep = _nms(boxes, scores, 0.7)
            boxes = _square(_regress(boxes[keep], reg[keep]))
        else:
            marks = out[1].cpu().numpy()[passed]  # (F, 10): x1..x5 then y1..y5, fractions of the box
            bw = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
            bh = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
            points = np.stack([bw * marks[:, :5] + boxes[:, :1] - 1, bh * marks[:, 5:] + boxes[:, 1:2] - 1], 2)
            boxes = _regress(boxes, reg)
            keep = _nms(boxes, scores, 0.7, by_smaller=True)
            return boxes[keep], scores[keep], points[keep]
    return empty  # not reached

