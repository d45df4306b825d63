"""Frames per second of ``Predictor.stream`` on the shared real clip (``../shared/data/faces``, 275 frames,
640×360), per model and precision, end to end (decode + detection + alignment + classification + tracking), with
the detection and the classification time measured apart.

    PYTHONPATH=. python bench/stream_fps.py                      # apvit_tiny and apvit, fp32 and bf16
    PYTHONPATH=. python bench/stream_fps.py --models apvit_tiny --frames 100 --out bench/results/x.md

Random weights (speed does not depend on them; nothing is downloaded). The clip is read as a recorded source,
so no frame is dropped; a live 30 frames/s camera would drop ``1 − fps / 30`` of its frames at these rates. The
machine's load average is printed before and after each run: on a shared CPU the numbers move with it.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

CLIP = Path(os.environ.get("FASTFER_FACES_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
            / "faces") / "short_hamilton_clip.mp4"


def _timed(fn, bucket: list):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        bucket.append(time.perf_counter() - start)
        return out
    return wrapper


def run_one(model_name: str, amp: str, frames: int, detector: str) -> dict:
    import torch

    import fastfer.models
    from fastfer.infer import Predictor

    torch.manual_seed(0)
    model = fastfer.models.create_model(model_name).eval()
    predictor = Predictor(model, device="cpu", amp=None if amp == "fp32" else amp, detector=detector)
    detect_times, model_times = [], []
    predictor.detector = _timed(predictor.detector, detect_times)
    predictor.logits = _timed(predictor.logits, model_times)
    predictor.logits(torch.zeros(1, 3, *predictor.input_size))  # warm-up: oneDNN primitives, autocast caches
    detect_times.clear(), model_times.clear()
    load_before = os.getloadavg()[0]
    stream = predictor.stream(str(CLIP), max_frames=frames)
    start = time.perf_counter()
    n_faces = sum(len(r["faces"]) for r in stream)
    wall = time.perf_counter() - start
    summary = stream.summary()
    return {"model": model_name, "precision": amp, "detector": predictor.detector_name,
            "frames": summary["frames_processed"], "faces": n_faces, "fps": summary["frames_processed"] / wall,
            "detect_ms": 1e3 * sum(detect_times) / max(len(detect_times), 1),
            "model_ms_per_face": 1e3 * sum(model_times) / max(n_faces, 1),
            "load_before": load_before, "load_after": os.getloadavg()[0], "dropped": summary["dropped"]}


def to_markdown(rows: list[dict]) -> str:
    lines = ["| model | precision | detector | frames | faces | frames/s | detection ms/frame | model ms/face | "
             "load avg before → after |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['precision']} | {r['detector']} | {r['frames']} | {r['faces']} | "
                     f"{r['fps']:.2f} | {r['detect_ms']:.0f} | {r['model_ms_per_face']:.1f} | "
                     f"{r['load_before']:.2f} → {r['load_after']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="apvit_tiny,apvit")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--frames", type=int, default=None, help="frames of the clip to run (default: all 275)")
    parser.add_argument("--detector", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    if not CLIP.is_file():
        print(f"stream_fps: the clip is not at {CLIP} (set FASTFER_FACES_DIR)", file=sys.stderr)
        return 2
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for model_name in args.models.split(","):
        for amp in args.precisions.split(","):
            row = run_one(model_name, amp, args.frames, args.detector)
            rows.append(row)
            print(to_markdown([row]).splitlines()[-1], flush=True)
    header = (f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
              f"{torch.__version__}, {torch.get_num_threads()} threads; clip {CLIP.name}")
    table = to_markdown(rows)
    print(header + "\n\n" + table)
    if args.out:
        Path(args.out).write_text(header + "\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
