"""`snakemake --profile slurm` on a real single-node Slurm cluster on localhost.

The cluster (Debian's slurm-wlm + munge, fake GPUs backed by /dev/null links) is started by the project's own
tests/slurm/start_slurm.sh and always stopped again. The workflow (demo cohort, reduced test config) runs once
locally and once through the slurm profile; the test then reads Slurm's own job records (sacct with accounting,
`scontrol show job` without) to check that every job went through sbatch with the partition, GPU, memory and time
limit the profile gives its rule, and that the outputs equal the local run's.

Both status modes are covered: `none` (no accounting: --slurm-status-command squeue, records from slurmctld while
MinJobAge keeps them) runs the whole chain, `slurmdbd` (accounting: the plugin's default sacct) its first stages
(MODE_STAGES). PROGANOMALY_SLURM_MODES=none (or slurmdbd) runs only one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import types
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "slurm"))
import wfrun

ROOT = wfrun.ROOT
SCRIPTS = ROOT / "tests" / "slurm"
PROFILE = ROOT / "slurm" / "config.yaml"
CLUSTER_DIR = Path(os.environ.get("PROGANOMALY_SLURM_DIR", "/tmp/proganomaly-slurm"))
MODES = os.environ.get("PROGANOMALY_SLURM_MODES", "none,slurmdbd").split(",")
# Stages each mode runs through Slurm: the whole chain once (without accounting, the fragile path), and with
# accounting only the first two, which is enough to cover sacct status polling and sacct's job records.
MODE_STAGES = {"none": None, "slurmdbd": 2}
RUN_TIMEOUT_S = float(os.environ.get("PROGANOMALY_SLURM_TIMEOUT", "1500"))
# Fast polling for tiny jobs; squeue needs MinJobAge (600 s in start_slurm.sh) >= 3 x the first-poll delay.
FAST_POLL = ("--slurm-init-seconds-before-status-checks", "4", "--seconds-between-status-checks", "3")


# ---------------------------------------------------------------------------------------------------- helpers
def slide_ids(workdir: Path) -> dict[str, str]:
    """{slide id: split} of the sheet, in sheet order."""
    sheet = yaml.safe_load((workdir / "config" / "config.yaml").read_text()).get("slides", "config/slides.tsv")
    table = pd.read_csv(workdir / sheet, sep="\t", dtype=str)
    return dict(zip(table["slide_id"], table["split"], strict=True))


def expand(patterns, slides: dict[str, str]) -> list[str]:
    return [p.format(slide=s) for p in patterns for s in (slides if "{slide}" in p else [None]) if wanted(p, s, slides)]


def wanted(pattern: str, slide: str | None, slides: dict[str, str]) -> bool:
    """Test slides get no TFRecords (nothing reads them), so record targets skip them."""
    return not (slide and pattern.startswith("results/detectors/main/records/") and slides[slide] == "test")


def load_profile() -> dict:
    return yaml.safe_load(PROFILE.read_text())


def expected_request(profile: dict, rule: dict) -> dict:
    """What the profile (over the rule's own resources) asks Slurm for, for one rule."""
    # Snakemake's precedence: default-resources < the rule's own resources < set-resources
    res = dict(profile.get("default-resources", {}))
    res.update({k: v for k, v in rule["resources"].items() if v is not None})
    res.update(profile.get("set-resources", {}).get(rule["name"], {}))
    gpus = int(res.get("gpu") or 0)
    if not gpus and "gpu" in str(res.get("gres", "")):
        gpus = int(str(res["gres"]).rsplit(":", 1)[-1]) if str(res["gres"]).count(":") else 1
    return {"partition": res["slurm_partition"], "gpus": gpus, "mem_mb": res["mem_mb"], "minutes": res["runtime"]}


def cluster_shape(profile: dict, rules: dict) -> dict[str, str]:
    """start_slurm.sh settings that let the one node accept everything the profile asks for, unmodified."""
    default = profile["default-resources"]
    per_rule = list(profile.get("set-resources", {}).values())
    partitions = [default["slurm_partition"]]
    partitions += sorted({r["slurm_partition"] for r in per_rule if "slurm_partition" in r} - set(partitions))
    # the GPU counts are the rules' own (from the config), not the profile's
    gpus = max([expected_request(profile, rule)["gpus"] for rule in rules.values() if not rule["local"]] + [1])
    models = {r["gpu_model"] for r in per_rule if r.get("gpu_model")}
    assert len(models) <= 1, f"the profile names several GPU models {models}; the test node has one kind"
    mem = max([int(r.get("mem_mb", 0)) for r in per_rule] + [int(default["mem_mb"])])
    return {
        "SLURM_TEST_PARTITIONS": " ".join(partitions),
        "SLURM_TEST_GPUS": str(gpus),
        "SLURM_TEST_GPU_TYPE": models.pop() if models else "",
        "SLURM_TEST_CPUS": "16",
        "SLURM_TEST_MEM_MB": str(2 * mem),  # two of the largest jobs at once
    }


def slurm_minutes(limit: str) -> int:
    """Slurm's [D-]HH:MM:SS / MM:SS time limit in minutes."""
    days, _, rest = limit.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return int(days or 0) * 1440 + parts[0] * 60 + parts[1] + (parts[2] > 0)


def slurm_mb(value: str) -> int:
    """Slurm memory like 8000M, 62.50G, 2T in MB."""
    match = re.fullmatch(r"([\d.]+)([KMGT]?)n?c?", value)
    assert match, f"unexpected Slurm memory value {value!r}"
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[match[2]]
    return round(float(match[1]) * scale)


def tres(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


def rule_of(comment: str, rules) -> str | None:
    """The rule a job ran, from the comment the plugin gives it: rule_NAME or rule_NAME_wildcards_..."""
    names = [r for r in rules if comment == f"rule_{r}" or comment.startswith(f"rule_{r}_wildcards_")]
    return max(names, key=len) if names else None


def slurm_jobs(mode: str) -> list[dict]:
    """Slurm's own records of every job of the (fresh) cluster: sacct with accounting, else slurmctld."""
    env = {**os.environ, "SLURM_CONF": str(CLUSTER_DIR / "slurm.conf")}
    if mode == "slurmdbd":
        fields = "JobID,JobName,Partition,State,AllocTRES,ReqMem,Timelimit,Comment"
        out = subprocess.run(
            ["sacct", "-X", "-a", "--parsable2", "--noheader", "-S", "2000-01-01T00:00", "--format", fields],
            capture_output=True, text=True, check=True, env=env, timeout=60,
        ).stdout  # fmt: skip
        jobs = []
        for line in out.splitlines():
            jid, name, part, state, alloc, mem, limit, comment = line.split("|")
            jobs.append(
                {"id": jid, "name": name, "partition": part, "state": state.split()[0],
                 "gpus": int(tres(alloc).get("gres/gpu", 0)), "mem_mb": slurm_mb(mem),
                 "minutes": slurm_minutes(limit), "comment": comment}
            )  # fmt: skip
        return jobs
    # Without accounting slurmctld keeps finished jobs for MinJobAge; -d adds JOB_GRES, the GPUs allocated.
    out = subprocess.run(
        ["scontrol", "-d", "show", "job", "--oneliner"], capture_output=True, text=True, check=True, env=env,
        timeout=60,
    ).stdout  # fmt: skip
    jobs = []
    for line in out.splitlines():
        if not line.startswith("JobId="):
            continue
        fields: dict[str, str] = {}
        for token in line.split():  # the first KEY=value wins: later per-node lines reuse some keys
            key, _, value = token.partition("=")
            fields.setdefault(key, value)
        jobs.append(
            {"id": fields["JobId"], "name": fields["JobName"], "partition": fields["Partition"],
             "state": fields["JobState"], "gpus": gres_gpus(fields.get("JOB_GRES", "")),
             "mem_mb": slurm_mb(fields["MinMemoryNode"]), "minutes": slurm_minutes(fields["TimeLimit"]),
             "comment": fields.get("Comment", "")}
        )  # fmt: skip
    return jobs


def gres_gpus(job_gres: str) -> int:
    """GPUs in a JOB_GRES value such as gpu:1, gpu:a100:2 or (null)."""
    return sum(int(item.split("(")[0].rsplit(":", 1)[1]) for item in job_gres.split(",") if item.startswith("gpu:"))


def same_content(a: Path, b: Path, root_a: Path, root_b: Path) -> None:
    """Assert two outputs hold the same result: tables by value, JSON without VOLATILE_KEYS, the rest byte for byte."""
    assert a.exists() and b.exists(), f"missing: {a if not a.exists() else b}"
    if a.is_dir():
        files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        assert files_a == files_b, f"{a.name}: different files {files_a} vs {files_b}"
        for rel in files_a:
            same_content(a / rel, b / rel, root_a, root_b)
    elif a.suffix == ".parquet":
        pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b), obj=str(a.relative_to(root_a)))
    elif a.suffix == ".json":
        assert _json(a, root_a) == _json(b, root_b), f"{a.relative_to(root_a)} differs between local and Slurm"
    elif a.suffix == ".h5":
        import h5py

        with h5py.File(a) as fa, h5py.File(b) as fb:
            names_a, names_b = [], []
            fa.visit(names_a.append)
            fb.visit(names_b.append)
            assert names_a == names_b, f"{a.name}: different HDF5 layout"
            for name in names_a:
                if isinstance(fa[name], h5py.Dataset):
                    assert (fa[name][()] == fb[name][()]).all(), f"{a.name}:{name} differs"
    elif a.suffix == ".tfrecord":
        assert _examples(a) == _examples(b), f"{a.relative_to(root_a)} holds different examples"
    else:
        digest_a, digest_b = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b))
        assert digest_a == digest_b, f"{a.relative_to(root_a)} differs between local and Slurm"


# Keys of JSON outputs that record how or how fast a result was made, not the result: never compared. "sha256" is
# the manifests' per-shard file hash: tf.train.Example's feature map is serialised in no fixed order, so equal
# records can hash differently between processes; the shards themselves are compared record by record.
VOLATILE_KEYS = {"provenance", "seconds", "elapsed_s", "wall_s", "created", "sha256"}


def _examples(path: Path) -> list[dict]:
    """The tf.train.Examples of a TFRecord file as plain dicts, in file order."""
    import tensorflow as tf

    examples = []
    for record in tf.data.TFRecordDataset(str(path)):
        features = tf.train.Example.FromString(record.numpy()).features.feature
        examples.append({k: (tuple(v.bytes_list.value), tuple(v.int64_list.value)) for k, v in features.items()})
    return examples


def _json(path: Path, root: Path):
    """JSON without provenance and timings, and with the run's own directory made relative."""

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k not in VOLATILE_KEYS}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x.replace(str(root), "<workdir>") if isinstance(x, str) else x

    return clean(json.loads(path.read_text()))


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The local run: the stages whose rules exist, built with --cores 2. Demo data comes from here."""
    workdir = wfrun.copy_tree(tmp_path_factory.mktemp("local"))
    rules = wfrun.workflow_rules(workdir)
    stages = wfrun.chain_so_far(rules)
    slides = slide_ids(workdir)
    targets = expand([t for s in stages for t in s.targets], slides)
    t0 = time.monotonic()
    wfrun.snakemake(workdir, "--cores", "2", "--", *targets, timeout_s=RUN_TIMEOUT_S)
    print(f"local run of {[s.name for s in stages]}: {time.monotonic() - t0:.0f} s")
    return {"workdir": workdir, "rules": rules, "stages": stages, "slides": slides, "targets": targets}


def _stop(directory: Path) -> tuple[int, str]:
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "stop_slurm.sh"), str(directory)], capture_output=True, text=True, timeout=300
    )
    return proc.returncode, proc.stdout + proc.stderr


def _alive(pid: int, name: str) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == name
    except OSError:
        return False


@pytest.fixture(scope="module", params=MODES)
def cluster(request, parsed_rules):
    """A fresh single-node cluster in the given accounting mode; stopped (and checked stopped) afterwards."""
    mode = request.param
    if os.geteuid() != 0 and not shutil.which("sbatch"):
        pytest.skip("Slurm is not installed and installing and starting a local cluster needs root")
    env = {**os.environ, **cluster_shape(load_profile(), parsed_rules), "SLURM_TEST_ACCOUNTING": mode}
    t0 = time.monotonic()
    started = subprocess.run(
        ["bash", str(SCRIPTS / "start_slurm.sh"), str(CLUSTER_DIR)], capture_output=True, text=True, env=env,
        timeout=900,
    )  # fmt: skip
    if started.returncode:
        _stop(CLUSTER_DIR)
        pytest.fail(f"start_slurm.sh failed ({mode}):\n{started.stdout[-4000:]}\n{started.stderr[-4000:]}")
    print(f"cluster ({mode}) up in {time.monotonic() - t0:.1f} s")
    pids = {p.stem: int(p.read_text()) for p in (CLUSTER_DIR / "run").glob("*.pid")}
    try:
        yield {"mode": mode, "dir": CLUSTER_DIR, "pids": pids}
    finally:
        code, out = _stop(CLUSTER_DIR)
        left = {name: pid for name, pid in pids.items() if _alive(pid, name)}
        assert code == 0 and not left, f"daemons left behind: {left}\n{out}"
        assert not Path("/etc/slurm/slurm.conf").is_symlink(), "stop_slurm.sh left the /etc/slurm symlink"


@pytest.fixture(scope="module")
def slurm_run(reference, cluster, tmp_path_factory):
    """The same targets through `snakemake --profile slurm`, from the root of a second copy of the repository."""
    workdir = wfrun.copy_tree(tmp_path_factory.mktemp(f"slurm-{cluster['mode']}"))
    # Demo data is input, not under test: reuse the local run's (mtimes kept) so no job downloads the wheel again.
    shutil.copytree(reference["workdir"] / "results" / "demo", workdir / "results" / "demo", copy_function=shutil.copy2)
    stages = reference["stages"][: MODE_STAGES.get(cluster["mode"])]
    targets = expand([t for s in stages for t in s.targets], reference["slides"])
    planned = wfrun.planned_jobs(workdir, *targets)
    extra = ("--slurm-status-command", "squeue") if cluster["mode"] == "none" else ()
    t0 = time.monotonic()
    out = wfrun.snakemake(
        workdir,
        "--profile", "slurm", "--jobs", "3", *FAST_POLL, *extra, "--", *targets,
        timeout_s=RUN_TIMEOUT_S,
        env=wfrun.run_env(SLURM_CONF=str(cluster["dir"] / "slurm.conf")),
    )  # fmt: skip
    seconds = time.monotonic() - t0
    print(f"slurm run ({cluster['mode']}): {sum(planned.values())} jobs in {seconds:.0f} s")
    return {"workdir": workdir, "stages": stages, "planned": planned, "log": out, "jobs": slurm_jobs(cluster["mode"])}


# ---------------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_every_job_went_through_sbatch(reference, slurm_run):
    rules = reference["rules"]
    planned = Counter({r: n for r, n in slurm_run["planned"].items() if not rules[r]["local"]})
    assert planned, "nothing was planned for Slurm"
    jobs = slurm_run["jobs"]
    ran = Counter(rule_of(job["comment"], rules) for job in jobs)
    assert ran == planned, f"Slurm ran {dict(ran)}, snakemake planned {dict(planned)}"
    assert len({job["name"] for job in jobs}) == 1, "jobs of one run share the run's uuid as job name"
    assert all(job["state"] == "COMPLETED" for job in jobs), [(j["comment"], j["state"]) for j in jobs]


@pytest.mark.slow
def test_jobs_asked_for_what_the_profile_says(reference, slurm_run):
    profile, rules = load_profile(), reference["rules"]
    gpu_jobs = 0
    for job in slurm_run["jobs"]:
        rule = rule_of(job["comment"], rules)
        want = expected_request(profile, rules[rule])
        got_gpus = job["gpus"]
        assert job["partition"] == want["partition"], (rule, job)
        assert got_gpus == want["gpus"], f"{rule}: Slurm allocated {got_gpus} GPUs, the profile asks for {want['gpus']}"
        assert job["mem_mb"] == want["mem_mb"], (rule, job)
        assert job["minutes"] == want["minutes"], (rule, job)
        gpu_jobs += got_gpus > 0
    gpu_rules = {r for r in slurm_run["planned"] if expected_request(profile, rules[r])["gpus"]}
    assert gpu_jobs == sum(slurm_run["planned"][r] for r in gpu_rules)


@pytest.mark.slow
def test_results_equal_the_local_run(reference, slurm_run):
    compare = expand([c for s in slurm_run["stages"] for c in s.compare], reference["slides"])
    local, remote = reference["workdir"], slurm_run["workdir"]
    for rel in compare:
        same_content(local / rel, remote / rel, local, remote)
    # the jobs really ran on the cluster: every sbatch log is there and names its Slurm job
    logs = list((remote / "results" / "logs" / "slurm").rglob("*.log"))
    assert len(logs) == len(slurm_run["jobs"]), (len(logs), len(slurm_run["jobs"]))


@pytest.fixture(scope="module")
def parsed_rules(tmp_path_factory):
    return wfrun.workflow_rules(wfrun.copy_tree(tmp_path_factory.mktemp("parse")))


def test_profile_names_only_existing_rules(parsed_rules):
    """Snakemake ignores set-resources for unknown rules silently, so a typo would drop a GPU request unnoticed."""
    rules = parsed_rules
    unknown = sorted(set(load_profile().get("set-resources", {})) - set(rules))
    assert not unknown, f"slurm/config.yaml sets resources for rules the workflow does not have: {unknown}"


def test_gpu_rules_get_the_gpu_partition(parsed_rules):
    """Every rule that asks for a GPU in the workflow gets one, in a GPU partition, from the profile."""
    profile, rules = load_profile(), parsed_rules
    cpu_partition = profile["default-resources"]["slurm_partition"]
    wants = {name: expected_request(profile, rule) for name, rule in rules.items() if not rule["local"]}
    gpu_partitions = {want["partition"] for want in wants.values() if want["gpus"]}
    assert gpu_partitions and cpu_partition not in gpu_partitions, f"GPU jobs would queue in {gpu_partitions}"
    for name, want in wants.items():
        assert want["minutes"] and want["mem_mb"], f"{name} has no runtime or memory"
        if rules[name]["resources"].get("gpu"):
            assert want["gpus"] == rules[name]["resources"]["gpu"], f"{name}: the profile overrides the GPU count"
        else:
            assert want["partition"] not in gpu_partitions or want["gpus"], f"{name} would idle in a GPU partition"


def test_profile_leaves_the_gpu_count_to_the_rules():
    """The count is the config's (resources.gpus.*, the rules' `gpu`): a `gpu`/`gres` in set-resources would win."""
    for name, res in load_profile().get("set-resources", {}).items():
        assert "gpu" not in res and "gres" not in res, f"slurm/config.yaml sets the GPU count of {name}: {res}"


GPU_COUNTS = {"training": 2, "calibration": 4, "inference": 8}
GPU_RULES = {
    "train_reconstruction": GPU_COUNTS["training"],
    "fit_error_distribution": GPU_COUNTS["calibration"],
    "fit_threshold": GPU_COUNTS["calibration"],
    "export_model": 1,
    "infer_slide": GPU_COUNTS["inference"],
}


def planned_resources(out: str) -> dict[str, list[dict[str, str]]]:
    """Each planned job's resources, by rule, from a dry run's job listing ("rule X:" ... "resources: k=v, ...")."""
    jobs: dict[str, list[dict[str, str]]] = {}
    for rule, text in re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", out, flags=re.M):
        jobs.setdefault(rule, []).append(dict(item.split("=", 1) for item in text.split(", ")))
    return jobs


@pytest.mark.parametrize("gpu_model", [None, "v100"])
def test_sbatch_asks_for_the_configured_gpu_count(tmp_path, gpu_model):
    """resources.gpus.* of 2/4/8 through `snakemake -n --profile slurm`: every GPU job's merged resources carry the
    config's count (export_model 1), and the plugin's own GPU flag builder turns them into --gpus=[MODEL:]N."""
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    workdir = wfrun.copy_tree(tmp_path)
    if gpu_model:
        text = (workdir / PROFILE.relative_to(ROOT)).read_text()
        marker = "    # gpu_model: a100 "
        assert marker in text
        (workdir / PROFILE.relative_to(ROOT)).write_text(text.replace(marker, f"    gpu_model: {gpu_model}  #", 1))
    (workdir / "gpus.yaml").write_text(yaml.safe_dump({"resources": {"gpus": GPU_COUNTS}}))
    target = f"results/detectors/main/slides/{list(slide_ids(workdir))[-1]}/patches.parquet"
    cmd = [wfrun.SNAKEMAKE, "-n", "--profile", "slurm", "--configfile", str(wfrun.TEST_CONFIG), "gpus.yaml"]
    code, out = wfrun.run([*cmd, "--", target], workdir, 600)
    assert code == 0, out[-4000:]
    jobs = planned_resources(out)
    assert set(GPU_RULES) <= set(jobs), sorted(jobs)
    for rule, resources in jobs.items():
        for res in resources:
            job = types.SimpleNamespace(resources=_Resources(res))
            flag = set_gres_string(job).strip()
            if rule not in GPU_RULES:
                assert flag == "" and res["slurm_partition"] != "gpu", (rule, res)
                continue
            n = GPU_RULES[rule]
            assert res["gpu"] == str(n), f"{rule}: the job asks for gpu={res['gpu']}, the config says {n}"
            assert res["slurm_partition"] == "gpu", (rule, res)
            assert flag == (f"--gpus={gpu_model}:{n}" if gpu_model else f"--gpus={n}"), (rule, flag)


class _Resources(dict):
    """A job's resources as the plugin reads them (attribute and .get access)."""

    __getattr__ = dict.__getitem__
