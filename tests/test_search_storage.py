"""``compress search --storage``: workers sharing one optuna study and one output root build every variant once,
a crashed worker's variant is built by the next worker, ``--budget`` bounds each worker, and ``--report``
measures the candidates together. Storage URLs and bad combinations are refused before any compute."""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml
from click.testing import CliRunner

from compress.cli import cli
from compress.errors import CompressError
from compress.recipe import parse_recipe
from compress.search import SearchError, open_storage, search

from test_search import RECIPE

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

AXES = ["--ratios", "0.3,0.5", "--modes", "int8_static,int8_dynamic"]  # 2 x 2; r0.3-int8_static is the recipe's own
KW = {"ratios": ["0.3,0.5"], "modes": ["int8_static,int8_dynamic"]}
NAMES = {"r0.3-int8_static-w4", "r0.3-int8_dynamic-w4", "r0.5-int8_static-w4", "r0.5-int8_dynamic-w4"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two workers on two cores: one thread each


def _worker(recipe, root, url, log, *extra):
    """A `compress search --storage` worker in its own process, its output in the file ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "compress", "search", str(recipe), "-o", str(root), *AXES,
                                 "--storage", url, *extra], stdout=out, stderr=subprocess.STDOUT, text=True, env=ENV)


def _trials(url, name="srch"):
    return optuna.load_study(study_name=name, storage=open_storage(url).storage).get_trials()


# --- before any compute -----------------------------------------------------------------------------


@pytest.mark.parametrize("url, message", [
    ("search.db", "not a storage URL"),
    ("journal:", "no file named"),
    ("journal:///no/such/folder/s.log", "folder /no/such/folder does not exist"),
    ("sqlite:///no/such/folder/s.db", "folder no/such/folder does not exist"),
    ("sqlite://", "an in-memory database is not shared"),
])
def test_bad_storage_urls_are_named(url, message):
    with pytest.raises(SearchError, match=message) as err:
        open_storage(url)
    assert err.value.exit_code == 2


def test_storage_kinds_and_no_password_in_messages(tmp_path):
    assert open_storage(f"sqlite:///{tmp_path}/s.db").kind == "sqlite"
    assert open_storage(f"journal:{tmp_path}/s.log").kind == "journal"
    # No server here: the driver is missing, or the connection is refused; either way the password is not shown.
    with pytest.raises(CompressError) as err:
        open_storage("postgresql://u:secret@127.0.0.1:1/db")
    assert "postgresql://u:***@127.0.0.1:1/db" in str(err.value) and "secret" not in str(err.value)


@pytest.mark.parametrize("args, message", [
    (["--report"], "--report applies to a search on an optuna storage"),
    (["--study", "x"], "--study applies to a search on an optuna storage"),
    (["--storage", "sqlite:///s.db", "--report", "--budget", "10"], "--report builds nothing"),
])
def test_storage_options_need_each_other(tmp_path, args, message):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    result = CliRunner().invoke(cli, ["search", str(path), "-o", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out").exists()


# --- claims and crash recovery, without building -----------------------------------------------------

POP = textwrap.dedent("""
    import json, os, pathlib, sys, time
    from optuna.trial import TrialState
    import optuna
    from compress.search import open_storage
    store = open_storage(sys.argv[1])
    study = optuna.load_study(study_name="q", storage=store.storage)
    gate = pathlib.Path(sys.argv[2])  # start together: imports take longer in one process than the other
    (gate / str(os.getpid())).touch()
    while len(list(gate.iterdir())) < 2:
        time.sleep(0.01)
    got = []
    while True:
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not waiting:
            break
        for t in waiting:
            if store.pop(study, t.number) is not None:
                got.append(t.number)
                time.sleep(0.02)  # a worker builds between claims: let the other one claim too (even on a busy machine)
                break
    print(json.dumps(got))
""")


def test_two_processes_never_claim_one_sqlite_trial_twice(tmp_path):
    # optuna's own claim (read WAITING, write RUNNING) let two processes take 19 of 200 trials twice on sqlite;
    # open_storage makes every transaction BEGIN IMMEDIATE.
    url = f"sqlite:///{tmp_path}/q.db"
    study = optuna.create_study(study_name="q", storage=open_storage(url).storage)
    for i in range(60):
        study.enqueue_trial({"x": i})
    gate = tmp_path / "gate"
    gate.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", POP, url, str(gate)], stdout=subprocess.PIPE, text=True, env=ENV)
             for _ in range(2)]
    got = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(got[0] + got[1]) == list(range(60))  # every trial claimed, none twice
    assert got[0] and got[1]


@pytest.fixture(params=["sqlite", "journal"])
def store(request, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db" if request.param == "sqlite" else f"journal:{tmp_path}/s.log"
    return open_storage(url, heartbeat=1)


def test_a_trial_without_heartbeat_is_queued_again_once(store):
    study = optuna.create_study(study_name="s", storage=store.storage, directions=["maximize"] * 3)
    for n in ("dead", "alive"):
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, user_attrs={"variant": n}))
    dead, alive = (store.pop(study, n) for n in (0, 1))
    assert None not in (dead, alive) and store.pop(study, 0) is None  # claimed once
    store.beat(dead)  # then its worker dies
    with store.beating(alive):
        time.sleep(store.grace + 1.5)
        assert store.recover(study) == [0]
        assert store.recover(study) == []  # given up once, queued once
    trials = study.get_trials()
    assert [(t.number, t.state, t.user_attrs["variant"]) for t in trials] == [
        (0, TrialState.FAIL, "dead"), (1, TrialState.RUNNING, "alive"), (2, TrialState.WAITING, "dead")]
    assert trials[2].system_attrs["failed_trial"] == 0


def test_a_failed_build_raises_its_own_error_after_its_trial_was_given_up(store):
    from compress import search as srch

    study = optuna.create_study(study_name="s", storage=store.storage, directions=["maximize"] * 3)
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, user_attrs={"variant": "v"}))
    tid = store.pop(study, 0)

    class Search:  # builds fail after another worker has declared the trial stale
        quiet = True

        @contextlib.contextmanager
        def lock(self, c):
            yield

        def build(self, c):
            assert store.give_up(study, tid)
            raise MemoryError("the build ran out of memory")

    c = srch._Candidate(srch.Point(0.3, "fp32", None), "v", None, ["k"])
    with pytest.raises(MemoryError, match="the build ran out of memory"):
        srch._run_trial(optuna, Search(), study, store, tid, 0, c, "me")
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]  # queued again, once


# --- two workers on one output root ----------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Two workers started together on one output root and one sqlite study, then the report."""
    tmp = tmp_path_factory.mktemp("workers")
    recipe, root, url = tmp / "srch.yaml", tmp / "out", f"sqlite:///{tmp}/search.db"
    recipe.write_text(yaml.safe_dump(RECIPE))
    procs = [_worker(recipe, root, url, tmp / f"worker{i}.log") for i in range(2)]
    codes = [p.wait(timeout=900) for p in procs]
    logs = [(tmp / f"worker{i}.log").read_text() for i in range(2)]
    report = CliRunner().invoke(cli, ["search", str(recipe), "-o", str(root), *AXES, "--storage", url, "--report"])
    data = json.loads((root / "srch" / "search" / "search.json").read_text()) if report.exit_code == 0 else None
    return {"recipe": recipe, "root": root, "url": url, "logs": logs, "codes": codes, "report": report, "data": data}


@pytest.mark.slow
def test_two_workers_build_every_variant_once(shared):
    assert shared["codes"] == [0, 0], "\n".join(shared["logs"])[-4000:]
    trials = _trials(shared["url"])
    assert all(t.state == TrialState.COMPLETE and t.user_attrs["built"] for t in trials)
    assert sorted(t.user_attrs["variant"] for t in trials) == sorted(NAMES)  # one trial per variant, none twice
    assert len({t.user_attrs["key"] for t in trials}) == 4
    # Every stage cache entry was computed by one worker only (the other waited for its claim and loaded it) ...
    computed = [k for t in trials for k, s in zip(t.user_attrs["keys"], t.user_attrs["stages"]) if not s["cached"]]
    assert len(computed) == len(set(computed))
    entries = sorted(p.name for p in (shared["root"] / ".cache" / "stages").iterdir())
    assert entries == sorted({k for t in trials for k in t.user_attrs["keys"]})  # ... and stored once, no leftovers
    assert not list(shared["root"].rglob("*.tmp")) and not list(shared["root"].rglob(".partial-*"))
    # ... and so was the teacher: one build trained it, the three others reused it.
    assert sum(log.count("teacher: reusing cached weights") for log in shared["logs"]) == 3
    # The work split: each worker built some, and together all.
    by_worker = collections.Counter(t.user_attrs["worker"] for t in trials)
    assert len(by_worker) == 2 and sum(by_worker.values()) == 4


@pytest.mark.slow
def test_report_measures_the_study_in_one_session(shared):
    result = shared["report"]
    assert result.exit_code == 0, result.output
    data = shared["data"]  # search.json as the report wrote it (later tests write their own)
    assert {c["name"] for c in data["candidates"]} == NAMES and data["variants_run"] == data["variants_planned"] == 4
    assert sorted(data["measured_together"]) == sorted(["teacher", "scratch", *NAMES])
    assert data["frontier"] and data["study"]["built_once"] and not data["study"]["failed"]
    workers = data["study"]["workers"]
    assert sorted(n for w in workers.values() for n in w["built"]) == sorted(NAMES)
    trials = {t.user_attrs["variant"]: t for t in _trials(shared["url"])}
    for c in data["candidates"]:
        assert c["built_by"] == trials[c["name"]].user_attrs["worker"] and c["trial"] == trials[c["name"]].number
    assert "built by 2 worker(s)" in result.output and "each variant once" in result.output


@pytest.mark.slow
def test_another_search_cannot_join_the_study(shared):
    with pytest.raises(SearchError, match=r"study 'srch' in .* searches something else \(axes differ"):
        search(parse_recipe(RECIPE), shared["root"], ratios=["0.3"], modes=["int8_static"], storage=shared["url"],
               quiet=True)


@pytest.mark.slow
def test_report_refuses_while_a_worker_builds(shared, tmp_path):
    shutil.copy(shared["url"].removeprefix("sqlite:///"), tmp_path / "copy.db")
    url = f"sqlite:///{tmp_path}/copy.db"
    optuna.load_study(study_name="srch", storage=open_storage(url).storage).ask()  # RUNNING, as a live worker's
    with pytest.raises(CompressError, match="1 variant\\(s\\) are being built .*while no worker runs"):
        search(parse_recipe(RECIPE), shared["root"], storage=url, report=True, quiet=True, **KW)


@pytest.mark.slow
def test_budget_bounds_each_worker_and_the_report_lists_what_is_queued(shared, tmp_path):
    # A clock that moves 10 s per reading: the recipe's own variant always runs; then 25 s are spent.
    url = f"sqlite:///{tmp_path}/budget.db"
    summary = search(parse_recipe(RECIPE), shared["root"], storage=url, study="b", budget=25, quiet=True,
                     clock=itertools.count(0, 10).__next__, **KW)
    assert summary["built"] == ["r0.3-int8_static-w4"] and len(summary["skipped"]) == 3
    assert summary["trials"] == {"waiting": 3, "complete": 1}  # left in the queue for other workers
    result = search(parse_recipe(RECIPE), shared["root"], storage=url, study="b", report=True, quiet=True, **KW)
    assert [c["name"] for c in result["candidates"]] == ["r0.3-int8_static-w4"]
    assert sorted(s["name"] for s in result["skipped"]) == sorted(NAMES - {"r0.3-int8_static-w4"})
    assert all(s["why"] == "not built yet (queued)" for s in result["skipped"])
    md = (shared["root"] / "srch" / "search" / "search.md").read_text()
    assert "Not built yet (still queued; start a worker, then report again)" in md


@pytest.mark.slow
def test_tpe_workers_share_a_journal_study(shared, tmp_path):
    url = f"journal:{tmp_path}/tpe.log"
    summary = search(parse_recipe(RECIPE), shared["root"], storage=url, method="tpe", trials=3, quiet=True, **KW)
    assert summary["trials"].get("complete", 0) + summary["trials"].get("pruned", 0) >= 3
    trials = [t for t in _trials(url) if t.state == TrialState.COMPLETE]
    assert trials[0].user_attrs["recipe"]  # the recipe's own point is the first trial
    built = [t.user_attrs["key"] for t in trials if t.user_attrs.get("built")]
    assert len(built) == len(set(built)) == len(summary["built"])  # a point suggested again is reused, not rebuilt
    for t in trials:
        assert 0.3 <= t.user_attrs["point"]["ratio"] <= 0.5
    result = search(parse_recipe(RECIPE), shared["root"], storage=url, method="tpe", trials=3, report=True,
                    quiet=True, **KW)
    assert result["method"] == "tpe" and result["variants_run"] == len(built)


# --- a worker killed mid-build -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_workers_variant_is_built_by_the_next(tmp_path):
    recipe, root, url = tmp_path / "srch.yaml", tmp_path / "out", f"journal:{tmp_path}/search.log"
    recipe.write_text(yaml.safe_dump(RECIPE))
    first = _worker(recipe, root, url, tmp_path / "first.log", "--heartbeat", "1")
    deadline = time.monotonic() + 600
    victim = None
    while victim is None and time.monotonic() < deadline and first.poll() is None:  # kill it in its second variant
        try:
            trials = _trials(url)
        except KeyError:  # not created yet
            trials = []
        if any(t.state == TrialState.COMPLETE for t in trials):
            victim = next((t.number for t in trials if t.state == TrialState.RUNNING), None)
        time.sleep(0.05)
    assert victim is not None, "the first worker finished before it could be killed"
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = _worker(recipe, root, url, tmp_path / "second.log", "--heartbeat", "1")
    code = second.wait(timeout=900)
    log = (tmp_path / "second.log").read_text()
    assert code == 0, log[-4000:]
    trials = _trials(url)
    assert trials[victim].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].user_attrs["variant"] == trials[victim].user_attrs["variant"]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["variant"] for t in done) == sorted(NAMES)  # each variant once, none lost
    assert "queued again 1 of crashed workers" in log
    assert not list(root.rglob(".partial-*"))  # the killed build's staging folder was cleared by the next builder
