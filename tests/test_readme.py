"""The README's quickstart, run as written: its shell commands and its Python block, in a fresh folder, with only
the package (the shipped v1.0.1 weights, simulated packets; no ../shared)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quickstart_blocks() -> tuple[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    bash = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    python = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(bash) == 1 and len(python) == 1, "the quickstart has one shell block and one Python block"
    return bash[0], python[0]


def test_readme_quickstart_runs_as_written(tmp_path):
    bash, python = _quickstart_blocks()
    bindir = Path(sys.executable).parent
    env = {**os.environ, "BTSBOT_SHARED": str(tmp_path / "no-shared"), "JAX_PLATFORMS": "cpu"}
    for line in bash.splitlines():
        cmd = shlex.split(line, comments=True)
        if not cmd:
            continue
        assert cmd[0].startswith("btsbot-"), line
        cmd[0] = str(bindir / cmd[0])
        p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, (line, p.stderr[-3000:])
    scores = (tmp_path / "scores.csv").read_text().splitlines()
    assert scores[0].startswith("candid,") and len(scores) > 100  # every simulated packet scored by v1.0.1
    check = python + (
        "\nimport numpy as np\n"
        "assert scores.shape == (len(batch.triplets),) and len(batch.triplets) == len(result.scores)\n"
        "assert np.all((scores >= 0) & (scores <= 1)) and result.summary['rejected'] == len(batch.rejected)\n"
        "print('OK', len(scores))\n")
    p = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split()[-2] == "OK" and int(p.stdout.split()[-1]) == len(scores) - 1
