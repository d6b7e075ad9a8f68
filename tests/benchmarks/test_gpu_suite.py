"""benchmarks/gpu_suite.sh without a GPU: syntax, --dry-run, the refusal, and failure bookkeeping.

The real run needs CUDA; here a fake ``nvidia-smi`` and a fake Python stand in, so the
script's own logic (each step under its timeout, a failed step does not stop the rest, exit
status 1 and a JSON summary) is exercised end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_suite.sh"
STEPS = ("lora_kernels", "translator_8b", "compressor_cuda", "serve_load_8b")

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils timeout"
)


def _run(*args: str, env: dict[str, str] | None = None, path: str | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    if path is not None:
        full["PATH"] = path
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full, timeout=120, check=False)


def _path_without_nvidia_smi(tmp_path: Path) -> str:
    """A PATH with bash and coreutils but no nvidia-smi (whatever this machine has)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("bash", "timeout", "date", "dirname", "grep", "sed", "tail", "tee", "mkdir", "cat", "sleep", "env"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_syntax_is_valid():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, check=False).returncode == 0


def test_dry_run_prints_every_step_with_its_timeout(tmp_path):
    result = _run("--dry-run", path=_path_without_nvidia_smi(tmp_path), env={"PYTHON": "py"})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert [line.split("]")[0][1:] for line in lines] == list(STEPS)
    assert all(" timeout " in line for line in lines)
    out = result.stdout
    assert "py benchmarks/lora_kernels.py --device cuda" in out
    assert "py benchmarks/compressor_throughput.py --device cuda" in out
    assert "py benchmarks/serve_load.py --gpu-8b-shape" in out
    assert '-c "$TRANSLATOR_8B"' in out  # parametric_qa.py's GPU section, through run_gpu_section()
    subset = _run("--dry-run", env={"GPU_SUITE_STEPS": "lora_kernels,serve_load_8b", "PYTHON": "py"})
    assert [line.split("]")[0][1:] for line in subset.stdout.splitlines() if line.startswith("[")] == [
        "lora_kernels",
        "serve_load_8b",
    ]
    bad = _run("--dry-run", env={"GPU_SUITE_STEPS": "nope"})
    assert bad.returncode == 2 and "unknown step 'nope'" in bad.stderr
    assert _run("--bogus").returncode == 2


def test_refuses_without_nvidia_smi(tmp_path):
    result = _run(path=_path_without_nvidia_smi(tmp_path))
    assert result.returncode == 2
    assert "no NVIDIA GPU here (nvidia-smi not found)" in result.stderr


def test_a_failing_step_does_not_stop_the_rest(tmp_path):
    """Fake GPU: one step passes, one fails, one times out; all run, the exit is 1, the JSON says which."""
    bin_dir = Path(_path_without_nvidia_smi(tmp_path))
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Fake GPU (UUID: GPU-0)'\n")
    fake_python = bin_dir / "fakepython"
    fake_python.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "  benchmarks/lora_kernels.py) echo lora ok; exit 0 ;;\n"
        "  -c) echo translator broke >&2; exit 3 ;;\n"
        "  benchmarks/compressor_throughput.py) sleep 30 ;;\n"
        '  *) echo ran "$@"; exit 0 ;;\n'
        "esac\n"
    )
    for tool in (bin_dir / "nvidia-smi", fake_python):
        tool.chmod(0o755)
    # The summary is written with $PYTHON too: its call (-c SCRIPT and 3 arguments) goes to a real
    # interpreter, everything else to the fake one.
    wrapper = bin_dir / "py"
    wrapper.write_text(
        f'#!/bin/sh\nif [ "$1" = "-c" ] && [ "$#" -eq 5 ]; then exec {sys.executable} "$@"; fi\nexec {fake_python} "$@"\n'
    )
    wrapper.chmod(0o755)
    results = tmp_path / "results"
    result = _run(
        path=str(bin_dir),
        env={"PYTHON": str(wrapper), "RESULTS_DIR": str(results), "COMPRESSOR_CUDA_TIMEOUT": "2"},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    summaries = list(results.glob("gpu_suite-*.json"))
    assert len(summaries) == 1
    data = json.loads(summaries[0].read_text())
    status = {s["step"]: s["status"] for s in data["steps"]}
    assert [s["step"] for s in data["steps"]] == list(STEPS)  # every step ran, in order
    assert status["lora_kernels"] == "passed"
    assert status["translator_8b"] == "failed"
    assert status["compressor_cuda"] == "timed_out"
    serve = next(s for s in data["steps"] if s["step"] == "serve_load_8b")
    source = (ROOT / "benchmarks" / "serve_load.py").read_text() if (ROOT / "benchmarks" / "serve_load.py").exists() else ""
    if "--gpu-8b-shape" in source:
        assert serve["status"] == "passed"
    else:
        assert serve["status"] == "failed" and "--gpu-8b-shape" in serve["reason"]
    assert data["failed"] == sum(s != "passed" for s in status.values())
    logs = {Path(s["log"]).name for s in data["steps"]}
    assert logs == {f"{step}.log" for step in STEPS}
    assert "translator broke" in (Path(next(s["log"] for s in data["steps"] if s["step"] == "translator_8b"))).read_text()
