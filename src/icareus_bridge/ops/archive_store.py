"""The archive directory of `icareus-bridge archive`: Avro object container files of archived
results (one or more part files per UTC day, schema embedded) and `manifest.json`, which lists
every file with its record count, offset ranges and sha256, and the offsets archived so far.

Every file, the manifest included, is written to a temporary name, fsynced and renamed, and the
manifest is written last: an interrupted run leaves either the old manifest (its new part files
are leftovers that the next run removes and writes again) or the new one, never a mix."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import IO, Any, Literal

import fastavro
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from icareus_bridge.codec import default_schemas_dir

MANIFEST = "manifest.json"
FORMAT = 1
SCHEMA_FILE = Path("archive") / "provisioning_archive_record.avsc"
Codec = Literal["deflate", "zstandard"]

_PART = re.compile(r"^provisioning-(\d{4}-\d{2}-\d{2})\.part-(\d{4,})\.avro$")
_TMP_SUFFIX = ".tmp"


class ArchiveDamaged(Exception):
    """A file of the archive is missing, unreadable, or does not match the manifest's sha256;
    the message names the file."""


class ArchiveMismatch(Exception):
    """The directory holds an archive that does not fit this run (another topic, offsets past
    the topic's end); the message says which."""


# --- the manifest ------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OffsetRange(_Model):
    """First and last offset of one partition's records in one file, and how many there are
    (offsets of aborted transactions and markers are skipped, so records <= last - first + 1)."""

    first: int
    last: int
    records: int


class ArchiveFile(_Model):
    name: str
    day: str  # UTC day of the results' Kafka timestamps, YYYY-MM-DD
    records: int
    codec: str
    sha256: str
    size: int
    created_at: str  # ISO-8601 UTC
    results: dict[int, OffsetRange]  # results partition -> range
    requests: dict[int, OffsetRange] = Field(default_factory=dict)  # joined requests


class ArchiveRun(_Model):
    at: str
    older_than_days: int
    cutoff: str
    records: int
    files: list[str]


class Deletion(_Model):
    """One DeleteRecords call: every record of `topic`/`partition` before `before_offset` left
    the live log."""

    at: str
    topic: str
    partition: int
    before_offset: int


class Manifest(_Model):
    format: int = FORMAT
    results_topic: str
    requests_topic: str
    # results partition -> the first offset not archived yet (every committed result before it
    # is in a file of this archive, or was gone from the log before the archive reached it).
    next_offsets: dict[int, int] = Field(default_factory=dict)
    files: list[ArchiveFile] = Field(default_factory=list)
    runs: list[ArchiveRun] = Field(default_factory=list)
    deletions: list[Deletion] = Field(default_factory=list)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_of_millis(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def day_of_millis(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def load_manifest(directory: Path) -> Manifest | None:
    """The manifest of `directory`, or None when there is none yet; ArchiveDamaged if it cannot
    be read or is not a manifest."""
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ArchiveDamaged(f"{path}: cannot read the manifest: {exc.strerror or exc}") from exc
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        raise ArchiveDamaged(f"{path}: not an archive manifest ({where}: {err['msg']})") from exc


def save_manifest(directory: Path, manifest: Manifest) -> None:
    text = manifest.model_dump_json(indent=2) + "\n"
    atomic_write(directory / MANIFEST, lambda fo: fo.write(text.encode("utf-8")))


# --- atomic files ------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write through a temporary file in the same directory, fsync it, rename it over `path`,
    fsync the directory: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}")
    try:
        with tmp.open("wb") as fo:
            write(fo)
            fo.flush()
            os.fsync(fo.fileno())
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


LOCK = ".archive.lock"


@contextlib.contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """Hold the archive's lock: one archive run at a time writes a directory."""
    with (directory / LOCK).open("a") as fo:
        try:
            fcntl.flock(fo.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArchiveMismatch(
                f"--out {directory}: another archive run is writing this directory"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fo.fileno(), fcntl.LOCK_UN)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fo:
        for chunk in iter(lambda: fo.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def remove_leftovers(directory: Path, manifest: Manifest | None) -> list[str]:
    """Delete what an interrupted run left: temporary files, and part files the manifest does not
    list (their records were not counted as archived, so this run writes them again)."""
    listed = {f.name for f in manifest.files} if manifest is not None else set()
    removed: list[str] = []
    for path in sorted(directory.iterdir()):
        leftover_tmp = path.name.startswith(".") and path.name.endswith(_TMP_SUFFIX)
        if leftover_tmp or (_PART.match(path.name) and path.name not in listed):
            path.unlink()
            removed.append(path.name)
    return removed


# --- the zstandard codec -------------------------------------------------------------------------


def _zigzag_long(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_zigzag_long(fo: IO[bytes]) -> int:
    shift = n = 0
    while True:
        byte = fo.read(1)
        if not byte:
            raise EOFError("end of file inside a block length")
        n |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return (n >> 1) ^ -(n & 1)
        shift += 7


def _install_zstandard() -> None:
    """fastavro's own zstandard codec needs `backports.zstd` (or Python 3.14); the bridge ships
    the `zstandard` package instead, so the codec is given to fastavro from that package. An Avro
    zstandard block is one zstd frame (the specification's format), as Java's Avro writes it."""
    import fastavro._write as fastavro_write
    import fastavro.read as fastavro_read

    try:
        fastavro.writer(BytesIO(), fastavro.parse_schema("int"), [1], codec="zstandard")
        return
    except ValueError:
        pass
    import zstandard

    def write_block(fo: IO[bytes], block: bytes, level: int | None) -> None:
        data = zstandard.ZstdCompressor(level=level if level is not None else 3).compress(block)
        fo.write(_zigzag_long(len(data)))
        fo.write(data)

    def read_block(fo: Any) -> BytesIO:
        if hasattr(fo, "read_fixed"):  # fastavro's pure-Python reader hands over a decoder
            data = fo.read_fixed(fo.read_long())
        else:  # the compiled reader, the file itself
            data = fo.read(_read_zigzag_long(fo))
        return BytesIO(zstandard.ZstdDecompressor().decompressobj().decompress(data))

    fastavro_write.BLOCK_WRITERS["zstandard"] = write_block  # type: ignore[attr-defined]
    fastavro_read.BLOCK_READERS["zstandard"] = read_block


_install_zstandard()


# --- the record schema and the day files ---------------------------------------------------------


def schema_path() -> Path:
    return default_schemas_dir() / SCHEMA_FILE


def archive_schema() -> dict[str, Any]:
    """`schemas/archive/provisioning_archive_record.avsc`, as JSON."""
    schema: dict[str, Any] = json.loads(schema_path().read_text(encoding="utf-8"))
    return schema


def _millis(node: Any) -> Any:
    # fastavro hands timestamp-millis back as datetimes, whatever the reader schema says.
    if isinstance(node, datetime):
        return int(node.timestamp() * 1000)
    if isinstance(node, dict):
        return {k: _millis(v) for k, v in node.items()}
    return node


def next_part_name(directory: Path, manifest: Manifest, day: str) -> str:
    """The next free part file name of `day`: a later run adding to a day writes a new part."""
    used = [int(m.group(2)) for f in manifest.files if (m := _PART.match(f.name)) and m[1] == day]
    used += [
        int(m.group(2)) for p in directory.iterdir() if (m := _PART.match(p.name)) and m[1] == day
    ]
    return f"provisioning-{day}.part-{max(used, default=0) + 1:04d}.avro"


def _ranges(pairs: Iterable[tuple[int, int]]) -> dict[int, OffsetRange]:
    out: dict[int, OffsetRange] = {}
    for partition, offset in pairs:
        r = out.get(partition)
        if r is None:
            out[partition] = OffsetRange(first=offset, last=offset, records=1)
        else:
            out[partition] = OffsetRange(
                first=min(r.first, offset), last=max(r.last, offset), records=r.records + 1
            )
    return dict(sorted(out.items()))


def write_day_file(
    directory: Path, manifest: Manifest, day: str, records: list[dict[str, Any]], codec: Codec
) -> ArchiveFile:
    """One new part file of `day` holding `records` (archive schema shape), written atomically;
    the returned entry is for the manifest, which the caller saves after all files."""
    name = next_part_name(directory, manifest, day)
    schema = fastavro.parse_schema(archive_schema())
    atomic_write(
        directory / name,
        lambda fo: fastavro.writer(
            fo, schema, records, codec=codec, metadata={"icareus.archive.day": day}
        ),
    )
    path = directory / name
    requests = [
        (r["request_partition"], r["request_offset"])
        for r in records
        if r["request_partition"] is not None
    ]
    return ArchiveFile(
        name=name,
        day=day,
        records=len(records),
        codec=codec,
        sha256=sha256_of(path),
        size=path.stat().st_size,
        created_at=now_iso(),
        results=_ranges((r["result_partition"], r["result_offset"]) for r in records),
        requests=_ranges(requests),
    )


def verify(directory: Path, manifest: Manifest) -> list[str]:
    """One line per file that is missing or whose sha256 differs from the manifest's."""
    problems: list[str] = []
    for f in manifest.files:
        path = directory / f.name
        if not path.is_file():
            problems.append(f"{f.name}: missing (listed in {MANIFEST})")
            continue
        try:
            digest = sha256_of(path)
        except OSError as exc:
            problems.append(f"{f.name}: unreadable: {exc.strerror or exc}")
            continue
        if digest != f.sha256:
            problems.append(
                f"{f.name}: damaged (sha256 {digest}, {MANIFEST} says {f.sha256})"
            )
    return problems


def read_file(directory: Path, entry: ArchiveFile) -> Iterator[dict[str, Any]]:
    """The records of one file, timestamps as epoch milliseconds (as the bridge holds them)."""
    path = directory / entry.name
    try:
        with path.open("rb") as fo:
            for record in fastavro.reader(fo):
                yield _millis(record)
    except (OSError, ValueError, EOFError) as exc:
        raise ArchiveDamaged(f"{entry.name}: cannot be read as Avro: {exc}") from exc
