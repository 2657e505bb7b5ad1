"""container.* and slurm.* on both launch paths, before anything is queued: the runtime command lines
(pyxis and Apptainer exist only here, as command lines: docs/containers.md), the sbatch script Submitit
would submit, slurm/chain.sh's sbatch line, and the refusals (exit 2, one line naming the key)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from burn.config import compose_config
from launch import jobs, submit
from launch.container import ContainerConfigError, container_command, image_for, quote_image_override
from launch.site import site_settings

REPO = Path(__file__).resolve().parents[2]
NGC = "nvcr.io/nvidia/pytorch:25.01-py3"


def planned(tmp_path: Path, *overrides: str):
    # No teacher: an `auto` one, unresolved, would mount the folder beside data.root (tested on its own below).
    cfg = compose_config(
        ["preset=tiny", "stage=1", f"run_dir={tmp_path}/run", "data.root=/data/imagenet", "model.teacher_weights=null"]
        + list(overrides)
    )
    return submit.plan_stages(cfg)[0]


def script_of(stage_cfg, use_gpus: bool = False) -> str:
    executor = jobs.build_executor(stage_cfg, Path(stage_cfg.run_dir), None, use_gpus)._executor
    return executor._make_submission_file_text(executor._submitit_command_str, "uid")


@pytest.mark.parametrize(
    "given",
    [NGC, "nvcr.io#nvidia/pytorch:25.01-py3"],
)
def test_pyxis_image_names_take_the_hash_form(given):
    assert image_for("pyxis", given) == "nvcr.io#nvidia/pytorch:25.01-py3"
    assert image_for("podman", given) == NGC
    assert image_for("apptainer", given) == f"docker://{NGC}"
    assert image_for("pyxis", "ubuntu:24.04") == "ubuntu:24.04"  # Docker Hub: no registry to separate
    assert image_for("apptainer", "/images/burn.sif") == "/images/burn.sif"


def test_an_unquoted_hash_image_composes_as_documented():
    """Hydra's lexer refuses `#` unquoted; the entry points quote the value first (quoted stays as is)."""
    unquoted = "container.image=nvcr.io#nvidia/pytorch:25.01-py3"
    assert quote_image_override([unquoted]) == ["container.image='nvcr.io#nvidia/pytorch:25.01-py3'"]
    for form in quote_image_override([unquoted]), ["container.image='nvcr.io#nvidia/pytorch:25.01-py3'"]:
        assert compose_config(form).container.image == "nvcr.io#nvidia/pytorch:25.01-py3"


@pytest.mark.parametrize("typo", ["nvcr.io##nvidia/pytorch", "nvcr.io/nvidia/pytorch:", "nvcr io/x", "nvcr.io//x"])
def test_a_malformed_image_name_is_one_line_naming_the_key(tmp_path, typo):
    cfg = planned(tmp_path, "container.runtime=pyxis", f"container.image='{typo}'")
    with pytest.raises(ContainerConfigError, match=r"^container.image=.*: not an image name \(e.g. ") as err:
        container_command(cfg)
    assert "\n" not in str(err.value)


def test_image_and_runtime_go_together(tmp_path):
    with pytest.raises(ContainerConfigError, match="container.runtime=podman needs container.image"):
        container_command(planned(tmp_path, "container.runtime=podman"))
    with pytest.raises(ContainerConfigError, match="container.image=x:1 is set but container.runtime=none"):
        container_command(planned(tmp_path, "container.image=x:1"))


def test_default_mounts_are_data_run_dir_checkout_and_teacher_at_their_own_paths(tmp_path):
    cfg = planned(
        tmp_path, "container.runtime=podman", "container.image=burn:1", "model.teacher_weights=/models/moco.pth"
    )
    prefix = container_command(cfg).prefix
    binds = [prefix[i + 1] for i, word in enumerate(prefix) if word == "-v"]
    assert binds == [
        "/data/imagenet:/data/imagenet",
        f"{tmp_path}/run:{tmp_path}/run",
        f"{REPO}:{REPO}",
        "/models:/models",  # a file not there yet: its folder (a teacher file must exist: validate() says so)
    ]
    own = planned(tmp_path, "container.runtime=podman", "container.image=burn:1", "container.mounts=[/scratch:/s:ro]")
    assert [w for w in container_command(own).prefix if ":" in w and w.startswith("/")] == ["/scratch:/s:ro"]


def test_pyxis_sbatch_script(tmp_path):
    cfg = planned(tmp_path, "container.runtime=pyxis", f"container.image={NGC}", "nodes=2")
    script = script_of(cfg, use_gpus=True)
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert (
        f"'--container-image=nvcr.io#nvidia/pytorch:25.01-py3' "
        f"--container-mounts=/data/imagenet:/data/imagenet,{tmp_path}/run:{tmp_path}/run,{REPO}:{REPO} "
        f"--container-workdir={REPO} python3 -u -m submitit.core._submit " in srun
    )
    assert f"export PYTHONPATH={REPO}" in script  # the mounted checkout's code runs inside
    # No scontrol inside an image: the batch shell, outside it, decides and requeues after srun.
    assert "export BURN_BATCH_DECIDES=1" in script
    teardown = script.split("# teardown", 1)[1]
    assert "-m launch.batch end --status $?" in teardown
    assert srun.startswith("srun --unbuffered --output") and " --kill-on-bad-exit=1 " in srun
    assert "#SBATCH --requeue\n" in script and "#SBATCH --gpus-per-node=1\n" in script


def test_apptainer_sbatch_script(tmp_path):
    cfg = planned(
        tmp_path, "container.runtime=apptainer", "container.image=/images/burn.sif", "container.args=[--cleanenv]"
    )
    srun = next(line for line in script_of(cfg).splitlines() if line.startswith("srun "))
    assert srun.endswith(
        f"apptainer exec --nv --bind /data/imagenet:/data/imagenet,{tmp_path}/run:{tmp_path}/run,{REPO}:{REPO} "
        f"--pwd {REPO} --cleanenv /images/burn.sif python3 -u -m submitit.core._submit {tmp_path}/run/slurm/%j"
    )


def test_podman_sbatch_script(tmp_path):
    cfg = planned(tmp_path, "container.runtime=podman", "container.image=localhost/burn:1")
    srun = next(line for line in script_of(cfg).splitlines() if line.startswith("srun "))
    assert " podman run --rm --network host -v /data/imagenet:/data/imagenet " in srun
    assert f" -w {REPO} --env 'SLURM*' --env 'SUBMITIT_*' --env 'BURN_*' --env 'MASTER_*' " in srun
    # The allocated GPUs: the batch shell expands it, to nothing on a node without GPUs.
    assert " ${SLURM_JOB_GPUS:+--device=nvidia.com/gpu=all} localhost/burn:1 python3 -u -m submitit" in srun


def test_site_setup_sbatch_and_srun_reach_the_submitit_script(tmp_path):
    cfg = planned(
        tmp_path,
        'slurm.setup=["module load cuda/12.4","source /opt/venv/bin/activate"]',
        'slurm.sbatch={exclusive:true,reservation:gpu-week,gres:"gpu:a100:8",mail_type:END,hint:false}',
        'slurm.srun=["--mpi=none"]',
        "nodes=2",
        "partition=gpu",
        "time=30",
    )
    script = script_of(cfg)
    for line in ("--exclusive", "--reservation=gpu-week", "--gres=gpu:a100:8", "--mail-type=END"):
        assert f"#SBATCH {line}\n" in script
    assert "hint" not in script  # false: left out
    for line in ("--nodes=2", "--partition=gpu", "--time=30", "--signal=USR2@60", "--requeue"):
        assert f"#SBATCH {line}\n" in script  # the top-level keys keep working
    setup = script.split("# setup\n", 1)[1]
    assert setup.startswith("module load cuda/12.4\nsource /opt/venv/bin/activate\n")
    assert setup.index("source /opt/venv") < setup.index("srun ")
    assert "srun --unbuffered --output" in script and " --mpi=none " in script
    # The site's lines come before the batch hook's, which must see the site's environment.
    assert setup.index("source /opt/venv") < setup.index("-m launch.batch start")


@pytest.mark.parametrize(
    "option, key",
    [
        ('{signal:"B:USR2@30"}', "signal_delay_s"),
        ("{dependency:afterok:1}", "stage=all"),
        ("{d:afterok:1}", "stage=all"),
        ("{output:/tmp/x}", "run_dir"),
        ("{N:4}", "nodes"),
        ("{ntasks_per_node:8}", "gpus_per_node"),
        ("{requeue:false}", "max_requeues"),
        ("{time:10}", "time"),
    ],
)
def test_an_option_the_suite_owns_is_refused_naming_its_key(tmp_path, option, key):
    cfg = planned(tmp_path, f"slurm.sbatch={option}")
    with pytest.raises(
        submit.UsageError, match=r"^slurm.sbatch.\w+: the suite sets --[\w-]+ itself; set it with " + key
    ):
        site_settings(cfg)


# ---- the command line: submit.py and slurm/chain.sh -------------------------------------------------------


@pytest.fixture
def fake_sbatch(tmp_path):
    """An `sbatch` on PATH that records its arguments and the site variables it was given, and answers an id."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "sbatch-calls"
    bin_dir.mkdir()
    record = (
        'printf "%s\\n" "$*" "SETUP=${BURN_SITE_SETUP//$\'\\n\'/|}" "SRUN=$BURN_SITE_SRUN" "CONTAINER=$BURN_CONTAINER"'
    )
    (bin_dir / "sbatch").write_text(f"#!/bin/bash\n{{ {record}; }} >> {calls}\necho 4242\n")
    (bin_dir / "sbatch").chmod(0o755)
    (bin_dir / "sinfo").write_text("#!/bin/bash\necho 'debug* up'\n")  # `cluster=auto` sees a SLURM
    (bin_dir / "sinfo").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "BURN_PYTHON": sys.executable}
    return env, calls


def chain(env, run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO / "slurm" / "chain.sh"), str(run_dir), *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.process
@pytest.mark.parametrize("option", ['slurm.sbatch={signal:"B:USR2@30"}', "slurm.sbatch={dependency:afterok:1}"])
def test_submit_refuses_an_owned_sbatch_option_exit_2_nothing_queued(tmp_path, fake_sbatch, option):
    env, calls = fake_sbatch
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "submit.py"),
            "preset=tiny",
            "stage=all",
            f"run_dir={tmp_path}/run",
            option,
        ],
        env=env,
        cwd=tmp_path,  # the tiny preset's data.root is relative: nothing may be generated there either
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("submit.py: slurm.sbatch.") and "the suite sets --" in line
    assert not calls.exists() and not (tmp_path / "run").exists()
    assert not (tmp_path / "data").exists(), "the demo's inputs were made before the launch keys were checked"


@pytest.mark.process
@pytest.mark.parametrize(
    "option, key",
    [('slurm.sbatch={signal:"B:USR2@30"}', "signal_delay_s"), ("slurm.sbatch={dependency:afterok:1}", "stage=all")],
)
def test_chain_sh_refuses_an_owned_sbatch_option_exit_2_nothing_queued(tmp_path, fake_sbatch, option, key):
    env, calls = fake_sbatch
    out = chain(env, tmp_path / "run", "--nodes=1", "--", "preset=tiny", option)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and f"set it with {key}" in out.stderr, out.stderr
    assert not calls.exists() and not (tmp_path / "run").exists()


@pytest.mark.process
def test_chain_sh_passes_site_options_setup_srun_and_container_to_every_stage(tmp_path, fake_sbatch):
    env, calls = fake_sbatch
    out = chain(
        env,
        tmp_path / "run",
        "--nodes=2",
        "--",
        "preset=tiny",
        'slurm.sbatch={exclusive:true,gres:"gpu:a100:8"}',
        'slurm.setup=["module load cuda/12.4"]',
        'slurm.srun=["--mpi=none"]',
        "container.runtime=pyxis",
        "container.image=nvcr.io#nvidia/pytorch:25.01-py3",  # unquoted: chain.sh's overrides get quoted too
    )
    assert out.returncode == 0, out.stderr
    lines = calls.read_text().splitlines()
    assert len(lines) == 12  # 3 stages x (arguments, setup, srun, container)
    for call in range(3):
        args, setup, srun, container = lines[4 * call : 4 * call + 4]
        assert "--nodes=2 --exclusive --gres=gpu:a100:8 " in args and "--signal=B:USR2@60" in args
        assert setup == f"SETUP=module load cuda/12.4|export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}"
        assert srun.startswith("SRUN=--mpi=none --container-image=nvcr.io#nvidia/pytorch:25.01-py3 ")
        assert container == "CONTAINER=python3"


@pytest.mark.process
def test_chain_sh_dry_run_prints_sbatch_and_srun_lines_and_queues_nothing(tmp_path, fake_sbatch):
    env, calls = fake_sbatch
    args = json.dumps(["--runtime", "runc"])
    out = chain(
        env,
        tmp_path / "run",
        "--nodes=2",
        "--",
        "preset=tiny",
        "container.runtime=podman",
        "container.image=localhost/burn:1",
        f"container.args={args}",
        'slurm.setup=["export MASTER_PORT=23456"]',
        "dry_run=true",
    )
    assert out.returncode == 0, out.stderr
    assert not calls.exists() and not (tmp_path / "run").exists()
    text = out.stdout
    assert text.count("# stage ") == 3 and text.count("sbatch --parsable --job-name=burn-") == 3
    assert text.count("set-up: export MASTER_PORT=23456") == 3
    srun = [shlex.split(line) for line in text.splitlines() if line.startswith("batch: srun ")]
    assert len(srun) == 3
    mounts = ["-v", f"{tmp_path}/run:{tmp_path}/run", "-v", f"{REPO}:{REPO}", "-w", str(REPO)]
    head = ["batch:", "srun", "--kill-on-bad-exit=1", "podman", "run", "--rm", "--network", "host", "--runtime", "runc"]
    assert srun[0][: len(head) + len(mounts) + 2] == [*head, *mounts, "--env", "SLURM*"]
    assert srun[0][srun[0].index("localhost/burn:1") :] == [
        "localhost/burn:1",
        "python3",
        "-u",
        "launch/run.py",
        "stage=1",
        f"run_dir={tmp_path}/run/stage1",
        "preset=tiny",
        "container.runtime=podman",
        "container.image=localhost/burn:1",
        f"container.args={args}",
        'slurm.setup=["export MASTER_PORT=23456"]',
    ]


def test_stage_all_mounts_the_stage_each_stage_starts_from(tmp_path):
    cfg = compose_config(
        ["preset=tiny", "stage=all", f"run_dir={tmp_path}", "container.runtime=podman", "container.image=b:1"]
    )
    binds = []
    for stage_cfg in submit.plan_stages(cfg):
        prefix = container_command(stage_cfg).prefix
        binds.append([prefix[i + 1].split(":")[0] for i, word in enumerate(prefix) if word == "-v"])
    assert binds[1][::2] == [f"{tmp_path}/stage2", f"{tmp_path}/stage1"]  # stage 2 reads stage1's extraction
    assert binds[2][::2] == [f"{tmp_path}/linear", f"{tmp_path}/stage2"]  # linear evaluates stage2's backbone


def test_an_auto_teacher_still_to_resolve_mounts_the_folder_beside_the_data(tmp_path):
    """slurm/chain.sh composes model.teacher_weights=auto unresolved: the file will lie beside data.root."""
    cfg = compose_config(
        ["preset=tiny", f"data.root={tmp_path}/sets/tiny", "container.runtime=podman", "container.image=b:1"]
    )
    assert cfg.model.teacher_weights == "auto"
    prefix = container_command(cfg, run_dir=f"{tmp_path}/run").prefix
    assert [prefix[i + 1] for i, word in enumerate(prefix) if word == "-v"] == [
        f"{tmp_path}/run:{tmp_path}/run",
        f"{REPO}:{REPO}",
        f"{tmp_path}/sets:{tmp_path}/sets",
    ]
