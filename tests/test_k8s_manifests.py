"""The Kubernetes manifests in examples/k8s, checked without a cluster.

Three layers:

* every document deserialises into the official ``kubernetes`` client model
  and serialises back to exactly what the file says (the models silently
  drop keys they do not know, so a misspelt field shows up as a difference);
* the rules the API server would enforce on what we use (indexed mode,
  pod failure policy) and the wiring ``WorkerIdentity.from_env`` depends on;
* the environment a pod would get (what the Job controller, the downward API
  and the Secrets resolve to) is fed to ``WorkerIdentity.from_env``, to
  ``Sealer.from_env`` and to the example's own ``main`` with the manifest's
  arguments.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from kubernetes.client import ApiClient

from icechunk_coop import WaitPolicy, WorkerIdentity, WorkerOutcome
from icechunk_coop.errors import IdentityError, MissingSecretError
from icechunk_coop.rendezvous._waiting import DEADLINE_ENV, deadline_margin, policy_for_environment
from icechunk_coop.wire import Sealer

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "examples" / "k8s"
EXAMPLE = ROOT / "examples" / "synthetic_forecast.py"
SCRIPT = "examples/synthetic_forecast.py"

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
JOB_NAME_PATH = f"metadata.labels['{JOB_NAME_LABEL}']"
JOB_UID_PATH = f"metadata.labels['{JOB_UID_LABEL}']"
FAILURE_COUNT_ANNOTATION = "batch.kubernetes.io/job-index-failure-count"
UID = "5e1c0d2a-7f3b-4c8e-9a61-0b2d4e6f8a1c"
SCHEDULED_MINUTES = 29000000  # what a CronJob puts after its name
SCHEDULED = datetime(2025, 2, 19, 21, 20, tzinfo=UTC)  # 29000000 minutes after 1970

MODELS = {
    ("v1", "Secret"): "V1Secret",
    ("batch/v1", "Job"): "V1Job",
    ("batch/v1", "CronJob"): "V1CronJob",
}
EXPECTED_KINDS = {
    "secret.yaml": ["Secret", "Secret"],
    "backfill-job.yaml": ["Job"],
    "update-cronjob.yaml": ["CronJob"],
}
CREDENTIAL_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)
LABEL_PATH = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]")
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


# ---- loading ----------------------------------------------------------------------


def load(name: str) -> list[dict[str, Any]]:
    with (K8S / name).open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def documents() -> Iterator[tuple[str, int, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.y*ml")):
        for number, doc in enumerate(load(path.name)):
            yield path.name, number, doc


ALL_DOCUMENTS = list(documents())


def the(name: str, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in load(name) if d["kind"] == kind]
    return doc


def backfill_job() -> dict[str, Any]:
    return the("backfill-job.yaml", "Job")


def update_cronjob() -> dict[str, Any]:
    return the("update-cronjob.yaml", "CronJob")


def job_specs() -> dict[str, dict[str, Any]]:
    """Every Job spec: the backfill's own and the CronJob's template."""
    return {
        "backfill": backfill_job()["spec"],
        "update": update_cronjob()["spec"]["jobTemplate"]["spec"],
    }


def worker(spec: Mapping[str, Any]) -> dict[str, Any]:
    (container,) = spec["template"]["spec"]["containers"]
    return dict(container)


def env_entries(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    entries = worker(spec).get("env", [])
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e for e in entries}


def secrets_data() -> dict[str, dict[str, str]]:
    """What each Secret in secret.yaml holds (data decoded, stringData as is)."""
    out: dict[str, dict[str, str]] = {}
    for doc in load("secret.yaml"):
        data = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
        data.update(doc.get("stringData") or {})
        out[doc["metadata"]["name"]] = data
    return out


# ---- the client models --------------------------------------------------------------


class _Response:
    """What older kubernetes clients' ``ApiClient.deserialize`` reads (``.data``)."""

    def __init__(self, text: str) -> None:
        self.data = text


def deserialize(doc: Mapping[str, Any]) -> Any:
    model = MODELS.get((doc.get("apiVersion"), doc.get("kind")))
    assert model is not None, f"no client model for {doc.get('apiVersion')} {doc.get('kind')}"
    client = ApiClient()
    text = json.dumps(doc)
    if "response_text" in inspect.signature(client.deserialize).parameters:
        return client.deserialize(text, model, "application/json")
    return client.deserialize(_Response(text), model)  # older kubernetes clients


def differences(want: Any, got: Any, path: str = "") -> list[str]:
    """Where ``got`` (the round trip) differs from ``want`` (the file)."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for key in sorted(set(want) | set(got)):
            where = f"{path}.{key}" if path else key
            if key not in got:
                out.append(f"{where}: dropped by the client model (unknown or misspelt field?)")
            elif key not in want:
                out.append(f"{where}: added by the client model ({got[key]!r})")
            else:
                out.extend(differences(want[key], got[key], where))
        return out
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return [
            d
            for i, (w, g) in enumerate(zip(want, got, strict=True))
            for d in differences(w, g, f"{path}[{i}]")
        ]
    if want != got or type(want) is not type(got):
        return [f"{path}: {want!r} came back as {got!r}"]
    return []


def round_trip_problems(doc: Mapping[str, Any]) -> list[str]:
    model = deserialize(doc)
    return differences(dict(doc), ApiClient().sanitize_for_serialization(model))


def test_the_expected_documents_are_there() -> None:
    found: dict[str, list[str]] = {}
    for name, _, doc in ALL_DOCUMENTS:
        found.setdefault(name, []).append(doc["kind"])
    assert found == EXPECTED_KINDS


@pytest.mark.parametrize(
    "doc", [d for _, _, d in ALL_DOCUMENTS], ids=[f"{n}#{i}" for n, i, _ in ALL_DOCUMENTS]
)
def test_every_document_survives_the_client_model_round_trip(doc: dict[str, Any]) -> None:
    problems = round_trip_problems(doc)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("path", "misspelt"),
    [
        (("spec", "backoffLimitPerIndex"), "backoffLimitPerIdx"),
        (("spec", "podFailurePolicy"), "podFailurePolicies"),
        (("spec", "template", "spec", "restartPolicy"), "restartpolicy"),
    ],
)
def test_the_round_trip_catches_a_misspelt_field(path: tuple[str, ...], misspelt: str) -> None:
    doc = copy.deepcopy(backfill_job())
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[misspelt] = parent.pop(path[-1])
    assert any(misspelt in p and "dropped" in p for p in round_trip_problems(doc))


def test_the_round_trip_catches_a_misspelt_env_source() -> None:
    doc = copy.deepcopy(backfill_job())
    for entry in doc["spec"]["template"]["spec"]["containers"][0]["env"]:
        if entry["name"] == "JOB_NAME":
            entry["valueFrom"]["fieldref"] = entry["valueFrom"].pop("fieldRef")
    assert any("fieldref" in p for p in round_trip_problems(doc))


# ---- what the API server would refuse, for the fields we use ----------------------------


@pytest.mark.parametrize("which", ["backfill", "update"])
def test_indexed_job_rules(which: str) -> None:
    spec = job_specs()[which]
    pod = spec["template"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert pod["restartPolicy"] == "Never"  # needed by backoffLimitPerIndex and podFailurePolicy
    assert spec["backoffLimitPerIndex"] >= 1
    assert 0 <= spec["maxFailedIndexes"] <= spec["completions"]
    assert spec.get("podReplacementPolicy", "Failed") == "Failed"  # forced by podFailurePolicy
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["ttlSecondsAfterFinished"] > 0
    assert "backoffLimit" not in spec  # with backoffLimitPerIndex it would cap all indexes together
    container = worker(spec)
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) >= {"cpu", "memory"}, kind


@pytest.mark.parametrize("which", ["backfill", "update"])
def test_pod_failure_policy_is_valid_and_useful(which: str) -> None:
    spec = job_specs()[which]
    containers = {c["name"] for c in spec["template"]["spec"]["containers"]}
    rules = spec["podFailurePolicy"]["rules"]
    for rule in rules:
        assert rule["action"] in {"FailJob", "FailIndex", "Ignore", "Count"}
        assert ("onExitCodes" in rule) != ("onPodConditions" in rule), rule
        if "onExitCodes" in rule:
            codes = rule["onExitCodes"]
            assert codes["operator"] in {"In", "NotIn"}
            assert codes.get("containerName", next(iter(containers))) in containers
            values = codes["values"]
            assert values == sorted(set(values)) and values, "values must be sorted and unique"
            assert codes["operator"] != "In" or 0 not in values
        for pattern in rule.get("onPodConditions", []):
            assert pattern["status"] in {"True", "False", "Unknown"}  # the server requires it
    ignore = [r for r in rules if r["action"] == "Ignore"]
    assert any(p["type"] == "DisruptionTarget" for r in ignore for p in r["onPodConditions"])
    (fail_index,) = [r for r in rules if r["action"] == "FailIndex"]
    # Exit 2 is for mistakes a retry cannot fix; 1 is everything else and must be retried.
    assert fail_index["onExitCodes"] == {"containerName": "worker", "operator": "In", "values": [2]}


def test_the_example_exits_2_on_a_usage_error(example: ModuleType) -> None:
    with pytest.raises(SystemExit) as exc:
        example.main(["backfill", "--repo", "s3://b/r", "--rendezvous", "s3://b/z"])  # no --end
    assert exc.value.code == 2


def test_the_example_exits_2_when_no_retry_can_help(
    example: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An index out of range is an IdentityError: not retryable, so exit 2, not a traceback.
    for name, value in {"JOB_COMPLETION_INDEX": "8", "WORKERS_TOTAL": "8", "JOB_NAME": "j"}.items():
        monkeypatch.setenv(name, value)
    argv = ["backfill", "--end", "2025-01-03T00:00Z", "--repo", "r", "--rendezvous", "z"]
    assert example.main(argv) == 2


@pytest.mark.parametrize("value", ["60", "2h"])
def test_the_example_exits_2_on_a_bad_deadline(example: ModuleType, value: str) -> None:
    argv = ["backfill", "--end", "2025-01-03T00:00Z", "--repo", "r", "--rendezvous", "z"]
    with pytest.raises(SystemExit) as exc:
        example.main([*argv, "--deadline", value])
    assert exc.value.code == 2


def test_python_exits_2_when_the_script_is_not_there(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "examples/synthetic_forecast.py"],
        cwd=tmp_path,  # a wrong workingDir
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 2


# ---- the wiring from_env depends on ------------------------------------------------------


@pytest.mark.parametrize("which", ["backfill", "update"])
def test_completions_parallelism_and_workers_total_agree(which: str) -> None:
    spec = job_specs()[which]
    total = int(env_entries(spec)["WORKERS_TOTAL"]["value"])
    assert spec["completions"] == spec["parallelism"] == total


def success_policy_refusals(spec: Mapping[str, Any]) -> list[str]:
    """What the API server says of a Job's successPolicy (batch/v1 validation), if anything.

    Only the rules the manifests depend on: Indexed mode, and every index of
    ``succeededIndexes`` (a list of ``N`` or ``N-M``) below ``completions``.
    """
    policy = spec.get("successPolicy")
    if policy is None:
        return []
    out = []
    if spec.get("completionMode") != "Indexed":
        out.append("successPolicy requires completionMode Indexed")
    completions = spec["completions"]
    for rule in policy["rules"]:
        for part in str(rule.get("succeededIndexes", "")).split(","):
            bounds = [int(b) for b in part.split("-")]
            if max(bounds) >= completions:
                out.append(f"succeededIndexes {part!r} must be less than completions {completions}")
        if rule.get("succeededCount", 0) > completions:
            out.append(f"succeededCount must not exceed completions {completions}")
    return out


@pytest.mark.parametrize("which", ["backfill", "update"])
def test_the_job_succeeds_exactly_when_the_committing_index_succeeds(which: str) -> None:
    spec = job_specs()[which]
    total = int(env_entries(spec)["WORKERS_TOTAL"]["value"])
    # One rule, naming the last index alone: the only worker that exits 0 after a commit.
    assert spec["successPolicy"] == {"rules": [{"succeededIndexes": str(total - 1)}]}
    assert spec["completions"] == total
    assert success_policy_refusals(spec) == []


@pytest.mark.parametrize("which", ["backfill", "update"])
def test_fewer_completions_than_workers_are_refused_not_completed(which: str) -> None:
    """A Job edited in one place, or scaled down (elastic Indexed Job), is refused loudly.

    Without a successPolicy, indexes 0..3 of ``WORKERS_TOTAL=8`` would all exit
    0 and the Job would end Complete with nothing committed.
    """
    spec = copy.deepcopy(job_specs()[which])
    total = spec["completions"]
    spec["completions"] = spec["parallelism"] = total // 2
    refusals = success_policy_refusals(spec)
    assert refusals == [
        f"succeededIndexes {str(total - 1)!r} must be less than completions {total // 2}"
    ]


@pytest.mark.parametrize("which", ["backfill", "update"])
def test_workers_wait_until_just_before_the_jobs_deadline(which: str) -> None:
    spec = job_specs()[which]
    deadline = spec["activeDeadlineSeconds"]
    env = pod_env(spec, job_name="j", index=0)
    assert env[DEADLINE_ENV] == str(deadline)
    policy = policy_for_environment(None, env, since=1_000_000.0)
    assert policy is not None and policy.ends_at is not None
    ends_after = policy.ends_at - 1_000_000.0
    # A few minutes before Kubernetes stops the pods: long enough to report, no longer.
    assert ends_after == deadline - deadline_margin(deadline)
    assert 60 <= deadline - ends_after <= 600
    assert policy.timeout == ends_after  # no wait stops at the old 1 h default


@pytest.mark.parametrize("which", ["backfill", "update"])
def test_markers_can_name_the_try_and_the_pod(which: str) -> None:
    spec = job_specs()[which]
    env = pod_env(spec, job_name="j", index=1, failures=2)
    ident = WorkerIdentity.from_env(env)
    assert (ident.attempt, ident.pod) == (2, "j-1-x7k2p")
    # An older controller without the annotation: the try is unknown, not 0.
    ident = WorkerIdentity.from_env(pod_env(spec, job_name="j", index=1, failures=None))
    assert (ident.attempt, ident.pod) == (None, "j-1-x7k2p")


@pytest.mark.parametrize("which", ["backfill", "update"])
def test_job_name_and_uid_come_from_the_job_controller_labels(which: str) -> None:
    env = env_entries(job_specs()[which])
    assert env["JOB_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": JOB_NAME_PATH}}
    assert env["JOB_UID"]["valueFrom"] == {"fieldRef": {"fieldPath": JOB_UID_PATH}}


@pytest.mark.parametrize("which", ["backfill", "update"])
def test_nothing_overrides_the_orchestrator(which: str) -> None:
    env = env_entries(job_specs()[which])
    # A literal WORKER_INDEX would give every pod the same index; JOB_COMPLETION_INDEX
    # is the controller's; JOB_START in a CronJob would freeze its clock.
    assert not {"WORKER_INDEX", "JOB_COMPLETION_INDEX", "JOB_START"} & set(env)
    assert "ICECHUNK_COOP_INSECURE" not in env


@pytest.mark.parametrize("which", ["backfill", "update"])
def test_secrets_come_from_secret_key_refs_that_exist(which: str) -> None:
    env = env_entries(job_specs()[which])
    stored = secrets_data()
    assert env["ICECHUNK_COOP_SECRET"]["valueFrom"] == {
        "secretKeyRef": {"name": "icechunk-coop", "key": "secret"}
    }
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for e in env.values()
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert len(refs) >= 3  # the shared secret and both AWS keys
    for ref in refs:
        assert ref["key"] in stored.get(ref["name"], {}), ref
        assert not ref.get("optional", False), ref
    for name, entry in env.items():
        if CREDENTIAL_NAME.search(name):
            assert "value" not in entry, f"{name} is a literal: put it in a Secret"
    if _arg(job_specs()[which], "--repo").startswith("s3://"):
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= set(env)


def test_the_placeholder_secret_is_refused() -> None:
    placeholder = secrets_data()["icechunk-coop"]["secret"]
    with pytest.raises(MissingSecretError, match="bytes long"):
        Sealer.from_env("job", {"ICECHUNK_COOP_SECRET": placeholder})


@pytest.mark.parametrize("which", ["backfill", "update"])
def test_the_container_runs_the_example(which: str) -> None:
    container = worker(job_specs()[which])
    argv = [*container["command"], *container.get("args", [])]
    (at,) = [i for i, a in enumerate(argv) if a.endswith(SCRIPT)]
    assert argv[at + 1] == which
    assert Path(argv[at]).is_absolute() or container["workingDir"]
    assert argv[:at] == ["python"]


def test_cronjob_name_is_what_the_worker_strips() -> None:
    cron = update_cronjob()
    name = cron["metadata"]["name"]
    env = env_entries(cron["spec"]["jobTemplate"]["spec"])
    assert env["CRONJOB_NAME"] == {"name": "CRONJOB_NAME", "value": name}
    assert len(name) <= 52  # the controller refuses longer CronJob names
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["startingDeadlineSeconds"] > 0
    period_bound = cron["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    assert period_bound < 3 * 3600  # below the schedule's period, or Forbid skips runs


def test_the_backfill_job_name_fits_a_label() -> None:
    assert len(backfill_job()["metadata"]["name"]) <= 63


def _field_matches(field: str, value: int) -> bool:
    for part in field.split(","):
        if part == "*":
            return True
        if part.startswith("*/") and value % int(part[2:]) == 0:
            return True
        if part.isdigit() and int(part) == value:
            return True
        if not (part.startswith("*/") or part.isdigit()):
            pytest.fail(f"cron field {field!r}: this test only understands N, */N and lists")
    return False


def test_the_simulated_scheduled_time_is_one_the_schedule_fires_at() -> None:
    spec = update_cronjob()["spec"]
    minute, hour, day, month, weekday = spec["schedule"].split()
    assert (day, month, weekday) == ("*", "*", "*")
    local = SCHEDULED.astimezone(ZoneInfo(spec["timeZone"]))  # job names encode UTC minutes
    assert _field_matches(minute, local.minute) and _field_matches(hour, local.hour)
    assert int(SCHEDULED.timestamp()) // 60 == SCHEDULED_MINUTES


# ---- the environment a pod gets ------------------------------------------------------------


def pod_env(
    spec: Mapping[str, Any],
    *,
    job_name: str,
    index: int,
    legacy_labels_only: bool = False,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    failures: int | None = 0,
) -> dict[str, str]:
    """What the kubelet would give the worker container of pod ``index``.

    The Job controller labels the pod with the Job's name and uid and injects
    ``JOB_COMPLETION_INDEX``; with ``backoffLimitPerIndex`` it annotates the
    pod with its index's failures so far (``failures``; None: no annotation);
    the downward API turns a missing label into ""; a missing Secret key
    keeps the pod from starting.
    """
    template = spec["template"]
    labels = dict(template.get("metadata", {}).get("labels", {}))
    labels.update({"job-name": job_name, "controller-uid": UID})  # every version
    if not legacy_labels_only:  # Kubernetes >= 1.27
        labels.update(
            {
                JOB_NAME_LABEL: job_name,
                JOB_UID_LABEL: UID,
                "batch.kubernetes.io/job-completion-index": str(index),
            }
        )
    annotations = {"batch.kubernetes.io/job-completion-index": str(index)}
    if failures is not None:
        annotations[FAILURE_COUNT_ANNOTATION] = str(failures)
    meta = {"metadata.name": f"{job_name}-{index}-x7k2p", "metadata.namespace": "default"}
    stored = secrets_data() if secrets is None else secrets
    env = {"JOB_COMPLETION_INDEX": str(index)}
    for entry in worker(spec).get("env", []):
        name, source = entry["name"], entry.get("valueFrom")
        if source is None:
            env[name] = VAR_REF.sub(lambda m: env.get(m[1], m[0]), entry.get("value", ""))
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            found = LABEL_PATH.fullmatch(path)
            if found:
                env[name] = (labels if found[1] == "labels" else annotations).get(found[2], "")
            else:
                assert path in meta, f"the simulation does not know fieldPath {path!r}"
                env[name] = meta[path]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[name] = stored[ref["name"]][ref["key"]]
        else:
            pytest.fail(f"env {name}: the simulation does not know {sorted(source)}")
    return env


def _identities(
    spec: Mapping[str, Any], job_name: str, **kwargs: Any
) -> list[tuple[dict[str, str], WorkerIdentity]]:
    total = spec["completions"]
    envs = [pod_env(spec, job_name=job_name, index=i, **kwargs) for i in range(total)]
    return [(env, WorkerIdentity.from_env(env)) for env in envs]


def test_backfill_pods_know_who_they_are() -> None:
    job = backfill_job()
    spec, name = job["spec"], job["metadata"]["name"]
    pods = _identities(spec, name)
    assert len(pods) == spec["completions"] == 8
    for index, (_, ident) in enumerate(pods):
        assert ident.orchestrator == "kubernetes"
        assert (ident.worker_index, ident.workers_total) == (index, 8)
        assert (ident.job_name, ident.job_uid) == (name, UID)
        assert ident.job_id == f"{name}-{UID}"
        assert ident.job_start is None  # a backfill is bounded by --end
        assert ident.is_first == (index == 0)
        assert ident.is_last == (index == 7)
    assert [i.is_last for _, i in pods].count(True) == 1


def test_update_pods_read_the_scheduled_time_from_the_job_name() -> None:
    cron = update_cronjob()
    spec = cron["spec"]["jobTemplate"]["spec"]
    job_name = f"{cron['metadata']['name']}-{SCHEDULED_MINUTES}"
    pods = _identities(spec, job_name)
    assert len(pods) == 4
    for index, (_, ident) in enumerate(pods):
        assert (ident.worker_index, ident.workers_total) == (index, 4)
        assert ident.job_name == job_name
        assert ident.job_start == SCHEDULED
        assert ident.job_start.isoformat() == "2025-02-19T21:20:00+00:00"
    assert pods[-1][1].is_last and not pods[-1][1].is_first
    assert pods[0][1].is_first and not pods[0][1].is_last


def test_every_pod_of_a_job_shares_one_sealer_key(secret: str) -> None:
    spec = backfill_job()["spec"]
    stored = {**secrets_data(), "icechunk-coop": {"secret": secret}}
    sealed = None
    for index in range(spec["completions"]):
        env = pod_env(spec, job_name="b", index=index, secrets=stored)
        sealer = Sealer.from_env(WorkerIdentity.from_env(env).job_id, env)
        assert sealer.authenticated
        if sealed is None:
            sealed = sealer.seal({"from": index}, name="result-0", content="json")
        else:
            assert sealer.open(sealed, name="result-0", location="t", expect="json") == {"from": 0}


def test_clusters_before_1_27_are_refused_by_name() -> None:
    """Only ``job-name`` exists there: JOB_NAME resolves to "" and is refused."""
    spec = backfill_job()["spec"]
    env = pod_env(spec, job_name="b", index=0, legacy_labels_only=True)
    assert env["JOB_NAME"] == ""
    with pytest.raises(IdentityError, match="JOB_NAME is not set"):
        WorkerIdentity.from_env(env)


def test_a_job_created_by_hand_from_the_cronjob() -> None:
    """``kubectl create job --from=cronjob/NAME JOB``: no start, or the two ways the docs show."""
    cron = update_cronjob()
    spec, name = cron["spec"]["jobTemplate"]["spec"], cron["metadata"]["name"]
    env = pod_env(spec, job_name="manual-update", index=0)
    # No pod reads a start off its own clock: worker 0 decides it and pins it in the setup.
    assert WorkerIdentity.from_env(env).job_start is None
    # A name that carries the minute works like a scheduled run ...
    env = pod_env(spec, job_name=f"{name}-{SCHEDULED_MINUTES}", index=0)
    assert WorkerIdentity.from_env(env).job_start == SCHEDULED
    # ... and so does JOB_START added to the pod spec.
    env = pod_env(spec, job_name="manual-update", index=0)
    env["JOB_START"] = "2025-02-19T21:20:00Z"
    assert WorkerIdentity.from_env(env).job_start == SCHEDULED


# ---- the example's own main, with the manifest's argv and environment ---------------------


@pytest.fixture(scope="module")
def example() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("k8s_synthetic_forecast", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _run_main(
    example: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    spec: Mapping[str, Any],
    env: Mapping[str, str],
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run ``main`` with the container's argv in exactly the pod's environment."""
    calls: dict[str, Any] = {}

    def fake(mode: str) -> Any:
        def run(self: Any, **kwargs: Any) -> WorkerOutcome:
            calls.update(mode=mode, dataset=self, **kwargs)
            ident = kwargs["identity"]
            return WorkerOutcome(
                job_id=ident.job_id,
                worker_index=ident.worker_index,
                status="published",
                job_start=ident.job_start,
            )

        return run

    monkeypatch.setattr(example.SyntheticForecast, "backfill", fake("backfill"))
    monkeypatch.setattr(example.SyntheticForecast, "update", fake("update"))
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    container = worker(spec)
    argv = [*container["command"], *container.get("args", [])]
    at = next(i for i, a in enumerate(argv) if a.endswith(SCRIPT))
    assert example.main([*argv[at + 1 :], *extra]) == 0
    return calls


def _arg(spec: Mapping[str, Any], option: str) -> str:
    args = worker(spec)["args"]
    return str(args[args.index(option) + 1])


def test_backfill_main_gets_the_manifests_arguments_and_identity(
    example: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = backfill_job()
    spec = job["spec"]
    last = spec["completions"] - 1
    env = pod_env(spec, job_name=job["metadata"]["name"], index=last)
    calls = _run_main(example, monkeypatch, spec, env)
    assert calls["mode"] == "backfill"
    assert calls["identity"] == WorkerIdentity.from_env(env)
    assert calls["identity"].is_last
    assert calls["rendezvous_url"] == _arg(spec, "--rendezvous")
    assert calls["dataset"].repo_url == _arg(spec, "--repo")
    assert calls["end"].tzinfo is not None
    assert calls["end"] > example.DATASET_START  # otherwise the backfill writes nothing


def test_update_main_gets_the_scheduled_time(
    example: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cron = update_cronjob()
    spec = cron["spec"]["jobTemplate"]["spec"]
    env = pod_env(spec, job_name=f"{cron['metadata']['name']}-{SCHEDULED_MINUTES}", index=1)
    calls = _run_main(example, monkeypatch, spec, env)
    assert calls["mode"] == "update"
    assert calls["identity"].worker_index == 1
    assert calls["identity"].job_start == SCHEDULED
    assert calls["rendezvous_url"] == _arg(spec, "--rendezvous")
    assert calls["dataset"].repo_url == _arg(spec, "--repo")
    assert "job_start 2025-02-19T21:20:00+00:00" in capsys.readouterr().out


def test_the_examples_deadline_option_wins_over_the_environment(
    example: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = backfill_job()
    spec = job["spec"]
    env = pod_env(spec, job_name=job["metadata"]["name"], index=0)
    assert "policy" not in _run_main(example, monkeypatch, spec, env)  # the environment's, then
    calls = _run_main(example, monkeypatch, spec, env, ("--deadline", "3600"))
    policy = calls["policy"]
    assert isinstance(policy, WaitPolicy)
    assert policy.timeout == 3600 - deadline_margin(3600)
    # A policy with its own end is kept as is, whatever the environment says.
    assert policy_for_environment(policy, env) is policy


def docs_job_spec() -> dict[str, Any]:
    """The Job spec the docs' Kubernetes page shows (docs/how-to/kubernetes.md)."""
    text = (ROOT / "docs" / "how-to" / "kubernetes.md").read_text()
    section = text[text.index("## Every field of the Job spec the protocol depends on") :]
    block = section[section.index("```yaml") + len("```yaml") : section.index("```\n", 8)]
    return dict(yaml.safe_load(block)["spec"])


def test_the_docs_show_every_field_the_protocol_depends_on() -> None:
    """Copied as shown, the docs' snippet must not let two pods of an index run at once."""
    shown = docs_job_spec()
    full = backfill_job()["spec"]
    for key in (
        "completionMode",
        "completions",
        "parallelism",
        "successPolicy",
        "backoffLimitPerIndex",
        "maxFailedIndexes",
        "podReplacementPolicy",
        "podFailurePolicy",
        "activeDeadlineSeconds",
    ):
        assert shown[key] == full[key], key
    env = env_entries(shown)
    assert env[DEADLINE_ENV]["value"] == str(shown["activeDeadlineSeconds"])
    assert env["WORKERS_TOTAL"]["value"] == str(shown["completions"])
    assert "secretKeyRef" in env["ICECHUNK_COOP_SECRET"]["valueFrom"]
