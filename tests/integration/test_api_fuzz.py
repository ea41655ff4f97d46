"""Schema-driven fuzzing: schemathesis generates valid and invalid requests from /openapi.json; none may 500."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import RedisServer, create_database, drop_database_later
from tests.integration.test_api import WRITE, ApiServer

MAX_EXAMPLES = int(os.environ.get("ERDU_FUZZ_EXAMPLES", "60"))
# Seconds of fuzzing: every operation's examples and coverage phases first, then random cases until the
# budget ends (ERDU_FUZZ_SECONDS=300 for a longer hunt).
TIME_BUDGET = int(os.environ.get("ERDU_FUZZ_SECONDS", "20"))


@pytest.fixture()
def api(tmp_path):
    redis = RedisServer(tmp_path)
    url = create_database()
    from erdu_tasks.store.migrate import migrate

    migrate(url)
    server = ApiServer(tmp_path, redis.url, url, {"ERDU_API_TOKEN": WRITE}).start()
    yield server
    server.stop()
    redis.stop()
    drop_database_later(url)


def _st() -> str:
    exe = Path(sys.executable).with_name("st")
    return str(exe) if exe.exists() else (shutil.which("st") or "st")


@pytest.mark.slow(22)
def test_fuzzing_every_operation_from_the_openapi_schema_finds_no_server_error(api, tmp_path):
    started = time.monotonic()
    done = subprocess.run(
        [_st(), "run", api.url + "/openapi.json", "--checks", "not_a_server_error",
         "--phases", "examples,coverage,fuzzing", "--max-examples", str(MAX_EXAMPLES), "--workers", "1",
         "--max-time", str(TIME_BUDGET), "--seed", "20240501", "--request-timeout", "20",
         "--suppress-health-check", "all", "--header", f"Authorization: Bearer {WRITE}",
         "--report", "junit", "--report-dir", str(tmp_path / "st-report")],
        capture_output=True, text=True, timeout=TIME_BUDGET + 60, cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""},
    )
    elapsed = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:] + "\n--- API log ---\n" + api.log_text()[-4000:]
    print(output)
    assert "internal error" not in api.log_text() and "Traceback" not in api.log_text(), api.log_text()[-4000:]
    assert elapsed < TIME_BUDGET + 45, f"fuzzing took {elapsed:.0f} s"
    # The run really exercised the write paths: something was stored.
    from tests.conftest import incident_rows

    assert incident_rows(api.database_url, "SELECT count(*) AS n FROM incidents")[0]["n"] > 0
