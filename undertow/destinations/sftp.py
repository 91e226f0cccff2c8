"""SFTP destination: a run's rows as one file per operation on an SFTP server, with a manifest
written last (``_files.py`` has the layout and the crash rules), through asyncssh.

- Every file is written under a temporary name in its folder, then renamed over its final
  name with the ``posix-rename@openssh.com`` extension (an atomic replace on the server,
  https://github.com/openssh/openssh-portable/blob/master/PROTOCOL, section 4.3); a server
  without it gets a plain SFTP rename, which refuses an existing target
  (https://datatracker.ietf.org/doc/html/draft-ietf-secsh-filexfer-02#section-6.5), so
  the old file is removed first. A reader never sees a partial file under a final name;
  a temporary file (``.<name>.part-<random>``) a kill -9 left is removed by the next publish.
- The server's host key is checked: against ``host_key`` (its public key line, e.g. from
  ``ssh-keyscan``) when given, else the user's ``~/.ssh/known_hosts``.
- Auth: ``password``, or ``private_key`` (a key file path; ``passphrase`` if encrypted).
"""

from __future__ import annotations

import contextlib
import posixpath
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr

from undertow.destinations._files import FilesConfig, FilesDestination, Store
from undertow.destinations.base import Destination
from undertow.errors import FatalDeliveryError, RetryableError, UndertowError
from undertow.redact import redact, register_secret
from undertow.sources.base import missing_driver

DOC = "https://datatracker.ietf.org/doc/html/draft-ietf-secsh-filexfer-02"


class SftpConfig(FilesConfig):
    type: Literal["sftp"] = "sftp"
    host: str = Field(min_length=1)
    port: int = Field(default=22, ge=1, le=65535)
    username: str = Field(min_length=1)
    password: SecretStr | None = None
    private_key: str | None = None
    """Path to a private key file (relative to the project folder)."""
    passphrase: SecretStr | None = None
    host_key: str | None = None
    """The server's public host key (``ssh-ed25519 AAAA...``); left out: ~/.ssh/known_hosts."""
    timeout: float = Field(default=30.0, gt=0)


def _asyncssh() -> Any:
    try:
        import asyncssh
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise missing_driver("asyncssh", "sftp") from exc
    return asyncssh


class SftpStore(Store):
    def __init__(self, config: SftpConfig, where: str, owner: Destination[Any]) -> None:
        self.config = config
        self._where = where
        self._owner = owner  # its base_dir is set by the project after construction
        self._conn: Any = None
        self._sftp: Any = None
        self._posix_rename = True
        for secret in (config.password, config.passphrase):
            if secret is not None:
                register_secret(secret.get_secret_value())

    def address(self) -> str:
        return f"sftp://{self.config.username}@{self.config.host}:{self.config.port}"

    async def open(self) -> None:
        if self._sftp is not None:
            return
        asyncssh = _asyncssh()
        cfg = self.config
        options: dict[str, Any] = {
            "username": cfg.username,
            "port": cfg.port,
            "connect_timeout": cfg.timeout,
        }
        if cfg.host_key:
            try:
                options["known_hosts"] = ([asyncssh.import_public_key(cfg.host_key)], [], [])
            except (asyncssh.KeyImportError, ValueError) as exc:
                raise FatalDeliveryError(
                    f"{self._where}: `host_key` is not a public key ({exc})",
                    hint="paste the server's key line, e.g. from `ssh-keyscan -p PORT HOST`",
                ) from None
        if cfg.password is not None:
            options["password"] = cfg.password.get_secret_value()
            options["client_keys"] = None
        if cfg.private_key:
            path = Path(cfg.private_key)
            path = path if path.is_absolute() else Path(self._owner.base_dir) / path
            options["client_keys"] = [str(path)]
            if cfg.passphrase is not None:
                options["passphrase"] = cfg.passphrase.get_secret_value()
        try:
            self._conn = await asyncssh.connect(cfg.host, **options)
            self._sftp = await self._conn.start_sftp_client()
        except Exception as exc:
            await self.close()
            raise self._fail(exc, "connecting") from None

    async def close(self) -> None:
        sftp, self._sftp = self._sftp, None
        conn, self._conn = self._conn, None
        if sftp is not None:
            sftp.exit()
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):  # already broken
                await conn.wait_closed()

    def _fail(self, exc: BaseException, doing: str) -> UndertowError:
        asyncssh = _asyncssh()
        text = redact(str(exc) or type(exc).__name__)
        if isinstance(exc, asyncssh.PermissionDenied):
            return FatalDeliveryError(
                f"{self._where}: the server refused the login ({text})",
                hint="check `username` and `password` (or `private_key`)",
            )
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            return FatalDeliveryError(
                f"{self._where}: the server's host key is not the one expected ({text})",
                hint="set `host_key` to the server's public key (ssh-keyscan), or add it to "
                "~/.ssh/known_hosts; a changed key may mean another machine answers",
            )
        if isinstance(exc, asyncssh.SFTPError) and exc.code in (
            asyncssh.FX_PERMISSION_DENIED,
            asyncssh.FX_NO_SUCH_FILE,
            asyncssh.FX_NO_SUCH_PATH,
        ):
            return FatalDeliveryError(
                f"{self._where}: {doing} failed: {text}",
                hint="check that `prefix` is a folder this user may write in",
            )
        return RetryableError(f"{self._where}: {doing} failed: {text}")

    async def _do(self, doing: str, coro: Any) -> Any:
        try:
            return await coro
        except UndertowError:
            raise
        except Exception as exc:
            if self._sftp is not None and not isinstance(exc, _asyncssh().SFTPError):
                await self.close()  # the connection broke: the next call opens a new one
            raise self._fail(exc, doing) from None

    async def check(self) -> None:
        await self.open()
        await self._do("listing the home folder", self._sftp.listdir("."))

    def _path(self, key: str) -> str:
        return key or "."

    async def put(self, key: str, data: bytes) -> None:
        await self.open()
        folder, name = posixpath.split(self._path(key))
        if folder:
            await self._do(f"creating {folder}", self._sftp.makedirs(folder, exist_ok=True))
        temp = posixpath.join(folder, f".{name}.part-{uuid.uuid4().hex[:8]}")

        async def write() -> None:
            async with self._sftp.open(temp, "wb") as handle:
                await handle.write(data)
            if self._posix_rename:
                try:
                    await self._sftp.posix_rename(temp, key)
                    return
                except _asyncssh().SFTPOpUnsupported:
                    self._posix_rename = False
            if await self._sftp.exists(key):
                await self._sftp.remove(key)
            await self._sftp.rename(temp, key)

        await self._do(f"writing {key}", write())

    async def put_large(self, key: str, data: bytes, part_size: int) -> int:
        folder, name = posixpath.split(key)
        if folder and await self._do(f"reading {folder}", self._sftp.isdir(folder)):
            for old in await self._do(f"listing {folder}", self._sftp.listdir(folder)):
                if str(old).startswith(f".{name}.part-"):  # a killed process's temporary file
                    await self._do(f"removing {old}", self._sftp.remove(f"{folder}/{old}"))
        await self.put(key, data)  # one stream: SFTP has no parts
        return 1

    async def get(self, key: str) -> bytes:
        await self.open()

        async def read() -> bytes:
            async with self._sftp.open(key, "rb") as handle:
                return bytes(await handle.read())

        return bytes(await self._do(f"reading {key}", read()))

    async def exists(self, key: str) -> bool:
        await self.open()
        return bool(await self._do(f"reading {key}", self._sftp.exists(key)))

    async def list(self, prefix: str) -> list[str]:
        await self.open()
        folder = prefix.rstrip("/")
        found: list[str] = []

        async def walk(path: str) -> None:
            if not await self._sftp.isdir(path):
                return
            for entry in await self._sftp.readdir(path):
                name = str(entry.filename)
                if name in (".", ".."):
                    continue
                child = f"{path}/{name}"
                if entry.attrs.type == _asyncssh().FILEXFER_TYPE_DIRECTORY:
                    await walk(child)
                elif not name.startswith("."):
                    found.append(child)

        await self._do(f"listing {folder}", walk(folder))
        return found

    async def delete(self, keys: Sequence[str]) -> None:
        await self.open()
        folders: set[str] = set()
        for key in keys:
            await self._do(f"removing {key}", self._sftp.remove(key))
            folder = posixpath.dirname(key)
            while folder and "/_undertow/" in f"/{folder}/":
                folders.add(folder)
                folder = posixpath.dirname(folder)
        for folder in sorted(folders, key=len, reverse=True):  # empty staging folders
            with contextlib.suppress(Exception):  # not empty (another run's batches) or gone
                await self._sftp.rmdir(folder)


class SftpDestination(FilesDestination[SftpConfig]):
    """A run's rows as files on an SFTP server."""

    name: ClassVar[str] = "sftp"
    docs_url: ClassVar[str | None] = DOC

    def make_store(self) -> Store:
        cfg = self.config
        where = f"sftp destination {self.instance_name!r} ({cfg.username}@{cfg.host}:{cfg.port})"
        return SftpStore(cfg, where, self)
