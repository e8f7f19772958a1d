"""spladeray.storage on a local directory and on a real S3 API (moto on 127.0.0.1)."""

# The S3 fixtures (s3, s3_bucket, s3_read_only) come from tests/fixtures_s3.py, registered in
# conftest.py's pytest_plugins.

from __future__ import annotations

import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from spladeray import storage
from spladeray.storage import StorageError


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path) -> str:
    """An empty place to write: a local directory, or a prefix in a fresh moto bucket."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/store"


def write_tree(root: Path) -> dict[str, bytes]:
    """A small model-like directory with nested files; returns {relative path: content}."""
    files = {
        "config.json": b'{"dim": 8}',
        "tokenizer/vocab.txt": b"[PAD]\n[CLS]\nhello\n",
        "weights/part-0/model.bin": bytes(range(256)) * 4,
        "weights/part-1/model.bin": b"\x00\x01" * 300,
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


# ---------------------------------------------------------------------------------------------
# URIs


def test_is_remote_and_join():
    assert storage.is_remote("s3://bucket/prefix")
    assert storage.is_remote("gs://bucket/prefix")
    assert not storage.is_remote("/tmp/x")
    assert not storage.is_remote("runs/x")
    assert not storage.is_remote("file:///tmp/x")
    assert storage.join("s3://b/p/", "a", "/c.json") == "s3://b/p/a/c.json"
    assert storage.join("s3://b", "a") == "s3://b/a"
    assert storage.join("/tmp/p", "a", "c.json") == "/tmp/p/a/c.json"


def test_resolve(base):
    fs, path = storage.resolve(base)
    if storage.is_remote(base):
        assert isinstance(fs, pafs.S3FileSystem)
        assert path == base.removeprefix("s3://")
    else:
        assert isinstance(fs, pafs.LocalFileSystem)
        assert path == base and Path(path).is_absolute()


def test_resolve_file_uri_and_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.resolve("runs/x")[1] == str(tmp_path / "runs" / "x")
    assert storage.resolve(f"file://{tmp_path}/y")[1] == str(tmp_path / "y")


@pytest.mark.parametrize("uri", ["hdfs://cluster/data", "s3:///no-bucket"])
def test_resolve_rejects_bad_uris(uri):
    with pytest.raises(StorageError, match=uri):
        storage.resolve(uri)


# ---------------------------------------------------------------------------------------------
# Reading, writing, listing, deleting


def test_text_and_json_round_trip(base):
    manifest = storage.join(base, "prepared", "manifest.json")
    assert not storage.exists(manifest)
    storage.write_json(manifest, {"shards": 3, "name": "scifact"})
    assert storage.exists(manifest)
    assert storage.exists(storage.join(base, "prepared"))
    assert storage.read_json(manifest) == {"shards": 3, "name": "scifact"}

    note = storage.join(base, "notes.txt")
    storage.write_text(note, "première\n")
    storage.write_text(note, "second\n")  # overwrite
    assert storage.read_text(note) == "second\n"


def test_streamed_lines_is_file_stamp_and_basename(base):
    """What the BEIR readers use on a URI: lines streamed as bytes (a non-UTF-8 byte stays in
    its line), is_file (a prefix is not a file), stamp (size + mtime per file, no reads)."""
    corpus = storage.join(base, "beir", "scifact", "corpus.jsonl")
    storage.write_bytes(corpus, b'{"_id": "1"}\n\xff bad\n{"_id": "2"}\n')
    with storage.open_binary(corpus) as fh:
        assert list(fh) == [b'{"_id": "1"}\n', b"\xff bad\n", b'{"_id": "2"}\n']
    assert storage.is_file(corpus)
    assert not storage.is_file(storage.join(base, "beir", "scifact"))
    assert not storage.is_file(storage.join(base, "beir", "nope.jsonl"))
    (stamp,) = storage.stamp(storage.join(base, "beir"))
    assert stamp[:2] == [corpus, 32] and stamp[2] > 0  # 32 bytes
    assert storage.stamp(corpus) == [stamp] and storage.stamp(storage.join(base, "x")) == []
    assert storage.basename(storage.join(base, "beir", "scifact") + "/") == "scifact"
    missing = storage.join(base, "beir", "nope.jsonl")
    with pytest.raises(StorageError, match="nope.jsonl"), storage.open_binary(missing):
        pass


def test_read_missing_names_the_uri(base):
    missing = storage.join(base, "nope.json")
    with pytest.raises(StorageError, match=missing):
        storage.read_json(missing)


def test_list_and_delete(base):
    for rel in ["a.txt", "sub/b.txt", "sub/deeper/c.txt"]:
        storage.write_text(storage.join(base, rel), rel)
    assert storage.list_files(base) == ["a.txt", "sub/b.txt", "sub/deeper/c.txt"]
    assert storage.list_files(storage.join(base, "sub")) == ["b.txt", "deeper/c.txt"]
    assert storage.list_files(storage.join(base, "a.txt")) == [""]
    assert storage.list_files(storage.join(base, "missing")) == []

    storage.delete(storage.join(base, "sub"))
    assert storage.list_files(base) == ["a.txt"]
    storage.delete(storage.join(base, "a.txt"))
    assert storage.list_files(base) == []
    storage.delete(storage.join(base, "never-there"))  # not an error


def test_delete_refuses_a_whole_bucket(s3_bucket):
    storage.write_text(storage.join(s3_bucket, "keep.txt"), "x")
    with pytest.raises(StorageError, match=s3_bucket):
        storage.delete(s3_bucket)
    assert storage.list_files(s3_bucket) == ["keep.txt"]


# ---------------------------------------------------------------------------------------------
# Atomic writes: a failure keeps the old content and leaves no temporary behind


class FailingFS(pafs.FileSystemHandler):
    """Delegates to a real filesystem, but fails ``move`` or the upload's ``write`` on request."""

    def __init__(self, fs: pafs.FileSystem, fail: str):
        self.fs, self.fail = fs, fail

    def get_type_name(self):
        return "failing-" + self.fs.type_name

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("not supported")

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        if self.fail == "move":
            raise OSError("simulated failure while moving into place")
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        stream = self.fs.open_output_stream(path)
        if self.fail != "write":
            return stream

        class HalfWriter:
            closed = False

            def write(self, data):
                stream.write(data[: len(data) // 2])
                raise OSError("simulated connection reset halfway through the upload")

            def close(self):
                stream.close()
                self.closed = True

        return pa.PythonFile(HalfWriter(), mode="w")

    def open_append_stream(self, path, metadata):
        raise OSError("not supported")

    def equals(self, other):
        return self is other


@pytest.mark.parametrize("fail", ["write", "move"])
def test_atomic_write_keeps_old_content_on_failure(base, fail, monkeypatch):
    target = storage.join(base, "baselines.json")
    storage.write_json(target, {"version": 1})

    with pytest.raises(TypeError):  # not serialisable: storage is never touched
        storage.write_json(target, {"version": object()})
    assert storage.read_json(target) == {"version": 1}

    real_resolve = storage.resolve

    def failing_resolve(uri):
        fs, path = real_resolve(uri)
        return pafs.PyFileSystem(FailingFS(fs, fail)), path

    monkeypatch.setattr(storage, "resolve", failing_resolve)
    with pytest.raises(StorageError, match=target):
        storage.write_json(target, {"version": 2, "padding": "x" * 10_000})
    monkeypatch.undo()

    assert storage.read_json(target) == {"version": 1}
    assert storage.list_files(base) == ["baselines.json"]  # the temporary was removed


# ---------------------------------------------------------------------------------------------
# Whole directories


def test_upload_and_download_nested_directory(base, tmp_path):
    src = tmp_path / "model-src"
    files = write_tree(src)
    model_uri = storage.join(base, "models", "v1")
    storage.upload(src, model_uri)
    assert storage.list_files(model_uri) == sorted(files)

    dst = tmp_path / "model-dst"
    storage.download(model_uri, dst)
    for rel, data in files.items():
        assert (dst / rel).read_bytes() == data

    one = tmp_path / "one-file.json"
    storage.download(storage.join(model_uri, "config.json"), one)
    assert one.read_bytes() == files["config.json"]

    storage.upload(src / "config.json", storage.join(base, "single", "config.json"))
    assert storage.read_text(storage.join(base, "single", "config.json")) == '{"dim": 8}'


def test_download_and_upload_of_nothing_name_the_path(base, tmp_path):
    missing = storage.join(base, "models", "v9")
    with pytest.raises(StorageError, match=missing):
        storage.download(missing, tmp_path / "out")
    with pytest.raises(StorageError, match="no-such-dir"):
        storage.upload(tmp_path / "no-such-dir", missing)


# ---------------------------------------------------------------------------------------------
# local_copy: the cache for remote models


@pytest.fixture
def count_downloads(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = storage.download

    def counting(uri, local_path):
        calls.append(str(uri))
        real(uri, local_path)

    monkeypatch.setattr(storage, "download", counting)
    return calls


def test_local_copy(base, tmp_path, count_downloads):
    src = tmp_path / "model-src"
    files = write_tree(src)
    model_uri = storage.join(base, "models", "v1")
    storage.upload(src, model_uri)
    cache = tmp_path / "cache"

    first = storage.local_copy(model_uri, cache_dir=cache)
    for rel, data in files.items():
        assert (first / rel).read_bytes() == data
    second = storage.local_copy(model_uri, cache_dir=cache)
    assert second == first

    if not storage.is_remote(base):
        assert first == Path(model_uri)  # a local directory is used where it is
        assert count_downloads == [] and not cache.exists()
        return
    assert count_downloads == [model_uri]  # the second call did not download again


def test_local_copy_downloads_again_when_an_object_changes(s3_bucket, tmp_path, count_downloads):
    src = tmp_path / "model-src"
    write_tree(src)
    model_uri = storage.join(s3_bucket, "models", "v1")
    storage.upload(src, model_uri)
    cache = tmp_path / "cache"
    first = storage.local_copy(model_uri, cache_dir=cache)

    # same size, new bytes: only the ETag tells them apart
    storage.write_text(storage.join(model_uri, "config.json"), '{"dim": 9}')
    changed = storage.local_copy(model_uri, cache_dir=cache)
    assert changed != first
    assert (changed / "config.json").read_text() == '{"dim": 9}'
    assert not first.exists()  # the stale version was removed
    assert len(count_downloads) == 2

    storage.write_text(storage.join(model_uri, "extra/new.txt"), "added")
    added = storage.local_copy(model_uri, cache_dir=cache)
    assert (added / "extra" / "new.txt").read_text() == "added"
    assert storage.local_copy(model_uri, cache_dir=cache) == added
    assert len(count_downloads) == 3


def test_local_copy_of_one_object(s3_bucket, tmp_path, count_downloads):
    uri = storage.join(s3_bucket, "idf.json")
    storage.write_json(uri, {"hello": 1.5})
    path = storage.local_copy(uri, cache_dir=tmp_path / "cache")
    assert path.name == "idf.json" and path.is_file()
    assert storage.local_copy(uri, cache_dir=tmp_path / "cache") == path
    assert len(count_downloads) == 1


def test_local_copy_uses_the_cache_dir_from_the_environment(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "env-cache"))
    uri = storage.join(s3_bucket, "m", "config.json")
    storage.write_text(uri, "{}")
    assert storage.local_copy(storage.join(s3_bucket, "m")).is_relative_to(tmp_path / "env-cache")


# ---------------------------------------------------------------------------------------------
# Preflight: clear errors naming the URI, before any work starts


def test_preflight_passes(base):
    storage.check_writable(storage.join(base, "checkpoints"))
    storage.write_json(storage.join(base, "prepared", "manifest.json"), {})
    storage.check_readable(storage.join(base, "prepared"))
    storage.check_readable(storage.join(base, "prepared", "manifest.json"))
    storage.preflight(read=[storage.join(base, "prepared")], write=[storage.join(base, "out")])
    assert storage.list_files(storage.join(base, "checkpoints")) == []  # the probe is gone


def test_preflight_wrong_prefix_lists_what_is_there(base):
    storage.write_json(storage.join(base, "prepared", "manifest.json"), {})
    typo = storage.join(base, "prepraed")
    with pytest.raises(StorageError, match=typo) as err:
        storage.check_readable(typo)
    assert "typo" in str(err.value) and "prepared" in str(err.value)


@pytest.mark.parametrize("check", [storage.check_readable, storage.check_writable])
def test_preflight_missing_credentials(s3_bucket, monkeypatch, check):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    uri = storage.join(s3_bucket, "prepared")
    with pytest.raises(StorageError, match=uri) as err:
        check(uri)
    assert "AWS_ACCESS_KEY_ID" in str(err.value)


def test_credential_source_is_botocores_answer_not_a_file_guess(monkeypatch, tmp_path):
    """Issue 29 item 8: a ~/.aws/config that only sets a region holds no credentials."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-west-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    assert storage.aws_credential_source() is None
    config.write_text("[default]\naws_access_key_id = AKID\naws_secret_access_key = s\n")
    assert storage.aws_credential_source() == "config-file"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert storage.aws_credential_source() == "env"


@pytest.mark.parametrize("check", [storage.check_readable, storage.check_writable])
def test_preflight_missing_bucket(s3, check):
    uri = "s3://spladeray-no-such-bucket/runs/prepared"
    with pytest.raises(StorageError, match=uri) as err:
        check(uri)
    assert "does not exist" in str(err.value)


def test_preflight_permission_denied(s3_bucket, s3_read_only, monkeypatch):
    for var, value in s3_read_only.items():
        monkeypatch.setenv(var, value)
    storage.check_readable(s3_bucket)  # reading is allowed
    uri = storage.join(s3_bucket, "checkpoints")
    with pytest.raises(StorageError, match=uri) as err:
        storage.check_writable(uri)
    assert "permission denied" in str(err.value)


def test_preflight_wrong_credentials(s3_bucket, s3_read_only, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAREALKEY00000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    uri = storage.join(s3_bucket, "prepared")
    with pytest.raises(StorageError, match=uri) as err:
        storage.check_readable(uri)
    assert "credentials" in str(err.value)


def test_preflight_local_path_that_cannot_be_a_directory(tmp_path):
    (tmp_path / "a-file").write_text("x")
    uri = str(tmp_path / "a-file" / "checkpoints")
    with pytest.raises(StorageError, match=uri):
        storage.check_writable(uri)


def test_preflight_collects_every_problem(s3, tmp_path):
    missing_local = str(tmp_path / "nothing-here")
    missing_bucket = "s3://spladeray-no-such-bucket/ckpt"
    with pytest.raises(StorageError) as err:
        storage.preflight(read=[missing_local], write=[missing_bucket])
    assert missing_local in str(err.value) and missing_bucket in str(err.value)


# ---------------------------------------------------------------------------------------------
# Ray Train


def test_ray_train_run_config_accepts_the_storage_pair(base):
    from ray.train import RunConfig

    run_config = RunConfig(name="storage-check", **storage.run_config_storage(base))
    # Building the storage context writes Ray's validation marker through the filesystem we gave.
    context = run_config.storage_context
    assert context.storage_fs_path == storage.resolve(base)[1]
    assert storage.list_files(storage.join(base, "storage-check")) != []


def test_remote_filesystem_pickles_without_keys(s3_bucket):
    uri = storage.join(s3_bucket, "x.txt")
    storage.write_text(uri, "hello")
    fs, path = storage.resolve(uri)
    blob = pickle.dumps(fs)
    assert b"testing" not in blob  # the fake secret key never travels with the filesystem
    with pickle.loads(blob).open_input_stream(path) as f:
        assert f.read() == b"hello"


def test_upload_a_flat_directory_to_a_new_nested_local_folder(tmp_path):
    """What training does with the final model: a folder of files into <out>/<run>/model."""
    src = tmp_path / "model"
    src.mkdir()
    (src / "spladeray.json").write_text("{}")
    (src / "config.json").write_text('{"dim": 8}')
    dst = tmp_path / "out" / "run" / "model"
    storage.upload(src, str(dst))
    assert storage.list_files(str(dst)) == ["config.json", "spladeray.json"]
