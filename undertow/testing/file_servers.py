"""Local servers for the file destinations' tests and demos, on 127.0.0.1 and free ports.

- :func:`serve_s3`: moto's S3 server mode (``moto[server]``), which answers the S3 REST API
  as AWS documents it (SigV4, multipart uploads with the 5 MiB part minimum,
  ``ListObjectsV2`` pages, error codes such as ``NoSuchBucket``), in a thread.
- :func:`serve_sftp`: a real SSH server with asyncssh's SFTP subsystem, rooted in a folder
  (password auth), on its own event loop in a thread; it answers the ``posix-rename``
  extension as OpenSSH does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class S3Server:
    url: str
    access_key_id: str = "testing-key"
    secret_access_key: str = "testing-secret-0000"
    region: str = "us-east-1"

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )


@contextmanager
def serve_s3() -> Iterator[S3Server]:
    """A fresh moto S3 server; its buckets are empty."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


@dataclass(frozen=True)
class SftpServer:
    host: str
    port: int
    username: str
    password: str
    host_key: str
    """The server's public host key line (what ``ssh-keyscan`` prints after the host)."""
    root: Path


@contextmanager
def serve_sftp(
    root: Path, *, username: str = "undertow", password: str = "sftp-secret-0000"
) -> Iterator[SftpServer]:
    """An SFTP server on 127.0.0.1 whose ``/`` (and home) is ``root``."""
    import asyncssh

    root.mkdir(parents=True, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519")

    class Server(asyncssh.SSHServer):  # type: ignore[misc]
        def begin_auth(self, user: str) -> bool:
            return True

        def password_auth_supported(self) -> bool:
            return True

        def validate_password(self, user: str, given: str) -> bool:
            return user == username and given == password

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, Any] = {}

    def sftp(chan: Any) -> Any:
        return asyncssh.SFTPServer(chan, chroot=str(root).encode())

    async def start() -> None:
        state["server"] = await asyncssh.listen(
            "127.0.0.1",
            0,
            server_host_keys=[key],
            server_factory=Server,
            sftp_factory=sftp,
            allow_scp=False,
        )
        ready.set()

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=main, name="sftp-server", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the test SFTP server did not start within 30 s")
    server = state["server"]
    port = server.sockets[0].getsockname()[1]
    public = key.export_public_key().decode().strip()
    try:
        yield SftpServer("127.0.0.1", port, username, password, public, root)
    finally:

        async def stop() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
