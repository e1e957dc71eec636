"""Local wire-protocol servers the suite starts on loopback: moto, Azurite, Cosmos DB server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NODE_BIN = ROOT / "node_modules" / ".bin"


def free_port() -> int:
    """A TCP port nobody listens on at the moment, on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(
    port: int, proc: subprocess.Popen[bytes], name: str, timeout: float = 120
) -> None:
    # Generous: Azurite took over 30 s to listen while a soak held two cores at load 20.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with status {proc.returncode} before listening")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout}s")


@contextmanager
def _process(
    cmd: list[str],
    ports: list[int],
    name: str,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        for port in ports:
            _wait_for_port(port, proc, name)
        yield proc
    except RuntimeError:
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace")[-4000:])
        raise
    finally:
        # The servers keep no state worth a graceful stop; do not let teardown cost seconds.
        proc.terminate()
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass(frozen=True)
class MotoServer:
    """A moto server: its endpoint URL and the credentials/region clients should use."""

    endpoint: str
    region: str = "us-east-1"
    access_key: str = "testing"
    secret_key: str = "testing"

    def client(self, service: str) -> Any:
        """A real boto3 client for `service` talking to this server over HTTP."""
        import boto3

        make: Any = boto3.client  # the service name is not a literal, so no overload fits
        return make(
            service,
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def reset(self) -> None:
        """Drop every resource the server holds."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()


@contextmanager
def moto_server() -> Iterator[MotoServer]:
    """Start `moto.server` in a subprocess on a free loopback port.

    Through `moto_main.py`: the same server with a rollback for DynamoDB transactions
    that journals the touched items instead of copying whole tables (same semantics).
    """
    port = free_port()
    env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
    main = str(Path(__file__).with_name("moto_main.py"))
    cmd = [sys.executable, main, "-H", "127.0.0.1", "-p", str(port)]
    with _process(cmd, [port], "moto server", env=env):
        server = MotoServer(f"http://127.0.0.1:{port}")
        _wait_http(f"{server.endpoint}/moto-api/")
        yield server


def _wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@dataclass(frozen=True)
class Azurite:
    """A running Azurite: ports and the connection string for Blob, Queue and Table."""

    blob_port: int
    queue_port: int
    table_port: int

    @property
    def connection_string(self) -> str:
        """The development-storage connection string pointing at this Azurite."""
        host = "http://127.0.0.1"
        return (
            "DefaultEndpointsProtocol=http;"
            f"AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={host}:{self.blob_port}/{AZURITE_ACCOUNT};"
            f"QueueEndpoint={host}:{self.queue_port}/{AZURITE_ACCOUNT};"
            f"TableEndpoint={host}:{self.table_port}/{AZURITE_ACCOUNT};"
        )


def node_tool(name: str) -> Path | None:
    """The npm-installed executable `name`, or None when `make test` has not installed it."""
    path = NODE_BIN / name
    return path if path.exists() and shutil.which("node") else None


@contextmanager
def azurite() -> Iterator[Azurite]:
    """Start Azurite (Blob, Queue, Table) in memory on free loopback ports."""
    tool = node_tool("azurite")
    if tool is None:
        raise FileNotFoundError("azurite is not installed: run `make test` (it runs npm ci)")
    ports = [free_port(), free_port(), free_port()]
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [
            str(tool),
            "--silent",
            "--disableTelemetry",
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--loose",
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(ports[0]),
            "--queueHost",
            "127.0.0.1",
            "--queuePort",
            str(ports[1]),
            "--tableHost",
            "127.0.0.1",
            "--tablePort",
            str(ports[2]),
        ]
        with _process(cmd, ports, "azurite", cwd=workdir):
            yield Azurite(*ports)


@dataclass(frozen=True)
class CosmosServer:
    """A running Cosmos DB NoSQL-protocol server over plain HTTP."""

    endpoint: str
    key: str = (
        "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
    )


@contextmanager
def cosmos_server() -> Iterator[CosmosServer]:
    """Start @vercel/cosmosdb-server without TLS on a free loopback port."""
    tool = node_tool("cosmosdb-server")
    if tool is None:
        raise FileNotFoundError("cosmosdb-server is not installed: run `make test`")
    port = free_port()
    cmd = [str(tool), "--no-ssl", "--host", "127.0.0.1", "--port", str(port)]
    with _process(cmd, [port], "cosmosdb-server"):
        yield CosmosServer(f"http://127.0.0.1:{port}")
