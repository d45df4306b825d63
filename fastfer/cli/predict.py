"""``fastfer predict PATH…``: expressions of the faces in images, folders (recursive) and videos.

Output (``--out``): JSON lines (one record per image or processed video frame: ``path``, ``frame``/``time`` for
videos, ``faces`` [...], ``error`` when the file could not be read or no face was found) or CSV (one row per
face; images without a face get one row with the error). Without ``--out`` the JSON lines go to stdout. A
progress bar goes to stderr. ``--annotate DIR`` writes each image (or video) with boxes and labels drawn on it.
``--explain DIR`` draws APViT's patch scores and kept patches for the faces
of each image. Unreadable files are reported and skipped; the exit status is 1 when any input could not be read.
"""
from __future__ import annotations

import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="expressions of the faces in images, folders and videos",
                              description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (searched recursively) or videos")
    p.add_argument("--checkpoint", help="weights file or training run folder (fastfer checkpoint)")
    p.add_argument("--model", help="model name: for a checkpoint without metadata; alone = random weights (testing)")
    p.add_argument("--detector", default="haar", choices=["haar", "mtcnn", "none"],
                   help="face detector; 'none' treats every image as one face crop (default: haar)")
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
    p.add_argument("--batch-size", type=int, default=32, help="faces per forward pass (default 32)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when available)")
    p.add_argument("--backend", default=None, help="op backend: triton, cuda, cpu, torch (default: automatic)")
    p.add_argument("--amp", default=None, choices=["off", "bf16", "fp16"], help="autocast dtype (default off)")
    p.set_defaults(func=run)


def _check_args(args) -> None:
    if args.every < 1:
        raise SystemExit(f"fastfer predict: --every: expected a positive int, got {args.every}")
    if args.smooth is not None and not 0 < args.smooth <= 1:
        raise SystemExit(f"fastfer predict: --smooth: expected ALPHA in (0, 1], got {args.smooth}")
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
                     model_name=args.model if args.checkpoint else None)


def run(args) -> int:
    from tqdm import tqdm

    from fastfer.data.face import MultipleFacesError, NoFaceError
    from fastfer.infer.files import (PredictOptions, ResultWriter, collect_inputs, new_stats, predict_files,
                                     total_work)

    _check_args(args)
    inputs, missing = collect_inputs(args.paths)
    try:
        predictor = _build_predictor(args)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as exc:
        print(f"fastfer predict: {exc}", file=sys.stderr)
        return 2
    if args.explain and not predictor.can_explain:
        print(f"fastfer predict: --explain: model {predictor.info.model_name!r} does not report its pooling "
              f"decisions (APViT models do)", file=sys.stderr)
        return 2
    options = PredictOptions(annotate=args.annotate, explain=args.explain, every=args.every, smooth=args.smooth)
    writer = ResultWriter(args.out, predictor.label_names)
    for path, error in missing:
        writer.write({"path": path, "faces": [], "error": error})
    stats = new_stats(unreadable=len(missing))
    try:
        with tqdm(total=total_work(inputs, args.every), unit="img", desc="predict", file=sys.stderr,
                  dynamic_ncols=True) as bar:
            predict_files(predictor, inputs, writer, options, stats, bar)
    except (NoFaceError, MultipleFacesError) as exc:  # --no-face error / --multi-face error
        print(f"fastfer predict: {exc}", file=sys.stderr)
        return 1
    finally:
        writer.close()
    print(f"fastfer predict: {stats['images']} images, {stats['frames']} video frames, {stats['faces']} faces, "
          f"{stats['no_face']} without a face, {stats['unreadable']} unreadable"
          + (f"; results in {args.out}" if args.out else ""), file=sys.stderr)
    return 1 if stats["unreadable"] else 0
