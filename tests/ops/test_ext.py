"""The extension loader (fastfer/ops/backends/ext/build.py): no compile at import or in ``fastfer info``; the cpu
extension built once on first need by automatic choice (``FASTFER_EXT_BUILD=never`` turns it off); reuse of
prebuilt and cached builds, broken or stale cached builds rebuilt and never loaded; the JIT build's
lock/marker/message; and recorded reasons when a compiler or ninja is missing or a build failed — reported
through the backend records and once on stderr, with the reference running instead, never a crash."""
import importlib.machinery
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch

import fastfer
from fastfer.ops.backends import registry as _backends
from fastfer.ops.backends.ext import build as _ext, launch as ext_api, sources as _ext_sources
from tests.ops.ext_helpers import require_extension

CPU_CALL = _backends.Call("patch_pool", torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def real_ext():
    """The real cpu extension (built once into the user cache), loaded before any test fakes the state."""
    return require_extension("cpu")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache directory, no prebuilt module, and a loader that has learned nothing yet."""
    monkeypatch.setenv(_ext.ENV_DIR, str(tmp_path))
    monkeypatch.setitem(_ext_sources.PREBUILT_MODULE, "cpu", "fastfer._no_such_prebuilt_cpu")
    _ext.reset()
    yield tmp_path
    _ext.reset()  # later tests find the real cache again


def _forbid_compiling(monkeypatch):
    from torch.utils import cpp_extension

    def no_build(*args, **kwargs):
        raise AssertionError("the extension was compiled")

    monkeypatch.setattr(cpp_extension, "load", no_build)


def test_import_backend_table_and_info_compile_nothing(tmp_path):
    code = (
        "import sys, torch, fastfer\n"
        "from fastfer.ops.backends import registry as _backends\n"
        "fastfer.ops.backends()\n"
        "print(_backends.chosen_for('cpu')['patch_pool'], 'torch.utils.cpp_extension' in sys.modules)\n"
    )
    env = {**__import__("os").environ, _ext.ENV_DIR: str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["cpu", "False"]  # says the cpu kernels would run; builds nothing
    assert not (tmp_path / "cache").exists()


def _fake_jit_build(real, calls, delay=0.0):
    """A stand-in for the compiler: after ``delay`` seconds copies the real built library into the build
    directory (as torch's JIT build leaves it) and returns it imported."""
    import shutil

    def build(**kwargs):
        calls.append(kwargs)
        time.sleep(delay)
        target = Path(kwargs["build_directory"]) / "fastfer_C_cpu.so"
        shutil.copyfile(real.__file__, target)
        return _ext._import_from(target, "fastfer_C_cpu")

    return build


def test_automatic_choice_builds_the_cpu_extension_once_on_first_need(real_ext, fresh, monkeypatch, capsys):
    from torch.utils import cpp_extension

    calls = []
    monkeypatch.setattr(cpp_extension, "load", _fake_jit_build(real_ext, calls))
    assert "not built yet; builds on the first op call on CPU" in _ext.describe("cpu")
    assert _backends.chosen_for("cpu")["patch_pool"] == "cpu" and calls == []  # info: says so, builds nothing
    x = torch.randn(2, 8, 3, 3)
    out = fastfer.patch_pool(x, 4)
    assert calls and len(calls) == 1 and _ext.origin("cpu") == "built"
    assert _backends.select(CPU_CALL).name == "cpu"
    assert torch.equal(out.index, fastfer.patch_pool(x, 4, backend="torch").index)
    fastfer.token_pool_attention(torch.randn(1, 9, 3, 2, 8), keep=4)
    assert len(calls) == 1  # once per process and kind
    err = capsys.readouterr().err
    assert err.count("building the cpu extension") == 1 and "built the cpu extension" in err
    _ext.reset()  # a later process: the cache serves it, nothing compiles
    _forbid_compiling(monkeypatch)
    assert _backends.select(CPU_CALL).name == "cpu" and _ext.origin("cpu") == "cache"


def test_auto_build_can_be_turned_off(fresh, monkeypatch):
    _forbid_compiling(monkeypatch)
    monkeypatch.setenv(_ext.ENV_BUILD, "never")
    cpu = _backends.get("cpu")
    assert cpu.not_supported_reasons(CPU_CALL) == []  # buildable on request ...
    assert cpu.auto(CPU_CALL) is False  # ... but automatic choice passes it over
    assert _backends.select(CPU_CALL).name == "torch"
    assert list(fresh.iterdir()) == []
    assert "builds on first explicit use" in _ext.describe("cpu")
    monkeypatch.setenv(_ext.ENV_BUILD, "sometimes")
    with pytest.raises(ValueError, match="FASTFER_EXT_BUILD: expected 'auto' or 'never', got 'sometimes'"):
        _ext.auto_build_enabled("cpu")


def test_broken_cached_build_is_rebuilt_never_loaded(real_ext, fresh, monkeypatch, capsys):
    from torch.utils import cpp_extension

    directory = _ext.build_dir("cpu")
    directory.mkdir(parents=True)
    (directory / "fastfer_C_cpu.so").write_bytes(b"\x7fELF truncated")  # a build cut short by a full disk
    (directory / _ext.OK_MARKER).write_text("fastfer_C_cpu.so\n")
    calls = []
    monkeypatch.setattr(cpp_extension, "load", _fake_jit_build(real_ext, calls))
    assert fastfer.patch_pool(torch.randn(1, 4, 2, 2), 2).index.shape == (1, 2)
    assert len(calls) == 1 and _ext.origin("cpu") == "built"
    assert "does not load" in capsys.readouterr().err


def test_stale_cached_build_is_rebuilt_never_loaded(real_ext, fresh, monkeypatch, capsys):
    import shutil

    from torch.utils import cpp_extension

    directory = _ext.build_dir("cpu")
    directory.mkdir(parents=True)
    shutil.copyfile(real_ext.__file__, directory / "fastfer_C_cpu.so")
    (directory / _ext.OK_MARKER).write_text("fastfer_C_cpu.so\n")
    monkeypatch.setattr(_ext, "digest", lambda kind: "feedfacefeedface")  # the sources changed since
    monkeypatch.setattr(_ext, "build_dir", lambda kind: directory)
    assert _ext.loaded("cpu") is None
    assert "built from other sources" in capsys.readouterr().err
    assert not (directory / _ext.OK_MARKER).exists()
    calls = []
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: calls.append(kw) or (_ for _ in ()).throw(
        RuntimeError("error: compiler stand-in")))
    with pytest.raises(_ext.ExtensionUnavailable, match="compiler stand-in"):
        _ext.build("cpu")
    assert len(calls) == 1  # a rebuild was attempted; the stale library never ran


def test_two_processes_building_at_once_share_one_build(real_ext, tmp_path):
    """Two processes that need the extension at the same moment: one builds under the lock, the other waits
    and loads that build; the cache ends complete and usable."""
    code = (
        "import sys, time, shutil, torch, fastfer\n"
        "from pathlib import Path\n"
        "from torch.utils import cpp_extension\n"
        "from fastfer.ops.backends.ext import build as _ext, sources\n"
        "sources.PREBUILT_MODULE['cpu'] = 'fastfer._no_such_prebuilt_cpu'\n"
        "def fake(**kw):\n"
        "    open(sys.argv[2], 'a').write('built\\n')\n"
        "    time.sleep(3)\n"
        "    target = Path(kw['build_directory']) / 'fastfer_C_cpu.so'\n"
        "    shutil.copyfile(sys.argv[1], target)\n"
        "    return _ext._import_from(target, 'fastfer_C_cpu')\n"
        "cpp_extension.load = fake\n"
        "x = torch.randn(2, 8, 3, 3)\n"
        "assert torch.equal(fastfer.patch_pool(x, 4).index, fastfer.patch_pool(x, 4, backend='torch').index)\n"
        "print(_ext.origin('cpu'))\n"
    )
    env = {**__import__("os").environ, _ext.ENV_DIR: str(tmp_path / "cache")}
    log = tmp_path / "builds.log"
    procs = [subprocess.Popen([sys.executable, "-c", code, real_ext.__file__, str(log)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    assert sorted(out.strip() for out, _ in results) == ["built", "cache"]
    assert log.read_text() == "built\n"  # one build, not two
    assert any("waiting for another process" in err for _, err in results)


def test_probe_never_builds(fresh, monkeypatch):
    _forbid_compiling(monkeypatch)
    cpu = _backends.get("cpu")
    assert cpu.not_supported_reasons(CPU_CALL) == []
    assert list(fresh.iterdir()) == []


def test_missing_compiler_is_a_recorded_reason(fresh, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    reasons = _backends.get("cpu").not_supported_reasons(CPU_CALL)
    assert any("no C++ compiler ('/nonexistent/c++' not found" in r for r in reasons), reasons
    with pytest.raises(_backends.BackendUnavailable, match="no C\\+\\+ compiler"):
        fastfer.patch_pool(torch.randn(2, 4, 3, 3), 2, backend="cpu")
    assert fastfer.patch_pool(torch.randn(2, 4, 3, 3), 2).tokens.shape == (2, 2, 4)  # automatic: reference
    assert _backends.select(CPU_CALL).name == "torch"
    with pytest.raises(_ext.ExtensionUnavailable, match="cannot build the cpu extension"):
        _ext.build("cpu")


def test_missing_ninja_and_nvcc_are_recorded_reasons(fresh, monkeypatch):
    monkeypatch.setattr(_ext, "_ninja_dir", lambda: None)
    monkeypatch.setattr(_ext, "_nvcc", lambda: None)
    assert any("ninja not found" in r for r in _ext.unavailable_reasons("cpu"))
    cuda_reasons = _ext.unavailable_reasons("cuda")
    assert any("ninja not found" in r for r in cuda_reasons)
    assert any("nvcc not found" in r or "CPU-only build" in r for r in cuda_reasons), cuda_reasons
    assert "unavailable" in _ext.describe("cuda")


def test_failed_build_is_recorded_and_reported_across_processes(fresh, monkeypatch):
    from torch.utils import cpp_extension

    def failing_build(**kwargs):
        raise RuntimeError("Error building extension: [1/4] c++ ...\nattention.cpp:12:3: error: 'boom' was not declared")

    monkeypatch.setattr(cpp_extension, "load", failing_build)
    with pytest.raises(_ext.ExtensionUnavailable, match="error: 'boom' was not declared"):
        _ext.build("cpu")
    log = _ext.build_dir("cpu") / _ext.FAILED_LOG
    assert "boom" in log.read_text()
    _ext.reset()  # as a new process would see it
    reasons = _backends.get("cpu").not_supported_reasons(CPU_CALL)
    assert len(reasons) == 1 and "failed to build" in reasons[0] and str(log) in reasons[0]
    assert _backends.select(CPU_CALL).name == "torch"  # and automatic choice says why, once per process


def test_automatic_choice_says_once_why_the_reference_runs(fresh, monkeypatch, capsys):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    for dtype in (torch.float32, torch.bfloat16):
        fastfer.patch_pool(torch.randn(2, 4, 3, 3, dtype=dtype), 2)
        fastfer.token_pool_attention(torch.randn(1, 9, 3, 2, 8, dtype=dtype), keep=4)
    err = capsys.readouterr().err
    assert err.count("the C++ cpu kernels are not available") == 1, err
    assert "no C++ compiler" in err and "running the PyTorch reference instead" in err


def test_jit_build_writes_marker_under_lock_and_says_so(real_ext, fresh, monkeypatch, capsys):
    from torch.utils import cpp_extension

    calls = []

    def fake_build(**kwargs):
        calls.append(kwargs)
        directory = kwargs["build_directory"]
        assert not (directory_path / "lock").exists()
        return types.SimpleNamespace(__file__=f"{directory}/fastfer_C_cpu.so", source_digest=real_ext.source_digest)

    monkeypatch.setattr(cpp_extension, "load", fake_build)
    directory = directory_path = _ext.build_dir("cpu")
    directory.mkdir(parents=True)
    (directory / "lock").write_text("")  # left behind by a killed torch build: must not block this one

    holder_done = threading.Event()

    def hold_lock():  # another builder holds the lock for a moment
        with _ext._file_lock(directory / "fastfer-build.lock", "cpu"):
            time.sleep(0.5)
        holder_done.set()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    time.sleep(0.1)
    module = _ext.build("cpu")
    holder.join()
    assert holder_done.is_set() and len(calls) == 1
    assert calls[0]["name"] == "fastfer_C_cpu" and calls[0]["with_cuda"] is False
    assert any(f.endswith("csrc/cpu/attention.cpp") for f in calls[0]["sources"])
    assert (directory / _ext.OK_MARKER).read_text().strip() == "fastfer_C_cpu.so"
    assert not (directory / "lock").exists()
    err = capsys.readouterr().err
    assert "waiting for another process" in err and "building the cpu extension" in err and "built the cpu" in err
    assert _ext.origin("cpu") == "built" and module.source_digest == real_ext.source_digest


def test_cached_build_is_reused_without_compiling(real_ext, monkeypatch):
    if not _ext.build_dir("cpu").joinpath(_ext.OK_MARKER).is_file():
        pytest.skip("the cpu extension in use is prebuilt, not a JIT build in the cache")
    _ext.reset()
    monkeypatch.setitem(_ext_sources.PREBUILT_MODULE, "cpu", "fastfer._no_such_prebuilt_cpu")
    _forbid_compiling(monkeypatch)
    try:
        assert _ext.ready("cpu") and _ext.origin("cpu") == "cache"
        assert _backends.select(CPU_CALL).name == "cpu"  # built → automatic choice takes it
    finally:
        _ext.reset()


def _fake_prebuilt(monkeypatch, real, digest):
    name = "fastfer._fake_prebuilt_cpu"
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for attr in ("patch_pool_forward", "patch_pool_backward", "token_pool_forward", "token_pool_backward"):
        setattr(module, attr, getattr(real, attr))
    module.source_digest = digest
    monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(_ext_sources.PREBUILT_MODULE, "cpu", name)
    _ext.reset()
    return module


def test_prebuilt_module_is_preferred_when_built_from_these_sources(real_ext, monkeypatch):
    try:
        module = _fake_prebuilt(monkeypatch, real_ext, _ext.digest("cpu"))
        _forbid_compiling(monkeypatch)
        assert _ext.load("cpu") is module and _ext.origin("cpu") == "prebuilt"
        x = torch.randn(2, 8, 3, 3)
        assert torch.equal(fastfer.patch_pool(x, 4, backend="cpu").index, fastfer.patch_pool(x, 4, backend="torch").index)
        assert ext_api.namespace("cpu").module is module
    finally:
        _ext.reset()


def test_stale_prebuilt_module_is_ignored_with_a_note(real_ext, fresh, monkeypatch):
    try:
        _fake_prebuilt(monkeypatch, real_ext, "0123456789abcdef")
        monkeypatch.setenv(_ext.ENV_DIR, str(fresh))
        monkeypatch.setenv("CXX", "/nonexistent/c++")
        assert not _ext.ready("cpu")
        reasons = _ext.unavailable_reasons("cpu")
        assert any("built from other sources" in r for r in reasons), reasons
    finally:
        _ext.reset()


def test_cache_dir_follows_env_and_digest(monkeypatch, tmp_path):
    monkeypatch.setenv(_ext.ENV_DIR, str(tmp_path))
    assert _ext.build_dir("cpu") == tmp_path / f"ext-cpu-{_ext.digest('cpu')}"
    monkeypatch.delenv(_ext.ENV_DIR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _ext.cache_root() == tmp_path / "xdg" / "fastfer"
    digest = _ext_sources.digest("cpu", torch.__version__, torch.version.cuda)
    assert digest == _ext.digest("cpu") and len(digest) == 16
    assert _ext_sources.digest("cpu", "0.0.0", None) != digest  # another torch never reuses this build


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="kind: expected one of \\('cpu', 'cuda'\\), got 'tpu'"):
        _ext.ready("tpu")


def test_cli_status_and_build(real_ext, capsys):
    from fastfer.cli import main

    assert main(["build-ext", "--status"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cpu: loaded") and "\ncuda: " in out
    assert main(["build-ext"]) == 0
    assert capsys.readouterr().out.startswith("cpu: ready")
