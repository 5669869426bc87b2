"""Truncated or corrupted Parquet parts and manifests: found by `audit verify` and by every reader.

Each case damages one file of a copy of the reference run (or of a dataset on the moto S3 server)
and checks that the readers refuse it with a `DataError` (never silently different rows: every
page carries a CRC-32) and that `tpgrpo audit verify` exits 1 naming the damaged dataset.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ops.conftest import run_cli
from storage.samples import sample

from tpgrpo.errors import DataError
from tpgrpo.storage import RunLayout, iter_batches, read_table, verify_dataset, write_dataset
from tpgrpo.storage.blobs import read_blobs

pytestmark = pytest.mark.integration


def _part(directory: Path) -> Path:
    return sorted(directory.glob("part-*.parquet"))[0]


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x5A
    path.write_bytes(bytes(data))


def _footer_start(path: Path) -> int:
    """Where a Parquet file's footer (thrift metadata, its length, `PAR1`) begins."""
    data = path.read_bytes()
    return len(data) - 8 - int.from_bytes(data[-8:-4], "little")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_manifest(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated part": lambda d: _truncate(_part(d)),
    "bytes flipped in a part": lambda d: _flip(_part(d), _part(d).stat().st_size // 2),
    "footer length flipped": lambda d: _flip(_part(d), _part(d).stat().st_size - 6),
    "missing part": lambda d: _part(d).unlink(),
    "stray part": lambda d: shutil.copy(_part(d), d / "part-00009-00000.parquet"),
    "truncated manifest": lambda d: _truncate(d / "_MANIFEST.json"),
    "garbage manifest": lambda d: (d / "_MANIFEST.json").write_bytes(b"\x00\xff not json"),
    "manifest rows edited": lambda d: _edit_manifest(
        d / "_MANIFEST.json", lambda m: m.update(rows=m["rows"] + 1)
    ),
    "manifest checksum edited": lambda d: _edit_manifest(
        d / "_MANIFEST.json", lambda m: m["parts"][0].update(sha256="0" * 64)
    ),
    "manifest inputs edited": lambda d: _edit_manifest(
        d / "_MANIFEST.json", lambda m: m["inputs"].update(checkpoint="f" * 64)
    ),
}


@pytest.fixture
def run_copy(reference_run: RunLayout, tmp_path: Path) -> RunLayout:
    root = tmp_path / "runs"
    shutil.copytree(reference_run.run_dir, root / reference_run.run_id)
    return RunLayout(str(root), reference_run.run_id)


def _verify(layout: RunLayout) -> Any:
    return run_cli("audit", "verify", "--run", layout.run_id, "--root", layout.root)


def test_the_copy_verifies(run_copy: RunLayout) -> None:
    result = _verify(run_copy)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_dataset_is_refused(run_copy: RunLayout, damage: str) -> None:
    uri = run_copy.rollouts(0)
    DAMAGE[damage](Path(uri))
    with pytest.raises(DataError, match="rollouts"):
        read_table(uri, "rollouts")
    with pytest.raises(DataError, match="rollouts"):
        list(iter_batches(uri, "rollouts", batch_size=2))
    result = _verify(run_copy)
    assert result.exit_code == 1, result.output
    faults = [line for line in result.stdout.splitlines() if line.startswith("FAULT")]
    assert any("iter=0000/rollouts" in line for line in faults), result.stdout
    assert result.stderr.startswith("error: run ref: ") and "Traceback" not in result.output


def test_random_byte_flips_never_read_silently(run_copy: RunLayout) -> None:
    """Flip one byte anywhere in the pages of a part, 40 times: every read fails with a DataError.

    (A flip inside the footer's metadata that still parses, e.g. in `created_by`, leaves the rows
    intact; every reader finds it by the part's SHA-256, see `test_metadata_flip_found_by_every_reader`.)
    """
    part = _part(Path(run_copy.branches(1)))
    original = part.read_bytes()
    rng = random.Random(7)
    for _ in range(40):
        part.write_bytes(original)
        _flip(part, rng.randrange(4, _footer_start(part)))
        with pytest.raises(DataError):
            read_table(run_copy.branches(1), "branches")
    part.write_bytes(original)
    assert read_table(run_copy.branches(1), "branches").num_rows > 0


def test_metadata_flip_found_by_every_reader(run_copy: RunLayout, tmp_path: Path) -> None:
    """A same-size change the page CRCs do not cover (here the footer's `created_by`; the footer
    also holds the column statistics filters skip row groups by): `audit verify`, every reader and
    `report` refuse the part by its SHA-256, as the checkpoint reader does."""
    uri = run_copy.annotations(0, "jpeg_incompressibility", "tp_constrained")
    part = _part(Path(uri))
    data = part.read_bytes()
    _flip(part, data.rindex(b"parquet-cpp-arrow"))  # the footer's created_by string
    assert part.stat().st_size == len(data)
    result = _verify(run_copy)
    assert result.exit_code == 1
    assert "SHA-256" in result.stdout and "iter=0000/annotations" in result.stdout
    with pytest.raises(DataError, match="SHA-256"):
        read_table(uri, "annotations")
    with pytest.raises(DataError, match="SHA-256"):
        list(iter_batches(uri, "annotations"))
    report = run_cli(
        "report", "--run", run_copy.run_id, "--root", run_copy.root, "--out", str(tmp_path / "r")
    )
    assert report.exit_code == 1, report.output
    assert "iter=0000/annotations" in report.stderr and "SHA-256" in report.stderr
    assert "Traceback" not in report.output


def test_a_rewritten_part_is_hashed_again(run_copy: RunLayout) -> None:
    """Reads memoise a part's verified hash per size and modification stamp, never beyond a rewrite."""
    import os

    uri = run_copy.branches(0)
    assert read_table(uri, "branches").num_rows > 0
    part = _part(Path(uri))
    stat = part.stat()
    _flip(part, part.read_bytes().rindex(b"parquet-cpp-arrow"))
    os.utime(part, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old modification time
    with pytest.raises(DataError, match="SHA-256"):
        read_table(uri, "branches")


@pytest.mark.parametrize("name", ["adapter.safetensors", "optimizer.json", "_CHECKPOINT.json"])
def test_damaged_checkpoint_is_refused(run_copy: RunLayout, name: str) -> None:
    path = Path(run_copy.checkpoint(1)) / name
    _flip(path, path.stat().st_size // 2)
    with pytest.raises(DataError, match=r"checkpoint|iter=0001"):
        read_blobs(run_copy.checkpoint(1))
    result = _verify(run_copy)
    assert result.exit_code == 1
    assert any(
        "checkpoints/iter=0001" in line for line in result.stdout.splitlines() if line.startswith("FAULT")
    )


def test_unfinished_dataset_is_a_fault(run_copy: RunLayout) -> None:
    (Path(run_copy.branches(0)) / "_MANIFEST.json").unlink()  # debris, as a crash leaves it
    with pytest.raises(DataError, match="not a finished dataset"):
        read_table(run_copy.branches(0), "branches")
    result = _verify(run_copy)
    assert result.exit_code == 1 and "iter=0000/branches" in result.stdout


@pytest.mark.s3
def test_corrupted_object_on_s3(s3_bucket: Any) -> None:
    import s3fs

    uri = f"{s3_bucket.root}/r/iter=0000/branches"
    options = s3_bucket.storage_options
    write_dataset(
        uri, "branches", sample("branches", 16), inputs={}, config_hash="c", storage_options=options
    )
    fs = s3fs.S3FileSystem(**options)
    part = sorted(p for p in fs.ls(uri.removeprefix("s3://")) if p.endswith(".parquet"))[0]
    data = bytearray(fs.cat_file(part))
    data[len(data) // 2] ^= 0x5A
    fs.pipe_file(part, bytes(data))
    with pytest.raises(DataError, match="corrupted"):
        read_table(uri, "branches", storage_options=options)
    with pytest.raises(DataError, match="SHA-256"):
        verify_dataset(uri, storage_options=options)
    fs.pipe_file(part, bytes(data[: len(data) // 2]))  # truncated: the size no longer matches
    with pytest.raises(DataError, match="bytes, manifest says"):
        read_table(uri, "branches", storage_options=options)
