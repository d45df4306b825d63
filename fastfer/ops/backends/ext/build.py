"""Loads the C++/CUDA extension behind the ``cpu`` and ``cuda`` backends, building it on first need.

Where a built extension comes from, in order:

1. **prebuilt**: ``fastfer._C_cpu`` / ``fastfer._C_cuda``, compiled by
   ``FASTFER_BUILD_EXT=1 pip install -e . --no-build-isolation``. Used when its recorded source digest
   matches the sources next to it (an edited checkout never runs a stale binary) or when no sources ship.
2. **cache**: an earlier JIT build in ``$FASTFER_EXT_DIR/ext-<kind>-<digest>`` (default
   ``~/.cache/fastfer``), reused when sources, torch and Python are unchanged and the library it names imports
   and says it was built from these sources (a broken or stale build is never loaded: it is rebuilt).
3. **JIT build** with ``torch.utils.cpp_extension.load`` (ninja) into that directory, under a file lock
   (processes and DDP ranks that need it at once wait for one build and then load it), with one progress line
   on stderr.

The ``cpu`` extension is built **on first need**: the first op call on CPU tensors whose automatic choice
reaches the ``cpu`` backend builds it once (about a minute; :func:`ensure`), so a fresh install's
``fastfer train`` / ``predict`` / model forward run the C++ kernels without any extra command. Entry points call
``fastfer.ops.prepare`` first so that this wait happens before a progress bar starts, not inside it.
``FASTFER_EXT_BUILD=never`` turns this off (automatic choice then uses only an extension already built).
``import fastfer`` compiles nothing, and neither does ``fastfer info`` (it says what would happen). The
``cuda`` extension builds only when asked (``fastfer build-ext --cuda`` or pinning ``cuda``): on GPUs the
Triton backend comes first anyway.

When a build cannot happen (no sources, no C++ compiler, no ninja; for ``cuda`` no nvcc or a CPU-only
torch) or failed (the log is kept in the cache directory), :func:`unavailable_reasons` says why, the backend
records report it through ``not_supported_reasons``, automatic choice says it once per process on stderr and
runs the PyTorch reference instead; nothing crashes.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Iterator

import torch

from fastfer.ops.backends.registry import BackendUnavailable, changed
from fastfer.ops.backends.ext import sources as cfg

ENV_DIR = "FASTFER_EXT_DIR"
OK_MARKER = "build-ok"  # written last, after the module imported: its presence means a complete build
FAILED_LOG = "build-failed.log"
ENV_BUILD = "FASTFER_EXT_BUILD"  # "auto" (default): build the cpu extension on first need; "never": do not
AUTO_BUILD_KINDS = ("cpu",)


class ExtensionUnavailable(BackendUnavailable):
    """The extension cannot be loaded or built here; the message says why and what to do."""


class _State:
    """What this process knows about one extension kind."""

    def __init__(self) -> None:
        self.module: ModuleType | None = None
        self.origin: str | None = None  # "prebuilt" | "cache" | "built"
        self.prebuilt_tried = False
        self.prebuilt_note: str | None = None  # why a prebuilt module was not used
        self.prerequisites: list[str] | None = None
        self.digest: str | None = None
        self.fallback_said = False  # the one line saying why automatic choice runs the reference instead


_STATE = {kind: _State() for kind in cfg.KINDS}


def reset() -> None:
    """Forget everything learned in this process (tests; after installing a compiler)."""
    for kind in cfg.KINDS:
        _STATE[kind] = _State()
    changed()


def _check_kind(kind: str) -> _State:
    if kind not in _STATE:
        raise ValueError(f"kind: expected one of {cfg.KINDS}, got {kind!r}")
    return _STATE[kind]


def digest(kind: str) -> str:
    state = _check_kind(kind)
    if state.digest is None:
        state.digest = cfg.digest(kind, torch.__version__, torch.version.cuda) if cfg.sources_present(kind) else "nosrc"
    return state.digest


def cache_root() -> Path:
    env = os.environ.get(ENV_DIR, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fastfer"


def build_dir(kind: str) -> Path:
    """Where the JIT build of ``kind`` for the current sources, torch and Python lives."""
    return cache_root() / f"ext-{kind}-{digest(kind)}"


# --- what a build needs ----------------------------------------------------------------------------------


def _ninja_dir() -> str | None:
    """Directory of a ninja executable: on PATH, or next to this Python (a venv used without activation)."""
    found = shutil.which("ninja")
    if found:
        return str(Path(found).parent)
    beside = Path(sys.executable).parent / "ninja"
    return str(beside.parent) if beside.is_file() and os.access(beside, os.X_OK) else None


def _cuda_home() -> str | None:
    """The CUDA toolkit to build with: the first of $CUDA_HOME, $CUDA_PATH, the toolkit owning the nvcc on PATH
    (symlinks resolved) and /usr/local/cuda that has both nvcc and cudart to link against; else the first with
    nvcc. (torch takes the parent of nvcc's directory as is, which fails to link cudart when nvcc on PATH is a
    link or wrapper script outside the toolkit, e.g. /usr/local/bin/nvcc.)"""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    on_path = shutil.which("nvcc")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent.parent))
    candidates.append("/usr/local/cuda")
    with_nvcc = [Path(c) for c in candidates if c and (Path(c) / "bin" / "nvcc").is_file()]
    for home in with_nvcc:
        if any(next((home / lib).glob("libcudart.so*"), None) for lib in ("lib64", "lib")):
            return str(home)
    return str(with_nvcc[0]) if with_nvcc else None


def _nvcc() -> str | None:
    home = _cuda_home()
    return str(Path(home) / "bin" / "nvcc") if home else None


def prerequisites(kind: str) -> list[str]:
    """Reasons a build of ``kind`` cannot even start here (empty when it can). Cheap; cached per process."""
    state = _check_kind(kind)
    if state.prerequisites is None:
        reasons = []
        if not cfg.sources_present(kind):
            reasons.append(f"extension sources not found under {cfg.ROOT} (csrc/ ships with the source tree: "
                           "install from a clone, or a build made with FASTFER_BUILD_EXT=1)")
        cxx = os.environ.get("CXX", "c++")
        if shutil.which(cxx) is None:
            reasons.append(f"no C++ compiler ({cxx!r} not found; install g++ or set CXX)")
        if _ninja_dir() is None:
            reasons.append("ninja not found (pip install ninja): torch's JIT build needs it")
        if kind == "cuda":
            if torch.version.cuda is None:
                reasons.append(f"torch {torch.__version__} is a CPU-only build")
            elif _nvcc() is None:
                reasons.append("nvcc not found (install the CUDA toolkit or set CUDA_HOME)")
        state.prerequisites = reasons
    return list(state.prerequisites)


# --- loading without compiling ---------------------------------------------------------------------------


def _try_prebuilt(kind: str) -> ModuleType | None:
    state = _STATE[kind]
    if state.prebuilt_tried:
        return None
    state.prebuilt_tried = True
    name = cfg.PREBUILT_MODULE[kind]
    if importlib.util.find_spec(name) is None:
        return None
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # e.g. built against another torch: undefined symbols
        state.prebuilt_note = f"prebuilt {name} does not import ({exc}); rebuild it"
        return None
    built_from = getattr(module, "source_digest", "unknown")
    if cfg.sources_present(kind) and built_from != digest(kind):
        state.prebuilt_note = (f"prebuilt {name} was built from other sources or another torch (digest {built_from}, "
                               f"now {digest(kind)}); rebuild with FASTFER_BUILD_EXT=1 pip install -e . "
                               "--no-build-isolation, or use the JIT cache (fastfer build-ext)")
        return None
    return module


def _import_from(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def _try_cache(kind: str) -> ModuleType | None:
    directory = build_dir(kind)
    marker = directory / OK_MARKER
    if not marker.is_file():
        return None
    library = directory / marker.read_text().strip()
    try:
        module = _import_from(library, cfg.JIT_MODULE[kind])
    except (ImportError, OSError) as exc:  # truncated or corrupt library, or built against another torch
        _say(f"the cached {kind} extension in {directory} does not load ({str(exc)[:200]}); it will be rebuilt")
        marker.unlink(missing_ok=True)
        return None
    built_from = str(getattr(module, "source_digest", "unknown"))
    if built_from != digest(kind):  # a library copied or left over from other sources: never run it
        _say(f"the cached {kind} extension in {directory} was built from other sources (digest {built_from}, "
             f"expected {digest(kind)}); it will be rebuilt")
        sys.modules.pop(cfg.JIT_MODULE[kind], None)
        marker.unlink(missing_ok=True)
        return None
    return module


def loaded(kind: str) -> ModuleType | None:
    """The extension module if it can be had without compiling (prebuilt or cached), else None."""
    state = _check_kind(kind)
    if state.module is None:
        for origin, attempt in (("prebuilt", _try_prebuilt), ("cache", _try_cache)):
            module = attempt(kind)
            if module is not None:
                state.module, state.origin = module, origin
                break
    return state.module


def ready(kind: str) -> bool:
    """True when the extension loads without compiling; what automatic backend choice asks."""
    return loaded(kind) is not None


def origin(kind: str) -> str | None:
    """Where the loaded module came from: ``prebuilt``, ``cache`` (an earlier JIT build) or ``built`` (now)."""
    return _check_kind(kind).origin


def unavailable_reasons(kind: str) -> list[str]:
    """Why the ``kind`` backend cannot run here; empty when it is loaded, loadable, or buildable on request."""
    if ready(kind):
        return []
    reasons = prerequisites(kind)
    failed = build_dir(kind) / FAILED_LOG
    if not reasons and failed.is_file():
        reasons.append(f"the {kind} extension failed to build ({_first_error(failed.read_text())}); full log: "
                       f"{failed}; fix it, then run `fastfer build-ext{' --cuda' if kind == 'cuda' else ''}`")
    note = _STATE[kind].prebuilt_note
    return reasons + ([note] if note and reasons else [])


def auto_build_enabled(kind: str) -> bool:
    """Whether automatic choice may build ``kind`` on first need (``cpu`` unless ``FASTFER_EXT_BUILD=never``)."""
    setting = os.environ.get(ENV_BUILD, "auto").strip().lower() or "auto"
    if setting not in ("auto", "never"):
        raise ValueError(f"${ENV_BUILD}: expected 'auto' or 'never', got {setting!r}")
    return kind in AUTO_BUILD_KINDS and setting == "auto"


def ensure(kind: str) -> bool:
    """For automatic backend choice: True when ``kind`` is loaded, or was buildable and is built now.

    Builds at most once per process (a failure is recorded in the cache and not retried until the sources
    change or someone runs ``fastfer build-ext``). When the extension cannot be had, says why once on stderr
    (the PyTorch reference runs instead) and returns False.
    """
    if ready(kind):
        return True
    if not auto_build_enabled(kind):
        return False
    reasons = unavailable_reasons(kind)
    if not reasons:
        try:
            build(kind)
            return True
        except ExtensionUnavailable as exc:
            reasons = [str(exc).removeprefix("fastfer: ")]
    say_fallback(kind, reasons)
    return False


def say_fallback(kind: str, reasons: list[str]) -> None:
    """Once per process: why automatic choice runs the PyTorch reference instead of the ``kind`` kernels."""
    state = _STATE[kind]
    if reasons and not state.fallback_said and auto_build_enabled(kind):
        state.fallback_said = True
        _say(f"the C++ {kind} kernels are not available ({'; '.join(reasons)}); running the PyTorch reference "
             "instead")


def would_run(kind: str) -> bool:
    """What :func:`ensure` would answer, without building (``fastfer info``)."""
    return ready(kind) or (auto_build_enabled(kind) and not unavailable_reasons(kind))


def _first_error(log: str) -> str:
    """The line of a build log most worth showing: the first compiler or linker diagnostic, else the last."""
    lines = [line.strip() for line in log.strip().splitlines()] or ["no output"]
    markers = ("error:", "error ", "cannot find", "undefined reference", "fatal")
    for line in lines:
        if not line.startswith("Error building extension") and any(m in line for m in markers):
            return line[:300]
    return lines[-1][:300]


# --- building ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(path: Path, kind: str) -> Iterator[None]:
    """An exclusive lock between processes building the same extension. flock is released by the kernel
    when a process dies, so a killed build never leaves a stale lock behind."""
    try:
        import fcntl
    except ImportError:  # Windows: torch's own lock file still serialises the build
        yield
        return
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process that is building the {kind} extension in {path.parent} ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _say(message: str) -> None:
    print(f"fastfer: {message}", file=sys.stderr, flush=True)


def load(kind: str) -> ModuleType:
    """The extension module, built now (JIT, about a minute) if no prebuilt or cached build exists."""
    return loaded(kind) or build(kind)


def build(kind: str, force: bool = False, verbose: bool = False) -> ModuleType:
    """JIT-build ``kind`` into :func:`build_dir` (or reuse a complete build there unless ``force``).

    Raises :class:`ExtensionUnavailable` with the reason when the build cannot start or fails; a failure
    leaves its log in the build directory, and :func:`unavailable_reasons` reports it from then on (also in
    later processes) until a successful build.
    """
    state = _check_kind(kind)
    if state.module is not None and not force:
        return state.module
    reasons = prerequisites(kind)
    if reasons:
        raise ExtensionUnavailable(f"fastfer: cannot build the {kind} extension: " + "; ".join(reasons))
    directory = build_dir(kind)
    directory.mkdir(parents=True, exist_ok=True)
    with _file_lock(directory / "fastfer-build.lock", kind):
        if not force:
            module = _try_cache(kind)  # another process may have finished it while we waited
            if module is not None:
                state.module, state.origin = module, "cache"
                changed()
                return module
        (directory / OK_MARKER).unlink(missing_ok=True)
        module = _jit_build(kind, directory, verbose)
    state.module, state.origin = module, "built"
    changed()  # automatic choice may take this backend from now on
    return module


def _jit_build(kind: str, directory: Path, verbose: bool) -> ModuleType:
    # We hold the only lock on this directory, so a 'lock' file left by torch's own baton is stale (a killed
    # build); removing it avoids torch waiting on it forever.
    (directory / "lock").unlink(missing_ok=True)
    _say(f"building the {kind} extension in {directory} (first use only; one to two minutes) ...")
    start = time.perf_counter()
    env_path = os.environ.get("PATH", "")
    ninja = _ninja_dir()
    if ninja and shutil.which("ninja") is None:
        os.environ["PATH"] = ninja + os.pathsep + env_path
    import logging

    # torch logs "No CUDA runtime is found, using CUDA_HOME=..." when it is imported on a machine with a CUDA
    # toolkit but no GPU: noise for a CPU build, which keeps to its one progress line.
    torch_log = logging.getLogger("torch.utils.cpp_extension")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        torch_log.setLevel(level)

    torch_cuda_home = cpp_extension.CUDA_HOME
    if kind == "cuda":
        cpp_extension.CUDA_HOME = _cuda_home()  # read by torch when it writes the nvcc and link commands
    try:
        module = cpp_extension.load(
            name=cfg.JIT_MODULE[kind],
            sources=cfg.source_paths(kind),
            extra_cflags=cfg.cxx_flags(kind) + [f"-DFASTFER_SOURCE_DIGEST={digest(kind)}"],
            extra_ldflags=cfg.ld_flags(kind),
            extra_cuda_cflags=cfg.nvcc_flags() if kind == "cuda" else None,
            extra_include_paths=cfg.include_dirs(kind),
            build_directory=str(directory),
            with_cuda=kind == "cuda",
            verbose=verbose,
        )
    except Exception as exc:  # compiler errors arrive as RuntimeError with the build output
        log = directory / FAILED_LOG
        log.write_text(f"{type(exc).__name__}: {exc}\n")
        changed()
        raise ExtensionUnavailable(
            f"fastfer: building the {kind} extension failed ({_first_error(str(exc))}); full log: {log}") from exc
    finally:
        os.environ["PATH"] = env_path
        cpp_extension.CUDA_HOME = torch_cuda_home
    (directory / FAILED_LOG).unlink(missing_ok=True)
    library = Path(module.__file__).name
    (directory / (OK_MARKER + ".tmp")).write_text(library + "\n")
    os.replace(directory / (OK_MARKER + ".tmp"), directory / OK_MARKER)  # atomic: readers see all or nothing
    _say(f"built the {kind} extension in {time.perf_counter() - start:.0f} s")
    return module


def describe(kind: str) -> str:
    """One line for ``fastfer info`` / ``fastfer build-ext --status``."""
    if ready(kind):
        return f"{kind}: loaded ({origin(kind)}: {getattr(_STATE[kind].module, '__file__', '?')})"
    reasons = unavailable_reasons(kind)
    if reasons:
        return f"{kind}: unavailable: " + "; ".join(reasons)
    when = "the first op call on CPU" if auto_build_enabled(kind) else "first explicit use"
    return f"{kind}: not built yet; builds on {when} (one to two minutes, once) or `fastfer build-ext` into {build_dir(kind)}"
