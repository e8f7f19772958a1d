"""Storage by URI: every path a stage reads or writes is a local path or ``s3://bucket/prefix``
(``gs://bucket/prefix`` too), opened through ``pyarrow.fs``, the layer Ray Train and Ray Data use.

    fs, path = resolve("s3://bucket/runs/demo")      # (pyarrow FileSystem, "bucket/runs/demo")
    write_json(join(uri, "manifest.json"), manifest)  # atomic: readers see old or new, never half
    check_readable(prepared_uri)                      # preflight on the driver, error names the URI
    RunConfig(name=..., **run_config_storage(uri))    # Ray Train checkpoints under the URI
    model_dir = local_copy("s3://bucket/models/v3")   # cached download for model loading

Credentials come from the environment only, never from a config file of ours:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, the AWS SDK's own sources (``AWS_PROFILE``, ``~/.aws``, web identity, an
instance role), and ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` for S3-compatible stores
(MinIO, moto). Keys are not put into the filesystem object: a Ray worker that unpickles one reads
the credentials from its own node's environment. The module reads the environment only when a
function is called, never on import.

Every failure is a :class:`StorageError` whose message names the URI.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

REMOTE_SCHEMES = ("s3", "gs", "gcs")
CACHE_ENV = "SPLADERAY_CACHE_DIR"
_TMP_PREFIX = ".tmp-"


class StorageError(OSError):
    """A URI could not be read or written; the message names the URI and the likely cause."""


# ---------------------------------------------------------------------------------------------
# URIs and filesystems


def is_remote(uri: str | os.PathLike) -> bool:
    """True for ``s3://`` and ``gs://`` URIs, False for local paths and ``file://`` URIs."""
    return urlparse(str(uri)).scheme in REMOTE_SCHEMES


def join(uri: str | os.PathLike, *parts: str) -> str:
    """``uri`` with ``parts`` appended: ``/``-joined for remote URIs, ``os.path.join`` locally."""
    uri = str(uri)
    if not is_remote(uri):
        return os.path.join(uri, *parts)
    pieces = [uri.rstrip("/")] + [p.strip("/") for p in parts if p.strip("/")]
    return "/".join(pieces)


def basename(uri: str | os.PathLike) -> str:
    """The last part of a path or URI: ``scifact`` for ``s3://bucket/beir/scifact/``."""
    return os.path.basename(str(uri).rstrip("/"))


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The ``(pyarrow FileSystem, path)`` pair for a URI.

    A local path (or ``file://`` URI) becomes an absolute path on ``LocalFileSystem``. An
    ``s3://bucket/key`` URI becomes ``S3FileSystem`` and ``bucket/key``; the endpoint comes from
    ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, the region from ``AWS_REGION`` or
    ``AWS_DEFAULT_REGION`` (else the bucket's own region is looked up on AWS).
    """
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file"):
        local = parsed.path if parsed.scheme == "file" else text
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(local))
    if parsed.scheme not in REMOTE_SCHEMES:
        raise StorageError(
            f"{text}: unsupported URI scheme {parsed.scheme!r}; use a local path, s3:// or gs://"
        )
    bucket = parsed.netloc
    if not bucket:
        raise StorageError(f"{text}: no bucket in the URI; write {parsed.scheme}://bucket/prefix")
    path = f"{bucket}/{parsed.path.strip('/')}".rstrip("/")
    if parsed.scheme == "s3":
        return _s3_filesystem(bucket), path
    return _gcs_filesystem(text), path


def _s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _s3_filesystem(bucket: str) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {}
    endpoint = _s3_endpoint()
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        kwargs["scheme"] = parsed.scheme
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region and not endpoint:
        region = _bucket_region(bucket)
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


@functools.lru_cache(maxsize=64)
def _bucket_region(bucket: str) -> str | None:
    """The AWS region of a bucket, or None when it cannot be looked up (pyarrow's default)."""
    try:
        return pafs.resolve_s3_region(bucket)
    except OSError:
        return None


def _gcs_filesystem(uri: str) -> pafs.FileSystem:
    try:
        return pafs.GcsFileSystem()
    except (AttributeError, ImportError) as e:  # a pyarrow built without GCS
        raise StorageError(f"{uri}: this pyarrow has no GCS filesystem") from e


def _info(uri: str, fs: pafs.FileSystem, path: str) -> pafs.FileInfo:
    try:
        return fs.get_file_info(path)
    except OSError as e:
        raise StorageError(f"cannot access {uri}: {e}") from e


# ---------------------------------------------------------------------------------------------
# Reading and writing


def exists(uri: str | os.PathLike) -> bool:
    """True when a file or a non-empty prefix (directory) is at ``uri``."""
    fs, path = resolve(uri)
    return _info(str(uri), fs, path).type != pafs.FileType.NotFound


def read_bytes(uri: str | os.PathLike) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as e:
        raise StorageError(f"nothing at {uri}: {e}") from e
    except OSError as e:
        raise StorageError(f"cannot read {uri}: {e}") from e


def read_text(uri: str | os.PathLike) -> str:
    return read_bytes(uri).decode("utf-8")


def is_file(uri: str | os.PathLike) -> bool:
    """True when a file (an object, not a prefix) is at ``uri``."""
    fs, path = resolve(uri)
    return _info(str(uri), fs, path).type == pafs.FileType.File


@contextlib.contextmanager
def open_binary(uri: str | os.PathLike) -> Iterator[io.BufferedReader]:
    """A buffered binary stream over the file at ``uri`` (iterates by ``\\n``-ended lines), read
    as it is consumed, not downloaded first: what the BEIR readers use. Lines are bytes, so the
    caller decodes each one on its own and one bad byte costs one line, not the file."""
    fs, path = resolve(uri)
    try:
        raw = fs.open_input_stream(path)
    except FileNotFoundError as e:
        raise StorageError(f"nothing at {uri}: {e}") from e
    except OSError as e:
        raise StorageError(f"cannot read {uri}: {e}") from e
    with raw, io.BufferedReader(raw) as buffered:
        yield buffered


def read_json(uri: str | os.PathLike) -> Any:
    return json.loads(read_text(uri))


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``uri`` atomically: a reader sees the old content or the new, never half.

    The bytes go to a hidden temporary name next to the target, which is then moved onto it (a
    rename on local disk, a server-side copy on object stores, whose objects appear whole). A
    failure leaves the old content and removes the temporary.
    """
    fs, path = resolve(uri)
    parent, _, name = path.rpartition("/")
    tmp = f"{parent}/{_TMP_PREFIX}{name}.{uuid.uuid4().hex[:12]}"
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    except OSError as e:
        _delete_quietly(fs, tmp)
        raise StorageError(f"cannot write {uri}: {e}") from e


def write_text(uri: str | os.PathLike, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Serialise first (so a bad object never touches storage), then write atomically."""
    write_text(uri, json.dumps(obj, indent=indent) + "\n")


def list_files(uri: str | os.PathLike) -> list[str]:
    """Paths of every file under ``uri``, relative to it, ``/``-separated, sorted.

    Empty when nothing is there. A ``uri`` that is a single file lists as ``[""]``.
    """
    fs, path = resolve(uri)
    info = _info(str(uri), fs, path)
    if info.type == pafs.FileType.File:
        return [""]
    if info.type == pafs.FileType.NotFound:
        return []
    return sorted(rel for rel, _ in _walk(str(uri), fs, path))


def stamp(uri: str | os.PathLike) -> list[list]:
    """``[uri of each file, size, mtime_ns]`` for the file or every file under ``uri`` (none when
    nothing is there): a cheap change detector for inputs (one listing, no reads)."""
    fs, path = resolve(uri)
    info = _info(str(uri), fs, path)
    if info.type == pafs.FileType.File:
        return [[str(uri), info.size, info.mtime_ns]]
    return [
        [join(uri, rel), f.size, f.mtime_ns]
        for rel, f in sorted(_walk(str(uri), fs, path), key=lambda item: item[0])
    ]


def _walk(uri: str, fs: pafs.FileSystem, path: str) -> Iterable[tuple[str, pafs.FileInfo]]:
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    try:
        infos = fs.get_file_info(selector)
    except OSError as e:
        raise StorageError(f"cannot list {uri}: {e}") from e
    for info in infos:
        if info.type == pafs.FileType.File:
            yield info.path[len(path) :].lstrip("/"), info


def delete(uri: str | os.PathLike) -> None:
    """Delete the file or everything under the prefix at ``uri``; nothing there is not an error.

    Refuses a bare bucket (``s3://bucket``) so that a missing prefix never deletes a bucket.
    """
    fs, path = resolve(uri)
    if is_remote(uri) and "/" not in path:
        raise StorageError(f"refusing to delete the whole bucket {uri}; name a prefix inside it")
    info = _info(str(uri), fs, path)
    try:
        if info.type == pafs.FileType.File:
            fs.delete_file(path)
        elif info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
    except OSError as e:
        raise StorageError(f"cannot delete {uri}: {e}") from e


def _delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    with contextlib.suppress(OSError):
        fs.delete_file(path)


# ---------------------------------------------------------------------------------------------
# Moving whole trees


def upload(local_path: str | os.PathLike, uri: str | os.PathLike) -> None:
    """Copy a local file or directory (recursively, nested files included) to ``uri``."""
    src = os.path.abspath(local_path)
    if not os.path.exists(src):
        raise StorageError(f"cannot upload {src} to {uri}: no such local file or directory")
    fs, path = resolve(uri)
    try:
        if isinstance(fs, pafs.LocalFileSystem):  # copy_files does not create local folders
            fs.create_dir(path if os.path.isdir(src) else os.path.dirname(path), recursive=True)
        pafs.copy_files(
            src, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
        )
    except OSError as e:
        raise StorageError(f"cannot upload {src} to {uri}: {e}") from e


def download(uri: str | os.PathLike, local_path: str | os.PathLike) -> None:
    """Copy the file or everything under the prefix at ``uri`` to ``local_path``."""
    fs, path = resolve(uri)
    kind = _info(str(uri), fs, path).type
    if kind == pafs.FileType.NotFound:
        raise StorageError(f"nothing at {uri} to download{_nearby(str(uri), fs, path)}")
    dst = os.path.abspath(local_path)
    try:
        os.makedirs(dst if kind == pafs.FileType.Directory else os.path.dirname(dst), exist_ok=True)
        pafs.copy_files(
            path, dst, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
        )
    except OSError as e:
        raise StorageError(f"cannot download {uri} to {dst}: {e}") from e


@contextlib.contextmanager
def staged_dir(uri: str | os.PathLike) -> Iterator[Path]:
    """A local directory to write what belongs under ``uri``: the directory itself for a local
    ``uri`` (created), else a temporary one that is uploaded to ``uri`` when the block ends
    without an error, and removed either way."""
    uri = str(uri)
    if not is_remote(uri):
        local = Path(resolve(uri)[1])
        local.mkdir(parents=True, exist_ok=True)
        yield local
        return
    tmp = Path(tempfile.mkdtemp(prefix="spladeray-stage-"))
    try:
        yield tmp
        upload(tmp, uri)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_cache_dir() -> Path:
    """``$SPLADERAY_CACHE_DIR``, else ``~/.cache/spladeray``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "spladeray"


def local_copy(uri: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local path holding what is at ``uri``, for loaders that need files on disk (models).

    A local ``uri`` is returned as it is. A remote one is downloaded once into
    ``<cache_dir>/objects/<name>-<hash of the URI>/<version>/``, where the version is a hash of
    every object's relative path, size and ETag (modification time where the store has no ETag).
    Later calls re-download only when an object changed, was added or was removed; the previous
    version's directory is then removed. A download lands in a temporary directory that is
    renamed into place, so a crash never leaves a half copy that a later call would trust.
    """
    uri = str(uri)
    fs, path = resolve(uri)
    info = _info(uri, fs, path)
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"nothing at {uri}{_nearby(uri, fs, path)}")
    if not is_remote(uri):
        return Path(path)

    name = path.rstrip("/").rsplit("/", 1)[-1]
    if info.type == pafs.FileType.File:
        objects = [(name, info)]
    else:
        objects = list(_walk(uri, fs, path))
    version = _fingerprint(fs, objects)

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    slot = root / "objects" / f"{name}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"
    target = slot / version
    if not target.is_dir():
        slot.mkdir(parents=True, exist_ok=True)
        tmp = slot / f"{_TMP_PREFIX}{uuid.uuid4().hex[:12]}"
        download(uri, tmp / name if info.type == pafs.FileType.File else tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process put the same version in place first
            shutil.rmtree(tmp, ignore_errors=True)
        for old in slot.iterdir():
            if old.name != version and not old.name.startswith(_TMP_PREFIX):
                shutil.rmtree(old, ignore_errors=True)
    return target / name if info.type == pafs.FileType.File else target


def _fingerprint(fs: pafs.FileSystem, objects: list[tuple[str, pafs.FileInfo]]) -> str:
    """A short hash of each object's relative path, size and ETag (else mtime)."""
    rows = []
    for rel, obj in sorted(objects, key=lambda item: item[0]):
        with fs.open_input_file(obj.path) as f:  # a HEAD request: its metadata has the ETag
            etag = f.metadata().get("ETag", b"").decode()
        rows.append([rel, obj.size, etag or obj.mtime_ns])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Preflight: fail on the driver, before any work starts, with the URI in the message


def check_readable(uri: str | os.PathLike) -> None:
    """Raise :class:`StorageError` unless something is at ``uri`` and it can be read.

    Tells apart missing credentials, a missing bucket, permission denied and an empty prefix
    (usually a typo; the message lists what is there instead).
    """
    uri = str(uri)
    fs, path = resolve(uri)
    _check_bucket(uri, fs, path)
    if _info(uri, fs, path).type == pafs.FileType.NotFound:
        raise StorageError(f"nothing at {uri}: check the path for a typo{_nearby(uri, fs, path)}")


def check_writable(uri: str | os.PathLike) -> None:
    """Raise :class:`StorageError` unless files can be written under the prefix ``uri``.

    ``uri`` names a directory (prefix). A small probe object is written under it and deleted; a
    local directory is created if missing.
    """
    uri = str(uri)
    fs, path = resolve(uri)
    _check_bucket(uri, fs, path)
    probe = f"{path.rstrip('/')}/.spladeray-write-check-{uuid.uuid4().hex[:12]}"
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            fs.create_dir(path, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
    except OSError as e:
        hint = "permission denied?" if is_remote(uri) else "permission denied or not a directory?"
        raise StorageError(f"cannot write under {uri} ({hint}): {e}") from e
    _delete_quietly(fs, probe)


def preflight(
    read: Iterable[str | os.PathLike] = (), write: Iterable[str | os.PathLike] = ()
) -> None:
    """Check every URI a job will read and write; one :class:`StorageError` lists all problems."""
    problems = []
    for uri, check in [(u, check_readable) for u in read] + [(u, check_writable) for u in write]:
        try:
            check(uri)
        except StorageError as e:
            problems.append(str(e))
    if problems:
        raise StorageError("storage preflight failed:\n  - " + "\n  - ".join(problems))


def _check_bucket(uri: str, fs: pafs.FileSystem, path: str) -> None:
    if not is_remote(uri):
        return
    if isinstance(fs, pafs.S3FileSystem) and aws_credential_source() is None:
        raise StorageError(
            f"no AWS credentials for {uri} (botocore's credential chain found none): set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary "
            "ones), AWS_PROFILE, a web identity (IRSA), or run on a node with an instance role"
        )
    bucket = path.split("/", 1)[0]
    where = f" at {_s3_endpoint()}" if isinstance(fs, pafs.S3FileSystem) and _s3_endpoint() else ""
    try:
        info = fs.get_file_info(bucket)
    except OSError as e:
        raise StorageError(
            f"cannot access bucket {bucket!r} of {uri}{where} (permission denied or wrong "
            f"credentials?): {e}"
        ) from e
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"bucket {bucket!r} of {uri} does not exist{where}")


def _nearby(uri: str, fs: pafs.FileSystem, path: str, limit: int = 8) -> str:
    """``"; found under <parent>: a, b"`` listing what is next to a missing path (typo help)."""
    parent = path.rstrip("/").rpartition("/")[0]
    if not parent:
        return ""
    try:
        infos = fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    except OSError:
        return ""
    names = sorted(i.base_name for i in infos if not i.base_name.startswith("."))
    if not names:
        return ""
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    parent_uri = uri.rstrip("/").rpartition("/")[0]
    return f"; found under {parent_uri}/: {shown}"


def aws_credential_source() -> str | None:
    """How botocore's credential chain resolves credentials on this node (its ``method``:
    ``env``, ``shared-credentials-file``, ``config-file``, ``assume-role-with-web-identity``,
    ``container-role``, ``iam-role``, ...), or None when it resolves none.

    The SDK's own chain answers, not a guess from which files exist: a ``~/.aws/config`` that only
    sets a region holds no credentials. pyarrow's S3 filesystem resolves (and refreshes) the
    credentials itself; this only lets the preflight fail early with a clear message.
    """
    import botocore.session

    credentials = botocore.session.Session().get_credentials()
    return None if credentials is None else str(credentials.method)


# ---------------------------------------------------------------------------------------------
# Ray Train


def run_config_storage(uri: str | os.PathLike) -> dict[str, Any]:
    """``storage_path`` and ``storage_filesystem`` for ``ray.train.RunConfig`` at ``uri``.

    ``RunConfig(name=run, **run_config_storage(uri))`` keeps checkpoints under ``uri``. A remote
    URI gets its filesystem (endpoint and region included; it pickles to the workers without
    keys) and the bucket-relative path Ray expects with it; a local path gets Ray's default.
    """
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        return {"storage_path": path, "storage_filesystem": None}
    return {"storage_path": path, "storage_filesystem": fs}
