"""Apache Avro's Java command-line tools (`org.apache.avro:avro-tools` from Maven Central),
fetched once with Maven into the user cache; tests use `tojson` to show that archive files are
readable by an Avro implementation other than the one that wrote them.

    python tools/avro_tools.py fetch          # prints the jar's path
    python tools/avro_tools.py tojson FILE    # java -jar avro-tools.jar tojson FILE
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

AVRO_TOOLS_VERSION = "1.12.0"
ARTIFACT = f"org.apache.avro:avro-tools:{AVRO_TOOLS_VERSION}"


class AvroToolsError(RuntimeError):
    """The jar could not be fetched or run; the message says why."""


def jar_path() -> Path:
    return (
        Path.home()
        / ".cache"
        / "icareus-bridge"
        / f"avro-tools-{AVRO_TOOLS_VERSION}"
        / f"avro-tools-{AVRO_TOOLS_VERSION}.jar"
    )


def fetch() -> Path:
    """The avro-tools jar, copied from Maven Central (through `mvn dependency:copy`) the first
    time; a staging folder renamed into place keeps an interrupted download from counting."""
    jar = jar_path()
    if jar.is_file():
        return jar
    mvn = shutil.which("mvn")
    if mvn is None:
        raise AvroToolsError("Maven (mvn) is not on PATH; it is needed once to fetch avro-tools")
    jar.parent.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".avro-tools-", dir=jar.parent.parent))
    try:
        cmd = [
            mvn,
            "-q",
            "-B",
            "dependency:copy",
            f"-Dartifact={ARTIFACT}",
            f"-DoutputDirectory={staging}",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr)[-3000:]
            raise AvroToolsError(
                f"mvn could not fetch {ARTIFACT} (exit {done.returncode}):\n{tail}"
            )
        if not (staging / jar.name).is_file():
            raise AvroToolsError(f"mvn finished but {staging} holds no {jar.name}")
        if jar.parent.exists():
            shutil.rmtree(jar.parent)
        staging.rename(jar.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return jar


def tojson(path: Path) -> list[str]:
    """`avro-tools tojson FILE`: one JSON line per record, as Java's Avro reads the file."""
    java = shutil.which("java")
    if java is None:
        raise AvroToolsError("java is not on PATH")
    done = subprocess.run(
        [java, "-jar", str(fetch()), "tojson", str(path)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    if done.returncode != 0:
        raise AvroToolsError(f"avro-tools tojson {path} exited {done.returncode}:\n{done.stderr}")
    return [line for line in done.stdout.splitlines() if line.strip()]


def main(argv: list[str]) -> int:
    if argv[:1] == ["fetch"]:
        print(fetch())
        return 0
    if argv[:1] == ["tojson"] and len(argv) == 2:
        for line in tojson(Path(argv[1])):
            print(line)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
