"""BigQuery as a source (``type: bigquery``), with google-cloud-bigquery.

``describe()`` is a *dry run*: BigQuery compiles the query and returns its schema and the
bytes it would scan, reads nothing and bills nothing. ``extract()`` runs the query and
streams the result as Arrow record batches through the BigQuery Storage Read API
(``to_arrow_iterable``; without the storage client, page by page over REST), each cut to
``batch_rows`` rows and cast to the schema the job reports (see docs/sources/bigquery.md).

``maximum_bytes_billed`` caps what one model may scan: a query over the cap fails before
it runs, with a ``ModelError`` saying so.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
from pydantic import SecretStr, model_validator

from undertow.errors import ModelError, SourceError
from undertow.redact import register_secret
from undertow.sources import _access, _cloud
from undertow.sources.base import (
    DEFAULT_BATCH_ROWS,
    AccessProblem,
    Source,
    SourceConfig,
    SqlSession,
    stream_reader,
)

DIALECT = "bigquery"
_AT = re.compile(r"at \[(\d+):(\d+)\]")
_SIMPLE: dict[str, pa.DataType] = {
    "INTEGER": pa.int64(),
    "INT64": pa.int64(),
    "FLOAT": pa.float64(),
    "FLOAT64": pa.float64(),
    "NUMERIC": pa.decimal128(38, 9),
    "BIGNUMERIC": pa.decimal256(76, 38),
    "BOOLEAN": pa.bool_(),
    "BOOL": pa.bool_(),
    "STRING": pa.string(),
    "BYTES": pa.binary(),
    "DATE": pa.date32(),
    "DATETIME": pa.timestamp("us"),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
    "TIME": pa.time64("us"),
    "GEOGRAPHY": pa.string(),
    "JSON": pa.string(),
}


class BigQueryConfig(SourceConfig):
    """``type: bigquery``: the project that runs (and pays for) the queries, a default
    dataset, a location, and credentials (a service-account key file or its JSON; without
    either, Application Default Credentials)."""

    type: Literal["bigquery"] = "bigquery"
    url: str | None = None
    """bigquery://project/dataset?location=EU (no credentials in it)."""
    project: str | None = None
    dataset: str | None = None
    """Unqualified table names in models resolve in this dataset."""
    location: str | None = None
    """Where the jobs run (``US``, ``EU``, ``europe-west1``); the datasets' location."""
    credentials_file: str | None = None
    """A service-account key file; relative paths start at the project folder."""
    credentials_json: SecretStr | None = None
    """The key file's JSON itself (a secret: use ``${ENV}``)."""
    maximum_bytes_billed: int | None = None
    """Fail a model that would scan more than this many bytes, before it runs."""
    use_storage_api: bool = True
    """Read results through the BigQuery Storage Read API (fast; needs bigquery.readsessions.*)."""
    job_timeout: float | None = None
    """Seconds to wait for a query to finish."""

    @model_validator(mode="after")
    def _complete(self) -> BigQueryConfig:
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme != "bigquery":
                raise ValueError("`url` must start with bigquery://")
            dataset = parts.path.strip("/") or None
            location = parse_qs(parts.query).get("location", [None])[-1]
            for key, value in (
                ("project", parts.hostname),
                ("dataset", dataset),
                ("location", location),
            ):
                if value is not None and getattr(self, key) is None:
                    object.__setattr__(self, key, value)
        if self.credentials_file is not None and self.credentials_json is not None:
            raise ValueError("set `credentials_file` or `credentials_json`, not both")
        if self.credentials_json is not None:
            try:
                info = json.loads(self.credentials_json.get_secret_value())
            except ValueError:
                raise ValueError(
                    "`credentials_json` is not JSON: give the service-account key file's "
                    "content (or use `credentials_file`)"
                ) from None
            if not isinstance(info, dict) or "private_key" not in info:
                raise ValueError("`credentials_json` is not a service-account key")
        return self


class BigQuerySource(Source):
    """Runs models on BigQuery; one client per call, closed when the call ends."""

    name: ClassVar[str] = "bigquery"
    Config: ClassVar[type[SourceConfig]] = BigQueryConfig
    sql_dialect: ClassVar[str | None] = DIALECT

    config: BigQueryConfig

    def __init__(self, config: SourceConfig, *, name: str, base_dir: str = ".") -> None:
        super().__init__(config, name=name, base_dir=base_dir)
        config = self.config
        if config.credentials_json is not None:
            info = json.loads(config.credentials_json.get_secret_value())
            register_secret(config.credentials_json.get_secret_value())
            register_secret(str(info.get("private_key", "")))
            register_secret(str(info.get("private_key_id", "")))

    def quote_identifier(self, name: str) -> str:
        return _cloud.quote(name, DIALECT)

    # -- the Source interface ---------------------------------------------------------------

    def check(self) -> None:
        client = self._client()
        try:
            client.query("SELECT 1", job_config=self._job_config(dry_run=False)).result()
        except Exception as exc:
            raise self._access_error(exc, "cannot run a query") from None
        finally:
            client.close()

    def describe(self, sql: str, *, model: str) -> pa.Schema:
        text = _cloud.model_text(sql)
        client = self._client()
        try:
            job = client.query(text, job_config=self._job_config(dry_run=True))
            fields = job.schema or []
        except Exception as exc:
            raise self._model_error(exc, text, model=model) from None
        finally:
            client.close()
        return schema_of(fields)

    def extract(
        self, sql: str, *, model: str, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> pa.RecordBatchReader:
        if batch_rows <= 0:
            raise ValueError(f"batch_rows must be positive, got {batch_rows}")
        text = _cloud.model_text(sql)
        client = self._client()
        storage = None
        try:
            job = client.query(text, job_config=self._job_config(dry_run=False))
            rows = job.result(page_size=batch_rows, timeout=self.config.job_timeout)
            schema = schema_of(rows.schema)
            storage = self._storage_client()
            pieces = rows.to_arrow_iterable(bqstorage_client=storage)
        except Exception as exc:
            client.close()
            raise self._model_error(exc, text, model=model) from None

        def close_storage() -> None:
            if storage is not None:
                storage._transport.close()

        batches = _cloud.closing(
            _cloud.conformed(
                self._guarded(pieces, text, model), schema, batch_rows, self._read_error(model)
            ),
            close_storage,
            client.close,
        )
        return stream_reader(schema, batches)

    # -- the warehouse diff engine ----------------------------------------------------------

    def session(self) -> SqlSession:
        """Statements in one BigQuery session (created by the first statement), so that
        ``BEGIN TRANSACTION`` ... ``COMMIT TRANSACTION`` span several calls."""
        return _BigQuerySession(self, self._client())

    def check_access(
        self, relations: Sequence[str], *, scratch_schema: str | None = None
    ) -> list[AccessProblem]:
        """Probed with dry runs and the engine's session (see :mod:`undertow.sources._access`)."""
        return _access.check_access(BigQueryAccess(self), relations, scratch_schema)

    # -- helpers ----------------------------------------------------------------------------

    def job_options(self, *, dry_run: bool) -> dict[str, Any]:
        """The ``QueryJobConfig`` of every query, as keyword arguments."""
        options: dict[str, Any] = {"dry_run": dry_run, "use_query_cache": not dry_run}
        if self.config.dataset and self.config.project:
            options["default_dataset"] = f"{self.config.project}.{self.config.dataset}"
        elif self.config.dataset:
            options["default_dataset"] = self.config.dataset
        if self.config.maximum_bytes_billed is not None:
            options["maximum_bytes_billed"] = self.config.maximum_bytes_billed
        options["labels"] = {"tool": "undertow"}
        return options

    def _job_config(self, *, dry_run: bool, **extra: Any) -> Any:
        bigquery = _bigquery()
        return bigquery.QueryJobConfig(**self.job_options(dry_run=dry_run), **extra)

    def _credentials(self) -> Any:
        c = self.config
        if c.credentials_file is None and c.credentials_json is None:
            return None  # Application Default Credentials
        service_account = _cloud.driver(
            "google.oauth2.service_account", "google-cloud-bigquery", "bigquery"
        )
        if c.credentials_json is not None:
            info = json.loads(c.credentials_json.get_secret_value())
            return service_account.Credentials.from_service_account_info(info)
        path = os.path.join(self.base_dir, os.path.expanduser(str(c.credentials_file)))
        if not os.path.isfile(path):
            raise SourceError(
                f"source {self.instance_name!r}: credentials_file {path} does not exist",
                hint="fix `credentials_file` (relative paths start at the project folder), "
                "or drop it to use Application Default Credentials",
            )
        return service_account.Credentials.from_service_account_file(path)

    def _client(self) -> Any:
        bigquery = _bigquery()
        try:
            return bigquery.Client(
                project=self.config.project,
                credentials=self._credentials(),
                location=self.config.location,
            )
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(
                f"source {self.instance_name!r}: cannot create a BigQuery client: "
                f"{_cloud.first_line(exc)}",
                hint="set `project`, and `credentials_file` / `credentials_json`, or log in "
                "with `gcloud auth application-default login`",
            ) from None

    def _storage_client(self) -> Any:
        if not self.config.use_storage_api:
            return None
        try:
            from google.cloud import bigquery_storage
        except ImportError:
            return None  # pages over REST: slower, same rows
        return bigquery_storage.BigQueryReadClient(credentials=self._credentials())

    def _access_error(self, exc: BaseException, what: str) -> SourceError:
        text = _cloud.first_line(getattr(exc, "message", None) or exc)
        code = getattr(exc, "code", None)
        who = f"source {self.instance_name!r} (bigquery project {self.config.project})"
        if code == 403 or "Access Denied" in text or "permission" in text:
            return SourceError(
                f"{who} {what}: {text}",
                hint="grant the service account roles/bigquery.jobUser on the project and "
                "roles/bigquery.dataViewer on the datasets the models read (docs/sources/"
                "bigquery.md)",
            )
        if code == 404:
            return SourceError(
                f"{who} {what}: {text}", hint="check `project`, `dataset` and `location`"
            )
        return SourceError(f"{who} {what}: {text}")

    def _model_error(self, exc: BaseException, text: str, *, model: str) -> ModelError:
        return model_error(exc, text, model=model, source=self.instance_name)

    def _guarded(self, pieces: Iterator[Any], text: str, model: str) -> Iterator[Any]:
        try:
            yield from pieces
        except Exception as exc:
            raise self._model_error(exc, text, model=model) from None

    def _read_error(self, model: str) -> Any:
        def error(exc: BaseException) -> BaseException:
            return ModelError(
                f"cannot convert the rows to Arrow: {_cloud.first_line(exc)}",
                model=model,
                source=self.instance_name,
                hint="cast the column in the model (CAST(col AS STRING))",
            )

        return error


def model_error(exc: BaseException, sql: str, *, model: str, source: str) -> ModelError:
    """A BigQuery error (``at [line:column]``, both 1-based) as a ModelError whose position
    is the character offset in ``sql``, the model's text (sent unchanged)."""
    text = _cloud.first_line(getattr(exc, "message", None) or exc)
    found = _AT.search(text)
    where = _cloud.position(sql, int(found.group(1)), int(found.group(2))) if found else None
    hint = None
    code = getattr(exc, "code", None)
    if code == 403 or "Access Denied" in text:
        hint = "grant roles/bigquery.dataViewer on the dataset (and jobUser on the project)"
    elif "bytes billed" in text.lower():
        hint = "the model scans more than `maximum_bytes_billed`: filter it, or raise the cap"
    return ModelError(text, model=model, source=source, position=where, hint=hint)


def arrow_type(field: Any) -> pa.DataType:
    """The Arrow type of a BigQuery ``SchemaField`` (docs/sources/bigquery.md, Types)."""
    kind = str(field.field_type).upper()
    if kind in ("RECORD", "STRUCT"):
        inner: pa.DataType = pa.struct([pa.field(f.name, arrow_type(f)) for f in field.fields])
    elif kind == "INTERVAL":
        inner = pa.month_day_nano_interval()
    else:
        inner = _SIMPLE.get(kind, pa.string())
    return pa.list_(inner) if str(field.mode).upper() == "REPEATED" else inner


def schema_of(fields: Sequence[Any]) -> pa.Schema:
    return pa.schema(pa.field(f.name, arrow_type(f)) for f in fields)


def _bigquery() -> Any:
    return _cloud.driver("google.cloud.bigquery", "google-cloud-bigquery", "bigquery")


class _BigQuerySession:
    dialect = DIALECT

    def __init__(self, source: BigQuerySource, client: Any) -> None:
        self.source = source
        self.client = client
        self.session_id: str | None = None

    def _run(self, sql: str) -> Any:
        bigquery = _bigquery()
        if self.session_id is None:
            job_config = self.source._job_config(dry_run=False, create_session=True)
        else:
            job_config = self.source._job_config(
                dry_run=False,
                connection_properties=[bigquery.ConnectionProperty("session_id", self.session_id)],
            )
        job = self.client.query(sql, job_config=job_config)
        result = job.result()
        if self.session_id is None:
            info = getattr(job, "session_info", None)
            self.session_id = getattr(info, "session_id", None)
        return result

    def execute(self, sql: str) -> None:
        self._run(sql)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row.values()) for row in self._run(sql)]

    def close(self) -> None:
        try:
            if self.session_id is not None:
                self._run("CALL BQ.ABORT_SESSION()")
        finally:
            self.client.close()


class BigQueryAccess(_access.WarehouseAccess):
    """BigQuery's privileges are IAM roles, granted per dataset with its DCL ``GRANT``, to
    the service account of the key file (``client_email``); with Application Default
    Credentials the account is unknown here: ``<member>`` stands for it."""

    warehouse = "BigQuery"
    source: BigQuerySource

    def find_principal(self) -> _access.Principal:
        config = self.source.config
        email = self._client_email()
        notes = []
        if email is None:
            grantee, who = '"<member>"', "the account of the Application Default Credentials"
            notes.append(
                "<member>: that account, as user:name@example.com or "
                "serviceAccount:name@project.iam.gserviceaccount.com"
            )
        else:
            grantee, who = f'"serviceAccount:{email}"', f"service account {email!r}"
        if config.project is None:
            notes.append("<project>: the project of the credentials (set `project`)")
        return _access.Principal(
            grantee,
            who,
            (config.project or "<project>", config.dataset or "<dataset>"),
            "; ".join(notes) or None,
        )

    def _client_email(self) -> str | None:
        config = self.source.config
        try:
            if config.credentials_json is not None:
                info = json.loads(config.credentials_json.get_secret_value())
            elif config.credentials_file is not None:
                path = os.path.join(
                    self.source.base_dir, os.path.expanduser(config.credentials_file)
                )
                with open(path, encoding="utf-8") as file:
                    info = json.load(file)
            else:
                return None
        except (OSError, ValueError):
            return None
        email = info.get("client_email") if isinstance(info, dict) else None
        return str(email) if email else None

    def reason(self, said: str) -> str:
        if "Access Denied" in said or said.startswith("403"):
            return (
                "missing roles/bigquery.dataViewer, or no such table: BigQuery answers the "
                "same for both"
            )
        if "Not found" in said or said.startswith("404"):
            return "the server says it does not exist (in this location)"
        return super().reason(said)

    def read_grants(self, qualified: tuple[str, ...]) -> tuple[str, ...]:
        dataset = self.dotted(qualified[:-1]) if len(qualified) > 1 else self.dotted(qualified)
        return (
            f"GRANT `roles/bigquery.dataViewer` ON SCHEMA {dataset} TO {self.principal.grantee};",
        )

    def scratch_grants(self, schema: str) -> tuple[str, ...]:
        return (
            f"GRANT `roles/bigquery.dataEditor` ON SCHEMA "
            f"{self.dotted(self.scratch_parts(schema))} TO {self.principal.grantee};",
        )

    def create_schema_grants(self, schema: str) -> tuple[str, ...]:
        location = self.source.config.location
        options = f" OPTIONS (location = '{location}')" if location else ""
        return (f"CREATE SCHEMA IF NOT EXISTS {self.dotted(self.scratch_parts(schema))}{options};",)

    def schema_exists_sql(self, schema: str) -> str:
        """Non-zero when the dataset exists, a "Not found" error when it does not.

        The dataset's own ``INFORMATION_SCHEMA.TABLES`` needs only a role on the dataset;
        the project's ``SCHEMATA`` view would need ``bigquery.datasets.get`` on the project,
        which a least-privilege account lacks."""
        parts = [p for p in self.scratch_parts(schema) if not _access.placeholder(p)]
        return f"SELECT COUNT(*) + 1 FROM {self.dotted(parts)}.INFORMATION_SCHEMA.TABLES"
