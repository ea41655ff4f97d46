"""ERDU behind Debian's PgBouncer in transaction mode: the whole pipeline through a pool of three server
connections, with `db_prepared_statements: false` (PgBouncer before 1.21 cannot keep prepared statements
across transactions; psycopg prepares a query after its fifth run on a connection)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from erdu_tasks.store.db import Database
from erdu_tasks.store.migrate import migrate
from tests.conftest import NOOP_RUNBOOK, free_port, wait_for

PGBOUNCER = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
pytestmark = pytest.mark.skipif(PGBOUNCER is None, reason="Debian's pgbouncer is not installed (make debs)")


class PgBouncer:
    """A private PgBouncer (transaction mode) in front of one database of the machine's Postgres."""

    def __init__(self, database_url: str, pool_size: int = 3) -> None:
        info = psycopg.conninfo.conninfo_to_dict(database_url)
        self.dir = Path(tempfile.mkdtemp(prefix="erdu-pgbouncer-"))
        self.port = free_port()
        (self.dir / "userlist.txt").write_text('"postgres" ""\n')
        (self.dir / "pgbouncer.ini").write_text(f"""
[databases]
erdu = host={info.get('host', '127.0.0.1')} port={info.get('port', 5432)} dbname={info['dbname']} user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.dir}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 500
admin_users = postgres
ignore_startup_parameters = extra_float_digits
logfile = {self.dir}/pgbouncer.log
pidfile = {self.dir}/pgbouncer.pid
""")
        args = [PGBOUNCER, str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:   # PgBouncer refuses to run as root
            os.chmod(self.dir, 0o755)
            for f in self.dir.iterdir():
                os.chmod(f, 0o644)
            shutil.chown(self.dir, "postgres")
            args = [PGBOUNCER, "-u", "postgres", str(self.dir / "pgbouncer.ini")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/erdu"
        wait_for(self._up, 15, 0.05, what="pgbouncer listening")

    def _up(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=1) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.OperationalError:
            return False

    def pools(self) -> list[dict]:
        admin = f"postgresql://postgres@127.0.0.1:{self.port}/pgbouncer"
        with psycopg.connect(admin, autocommit=True, row_factory=dict_row, prepare_threshold=None) as conn:
            return [r for r in conn.execute("SHOW POOLS").fetchall() if r["database"] == "erdu"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture()
def bouncer(fresh_database_url):
    b = PgBouncer(fresh_database_url)
    yield b
    b.stop()


def _interleave(db_a: Database, db_b: Database, runs: int = 12) -> None:
    """The same statement many times from two pools: their transactions share the bouncer's server connections."""
    for i in range(runs):
        for db in (db_a, db_b):
            with db.transaction() as conn:
                conn.execute("SELECT count(*) FROM incidents WHERE severity = %s", ("P1",)).fetchone()


def test_without_prepared_statements_erdu_runs_through_pgbouncer_transaction_mode(bouncer):
    migrate(bouncer.url)   # migrations take a transaction-scoped lock only: they run through the bouncer too
    plain = [Database(bouncer.url, max_size=2, prepare=False) for _ in range(2)]
    try:
        _interleave(*plain)   # 24 runs of one statement, no error
    finally:
        for db in plain:
            db.close()
    # The control: with psycopg's default (prepare after 5 runs), the same load breaks behind this bouncer,
    # which is why the setting exists.
    prepared = [Database(bouncer.url, max_size=2, prepare=True) for _ in range(2)]
    try:
        with pytest.raises(psycopg.Error, match="prepared statement"):
            for _ in range(5):
                _interleave(*prepared)
    finally:
        for db in prepared:
            db.close()


def test_the_pipeline_closes_incidents_through_three_server_connections(stack_factory, tmp_path):
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    (runbooks / "db.yaml").write_text(NOOP_RUNBOOK)
    stack = stack_factory({"ERDU_RUNBOOKS_DIR": str(runbooks), "ERDU_DB_PREPARED_STATEMENTS": "false"})
    direct_url = stack.database_url
    bouncer = PgBouncer(direct_url)
    try:
        _through(stack, bouncer, direct_url)
    finally:
        stack.stop(signal.SIGKILL)
        bouncer.stop()


def _through(stack, bouncer: PgBouncer, direct_url: str) -> None:
    stack.env["ERDU_DATABASE_URL"] = bouncer.url
    stack.start_all()
    keys = [f"pool-{i}" for i in range(30)]
    for key in keys:
        stack.send_event({"message": f"Database connection failed: pool {key}", "source": "bouncer-test",
                          "dedup_key": key})

    def closed() -> bool:
        with psycopg.connect(direct_url) as conn:
            return conn.execute("SELECT count(*) FROM incidents WHERE status = 'closed'").fetchone()[0] == len(keys)

    wait_for(closed, 90, 0.2, what="30 incidents closed through pgbouncer")
    [pool] = bouncer.pools()
    assert pool["pool_mode"] == "transaction"
    assert pool["sv_active"] + pool["sv_idle"] + pool["sv_used"] + pool["sv_tested"] + pool["sv_login"] <= 3
    logs = "".join(p.read_text(errors="replace") for p in stack.tmp.glob("*.log"))
    assert "prepared statement" not in logs
    with psycopg.connect(direct_url) as conn:
        assert conn.execute("SELECT count(*) FROM failed_tasks").fetchone()[0] == 0
