"""The README and docs/ stay true to the code: every relative link resolves, every console script they name is
installed by pyproject.toml, and every --flag on a command line they show is defined by that command."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Pages and commands that other branches add; tolerated only while absent, checked like the rest once they exist.
# flags every command has (absl's own, and --version from btsbot_jax.cli.run)
ABSL_FLAGS = {"help", "helpshort", "helpfull", "verbosity", "v", "logtostderr", "alsologtostderr", "version"}


# flags of other programs the docs name in prose (spark-submit's)
OTHER_TOOLS_FLAGS = {"archives"}


def _flags_defined(path: Path) -> set[str]:
    s = path.read_text()
    names = set(re.findall(r'DEFINE_\w+\(\s*"(\w+)"', s)) | set(re.findall(r'add_argument\(\s*"--(\w+)"', s))
    bools = set(re.findall(r'DEFINE_bool(?:ean)?\(\s*"(\w+)"', s))
    return names | {"no" + b for b in bools} | ABSL_FLAGS


def _scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _command_flags() -> dict[str, set[str]]:
    out = {name: _flags_defined(ROOT / (target.split(":")[0].replace(".", "/") + ".py"))
           for name, target in _scripts().items()}
    for p in [*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "experiments").glob("*.py")]:
        out[str(p.relative_to(ROOT))] = _flags_defined(p)
    return out


def _anchors(md: Path) -> set[str]:
    heads = re.findall(r"^#+\s+(.*)$", md.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_relative_links_resolve_inside_the_repository():
    problems, checked = [], 0
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            checked += 1
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            where = f"{doc.relative_to(ROOT)} -> {target}"
            if not dest.is_relative_to(ROOT):
                problems.append(f"{where}: outside the repository")
            elif not dest.exists():
                problems.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                problems.append(f"{where}: no such heading")
    assert checked > 20
    assert not problems, problems


def test_commands_and_flags_exist():
    scripts, flags = _scripts(), _command_flags()
    every_flag = set().union(*flags.values())
    problems, checked = [], 0
    for doc in DOCS:
        text = doc.read_text()
        name = doc.relative_to(ROOT)
        for cmd in set(re.findall(r"\bbtsbot-[a-z][a-z-]*[a-z]\b", text)) - {"btsbot-jax"}:
            if cmd not in scripts:
                problems.append(f"{name}: no console script {cmd}")
        # a command line: the command, then flags (and shell comments / continuations) up to the end of the line
        for line in re.sub(r"\\\n", " ", text).splitlines():
            for m in re.finditer(r"(btsbot-[a-z-]+|benchmarks/\w+\.py|experiments/\w+\.py)"
                                 r"((?:\s+(?:`#[^`]*`|--[\w.]+(?:=\S*)?|\\))+)", line):
                known = flags.get(m.group(1))
                for flag in re.findall(r"--([\w.]+)", m.group(2)) if known else ():
                    checked += 1
                    if not (flag.startswith("config.") or flag in known):
                        problems.append(f"{name}: {m.group(1)} has no flag --{flag}")
        for flag in set(re.findall(r"`--([\w.]+)(?![\w-])", text)):  # flags named in prose exist somewhere
            if not (flag.startswith("config.") or flag in every_flag or flag in OTHER_TOOLS_FLAGS):
                problems.append(f"{name}: --{flag} is defined by no command")
    assert checked > 50
    assert not problems, problems


def test_sim_to_real_tables_are_their_jsons():
    """The per-seed tables of docs/sim_to_real.md are what `experiments/sim_to_real.py --table` prints from the
    committed JSONs, row for row."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sim_to_real", ROOT / "experiments" / "sim_to_real.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    doc = (ROOT / "docs" / "sim_to_real.md").read_text().splitlines()
    for tag in ("hostfit", "alertcount", "truetypes", "cadence", "snrmodel", "ps1aug"):
        paths = list((ROOT / "benchmarks" / "results").glob(f"sim_to_real_demo_s*_seed*_{tag}.json"))
        assert len(paths) == 10, tag
        rows = mod.markdown_table(paths).splitlines()[2:]
        assert [r.split(" | ")[:2] for r in rows] == [[f"| {n}", str(s)] for n in (400, 1500) for s in range(5)]
        missing = [r for r in rows if r not in doc]
        assert not missing, f"{tag}: rows of the JSONs not in docs/sim_to_real.md: {missing}"
