"""Batch-native inference: images → detected, aligned faces → expression labels and probabilities.

    from fastfer.infer import Predictor
    predictor = Predictor("run/model.safetensors")                # a training run's weights, or a model object
    results = predictor.predict(["a.jpg", rgb_array, pil_image])  # per image: a list of faces
    results[0][0]  # {"box": [x1, y1, x2, y2], "landmarks": [[x, y], …] | None, "score": …, "alignment": …,
                   #  "label": "happy", "confidence": 0.93, "probs": {"neutral": 0.01, "happy": 0.93, …},
                   #  "logits": [...]}
    results[2].error                                              # None, or why that item could not be read
    predictor.predict(images, features=True)[0][0]["features"]    # pre-logit embedding of each face
    predictor.predict_faces(torch_uint8_batch)                    # (B, 3, H, W) face crops, no detection
    predictor.explain(crops)                                      # APViT: APP scores, kept patches per block
    for frame in predictor.stream(0): ...                         # camera / URL / video / frames: tracked faces

Faces of all images are classified together in batches of ``batch_size`` (one forward per batch, not per face).
Images are RGB: numpy arrays, PIL images, (3, H, W) / (B, 3, H, W) tensors, or file paths — what each may hold
(8/16-bit, gray, RGBA, CMYK, palette, EXIF orientation; uint8 or float in [0, 1], ``value_range=``):
:mod:`fastfer.data.decode`. OpenCV frames are BGR: convert them with ``cv2.cvtColor(f, cv2.COLOR_BGR2RGB)``.
An item that cannot be decoded is reported per item (:mod:`fastfer.infer.results`). Detection, alignment and the
no-face / multi-face policies: :mod:`fastfer.data.face`.

Probabilities are ``softmax(logits / T)`` with the temperature ``T`` stored in the checkpoint by calibration
(``meta["calibration"]["temperature"]``; 1 when absent); ``min_confidence`` labels faces whose top probability is
below it ``uncertain``.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from fastfer import ops
from fastfer.data import decode
from fastfer.data import face as face_lib
from fastfer.infer.loading import ModelInfo, load_model  # noqa: F401 — ModelInfo is part of the API
from fastfer.infer.results import ITEM_ERRORS, Faces, check_on_error, failed
from fastfer.infer.tracking import UNCERTAIN
from fastfer.utils.precision import describe_amp, resolve_amp

_nullcontext = contextlib.nullcontext


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


class Predictor:
    """Expression recognition on images (with face detection) or on face crops (without).

    Args:
        model: an ``nn.Module`` (a fastfer / timm model with a ``pretrained_cfg``), or a checkpoint: a fastfer
            training checkpoint (file or run folder) or a safetensors state dict with ``model_name``.
        device: ``cpu``, ``cuda``, ``cuda:1`` … (default: CUDA when available).
        backend: pin the op backend of the fused ops while this predictor runs (``triton``, ``cuda``, ``cpu``,
            ``torch``; None = the process's pin, else automatic).
        amp: ``auto`` (default: bf16 autocast on a CUDA GPU with bf16 or a CPU with native bf16 — AMX /
            AVX512-BF16 —, fp16 on other GPUs, fp32 elsewhere; :attr:`precision` says which), None / ``off``
            (fp32), ``bf16`` or ``fp16`` autocast.
        channels_last: keep the model's convolutions in channels_last memory format (None = yes for models
            with convolutions: oneDNN and cuDNN run them faster that way; the logits are the same).
        batch_size: faces per forward pass.
        detector: ``auto`` (default: MTCNN when facenet-pytorch imports, else Haar), ``mtcnn``, ``haar``, ``none``
            (images are face crops unless boxes / landmarks are given) or a callable image → list of
            :class:`fastfer.data.face.Face` (see :mod:`fastfer.data.detection`).
        no_face, multi_face: detection policies (see :mod:`fastfer.data.face`).
        compile: ``torch.compile`` the model; batches are padded to ``batch_size`` so it compiles once.
        cuda_graphs: capture the forward pass of one ``batch_size`` batch in a CUDA graph and replay it (CUDA
            only; batches are padded to ``batch_size``). With ``compile`` this is mode ``reduce-overhead``.
        model_name, num_classes: for checkpoints without metadata (plain state dicts); checked against the
            checkpoint's metadata when it has some.
        temperature: divide logits by this before the softmax (None: the checkpoint's calibrated temperature,
            else 1).
        min_confidence: faces whose top probability is below this get the label ``uncertain`` (``probs`` keep
            every class).

    A model object is used in place: moved to ``device`` and put in eval mode.
    """

    def __init__(self, model: Union[nn.Module, str, os.PathLike], device=None, backend: Optional[str] = None,
                 amp: Optional[str] = "auto", batch_size: int = 32, detector="auto", no_face: str = "skip",
                 multi_face: str = "all", compile: bool = False, cuda_graphs: bool = False,
                 model_name: Optional[str] = None, num_classes: Optional[int] = None,
                 temperature: Optional[float] = None, min_confidence: Optional[float] = None,
                 channels_last: Optional[bool] = None):
        self.device = _resolve_device(device)
        self.batch_size = _check_positive_int("batch_size", batch_size)
        self.amp = resolve_amp(amp, self.device)  # ValueError naming amp for anything else
        self.precision = describe_amp(amp, self.device)
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs: needs a CUDA device, got device={str(self.device)!r}")
        face_lib.check_policies(no_face, multi_face)
        self.no_face, self.multi_face = no_face, multi_face
        self.backend = ops.check_backend(backend) if backend is not None else None
        self.model, self.info = load_model(model, model_name=model_name, num_classes=num_classes)
        self.model = self.model.to(self.device).eval()
        has_conv = any(isinstance(m, nn.Conv2d) for m in self.model.modules())
        self.channels_last = has_conv if channels_last is None else bool(channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Ready the fused ops now: on CPU a fresh install builds the C++ kernels here (once, one progress line).
        with ops.use_backend(self.backend) if self.backend else _nullcontext():
            self.op_backends = ops.prepare(self.device, self.amp or torch.float32)
        self.label_names = self.info.label_names
        self.input_size = self.info.input_size  # (H, W)
        self.mean = torch.tensor(self.info.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.info.std, device=self.device).view(1, 3, 1, 1)
        self.temperature = _check_temperature(temperature if temperature is not None else self.info.temperature)
        self.min_confidence = _check_confidence(min_confidence)
        self.detector = face_lib.make_detector(detector, device=str(self.device))
        self.detector_name = face_lib.detector_name(self.detector)
        self.pad_batches = compile or cuda_graphs
        self._forward = self.model
        if compile:
            mode = "reduce-overhead" if cuda_graphs else None
            self._forward = torch.compile(self.model, mode=mode, dynamic=False)
        self._graph = None
        self._use_graph = cuda_graphs and not compile

    def __repr__(self) -> str:
        return (f"Predictor(model={self.info.model_name!r}, device={str(self.device)!r}, "
                f"input_size={self.input_size}, labels={list(self.label_names)}, batch_size={self.batch_size}, "
                f"detector={self.detector_name!r}, temperature={self.temperature})")

    # --- model ------------------------------------------------------------------------------------------------

    def normalize(self, crops: Tensor) -> Tensor:
        """(N, 3, H, W) uint8 or float in [0, 1] on any device → normalised float32 on the predictor's device."""
        x = crops.to(self.device, non_blocking=True)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def logits(self, x: Tensor, features: bool = False):
        """Normalised faces (N, 3, H, W) → logits (N, num_classes) fp32 on the predictor's device, computed in
        batches of ``batch_size``; with ``features`` also the pre-logit features (N, D) fp32 — the classifier's
        input, ``model.forward_head(model.forward_features(x), pre_logits=True)`` — from the same pass."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, *self.input_size):
            raise ValueError(f"x: expected normalised faces (N, 3, {self.input_size[0]}, {self.input_size[1]}), "
                             f"got shape {tuple(x.shape)}")
        if features:
            self._check_features()
        outs, feats = [], []
        for start in range(0, x.shape[0], self.batch_size):
            chunk = x[start:start + self.batch_size].to(self.device)
            n = chunk.shape[0]
            if features:
                out, feat = self._run_features(chunk)
                feats.append(feat.float())
                outs.append(out.float())
                continue
            if self.pad_batches and n < self.batch_size:  # fixed shape: compile once / replay one graph
                chunk = torch.cat([chunk, chunk.new_zeros(self.batch_size - n, *chunk.shape[1:])])
            outs.append(self._run(chunk)[:n].float())
        if not outs:
            empty = torch.zeros(0, len(self.label_names), device=self.device)
            return (empty, torch.zeros(0, 0, device=self.device)) if features else empty
        out = torch.cat(outs)
        if out.dim() != 2 or out.shape[1] != len(self.label_names):
            raise RuntimeError(f"model output: expected (N, {len(self.label_names)}) logits for labels "
                               f"{list(self.label_names)}, got shape {tuple(out.shape)}")
        return (out, torch.cat(feats)) if features else out

    def _check_features(self) -> None:
        if not (hasattr(self.model, "forward_features") and hasattr(self.model, "forward_head")):
            raise TypeError(f"features=True: model {self.info.model_name!r} has no forward_features / "
                            f"forward_head(x, pre_logits=True) (fastfer and timm models do)")

    def _run_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, pre-logit features) of one chunk, eager (the compiled / graph-captured forward returns
        logits only)."""
        with ops.use_backend(self.backend) if self.backend else _nullcontext():
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                tokens = self.model.forward_features(x)
                return self.model.forward_head(tokens), self.model.forward_head(tokens, pre_logits=True)

    def _run(self, x: Tensor) -> Tensor:
        with ops.use_backend(self.backend) if self.backend else _nullcontext():
            if self._use_graph:
                return self._replay(x)
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                return self._forward(x)

    def _replay(self, x: Tensor) -> Tensor:
        """CUDA graph of one full batch: captured on first use (after warm-up runs on a side stream)."""
        if self._graph is None:
            self._static_in = x.clone()
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream), torch.autocast("cuda", dtype=self.amp, enabled=self.amp is not None):
                for _ in range(2):  # warm-up: kernel selection / Triton compilation happen outside the capture
                    self.model(self._static_in)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph), torch.autocast("cuda", dtype=self.amp, enabled=self.amp is not None):
                self._static_out = self.model(self._static_in)
        self._static_in.copy_(x)
        self._graph.replay()
        return self._static_out.clone()

    def probabilities(self, logits: Tensor) -> Tensor:
        """softmax(logits / temperature) (N, num_classes)."""
        return (logits / self.temperature).softmax(-1)

    def label_of(self, probs) -> str:
        """The top class name, or ``uncertain`` when its probability is below ``min_confidence``."""
        top = int(np.argmax(probs))
        if self.min_confidence is not None and float(probs[top]) < self.min_confidence:
            return UNCERTAIN
        return self.label_names[top]

    def _results(self, logits: Tensor, features: Optional[Tensor] = None) -> list[dict]:
        probs = self.probabilities(logits).cpu().numpy()
        finite = torch.isfinite(logits).all(dim=-1).cpu().numpy()
        logits = logits.cpu().numpy()
        names = self.label_names
        out = [{"label": self.label_of(p), "confidence": float(p.max()),
                "probs": {n: float(v) for n, v in zip(names, p)}, "logits": [float(v) for v in lg]}
               if ok else _non_finite(names, lg) for p, lg, ok in zip(probs, logits, finite)]
        if features is not None:
            for r, f in zip(out, features.cpu().numpy()):
                r["features"] = f
        return out

    # --- faces without detection ------------------------------------------------------------------------------

    def predict_faces(self, crops, normalized: bool = False, features: bool = False) -> list[dict]:
        """Classify face crops (no detection, no alignment; crops are resized to the model's input size).

        Args:
            crops: a (B, 3, H, W) tensor (uint8, or float in [0, 1]; on any device — it stays there, resizing
                included), or a sequence of images (anything :func:`fastfer.data.face.as_rgb_uint8` accepts,
                or paths).
            normalized: the tensor already is normalised model input at the input size (skips /255, resize and
                mean/std).
            features: also return each crop's pre-logit features, ``features`` (D,) float32 numpy.

        Returns one dict per crop: ``label``, ``confidence``, ``probs`` {name: p}, ``logits`` [...].
        """
        if isinstance(crops, Tensor):
            if crops.dim() == 3:
                crops = crops[None]
            if crops.dim() != 4 or crops.shape[1] != 3:
                raise TypeError(f"crops: expected a (B, 3, H, W) tensor, got shape {tuple(crops.shape)}")
            if normalized:
                return self._classify_input(crops, features)
            if not (crops.dtype == torch.uint8 or crops.is_floating_point()):
                raise TypeError(f"crops: expected a uint8 or float tensor, got {crops.dtype}")
            return self._classify_input(self._resize_normalize(crops), features)
        if isinstance(crops, (str, os.PathLike, np.ndarray)) or not isinstance(crops, Sequence):
            raise TypeError(f"crops: expected a (B, 3, H, W) tensor or a list of images, got {type(crops).__name__}")
        arrays = [face_lib.resize_face(decode.load_image(c, f"crops[{i}]"), self.input_size)
                  for i, c in enumerate(crops)]
        return self._classify_input(self._to_input(arrays), features)

    def _classify_input(self, x: Tensor, features: bool) -> list[dict]:
        if features:
            return self._results(*self.logits(x, features=True))
        return self._results(self.logits(x))

    def _resize_normalize(self, crops: Tensor) -> Tensor:
        out = []
        for start in range(0, crops.shape[0], self.batch_size):  # normalise per chunk: bounded memory
            x = self.normalize(crops[start:start + self.batch_size])
            if tuple(x.shape[-2:]) != self.input_size:
                # bilinear with half-pixel centres, no antialiasing: the same sampling as cv2.resize INTER_LINEAR
                x = torch.nn.functional.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
            out.append(x)
        return torch.cat(out) if out else crops.new_zeros(0, 3, *self.input_size, dtype=torch.float32)

    def _to_input(self, arrays: Sequence[np.ndarray]) -> Tensor:
        """List of (H, W, 3) uint8 crops at the input size → normalised (N, 3, H, W) on the device."""
        if not arrays:
            return torch.zeros(0, 3, *self.input_size, device=self.device)
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # uint8: 4× less to copy than float
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        return self.normalize(batch)

    @property
    def can_explain(self) -> bool:
        """Whether :meth:`explain` works: the model's ``forward_features`` takes ``return_details``."""
        import inspect

        forward_features = getattr(self.model, "forward_features", None)
        return forward_features is not None and "return_details" in inspect.signature(forward_features).parameters

    def explain(self, crops) -> dict:
        """APViT's pooling decisions for face crops at the input size — what :func:`fastfer.viz.plot_app_overlay`
        draws.

        Args:
            crops: (N, 3, H, W) uint8 / float [0, 1] tensor or a list of (H, W, 3) uint8 arrays (e.g. the
                ``crop`` of each face from ``predict(..., crops=True)``).

        Returns CPU tensors: ``app_scores`` (N, h, w), ``app_index`` (N, K) grid positions APP kept,
        ``token_positions`` list per block of (N, M_i) grid positions alive after that block. Models without
        these details (``forward_features(x, return_details=True)``) raise TypeError.
        """
        if not self.can_explain:
            raise TypeError(f"explain: model {self.info.model_name!r} does not report its pooling decisions "
                            f"(forward_features(x, return_details=True); APViT does)")
        if isinstance(crops, Tensor):
            x = self.normalize(crops)
        else:
            x = self._to_input([face_lib.resize_face(face_lib.as_rgb_uint8(c, f"crops[{i}]"), self.input_size)
                                for i, c in enumerate(crops)])
        with torch.inference_mode(), ops.use_backend(self.backend) if self.backend else _nullcontext():
            _, details = self.model.forward_features(x, return_details=True)
        return {"app_scores": details["app_scores"].float().cpu(), "app_index": details["app_index"].cpu(),
                "token_positions": [p.cpu() for p in details["token_positions"]]}

    # --- images with detection --------------------------------------------------------------------------------

    def detect(self, image: np.ndarray, boxes=None, landmarks=None, where: str = "image") -> list[face_lib.Face]:
        """Faces of one RGB uint8 image after the policies: the given boxes / landmarks, else the detector's.
        With no detector and nothing given, the whole image is one face (``alignment`` = ``full``)."""
        if boxes is not None or landmarks is not None:
            faces = face_lib.faces_from_arguments(boxes, landmarks, where)
        elif self.detector is None:
            return [self._full_face(image)]
        else:
            faces = self.detector(image)
        faces = face_lib.apply_policies(faces, self.no_face, self.multi_face, where)
        if not faces and self.no_face == "full":
            return [self._full_face(image)]
        return faces

    @staticmethod
    def _full_face(image: np.ndarray) -> face_lib.Face:
        h, w = image.shape[:2]
        return face_lib.Face((0.0, 0.0, float(w), float(h)), extra={"alignment": "full"})

    def _crop(self, image: np.ndarray, face: face_lib.Face) -> tuple[np.ndarray, str]:
        if face.extra.get("alignment") == "full":
            return face_lib.resize_face(image, self.input_size), "full"
        return face_lib.align_face(image, face, self.input_size)

    @staticmethod
    def _items(images):
        """The inputs as a sequence (or iterator) of single images."""
        if isinstance(images, Tensor):
            if images.dim() == 3:
                return [images]
            if images.dim() != 4:
                raise TypeError(f"images: expected a (B, 3, H, W) tensor, got shape {tuple(images.shape)}")
            return list(images)
        if isinstance(images, (str, os.PathLike, np.ndarray)) or decode._is_pil(images):
            return [images]
        return images

    def iter_predict(self, images: Iterable, boxes: Optional[Sequence] = None, landmarks: Optional[Sequence] = None,
                     names: Optional[Sequence[str]] = None, crops: bool = False, features: bool = False,
                     on_error: str = "skip", value_range=None) -> Iterator[Faces]:
        """Like :meth:`predict` but lazy: reads, detects and classifies ``batch_size`` images at a time and yields
        each image's :class:`Faces` in order (for long folders and videos). With ``on_error="raise"`` the results
        of the items before a bad one are yielded before its error is raised."""
        check_on_error(on_error)
        value_range = decode.check_value_range(value_range)
        if features:
            self._check_features()
        images = self._items(images)
        for name, given in (("boxes", boxes), ("landmarks", landmarks)):
            if given is not None and (not hasattr(images, "__len__") or len(given) != len(images)):
                raise ValueError(f"{name}: expected one entry per image ({getattr(images, '__len__', lambda: '?')()}),"
                                 f" got {len(given)}")
        group: list = []  # (name, array, faces) per decoded image, or a Faces error entry
        decoded = 0
        for i, image in enumerate(images):
            where = decode.describe(image, i, names)
            try:
                arr = decode.load_image(image, where, value_range)
            except ITEM_ERRORS as exc:
                if on_error == "raise":
                    yield from self._classify(group, crops, features)
                    exc.index = i
                    raise
                group.append(failed(where, exc))
                continue
            faces = self.detect(arr, None if boxes is None else boxes[i], None if landmarks is None else landmarks[i],
                                where)
            group.append((where, arr, faces))
            decoded += 1
            if decoded == self.batch_size:
                yield from self._classify(group, crops, features)
                group, decoded = [], 0
        if group:
            yield from self._classify(group, crops, features)

    def _classify(self, group: list, keep_crops: bool, features: bool = False) -> Iterator[Faces]:
        """Classify the faces of a group of decoded images in one pass; yield each item's Faces in order."""
        crops, kinds = [], []
        for entry in group:
            if isinstance(entry, Faces):
                continue
            _where, arr, faces = entry
            for f in faces:
                crop, kind = self._crop(arr, f)
                crops.append(crop)
                kinds.append(kind)
        results = iter(self._classify_input(self._to_input(crops), features) if crops else [])
        kinds, crop_iter = iter(kinds), iter(crops)
        for entry in group:
            if isinstance(entry, Faces):
                yield entry
                continue
            where, _arr, faces = entry
            out = Faces(name=where)
            for f in faces:
                r = next(results)
                out.append({
                    "box": [round(float(v), 2) for v in f.box],
                    "landmarks": None if f.landmarks is None else np.round(f.landmarks, 2).tolist(),
                    "score": f.score,
                    "alignment": next(kinds),
                    **r,
                })
                crop = next(crop_iter)
                if keep_crops:
                    out[-1]["crop"] = crop
            yield out

    def predict(self, images, boxes: Optional[Sequence] = None, landmarks: Optional[Sequence] = None,
                names: Optional[Sequence[str]] = None, crops: bool = False, features: bool = False,
                on_error: str = "skip", value_range=None) -> list[Faces]:
        """Detect, align and classify every face of every image.

        Args:
            images: one image or a sequence (paths, numpy arrays, PIL images, (3, H, W) tensors), or a
                (B, 3, H, W) tensor — see :mod:`fastfer.data.decode` for what each may hold.
            boxes: optional, per image, (F, 4) boxes x1, y1, x2, y2 (skips detection for that image; None entries
                detect).
            landmarks: optional, per image, (F, 5, 2) or (F, 2, 2) landmarks (aligned exactly; with boxes, one
                set per box).
            names: optional per-image names used in results and errors (default: the path, else ``images[i]``).
            crops: also return each face's aligned crop, ``crop`` (H, W, 3) uint8 RGB at the model's input size.
            features: also return each face's pre-logit features (its embedding), ``features`` (D,) float32 numpy
                — ``model.forward_head(..., pre_logits=True)``, from the same forward pass as the logits.
            on_error: an item that cannot be decoded — ``skip`` (default): an error entry for it (see
                :mod:`fastfer.infer.results`) and a warning; ``raise``: raise its error, with the results of
                the items before it as ``exc.results``.
            value_range: (lo, hi) the values of non-uint8 arrays / tensors span (default: float 0..1, uint16
                0..65535); a float image outside [0, 1] without it is an error, not silently clipped.

        Returns, per image, a :class:`fastfer.infer.results.Faces` list (empty when no face was found and
        ``no_face="skip"``, or with ``.error`` set when the item could not be read), each face
        ``{"box", "landmarks", "score", "alignment", "label", "confidence", "probs", "logits"}``; ``alignment`` is
        ``5-point``, ``2-point``, ``box`` (eyes estimated from the box) or ``full`` (whole image resized).
        """
        out: list[Faces] = []
        try:
            for faces in self.iter_predict(images, boxes, landmarks, names, crops, features, on_error, value_range):
                out.append(faces)
        except ITEM_ERRORS as exc:
            if hasattr(exc, "index"):
                exc.results = out
            raise
        return out

    def stream(self, source, **options):
        """Expressions of the faces in a live or recorded stream, tracked — see :class:`fastfer.infer.stream.Stream`
        (``source``: a camera index, an ``rtsp://`` / ``http(s)://`` URL, a video file, or an iterable of RGB
        frames)."""
        from fastfer.infer.stream import Stream

        return Stream(self, source, **options)


def _check_temperature(value) -> float:
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"temperature: expected a positive finite number, got {value!r}")
    return float(value)


def _check_confidence(value) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"min_confidence: expected None or a probability in [0, 1], got {value!r}")
    return float(value)


NON_FINITE = "error"


def _non_finite(names, logits) -> dict:
    """A face whose logits are NaN/inf: marked ``error``, never given a label (broken weights or input)."""
    return {"label": NON_FINITE, "confidence": None, "probs": {n: None for n in names},
            "logits": [float(v) for v in logits],
            "error": "the model's logits are not finite (NaN or inf) for this face; check the checkpoint's weights"}
