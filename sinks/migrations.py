"""``copulse db migrate``: versioned ClickHouse migrations.

Migrations are the files ``schemas/clickhouse/NNNN_name.sql``, applied in version order into the database of
``COPULSE_CLICKHOUSE_URL`` (created if missing) and recorded in ``<db>.schema_migrations`` with the SHA-256 of
the file. Running it again applies only what is missing, so every worker runs it on start; several workers
may run it at the same moment: every statement is ``CREATE ... IF NOT EXISTS`` and the "already exists" errors
of a lost race are ignored, and a migration recorded twice is harmless.

An applied migration must never be edited (its checksum is verified on every run): add a new file instead.

The files are templates, rendered per server:

* ``{{db}}`` -> the target database name;
* ``{{lc:T}}`` -> ``LowCardinality(T)`` on ClickHouse >= 20.3, plain ``T`` on older servers (18.16 only has
  LowCardinality behind an experimental flag). The checksum is that of the template, so the same migration
  is the same version whatever variant a server got; ``schema_migrations.variant`` tells which one.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import logging
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from streams.schemas import SCHEMAS_DIR

log = logging.getLogger(__name__)

#: the migration files, shipped in the schemas/ data folder
CLICKHOUSE_DIR = SCHEMAS_DIR / "clickhouse"

#: First server version on which the modern clauses ({{lc:T}} -> LowCardinality) are rendered.
MODERN_SINCE: tuple[int, int] = (20, 3)

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LC = re.compile(r"\{\{lc:([^{}]+)\}\}")
_ANY_PLACEHOLDER = re.compile(r"\{\{[^{}]*\}\}")

#: Errors a concurrent migration run can cause and that mean "someone else already did it".
_ALREADY_EXISTS_CODES = {
    57,  # TABLE_ALREADY_EXISTS
    82,  # DATABASE_ALREADY_EXISTS
    15,  # DUPLICATE_COLUMN: an ADD COLUMN that a concurrent or interrupted run already applied
}
#: Errors of a concurrent run of a migration that drops and recreates views: the migration is run again.
_CONCURRENT_DDL_CODES = {
    60,  # UNKNOWN_TABLE: a view this CREATE selects from was just dropped by the other run
    218,  # TABLE_IS_DROPPED: the other run is dropping the same view
}
_CONCURRENT_DDL_ATTEMPTS = 20
#: 18.16 reports a duplicate ADD COLUMN as ILLEGAL_COLUMN, a code with other meanings too: only with this message
_ILLEGAL_COLUMN = 44
_COLUMN_EXISTS = "column with this name already exists"

MIGRATIONS_TABLE_DDL = """
CREATE TABLE IF NOT EXISTS `{db}`.schema_migrations
(
    version        UInt32,
    name           String,
    checksum       String,
    variant        String,
    server_version String,
    applied_by     String,
    applied_at     DateTime('UTC')
)
ENGINE = ReplacingMergeTree()
ORDER BY version
"""


class MigrationError(RuntimeError):
    """A migration cannot be applied; the message says what to do."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # file name, e.g. '0002_kpi_windows.sql'
    template: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.template.encode("utf-8")).hexdigest()


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """All migration files of ``directory`` (default: :data:`CLICKHOUSE_DIR`) in version order."""
    files = sorted(Path(directory or CLICKHOUSE_DIR).glob("*.sql"))
    migrations: dict[int, Migration] = {}
    for file in files:
        match = _FILE_NAME.match(file.name)
        if not match:
            raise MigrationError(f"migration file {file.name!r} is not named NNNN_lower_snake_name.sql")
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(f"two migrations share version {version:04d}: {migrations[version].name}, {file.name}")
        migrations[version] = Migration(version, file.name, file.read_text(encoding="utf-8"))
    return [migrations[v] for v in sorted(migrations)]


def parse_server_version(text: str) -> tuple[int, ...]:
    """'18.16.1' -> (18, 16, 1); '24.8.4.13' -> (24, 8, 4, 13)."""
    parts = re.findall(r"\d+", text)
    if not parts:
        raise ValueError(f"cannot read a ClickHouse version from {text!r}")
    return tuple(int(p) for p in parts)


def is_modern(server_version: tuple[int, ...]) -> bool:
    return tuple(server_version[:2]) >= MODERN_SINCE


def check_identifier(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise MigrationError(
            f"database name {name!r} is not a plain identifier (letters, digits, '_'); fix COPULSE_CLICKHOUSE_URL"
        )
    return name


def render(template: str, database: str, server_version: tuple[int, ...]) -> str:
    """The SQL of a migration template for one database and server version."""
    modern = is_modern(server_version)
    sql = template.replace("{{db}}", check_identifier(database))
    sql = _LC.sub(lambda m: f"LowCardinality({m.group(1).strip()})" if modern else m.group(1).strip(), sql)
    leftover = _ANY_PLACEHOLDER.search(sql)
    if leftover:
        raise MigrationError(f"unknown placeholder {leftover.group(0)} in migration template")
    return sql


def split_statements(sql: str) -> list[str]:
    """Split a script on ';' outside quotes; drop '--' comments and empty statements."""
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(sql)
    quote: str | None = None
    while i < n:
        ch = sql[i]
        if quote:
            current.append(ch)
            if ch == "\\" and i + 1 < n:
                current.append(sql[i + 1])
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in ("'", '"', "`"):
            quote = ch
            current.append(ch)
        elif ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end == -1 else end
            continue
        elif ch == ";":
            statements.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    statements.append("".join(current))
    return [s.strip() for s in statements if s.strip()]


def _execute_ddl(client: Client, statement: str) -> None:
    try:
        client.execute(statement)
    except ch_errors.ServerException as exc:
        if exc.code in _ALREADY_EXISTS_CODES or (exc.code == _ILLEGAL_COLUMN and _COLUMN_EXISTS in exc.message):
            log.debug("already created by a concurrent migration run: %s", exc.message.splitlines()[0])
            return
        raise


def _applied(client: Client, database: str) -> dict[int, set[str]]:
    rows = client.execute(f"SELECT version, groupUniqArray(checksum) FROM `{database}`.schema_migrations GROUP BY version")
    return {int(version): set(checksums) for version, checksums in rows}


def connect_admin(settings) -> Client:
    """A client on the server of ``settings`` that does not need the target database to exist."""
    kwargs = dict(settings.clickhouse)
    kwargs["database"] = "system"
    return Client(**kwargs, connect_timeout=5, send_receive_timeout=120, sync_request_timeout=5)


def server_version(client: Client) -> tuple[int, ...]:
    return parse_server_version(client.execute("SELECT version()")[0][0])


def _apply(client: Client, statements: list[str]) -> None:
    """Run a migration's statements. A migration that recreates views (DROP, then CREATE) can meet a concurrent
    run of itself between the two: its CREATE finds a view it selects from dropped (UNKNOWN_TABLE), or its DROP
    one being dropped (TABLE_IS_DROPPED). Every statement is idempotent, so the whole migration runs again; each
    run creates what it dropped, so the last one to finish leaves every object in place."""
    for attempt in range(1, _CONCURRENT_DDL_ATTEMPTS + 1):
        try:
            for statement in statements:
                _execute_ddl(client, statement)
            return
        except ch_errors.ServerException as exc:
            if exc.code not in _CONCURRENT_DDL_CODES or attempt == _CONCURRENT_DDL_ATTEMPTS:
                raise
            log.debug("a concurrent migration run interfered (%s); running the migration again",
                      exc.message.splitlines()[0])
            time.sleep(0.05 * attempt)


def migrate(settings, *, migrations: list[Migration] | None = None, client: Client | None = None) -> list[str]:
    """Apply the missing migrations; returns the names of those applied by this call (in order)."""
    database = check_identifier(settings.clickhouse["database"])
    migrations = load_migrations() if migrations is None else migrations
    own_client = client is None
    client = client or connect_admin(settings)
    try:
        version = server_version(client)
        variant = "modern" if is_modern(version) else "legacy"
        _execute_ddl(client, f"CREATE DATABASE IF NOT EXISTS `{database}`")
        _execute_ddl(client, MIGRATIONS_TABLE_DDL.format(db=database))
        applied = _applied(client, database)
        known = {m.version for m in migrations}
        unknown = sorted(v for v in applied if v not in known)
        if unknown:
            log.warning(
                "database %s has migrations this copulse does not know (%s): is a newer copulse running?",
                database,
                ", ".join(f"{v:04d}" for v in unknown),
            )
        done: list[str] = []
        for migration in migrations:
            recorded = applied.get(migration.version)
            if recorded:
                if migration.checksum not in recorded or len(recorded) > 1:
                    raise MigrationError(
                        f"migration {migration.name} was changed after it was applied to database {database} "
                        f"(checksum {migration.checksum[:12]} not in {sorted(c[:12] for c in recorded)}); "
                        "never edit an applied migration: restore it and add a new NNNN_*.sql file instead"
                    )
                continue
            started = time.monotonic()
            _apply(client, split_statements(render(migration.template, database, version)))
            client.execute(
                f"INSERT INTO `{database}`.schema_migrations "
                "(version, name, checksum, variant, server_version, applied_by, applied_at) VALUES",
                [
                    (
                        migration.version,
                        migration.name,
                        migration.checksum,
                        variant,
                        ".".join(map(str, version)),
                        _applied_by(),
                        int(time.time()),
                    )
                ],
                types_check=True,
            )
            log.info("applied migration %s (%s, %.2f s)", migration.name, variant, time.monotonic() - started)
            done.append(migration.name)
        return done
    finally:
        if own_client:
            client.disconnect()


def _applied_by() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = "?"
    return f"{user}@{socket.gethostname()}"


# --- CLI -------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--print-sql",
        action="store_true",
        help="print the rendered SQL of every migration instead of applying anything (no server needed)",
    )
    parser.add_argument(
        "--server-version",
        default="18.16.1",
        help="server version to render for with --print-sql (default 18.16.1; e.g. 24.8 shows the modern variant)",
    )


def run(args, settings) -> int:
    database = settings.clickhouse["database"]
    if args.print_sql:
        version = parse_server_version(args.server_version)
        for migration in load_migrations():
            print(f"-- {migration.name} (checksum {migration.checksum[:12]})")
            for statement in split_statements(render(migration.template, database, version)):
                print(statement + ";\n")
        return 0
    where = f"{settings.clickhouse['host']}:{settings.clickhouse['port']}"
    try:
        applied = migrate(settings)
    except MigrationError as exc:
        print(f"copulse db migrate: {exc}", file=sys.stderr)
        return 1
    except (ch_errors.NetworkError, ch_errors.SocketTimeoutError, OSError, EOFError) as exc:
        print(
            f"copulse db migrate: ClickHouse is unreachable at {where} ({str(exc).splitlines()[0]}); "
            "start it with `make up`",
            file=sys.stderr,
        )
        return 1
    except ch_errors.ServerException as exc:
        print(f"copulse db migrate: ClickHouse at {where} refused: {exc.message.splitlines()[0]}", file=sys.stderr)
        return 1
    if applied:
        print(f"database {database} at {where}: applied {len(applied)} migration(s): {', '.join(applied)}")
    else:
        print(f"database {database} at {where}: up to date")
    return 0
