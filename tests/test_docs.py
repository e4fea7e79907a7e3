"""Every command the docs show is run, at smoke size, by a test, so none of them rots.

`doc_commands` finds the shell commands in the fenced blocks of README.md and docs/*.md;
COMMANDS says, for each, which test runs it and how (the tiny smoke config for a pod config, a
temporary work directory, a compile-only dry run for a TPU slice), or why it cannot be run here.
A command added to a doc without an entry fails `test_every_doc_command_has_a_mapping`, naming
the doc and the command.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ElementTree

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A line of a fenced block is a command when it starts (after VAR=value settings) with one of these.
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:python3?|\.venv/bin/python|make|pip)\s")
SHELL_BLOCKS = ("", "sh", "bash", "shell", "console")
SMOKE = "--config=configs/tiny.py:smoke"


# --- finding the commands ----------------------------------------------------------------------


def _strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a # inside quotes stays)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(info string, lines) of each ``` block of a markdown text."""
    blocks, info, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if info is None:
                info, lines = line[3:].strip(), []
            else:
                blocks.append((info, lines))
                info = None
        elif info is not None:
            lines.append(line)
    return blocks


def block_commands(lines: list[str]) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments dropped, spaces
    collapsed."""
    out, pending = [], ""
    for line in lines:
        line = _strip_comment(line)
        if pending:
            line = pending + " " + line.strip()
            pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        if COMMAND.match(line.strip()):
            out.append(" ".join(line.split()))
    return out


def doc_commands() -> list[tuple[str, str]]:
    """(doc, command) for every command in a shell block of README.md and docs/*.md."""
    found = []
    for doc in DOCS:
        for info, lines in fenced_blocks(doc.read_text()):
            if info in SHELL_BLOCKS:
                found += [(doc.relative_to(ROOT).as_posix(), c) for c in block_commands(lines)]
    return found


# --- how each command is run -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Here:
    """Run by `test` in this file, as `how` says."""

    test: str
    how: str


@dataclasses.dataclass(frozen=True)
class Elsewhere:
    """Already run by another test, "tests/test_x.py::test_name"."""

    test: str
    how: str


@dataclasses.dataclass(frozen=True)
class NotRun:
    """Cannot run here; `why`. Its scripts are still checked to exist."""

    why: str


RESUME = "test_the_launcher_resumes_the_smoke_run"
TPU_DRY = "test_the_tpu_dry_run_compiles_for_a_slice"
POD_RUN = ("the launcher run on the tiny smoke config instead: a pod config needs its checkpoint "
           "and a TPU slice; its flags that only point at files are dropped")
EVALUATE = Elsewhere(
    "tests/test_evolve.py::test_the_launchers_evaluate_a_run_and_refuse_a_missing_model",
    "launch/evaluate.py on the smoke run, --config=configs/tiny.py:smoke --limit=2")
BENCHMARK = NotRun("a benchmark measures for minutes at a fixed size (no smoke size: --repeats "
                   "only repeats); `make bench` runs them")
DRY_RUN_V5E = Here(TPU_DRY, "the tiny smoke config compiled for v5p:4x4x4 (64 chips): the same "
                            "launcher path; a v5e slice's compile is tests/test_dry_run.py::"
                            "test_a_tpu_slice_compiles_and_a_search_that_does_not_fit_is_named")
DRY_RUN_V5P = Here(TPU_DRY, "the tiny smoke config compiled for v5p:4x4x4, training part, "
                            "batches of 64 rows so 64 chips divide them")

COMMANDS: dict[str, Here | Elsewhere | NotRun] = {
    # README.md
    "make demo": Here(RESUME, "its recipe is checked to be the tiny launcher command, run on "
                              "the smoke config"),
    "make test": NotRun("the whole suite (16 minutes on 2 cores); this file is part of it"),
    **{f".venv/bin/python benchmarks/{name}.py": BENCHMARK
       for name in ("forward", "decode", "executor", "grading", "mcts", "prefix_reuse",
                    "records", "train_step", "tree_view")},
    # docs/evolve.md
    "python launch/tpu_evolve.py --config=configs/tiny.py --workdir=runs/tiny":
        Here(RESUME, "on the smoke config"),
    "python launch/tpu_evolve.py --config=configs/tiny.py:smoke --workdir=/tmp/smoke":
        Here(RESUME, "as written, in a temporary work directory"),
    "python launch/tpu_evolve.py --config=configs/phi3.py "
    "--config.model.checkpoint=/mnt/models/Phi-3-mini-4k-instruct "
    "--config.problems.train=/mnt/data/numina.parquet?preset=numina --workdir=/mnt/run":
        Here(RESUME, POD_RUN),
    "python launch/evaluate.py --config=configs/tiny.py --workdir=runs/tiny": EVALUATE,
    # docs/tpu.md
    "pip install -e '.[tpu,gcs]'": Here("test_the_pip_commands_name_extras_that_exist",
                                        "not installed (network): its extras are checked"),
    "python launch/tpu_evolve.py --config=configs/phi3.py "
    "--config.model.checkpoint=/mnt/models/Phi-3-mini-4k-instruct --workdir=gs://bucket/run":
        Here(RESUME, POD_RUN + " (a gs:// work directory is tests/test_evolve.py's memory:// "
                               "resume test)"),
    "python launch/convert_checkpoint.py --source=/mnt/models/Phi-3-mini-4k-instruct "
    "--out=/mnt/models/Phi-3-mini-4k-instruct-rstar":
        Here("test_the_convert_command_gives_a_stock_checkpoint_the_step_tokens",
             "on the tiny base as the hub would ship it (tests/checkpoints.stock_tiny_base)"),
    "python launch/tpu_evolve.py --config=configs/phi3.py --workdir=/tmp/unused "
    "--config.dry_run=True --config.dry_run_topology=v5p:4x4x4": DRY_RUN_V5P,
    "python launch/tpu_evolve.py --config=configs/phi3.py:v5e --workdir=/tmp/unused "
    "--config.dry_run=True --config.dry_run_topology=v5e:8x8": DRY_RUN_V5E,
    "python launch/tpu_evolve.py --config=configs/phi3.py:v5p --workdir=/tmp/unused "
    "--config.dry_run=True --config.dry_run_topology=v5p:4x4x4": DRY_RUN_V5P,
    "python launch/tpu_evolve.py --config=configs/qwen25_math_7b.py:v5e --workdir=/tmp/unused "
    "--config.dry_run=True --config.dry_run_topology=v5e:8x8": DRY_RUN_V5E,
    "python launch/tpu_evolve.py --config=configs/qwen25_math_7b.py:v5p --workdir=/tmp/unused "
    "--config.dry_run=True --config.dry_run_topology=v5p:4x4x4": DRY_RUN_V5P,
    "python launch/tpu_evolve.py --config=configs/phi3.py --workdir=/tmp/unused "
    "--config.dry_run=True --config.dry_run_topology=v5p:4x4x4 --config.dry_run_parts=search "
    "--config.search.batch=128 --config.eval.batch=128":
        Elsewhere("tests/test_dry_run.py::test_the_parts_to_compile_are_chosen",
                  "dry_run_parts=search on the smoke config (compiling the search for 128 "
                  "problems would take minutes here)"),
    # docs/gpu.md
    'pip install -e . "jax[cuda12]"': Here("test_the_pip_commands_name_extras_that_exist",
                                           "not installed (network, CUDA): jax's extra is "
                                           "checked"),
    "python launch/tpu_evolve.py --config=configs/qwen25_math_1p5b.py --workdir=/tmp/unused "
    "--config.dry_run=True --config.model.attention=dot_product":
        Here("test_the_dry_run_compiles_here_with_the_dot_product_kernel",
             "on the smoke config, training part, on this machine's CPU"),
    "python launch/tpu_evolve.py --config=configs/qwen25_math_1p5b.py "
    "--config.model.checkpoint=/models/Qwen2.5-Math-1.5B --config.model.attention=dot_product "
    "--workdir=runs/qwen1p5b":
        Here(RESUME, POD_RUN + "; the dot_product kernel is compiled by "
                               "test_the_dry_run_compiles_here_with_the_dot_product_kernel"),
    "JAX_PLATFORMS=cpu python launch/tpu_evolve.py --config=configs/tiny.py:smoke "
    "--workdir=/tmp/smoke": Here(RESUME, "as written, in a temporary work directory"),
    # docs/checkpoints.md
    "python launch/convert_checkpoint.py --source=/models/Qwen2.5-Math-1.5B "
    "--out=/models/Qwen2.5-Math-1.5B-rstar":
        Here("test_the_convert_command_gives_a_stock_checkpoint_the_step_tokens",
             "on the tiny base as the hub would ship it"),
    # docs/rstar_data.md
    "python scripts/train_from_rstar.py --config=configs/tiny.py:smoke --workdir=runs/rstar_tiny "
    "--sft=rstar_jax/assets/rstar/sft_data_examples.json "
    "--ppm=rstar_jax/assets/rstar/rm_data_examples.json":
        Here("test_train_from_rstar_trains_a_policy_and_a_ppm", "as written, in a temporary "
                                                                "work directory"),
    "python scripts/train_from_rstar.py --config=configs/qwen25_math_7b.py "
    "--config.model.checkpoint=/models/Qwen2.5-Math-7B --workdir=runs/rstar_qwen7b "
    "--sft=/data/rstar/sft.jsonl --ppm=/data/rstar/rm.jsonl":
        Here("test_train_from_rstar_trains_a_policy_and_a_ppm",
             "run as the tiny smoke command above: a 7B model and the full files are not here"),
}


def mapping(command: str) -> Here | Elsewhere | NotRun | None:
    """The entry of `command`; the search-tree viewer's commands are its own tests'."""
    if "launch/view_tree.py" in command:
        return Elsewhere("tests/test_view_tree.py", "the viewer's own tests")
    return COMMANDS.get(command)


def test_doc_commands_are_found_in_shell_blocks_only():
    text = ("```\nmake demo   # the demo\n```\n```python\npython x.py\n```\n"
            "```sh\npython launch/a.py --x=1 \\\n    --y='a # b'   # note\nls runs\n```\n")
    blocks = fenced_blocks(text)
    assert [info for info, _ in blocks] == ["", "python", "sh"]
    assert block_commands(blocks[0][1]) == ["make demo"]
    assert block_commands(blocks[2][1]) == ["python launch/a.py --x=1 --y='a # b'"]


def test_every_doc_command_has_a_mapping():
    missing = [f"{doc}: {command}" for doc, command in doc_commands() if mapping(command) is None]
    assert not missing, ("these doc commands have no entry in tests/test_docs.py COMMANDS (say "
                         "which test runs them at smoke size):\n" + "\n".join(missing))


def test_every_mapping_entry_is_a_doc_command_and_names_a_real_test():
    shown = {command for _, command in doc_commands()}
    assert not set(COMMANDS) - shown, f"stale entries: {sorted(set(COMMANDS) - shown)}"
    here = {n.name for n in ast.parse(pathlib.Path(__file__).read_text()).body
            if isinstance(n, ast.FunctionDef)}
    for command, entry in COMMANDS.items():
        if isinstance(entry, Here):
            assert entry.test in here, (command, entry.test)
        elif isinstance(entry, Elsewhere):
            path, _, name = entry.test.partition("::")
            assert f"def {name}(" in (ROOT / path).read_text(), (command, entry.test)


def test_every_file_of_this_checkout_a_doc_command_names_exists():
    for doc, command in doc_commands():
        for word in shlex.split(command):
            value = word.split("=")[-1].split(":")[0]
            if re.fullmatch(r"[\w.-]+/[\w./-]+\.(py|json)", value) or value.endswith(".py"):
                assert (ROOT / value).exists(), f"{doc}: {command}: no {value}"


# --- running them ------------------------------------------------------------------------------


def run(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python argv...` from the checkout's root, on the CPU, with this checkout importable."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


def smoke_argv(command: str, workdir: pathlib.Path, drop: tuple[str, ...] = ()) -> list[str]:
    """A doc's launcher command at smoke size: the tiny smoke config for any config, `workdir`
    for its work directory, flags starting with `drop` left out."""
    words = shlex.split(command)
    while re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value settings: run() sets the env
        words = words[1:]
    out = []
    for word in words[1:]:  # (the interpreter: run() uses this one)
        if word.startswith("--config="):
            word = SMOKE
        elif word.startswith("--workdir="):
            word = f"--workdir={workdir}"
        elif word.startswith(drop):
            continue
        out.append(word)
    return out


def commands_of(test: str) -> list[str]:
    return [c for c, e in COMMANDS.items() if isinstance(e, Here) and e.test == test]


def test_the_launcher_resumes_the_smoke_run(smoke_run):
    """The smoke rounds ran in this process (conftest, `evolve.run`); each doc's launcher command,
    at smoke size, finds every stage done and prints the same report."""
    workdir, _ = smoke_run
    report = (workdir / "report.md").read_text()
    recipe = (ROOT / "Makefile").read_text()
    assert "launch/tpu_evolve.py --config=configs/tiny.py --workdir=runs/tiny" in recipe
    pod_only = ("--config.model.checkpoint=", "--config.problems.train=",
                "--config.model.attention=")
    demo = "python launch/tpu_evolve.py --config=configs/tiny.py --workdir=runs/tiny"
    argvs = {tuple(smoke_argv(demo if c == "make demo" else c, workdir, pod_only))
             for c in commands_of(RESUME)}
    assert len(argvs) == 1, argvs  # one smoke command stands for them all
    done = run(*next(iter(argvs)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"report: {workdir}/report.md" in done.stdout
    for stage in ("search", "policy", "ppm", "eval"):  # resumed, not rerun
        assert f"round_1: {stage}" not in done.stdout
    assert (workdir / "report.md").read_text() == report



@pytest.fixture(scope="module")
def rstar_run(tmp_path_factory):
    """(workdir, finished process) of docs/rstar_data.md's command, run once for this module."""
    command = commands_of("test_train_from_rstar_trains_a_policy_and_a_ppm")[0]
    workdir = tmp_path_factory.mktemp("rstar") / "runs" / "rstar_tiny"
    return workdir, run(*smoke_argv(command, workdir))


def test_train_from_rstar_trains_a_policy_and_a_ppm(rstar_run):
    workdir, done = rstar_run
    assert done.returncode == 0, done.stderr[-3000:]
    doc = (ROOT / "docs" / "rstar_data.md").read_text()
    shown = [line for line in doc.splitlines() if line.startswith("imported: ")]
    assert len(shown) == 2 and all(line in done.stdout for line in shown), done.stdout
    for kind in ("policy", "ppm"):
        summary = json.loads((workdir / f"{kind}.json").read_text())
        assert summary["trained"] and summary["steps"] == 2 and summary["model"] == f"{kind}/model"
        assert (workdir / kind / "model" / "config.json").exists()
    assert (workdir / "ppm" / "model" / "value_head.safetensors").exists()
    assert not (workdir / "policy" / "model" / "value_head.safetensors").exists()
    again = run(*smoke_argv(commands_of("test_train_from_rstar_trains_a_policy_and_a_ppm")[0],
                            workdir))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{workdir.name}: policy" in done.stdout
    assert f"{workdir.name}: policy" not in again.stdout  # kept, not trained again
    assert f"-> {workdir}/ppm/model" in again.stdout


def _python_blocks(doc: str) -> list[str]:
    return ["\n".join(lines) for info, lines in fenced_blocks((ROOT / doc).read_text())
            if info == "python"]


def test_the_checkpoint_snippets_load_the_models_in_transformers(rstar_run):
    """docs/checkpoints.md's Python, on the policy and PPM train_from_rstar.py exported; the
    PPM's score in transformers is the one rstar_jax gives."""
    workdir, done = rstar_run
    assert done.returncode == 0, done.stderr[-3000:]
    policy, ppm = _python_blocks("docs/checkpoints.md")
    policy = policy.replace("runs/tiny/round_4/policy/model", str(workdir / "policy" / "model"))
    ppm = ppm.replace("runs/tiny/round_4/ppm/model", str(workdir / "ppm" / "model"))
    ours = ("\nimport jax.numpy as jnp\nfrom rstar_jax import from_pretrained\n"
            "jax_ppm = from_pretrained(ppm_dir, value_head=True)\n"
            "print(float(jax_ppm.value(jnp.asarray(ids.numpy()))[0]))\n")
    # One process for both snippets (torch, transformers and JAX load once), each in its own
    # namespace: the PPM's must not lean on a name the policy's defined.
    program = "\n".join(f"exec(compile({code!r}, 'snippet', 'exec'), {{}})"
                         for code in (policy, ppm + ours))
    scored = run("-c", program)
    assert scored.returncode == 0, scored.stderr[-3000:]
    theirs, mine = (float(x) for x in scored.stdout.split()[-2:])
    assert -1 < theirs < 1 and theirs == pytest.approx(mine, abs=1e-5)


def test_the_convert_command_gives_a_stock_checkpoint_the_step_tokens(tmp_path):
    import checkpoints
    from rstar_jax.models import vocab
    from rstar_jax.tokenizer import Tokenizer

    stock = checkpoints.stock_tiny_base(tmp_path / "stock")
    assert vocab.missing_step_tokens(Tokenizer.from_dir(stock))
    for command in commands_of("test_the_convert_command_gives_a_stock_checkpoint_the_step_tokens"):
        script, source, out = shlex.split(command)[1:]
        assert source.startswith("--source=") and out.startswith("--out=")
        out_dir = tmp_path / pathlib.Path(out).name
        done = run(script, f"--source={stock}", f"--out={out_dir}")
        assert done.returncode == 0, done.stderr[-3000:]
        assert "added 7 step tokens" in done.stdout
        assert not vocab.missing_step_tokens(Tokenizer.from_dir(out_dir))


def _table_rows(text: str) -> dict[str, list[str]]:
    return {cells[0]: cells for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
             if line.startswith("| "))}


def test_the_tpu_dry_run_compiles_for_a_slice(tmp_path):
    commands = commands_of(TPU_DRY)
    assert commands and all("--config.dry_run=True" in c for c in commands)
    batches = [f"--config.train.{task}.batch=64" for task in ("sft", "ppm", "orm")]
    done = run("launch/tpu_evolve.py", SMOKE, f"--workdir={tmp_path}", "--config.dry_run=True",
               "--config.dry_run_topology=v5p:4x4x4", "--config.dry_run_parts=train", *batches)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training on v5p:4x4x4 64 x TPU v5 (data=64, fsdp=1, tensor=1); HBM per chip: 95 GiB" \
        in done.stdout
    rows = _table_rows(done.stdout)
    for task in ("sft", "ppm"):
        assert rows[f"{task} train step (64 x 512)"][6] == "yes"


def test_the_dry_run_compiles_here_with_the_dot_product_kernel(tmp_path):
    (command,) = commands_of("test_the_dry_run_compiles_here_with_the_dot_product_kernel")
    done = run(*smoke_argv(command, tmp_path), "--config.dry_run_parts=train")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _table_rows(done.stdout)
    # A CPU's memory is unknown to the dry run, as a GPU's is: peaks, but no `fits`.
    sft = rows["sft train step (8 x 512)"]
    assert float(sft[5]) > 0 and sft[6] == "-"


def test_the_pip_commands_name_extras_that_exist():
    import importlib.metadata

    ours = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for command in commands_of("test_the_pip_commands_name_extras_that_exist"):
        for package, extras in re.findall(r"([\w.-]+)\[([\w,-]+)\]", command):
            if package == ".":
                known = set(ours)
            else:
                metadata = importlib.metadata.distribution(package).metadata
                known = set(metadata.get_all("Provides-Extra"))
            assert set(extras.split(",")) <= known, (command, known)


def test_the_config_page_is_what_the_configs_generate():
    done = run("scripts/config_docs.py", "--check")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "docs/configs.md is up to date" in done.stdout


def test_the_gpu_memory_table_is_what_the_script_prints():
    done = run("scripts/gpu_memory.py")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() in (ROOT / "docs" / "gpu.md").read_text()


def test_the_architecture_figure_names_every_layer():
    from rstar_jax import _layers

    svg = ElementTree.parse(ROOT / "docs" / "architecture.svg")
    text = " ".join(t.text or "" for t in svg.iter() if t.tag.endswith("text"))
    for layer in _layers.LAYERS:
        for name in layer:
            if not name.startswith("_"):
                assert name in text, name
    assert "(architecture.svg)" in (ROOT / "docs" / "architecture.md").read_text()


def test_the_readme_links_the_doc_pages():
    readme = (ROOT / "README.md").read_text()
    for name in ("architecture", "configs", "gpu", "checkpoints", "rstar_data"):
        assert f"(docs/{name}.md)" in readme, name
