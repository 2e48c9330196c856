from __future__ import annotations

import hashlib
import os
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from mlwarden.core.errors import UsageError
from mlwarden.integrity.errors import ModelPathError
from mlwarden.integrity.hashing import FileDigest, ModelManifest, hash_model
from tests.integrity.signing_helpers import LAYOUTS, build_model


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_file_is_listed_with_its_own_digest_and_size(tmp_path: Path, layout: str) -> None:
    model = build_model(tmp_path, layout)
    manifest = hash_model(model)
    expected = {
        ("model.safetensors" if layout == "single-file" else rel): data for rel, data in LAYOUTS[layout].items()
    }
    assert {f.path: (f.digest, f.size) for f in manifest.files} == {
        rel: (sha(data), len(data)) for rel, data in expected.items()
    }
    assert manifest.is_file == (layout == "single-file")
    assert manifest.name == model.name


def test_files_are_sorted_component_by_component(tmp_path: Path) -> None:
    manifest = hash_model(build_model(tmp_path, "nested-folder"))
    paths = [f.path for f in manifest.files]
    assert paths == sorted(paths, key=lambda p: p.split("/"))
    assert paths.index("a/b") < paths.index("a-b")  # string order would put "a-b" first


def test_folder_digest_is_reproduced_by_sha256sum(tmp_path: Path) -> None:
    model = build_model(tmp_path, "nested-folder")
    listing = subprocess.run(  # noqa: S602 - a fixed pipeline, the reference the test compares with
        "find . -type f -printf '%P\\0' | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum",
        shell=True,
        cwd=model,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]
    assert hash_model(model).digest == listing


def test_single_file_digest_is_the_file_sha256(tmp_path: Path) -> None:
    model = build_model(tmp_path, "single-file")
    assert hash_model(model).digest == sha(model.read_bytes())


def test_digest_binds_paths(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, name in ((one, "x.bin"), (two, "y.bin")):
        folder.mkdir()
        (folder / name).write_bytes(b"same bytes")
    assert hash_model(one).digest != hash_model(two).digest


def test_newline_in_a_name_cannot_forge_another_folders_digest(tmp_path: Path) -> None:
    honest, forged = tmp_path / "honest", tmp_path / "forged"
    honest.mkdir()
    forged.mkdir()
    (honest / "x").write_bytes(b"X")
    (honest / "y").write_bytes(b"Y")
    (forged / f"x\n{sha(b'Y')}  y").write_bytes(b"X")  # would print the same two sha256sum lines, unescaped
    assert hash_model(honest).digest != hash_model(forged).digest


def test_ignore_paths_files_and_folders(tmp_path: Path) -> None:
    model = build_model(tmp_path, "nested-folder")
    manifest = hash_model(model, ignore_paths=["README.md", "weights/deeper", Path("tokenizer")])
    paths = {f.path for f in manifest.files}
    assert "README.md" not in paths
    assert not any(p.startswith(("weights/deeper/", "tokenizer/")) for p in paths)
    assert "weights/part-1.bin" in paths


def test_git_paths_at_the_root_are_ignored_by_default(tmp_path: Path) -> None:
    model = build_model(tmp_path, "nested-folder")
    for rel in (".git/HEAD", ".github/workflows/ci.yml", ".gitignore", ".gitattributes", "weights/.gitignore"):
        (model / rel).parent.mkdir(parents=True, exist_ok=True)
        (model / rel).write_text("x")
    default = {f.path for f in hash_model(model).files}
    assert not any(p.startswith((".git", ".github")) for p in default)
    assert "weights/.gitignore" in default  # only the root's, like model_signing
    everything = {f.path for f in hash_model(model, ignore_git_paths=False).files}
    assert {".git/HEAD", ".github/workflows/ci.yml", ".gitignore", ".gitattributes"} <= everything


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside", "a/../../b", ".", ""])
def test_ignore_paths_must_stay_inside_the_model(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UsageError, match="inside the model"):
        hash_model(build_model(tmp_path, "nested-folder"), ignore_paths=[bad])


def test_symlink_inside_is_an_error_naming_it(tmp_path: Path) -> None:
    model = build_model(tmp_path, "nested-folder")
    (tmp_path / "secret").write_text("outside")
    (model / "weights" / "link.bin").symlink_to(tmp_path / "secret")
    with pytest.raises(ModelPathError, match=r"weights/link\.bin is a symbolic link"):
        hash_model(model)


def test_symlinked_folder_and_root_are_errors(tmp_path: Path) -> None:
    model = build_model(tmp_path, "nested-folder")
    (model / "more").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ModelPathError, match="more is a symbolic link"):
        hash_model(model)
    (model / "more").unlink()
    (tmp_path / "alias").symlink_to(model, target_is_directory=True)
    with pytest.raises(ModelPathError, match="alias is a symbolic link"):
        hash_model(tmp_path / "alias")


def test_symlink_in_an_ignored_folder_is_not_walked(tmp_path: Path) -> None:
    model = build_model(tmp_path, "nested-folder")
    (model / ".git").mkdir()
    (model / ".git" / "link").symlink_to("/etc/hostname")
    assert all(not f.path.startswith(".git") for f in hash_model(model).files)


def test_fifo_and_missing_paths_are_errors(tmp_path: Path) -> None:
    model = build_model(tmp_path, "nested-folder")
    os.mkfifo(model / "pipe")
    with pytest.raises(ModelPathError, match="pipe is not a regular file"):
        hash_model(model)
    with pytest.raises(ModelPathError, match="no such file or folder"):
        hash_model(tmp_path / "absent")


def test_empty_files_count_and_empty_folders_do_not(tmp_path: Path) -> None:
    model = tmp_path / "m"
    (model / "empty-dir").mkdir(parents=True)
    (model / "empty.bin").write_bytes(b"")
    manifest = hash_model(model)
    assert manifest.files == (FileDigest(path="empty.bin", digest=sha(b""), size=0),)


def test_parallel_and_serial_hashing_agree(tmp_path: Path) -> None:
    model = tmp_path / "many"
    for i in range(40):
        (model / f"d{i % 5}").mkdir(parents=True, exist_ok=True)
        (model / f"d{i % 5}" / f"f{i}.bin").write_bytes(os.urandom(1000 + 37 * i))
    serial = hash_model(model, workers=1)
    parallel = hash_model(model, workers=8)
    assert serial == parallel
    assert len(serial.files) == 40


def test_large_file_is_streamed_not_loaded(tmp_path: Path) -> None:
    big = tmp_path / "sparse.bin"
    size = 64 << 20
    with big.open("wb") as handle:
        handle.truncate(size)  # sparse: no disk used, still 64 MiB to read
    expected = hashlib.sha256()
    zeros = bytes(1 << 20)
    for _ in range(size >> 20):
        expected.update(zeros)
    tracemalloc.start()
    try:
        manifest = hash_model(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert manifest.files[0].digest == expected.hexdigest()
    assert manifest.files[0].size == size
    assert peak < 4 << 20, f"peak Python allocation {peak} bytes while hashing 64 MiB"


def test_diff_names_added_removed_and_changed(tmp_path: Path) -> None:
    model = build_model(tmp_path, "nested-folder")
    before = hash_model(model)
    (model / "README.md").unlink()
    (model / "weights" / "part-1.bin").write_bytes(b"tampered")
    (model / "weights" / "new.bin").write_bytes(b"new")
    after = hash_model(model)
    lines = [str(d) for d in before.diff(after)]
    old, new = before.get("weights/part-1.bin"), after.get("weights/part-1.bin")
    assert old is not None
    assert new is not None
    assert lines == [
        "file removed: README.md",
        "file added: weights/new.bin",
        f"file changed: weights/part-1.bin (sha256 expected {old.digest} got {new.digest})",
    ]
    assert before.diff(before) == []


def test_manifest_is_immutable(tmp_path: Path) -> None:
    manifest: ModelManifest = hash_model(build_model(tmp_path, "single-file"))
    with pytest.raises(AttributeError):
        manifest.name = "other"  # type: ignore[misc]
