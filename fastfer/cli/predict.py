"""``fastfer predict PATH…`` / ``--camera N``: expressions of the faces in images, folders (recursive), videos,
network streams (``rtsp://…``, ``http(s)://…``) and cameras.

Output (``--out``): JSON lines (one record per image or processed video frame: ``path``, ``frame``/``time`` for
videos and streams — ``dropped`` for live ones —, ``faces`` [...] with a ``track`` id in videos, ``error`` when
the input could not be read or no face was found) or CSV (one row per face; images without a face get one row
with the error). Without ``--out`` the JSON lines go to stdout. A progress bar goes to stderr. ``--annotate DIR``
writes each image (or video / stream) with boxes, track ids and labels drawn on it; ``--tracks FILE`` writes each
video's / stream's per-track summary (dominant expression, seconds per expression). ``--explain DIR`` draws
APViT's patch scores and kept patches for the faces of each image. Unreadable inputs are reported and skipped;
the exit status is 1 when any input could not be read. A live stream (camera, URL) runs until it ends,
``--max-frames`` or Ctrl-C; when inference is slower than the stream, frames are dropped (counted) to keep up.
"""
from __future__ import annotations

import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="expressions of the faces in images, folders and videos",
                              description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="image files, folders (searched recursively), videos or stream URLs (rtsp://, http://)")
    p.add_argument("--camera", type=int, metavar="N", help="read camera N (0: the default camera) until Ctrl-C")
    p.add_argument("--checkpoint", help="weights file or training run folder (fastfer checkpoint)")
    p.add_argument("--model", help="model name: for a checkpoint without metadata; alone = random weights (testing)")
    p.add_argument("--detector", default="auto", choices=["auto", "mtcnn", "haar", "none"],
                   help="face detector; auto = MTCNN when facenet-pytorch is installed, else Haar; 'none' treats "
                        "every image as one face crop (default: auto)")
    p.add_argument("--no-face", default="skip", choices=["skip", "full", "error"],
                   help="image without a detected face: report it and go on, use the whole image, or stop")
    p.add_argument("--multi-face", default="all", choices=["all", "largest", "error"],
                   help="several faces in an image: all of them, the largest, or stop")
    p.add_argument("--out", help="results file: .jsonl (or .json) or .csv (default: JSON lines on stdout)")
    p.add_argument("--annotate", metavar="DIR", help="write images / videos with boxes and labels into DIR")
    p.add_argument("--explain", metavar="DIR", help="images: write <DIR>/<name>.app.png showing, per face, APViT's "
                   "patch scores and the patches its pooling keeps (APViT models only)")
    p.add_argument("--every", type=int, default=1, metavar="N", help="videos: classify every N-th frame (default 1)")
    p.add_argument("--smooth", type=float, nargs="?", const=0.5, default=None, metavar="ALPHA",
                   help="videos: exponential moving average of each tracked face's probabilities, weight ALPHA "
                        "on the newest frame (default 0.5 when given without a value)")
    p.add_argument("--min-hits", type=int, default=2, metavar="N",
                   help="videos: report a new face once detected in N processed frames (default 2)")
    p.add_argument("--hold", type=int, default=3, metavar="N",
                   help="videos: keep a missed face's last box for N processed frames (default 3)")
    p.add_argument("--max-frames", type=int, default=None, metavar="N",
                   help="videos / streams: stop after N frames read")
    p.add_argument("--tracks", metavar="FILE", help="write the per-track summary of each video / stream (JSON)")
    p.add_argument("--min-confidence", type=float, default=None, metavar="P",
                   help="label faces whose top probability is below P 'uncertain'")
    p.add_argument("--batch-size", type=int, default=32, help="faces per forward pass (default 32)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for the model (default: torch's choice). On a busy machine 1 can be much "
                        "faster: every op of a small model then skips the wait for a second thread")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when available)")
    p.add_argument("--backend", default=None, help="op backend: triton, cuda, cpu, torch (default: automatic)")
    p.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"],
                   help="autocast dtype (default auto: bf16 on a GPU with bf16 or a CPU with native bf16 (AMX / "
                        "AVX512-BF16), fp32 elsewhere; the choice is printed)")
    p.set_defaults(func=run)


def _check_args(args) -> None:
    if not args.paths and args.camera is None:
        raise SystemExit("fastfer predict: give PATH… (images, folders, videos, stream URLs) or --camera N")
    if args.every < 1:
        raise SystemExit(f"fastfer predict: --every: expected a positive int, got {args.every}")
    if args.min_hits < 1 or args.hold < 0:
        raise SystemExit(f"fastfer predict: --min-hits: expected ≥ 1 and --hold ≥ 0, got {args.min_hits} and "
                         f"{args.hold}")
    if args.max_frames is not None and args.max_frames < 1:
        raise SystemExit(f"fastfer predict: --max-frames: expected a positive int, got {args.max_frames}")
    if args.min_confidence is not None and not 0 <= args.min_confidence <= 1:
        raise SystemExit(f"fastfer predict: --min-confidence: expected P in [0, 1], got {args.min_confidence}")
    if args.smooth is not None and not 0 < args.smooth <= 1:
        raise SystemExit(f"fastfer predict: --smooth: expected ALPHA in (0, 1], got {args.smooth}")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"fastfer predict: --threads: expected a positive int, got {args.threads}")
    if args.batch_size < 1:
        raise SystemExit(f"fastfer predict: --batch-size: expected a positive int, got {args.batch_size}")
    if args.out and Path(args.out).suffix.lower() not in (".jsonl", ".json", ".csv"):
        raise SystemExit(f"fastfer predict: --out: expected a .jsonl, .json or .csv file, got {args.out!r}")
    if not args.checkpoint and not args.model:
        raise SystemExit("fastfer predict: give --checkpoint (a trained model; nothing is downloaded), or --model "
                         "NAME for a randomly initialised model (testing only)")


def _build_predictor(args):
    from fastfer.infer import Predictor

    if args.checkpoint:
        source = args.checkpoint
    else:
        import fastfer.models

        print(f"warning: --model {args.model} without --checkpoint: random weights, predictions are meaningless",
              file=sys.stderr)
        source = fastfer.models.create_model(args.model)
    return Predictor(source, device=args.device, backend=args.backend, amp=args.amp, batch_size=args.batch_size,
                     detector=args.detector, no_face=args.no_face, multi_face=args.multi_face,
                     model_name=args.model if args.checkpoint else None, min_confidence=args.min_confidence)


def run(args) -> int:
    from tqdm import tqdm

    from fastfer.data.face import MultipleFacesError, NoFaceError
    from fastfer.infer.files import (PredictOptions, ResultWriter, collect_inputs, new_stats, predict_files,
                                     stream_name, total_work)

    _check_args(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    inputs, missing = collect_inputs(args.paths)
    if args.camera is not None:
        inputs.append(("stream", args.camera, stream_name(args.camera)))
    try:
        predictor = _build_predictor(args)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as exc:
        print(f"fastfer predict: {exc}", file=sys.stderr)
        return 2
    ops_line = ", ".join(f"{op} → {name}" for op, name in predictor.op_backends.items())
    print(f"fastfer predict: {predictor.precision} | ops {ops_line}", file=sys.stderr)
    if args.explain and not predictor.can_explain:
        print(f"fastfer predict: --explain: model {predictor.info.model_name!r} does not report its pooling "
              f"decisions (APViT models do)", file=sys.stderr)
        return 2
    options = PredictOptions(annotate=args.annotate, explain=args.explain, every=args.every, smooth=args.smooth,
                             min_hits=args.min_hits, hold=args.hold, max_frames=args.max_frames)
    writer = ResultWriter(args.out, predictor.label_names)
    for path, error in missing:
        writer.write({"path": path, "faces": [], "error": error})
    stats = new_stats(unreadable=len(missing))
    complete = False
    try:
        with tqdm(total=total_work(inputs, args.every), unit="img", desc="predict", file=sys.stderr,
                  dynamic_ncols=True) as bar:
            predict_files(predictor, inputs, writer, options, stats, bar)
        complete = True
    except (NoFaceError, MultipleFacesError) as exc:  # --no-face error / --multi-face error
        print(f"fastfer predict: {exc}", file=sys.stderr)
        return 1
    finally:
        where = writer.close(complete)
        if where and not complete:
            print(f"fastfer predict: stopped early; the results so far are in {where} ({args.out} is unchanged)",
                  file=sys.stderr)
    _report_tracks(args, stats)
    dropped = f", {stats['dropped']} dropped to keep up" if stats.get("dropped") else ""
    print(f"fastfer predict: {stats['images']} images, {stats['frames']} video frames{dropped}, {stats['faces']} "
          f"faces, {stats['no_face']} without a face, {stats['unreadable']} unreadable"
          + (f"; results in {args.out}" if args.out else ""), file=sys.stderr)
    return 1 if stats["unreadable"] else 0


def _report_tracks(args, stats: dict) -> None:
    """One stderr line per video / stream (its tracks' dominant expressions); the full summary to --tracks."""
    tracks = stats.get("tracks") or {}
    for name, summary in tracks.items():
        people = ", ".join(f"#{k} {t['dominant']} ({t['seconds']:.1f} s)" for k, t in summary["tracks"].items())
        print(f"fastfer predict: {name}: {summary['frames_processed']} frames at {summary['fps']} frames/s, "
              f"{len(summary['tracks'])} tracks{': ' + people if people else ''}", file=sys.stderr)
    if args.tracks:
        import json

        from fastfer.utils.files import atomic_write_text

        atomic_write_text(args.tracks, json.dumps(tracks, indent=2))
