"""A throwaway PostgreSQL cluster on 127.0.0.1, for the store's tests and benchmark.

``initdb`` in a temporary folder, ``pg_ctl start`` on a free port, trust authentication for one
superuser, no Unix socket outside that folder. PostgreSQL refuses to run as root, so as root the
cluster belongs to the ``postgres`` user (Debian's package makes it) or ``nobody``.
``durable=False`` turns fsync off: tests need a database, not a crash-proof one.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "orchestrion"


def find_binaries() -> Path | None:
    """The folder with initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(path.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def _owner() -> pwd.struct_passwd | None:
    """Whom the cluster runs as: None for ourselves, unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and there is neither a 'postgres' nor a 'nobody' user to run PostgreSQL")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    bin: Path
    root: Path
    port: int
    owner: pwd.struct_passwd | None

    @classmethod
    def start(cls, binaries: Path, *, durable: bool = False) -> PostgresServer:
        root = Path(tempfile.mkdtemp(prefix="orchestrion-pg-"))
        owner = _owner()
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        server = cls(binaries, root, _free_port(), owner)
        try:
            server._run("initdb", "-D", str(root / "data"), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                        "--locale=C", "--no-sync")
            settings = f"-p {server.port} -c listen_addresses=127.0.0.1 -k {root} -c max_connections=200"
            if not durable:
                settings += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            server._run("pg_ctl", "-D", str(root / "data"), "-o", settings, "-l", str(root / "log"), "-w",
                        "-t", "60", "start")
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return server

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql+asyncpg://{SUPERUSER}{secret}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        return self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", database,
                         "-v", "ON_ERROR_STOP=1", "-A", "-t", "-c", statement)

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        """Stop the server if it runs, and delete its files."""
        if (self.root / "data" / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str) -> str:
        binary = self.bin / program
        command = [str(binary if binary.exists() else program), *args]
        as_owner = {"user": self.owner.pw_uid, "group": self.owner.pw_gid} if self.owner else {}
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root, timeout=120,
                              check=False, **as_owner)  # type: ignore[call-overload]
        if done.returncode != 0:
            log = (self.root / "log").read_text(errors="replace")[-2000:] if (self.root / "log").exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}\n{log}")
        return str(done.stdout)
