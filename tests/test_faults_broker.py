"""Fault tests of the broker itself and of the clients around it: unreachable, killed mid-run, dying at
start, no credentials; and the collector killed and restarted. The figures are in docs/reliability.md.

Each test that measures something prints one `FIGURES ...` line: run with -s to see them.
Some sizes are scaled down from the full 10,000-image run to keep the suite within its
time budget on a 2-core machine; docs/reliability.md says which, and why.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from broker.emulator import Emulator, free_port
from broker.errors import BrokerError
from tests.conftest import (
    REPO,
    ServerProcess,
    figures,
    kill_all,
    pids_with,
    progress,
    stream_config_file,
)

pytestmark = pytest.mark.emulator


# ------------------------------------------------- 3. the broker is unreachable at start
@pytest.mark.timeout(90)
def test_clis_fail_fast_with_one_line_when_the_broker_is_unreachable():
    closed = free_port()
    env = {**os.environ, "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{closed}"}
    commands = {
        "server": [sys.executable, "-m", "server"],
        "server-replicas": [sys.executable, "-m", "server", "--replicas", "2"],
        "streamer": [sys.executable, "-m", "streamer", "--limit", "5", "--no-verify"],
    }
    started = time.monotonic()
    procs = {
        name: subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, cmd in commands.items()
    }
    took = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=60)
            took[name] = round(time.monotonic() - started, 1)
            lines = [line for line in err.splitlines() if line.strip()]
            assert proc.returncode != 0, name
            assert took[name] < 30, f"{name} took {took[name]}s"
            assert "Traceback" not in err + out, f"{name}:\n{err}"
            assert len(lines) == 1 and lines[0].startswith("error:"), f"{name} printed:\n{err}"
            assert f"127.0.0.1:{closed}" in lines[0], lines[0]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    figures("unreachable_at_start", seconds_to_exit=took, line=lines[0][:120])


# ------------------------------------------------- 4. the broker goes away mid-run
# The budgets a lost broker is waited out with, shortened from configs/stream.py's (15 s of failing pulls, a 20 s
# drain, a 20 s publish retry, 15 s of failing result pulls and acks) so that the test waits seconds, not 35 s: the
# same code paths give up, only sooner. Each stays longer than the streamer's broker probe (every 3 s), as with the
# defaults: the probe notices the loss first and ends the run with its line.
SHORT_BUDGETS = {
    "server.broker_give_up_s": 6.0,
    "server.drain_timeout_s": 2.0,
    "streamer.publish_retry_s": 6.0,
    "collector.give_up_s": 6.0,
}


@pytest.mark.timeout(300)
def test_broker_killed_mid_run_clients_fail_clearly_and_clean_up(tmp_path, model_dir, monkeypatch):
    suffix = uuid.uuid4().hex[:10]
    # With the defaults each client's exit is the sum of its budgets (docs/reliability.md, section 4): within the
    # 60 s asserted below too. This run measures the same paths with SHORT_BUDGETS.
    from configs import load_config
    from server.run import SHUTDOWN_SLACK_S
    from streamer.session import PUBLISH_SLACK_S
    from streamer.supervise import Watch

    defaults = load_config(None, "stream.py")
    server_budget = defaults.server.broker_give_up_s + defaults.server.drain_timeout_s + SHUTDOWN_SLACK_S
    # the probe, the batch in flight, the result pump's close (15 s at most, streamer/session.py), the server's stop
    streamer_budget = Watch().period + defaults.streamer.publish_retry_s + PUBLISH_SLACK_S + 15.0 + 5.0
    assert server_budget < 60 and streamer_budget < 60, (server_budget, streamer_budget)
    budgets = ["--config", str(stream_config_file(tmp_path / "short_budgets.py", SHORT_BUDGETS))]
    emulator = Emulator().start()  # a private one: this test kills it
    emulator_folder = Path(emulator.folder)  # its data and log: gone once it is stopped
    assert (emulator_folder / "emulator.log").is_file()
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the streamer's managed server logs
    streamer_err = tmp_path / "streamer.err"
    server = streamer = None
    try:
        server = ServerProcess(suffix, model_dir, *budgets)  # a server on its own ...
        with open(streamer_err, "w") as err:  # ... and a streamer with its own managed server
            streamer = subprocess.Popen(
                [
                    sys.executable, "-m", "streamer", "--limit", "6000", "--rate", "150", "--topic-suffix", suffix,
                    "--model", str(model_dir), "--reports-dir", str(tmp_path / "reports"), "--no-verify",
                    "--timeout", "300", *budgets,
                ],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
            )  # fmt: skip
        server.wait_ready(timeout=120)
        deadline = time.monotonic() + 120
        while progress(streamer_err.read_text(errors="replace"), "received") < 100:
            assert streamer.poll() is None, streamer_err.read_text()[-2000:]
            assert time.monotonic() < deadline, "the streamer never got results"
            time.sleep(0.5)
        managed = [pid for pid in pids_with(suffix) if pid not in (server.proc.pid, streamer.pid)]
        assert managed, "the streamer's managed server should be running"

        killed = time.monotonic()
        os.killpg(emulator.process.pid, signal.SIGKILL)
        exits = {}
        while (server.proc.poll() is None or streamer.poll() is None) and time.monotonic() - killed < 120:
            for name, proc in (("server", server.proc), ("streamer", streamer)):
                if name not in exits and proc.poll() is not None:
                    exits[name] = round(time.monotonic() - killed, 1)
            time.sleep(0.2)
        for name, proc in (("server", server.proc), ("streamer", streamer)):
            if name not in exits and proc.poll() is not None:
                exits[name] = round(time.monotonic() - killed, 1)
        assert set(exits) == {"server", "streamer"}, f"still running 120 s after the broker died: {exits}"
        assert server.proc.returncode != 0 and streamer.returncode != 0
        assert exits["server"] < 60 and exits["streamer"] < 60, exits

        server_log = server.log_text()
        assert "Traceback" not in server_log, server_log[-3000:]
        server_error = [line for line in server_log.splitlines() if line.startswith("error:")]
        assert server_error, server_log[-2000:]
        assert f"(for {SHORT_BUDGETS['server.broker_give_up_s']:.0f}s)" in server_error[-1], server_error[-1]
        err_text = streamer_err.read_text(errors="replace")
        assert "Traceback" not in err_text, err_text[-3000:]
        last = err_text.replace("\r", "\n").strip().splitlines()[-1]
        assert last.startswith("error: lost the broker mid-run:"), err_text[-2000:]
        time.sleep(0.5)
        leftovers = pids_with(suffix)
        assert not leftovers, f"processes left behind: {leftovers}"
        assert list(tmp_path.glob("server-*.log")), "a failed run keeps its managed server's log"
        figures(
            "broker_killed",
            seconds_to_exit=exits,
            server_code=server.proc.returncode,
            streamer_code=streamer.returncode,
            streamer_line=last[:160],
            server_line=server_error[-1][:160],
        )
    finally:
        if streamer is not None and streamer.poll() is None:
            os.killpg(streamer.pid, signal.SIGKILL)
            streamer.wait(10)
        if server is not None:
            server.kill()
        kill_all(pids_with(suffix))
        emulator.stop()
    assert not emulator_folder.exists()


# ------------------------------------------------- 6. the collector killed and restarted
N_RESUME = 1000


def _answered_in(state_file: Path) -> int:
    try:
        return len(json.loads(state_file.read_text())["answered"]["index"])  # results/run.py's columns
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.timeout(240)
def test_collector_killed_mid_run_resumes_from_its_state_file(topology, start_server, suffix, tmp_path, model_dir):
    server = start_server()
    state, run_id, reports = tmp_path / "collector.json", "resume6", tmp_path / "reports"
    common = ["--run-id", run_id, "--state-file", str(state), "--limit", str(N_RESUME), "--server", "external"]
    common += ["--topic-suffix", suffix, "--reports-dir", str(reports), "--model", str(model_dir)]
    err_path = tmp_path / "streamer.err"
    with open(err_path, "w") as err:
        streamer = subprocess.Popen(
            [sys.executable, "-m", "streamer", *common, "--rate", "200", "--no-verify", "--timeout", "120"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 90
        while _answered_in(state) < 100:
            assert streamer.poll() is None, err_path.read_text()[-2000:]
            assert time.monotonic() < deadline, "no results persisted"
            time.sleep(0.2)
        # Hold the results back (pause the server) until every request is published, then kill the streamer.
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            while progress(err_path.read_text(errors="replace"), "published") < N_RESUME:
                assert streamer.poll() is None, err_path.read_text()[-2000:]
                assert time.monotonic() < deadline, "publishing did not finish"
                time.sleep(0.2)
            streamer.kill()
            streamer.wait(10)
            persisted = _answered_in(state)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
    finally:
        if streamer.poll() is None:
            streamer.kill()
            streamer.wait(10)
    assert 0 < persisted < N_RESUME
    started = time.monotonic()
    resumed = subprocess.run(
        [sys.executable, "-m", "streamer", "--collect-only", *common, "--timeout", "120"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    took = time.monotonic() - started
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (folder,) = [p for p in reports.iterdir() if (p / "report.json").is_file()]
    report = json.loads((folder / "report.json").read_text())
    counts = report["counts"]
    assert report["run"]["mode"] == "collect-only" and report["run"]["run_id"] == run_id
    assert counts["sent"] == counts["answered"] == N_RESUME and counts["missing"] == 0 and counts["errors"] == 0
    assert report["offline"]["identical"] is True
    assert server.proc.poll() is None
    figures(
        "collector_restart",
        requests=N_RESUME,
        persisted_at_kill=persisted,
        collect_only_s=round(took, 1),
        duplicates=counts["duplicates"],
        ordering_violations=report["ordering"]["violations"],
    )


def test_an_emulator_that_dies_at_start_gives_one_clear_error(tmp_path, monkeypatch):
    """The start-up failure path: the launcher exits at once; the error names its code and output."""
    from broker.emulator import Emulator

    launcher = tmp_path / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    launcher.parent.mkdir(parents=True)
    launcher.write_text("#!/bin/sh\necho 'Address already in use' >&2\nexit 3\n")
    launcher.chmod(0o755)
    monkeypatch.setenv("CLOUDSDK_ROOT_DIR", str(tmp_path))
    emulator = Emulator(start_timeout=20)
    with pytest.raises(BrokerError, match=r"exited at start \(code 3\): Address already in use"):
        emulator.start()
    assert emulator.process is None and emulator.folder is None
    assert not list(Path(tempfile.gettempdir()).glob(f"pubsub-emulator-{emulator.port}-*"))  # nothing left behind


@pytest.mark.timeout(120)
@pytest.mark.parametrize("module", ["streamer", "server"])
def test_no_credentials_is_one_line(module, tmp_path):
    """`--project P` without Application Default Credentials: one line that says how to fix it, exit 2.

    NO_GCE_CHECK keeps google-auth from probing a metadata server (this machine has no network).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PUBSUB_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")}
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path), NO_GCE_CHECK="true")
    proc = subprocess.run(
        [sys.executable, "-m", module, "--project", "no-such-project-here"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "gcloud auth application-default login" in lines[0] and "GOOGLE_APPLICATION_CREDENTIALS" in lines[0]
