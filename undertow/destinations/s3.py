"""S3 (and S3-compatible: MinIO, Cloudflare R2, Ceph...) destination: a run's rows as one file
per operation under a prefix, with a manifest written last (``_files.py`` has the layout and
the crash rules).

- Staged batches are single ``PutObject`` requests: S3 never shows a partial object
  (https://docs.aws.amazon.com/AmazonS3/latest/userguide/Welcome.html#ConsistencyModel:
  "strong read-after-write consistency", and a PUT is atomic).
- A run's file goes up as a multipart upload when it is larger than ``part_size_mb``
  (parts of 5 MiB to 5 GiB, at most 10,000 parts, the last may be smaller:
  https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html); the object exists only
  once ``CompleteMultipartUpload`` succeeds; a failed upload is aborted. Uploads a kill -9
  left incomplete are aborted by the next publish of the same file (and are what a bucket
  lifecycle rule ``AbortIncompleteMultipartUpload`` is for).
- boto3 retries throttling (``SlowDown``, 503) and 5xx in its ``standard`` mode
  (https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html); what
  still fails is retried by the run as a whole batch.

Credentials: ``access_key_id``/``secret_access_key`` in the config, or boto3's own chain
(environment, ``~/.aws``, instance role) when they are left out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr

from undertow.destinations._files import FilesConfig, FilesDestination, Store
from undertow.errors import FatalDeliveryError, RetryableError, UndertowError
from undertow.redact import redact, register_secret
from undertow.sources.base import missing_driver

DOC = "https://docs.aws.amazon.com/AmazonS3/latest/userguide/mpuoverview.html"
FATAL_CODES = {
    "AccessDenied": "check the policy: the key needs s3:PutObject, s3:GetObject, s3:ListBucket,"
    " s3:DeleteObject and s3:AbortMultipartUpload on the bucket and prefix",
    "InvalidAccessKeyId": "check `access_key_id` (or the AWS credentials in the environment)",
    "SignatureDoesNotMatch": "check `secret_access_key`",
    "NoSuchBucket": "create the bucket, or fix `bucket` (and `region`/`endpoint_url`)",
    "AllAccessDisabled": "the bucket is disabled for this account",
    "InvalidBucketName": "fix `bucket`",
}


class S3Config(FilesConfig):
    type: Literal["s3"] = "s3"
    bucket: str = Field(min_length=3)
    region: str | None = None
    endpoint_url: str | None = None
    """An S3-compatible endpoint (MinIO, R2, a local server); left out: AWS."""
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    path_style: bool = False
    """Address the bucket in the path (``endpoint/bucket/key``), as most compatible servers want."""


def _boto3() -> Any:
    try:
        import boto3
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise missing_driver("boto3", "s3") from exc
    return boto3


class S3Store(Store):
    def __init__(self, config: S3Config, where: str) -> None:
        self.config = config
        self._where = where
        self._client: Any = None
        for secret in (config.secret_access_key, config.session_token):
            if secret is not None:
                register_secret(secret.get_secret_value())

    def address(self) -> str:
        host = self.config.endpoint_url or "s3"
        return f"{host.rstrip('/')}/{self.config.bucket}"

    async def open(self) -> None:
        if self._client is None:
            self._client = await asyncio.to_thread(self._make)

    def _make(self) -> Any:
        boto3 = _boto3()
        from botocore.config import Config

        cfg = self.config
        secret = cfg.secret_access_key.get_secret_value() if cfg.secret_access_key else None
        token = cfg.session_token.get_secret_value() if cfg.session_token else None
        return boto3.session.Session().client(
            "s3",
            region_name=cfg.region,
            endpoint_url=cfg.endpoint_url,
            aws_access_key_id=cfg.access_key_id,
            aws_secret_access_key=secret,
            aws_session_token=token,
            config=Config(
                retries={"mode": "standard", "max_attempts": 5},
                s3={"addressing_style": "path" if cfg.path_style else "auto"},
                max_pool_connections=8,
            ),
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    async def _call(self, doing: str, method: str, **kwargs: Any) -> Any:
        await self.open()
        try:
            return await asyncio.to_thread(getattr(self._client, method), **kwargs)
        except Exception as exc:
            raise self._fail(exc, doing) from None

    def _fail(self, exc: Exception, doing: str) -> UndertowError:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            request_id = exc.response.get("ResponseMetadata", {}).get("RequestId")
            text = redact(f"S3 {code or status}: {error.get('Message', '')}".strip())
            if request_id:
                text += f" (request id {request_id})"
            hint = FATAL_CODES.get(code)
            if hint is not None or status in (400, 403, 404):
                return FatalDeliveryError(f"{self._where}: {doing} failed: {text}", hint=hint)
            return RetryableError(f"{self._where}: {doing} failed: {text}")
        if isinstance(exc, NoCredentialsError):
            return FatalDeliveryError(
                f"{self._where}: no AWS credentials",
                hint="set `access_key_id` and `secret_access_key`, or AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY in the environment",
            )
        if isinstance(exc, BotoCoreError):
            return RetryableError(f"{self._where}: {doing} failed: {redact(str(exc))}")
        raise exc

    async def check(self) -> None:
        await self._call("listing the bucket", "list_objects_v2", **self._list(""), MaxKeys=1)

    def _list(self, prefix: str) -> dict[str, Any]:
        return {"Bucket": self.config.bucket, "Prefix": prefix}

    async def put(self, key: str, data: bytes) -> None:
        await self._call(
            f"PutObject {key}", "put_object", Bucket=self.config.bucket, Key=key, Body=data
        )

    async def put_large(self, key: str, data: bytes, part_size: int) -> int:
        bucket = self.config.bucket
        await self._abort_stale(key)
        if len(data) <= part_size:
            await self.put(key, data)
            return 1
        created = await self._call(
            f"CreateMultipartUpload {key}", "create_multipart_upload", Bucket=bucket, Key=key
        )
        upload = created["UploadId"]
        parts = []
        try:
            for number, start in enumerate(range(0, len(data), part_size), start=1):
                answer = await self._call(
                    f"UploadPart {number} of {key}",
                    "upload_part",
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload,
                    PartNumber=number,
                    Body=data[start : start + part_size],
                )
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            await self._call(
                f"CompleteMultipartUpload {key}",
                "complete_multipart_upload",
                Bucket=bucket,
                Key=key,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            await asyncio.shield(self._abort(key, upload))
            raise
        return len(parts)

    async def _abort(self, key: str, upload: str) -> None:
        with contextlib.suppress(UndertowError):  # left for the next publish, or the
            await self._call(  # bucket's lifecycle rule
                f"AbortMultipartUpload {key}",
                "abort_multipart_upload",
                Bucket=self.config.bucket,
                Key=key,
                UploadId=upload,
            )

    async def _abort_stale(self, key: str) -> None:
        """Abort uploads of this key a killed process left incomplete."""
        answer = await self._call(
            "ListMultipartUploads", "list_multipart_uploads", Bucket=self.config.bucket, Prefix=key
        )
        for upload in answer.get("Uploads", []):
            if upload.get("Key") == key:
                await self._abort(key, upload["UploadId"])

    async def get(self, key: str) -> bytes:
        answer = await self._call(
            f"GetObject {key}", "get_object", Bucket=self.config.bucket, Key=key
        )
        return bytes(await asyncio.to_thread(answer["Body"].read))

    async def exists(self, key: str) -> bool:
        answer = await self._call("ListObjectsV2", "list_objects_v2", **self._list(key), MaxKeys=1)
        return any(item["Key"] == key for item in answer.get("Contents", []))

    async def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            answer = await self._call(
                "ListObjectsV2", "list_objects_v2", **self._list(prefix), **extra
            )
            keys.extend(item["Key"] for item in answer.get("Contents", []))
            if not answer.get("IsTruncated"):
                return keys
            token = answer["NextContinuationToken"]

    async def delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes up to 1,000 keys
            chunk = keys[start : start + 1000]
            answer = await self._call(
                "DeleteObjects",
                "delete_objects",
                Bucket=self.config.bucket,
                Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
            )
            errors = answer.get("Errors", [])
            if errors:
                first = errors[0]
                raise RetryableError(
                    f"{self._where}: DeleteObjects left {len(errors)} staged object(s), e.g. "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}",
                    hint="the next run deletes them again",
                )


class S3Destination(FilesDestination[S3Config]):
    """A run's rows as files in an S3 bucket (or an S3-compatible server)."""

    name: ClassVar[str] = "s3"
    docs_url: ClassVar[str | None] = DOC

    def make_store(self) -> Store:
        cfg = self.config
        where = f"s3 destination {self.instance_name!r} (bucket {cfg.bucket})"
        return S3Store(cfg, where)
