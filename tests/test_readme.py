"""The README, run: every fenced bash, python and yaml block, in order, in one sandbox.

A block's directives are an HTML comment right above its fence (invisible on the rendered page)::

    <!-- readme-test
    setup: pairs my_outputs                    fixtures created before the block (see SETUP)
    append: python recipes/ | --debug ...      tiny-size overrides added to the commands starting so
    skip-line: network | /data/voicebank       a command containing the text is skipped, with the reason
    prelude: import torch; noisy = ...         python run before a python block (its free names)
    skip: network                              the whole block needs the network (or: gpu)
    -->

Only ``network`` and ``gpu`` are reasons to skip. Blocks run elsewhere are recognised by their own
markers: ``<!-- ci:install -->`` / ``<!-- ci:test -->`` (run by ``.ci/run``) and
``<!-- stock-recipe: ... -->`` (YAML entries run in a SpeechBrain recipe by tests/test_stock_recipes.py). The sandbox mirrors a checkout: its files and
folders link to the repository, ``.venv`` to the running interpreter's
environment, ``../shared/data/devset`` to the devset, ``$HOME`` is inside it, and the benchmarks
write their results there (``$SB_MAL_BENCH_RESULTS``): nothing is written outside ``tmp_path``.
Blocks run in README order and later ones use what earlier ones made (a run, then its export).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import devset_root

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SKIP_REASONS = ("network", "gpu")
pytestmark = pytest.mark.recipe


@dataclass
class Block:
    line: int  # line of the opening fence
    lang: str
    text: str
    markers: list[str] = field(default_factory=list)  # other HTML comments right above (ci:..., stock-recipe:...)
    directives: dict[str, list[str]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang}"


def parse_readme(text: str) -> list[Block]:
    """Every fenced block with a language, with the directives and markers of the comments above it."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^```(\w+)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        block = Block(i + 1, fence.group(1), "\n".join(lines[i + 1:end]))
        j = i - 1
        while j >= 0 and lines[j].strip().endswith("-->"):  # the comments stacked right above the fence
            start = j
            while not lines[start].lstrip().startswith("<!--"):
                start -= 1
            comment = "\n".join(lines[start:j + 1]).strip()[4:-3].strip()
            if comment.startswith("readme-test"):
                for entry in comment.splitlines()[1:]:
                    key, _, value = entry.strip().partition(":")
                    block.directives.setdefault(key.strip(), []).append(value.strip())
            else:
                block.markers.append(comment)
            j = start - 1
        blocks.append(block)
        i = end + 1
    return blocks


BLOCKS = [b for b in parse_readme(README.read_text(encoding="utf-8")) if b.lang in ("bash", "python", "yaml")]


def commands(text: str) -> list[str]:
    """The shell commands of a bash block (continuation lines joined, comment lines dropped)."""
    out, current = [], ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    return out


def _link(target: Path, source: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.symlink(source, target)


def _pairs(sandbox: Path, devset: Path, n: int = 4) -> list[str]:
    names = sorted(p.name for p in (devset / "pairs/test/noisy").glob("*.flac"))[:n]
    for sub in ("noisy", "clean"):
        for name in names:
            _link(sandbox / "pairs/test" / sub / name, devset / "pairs/test" / sub / name)
    return names


def _setup(name: str, sandbox: Path, devset: Path) -> None:
    """Create one named fixture in the sandbox (idempotent)."""
    from sb_mal.audio import read_audio, write_audio

    noisy = sorted((devset / "pairs/test/noisy").glob("*.flac"))
    if name == "pairs":  # pairs/test/{noisy,clean}: four devset test pairs
        _pairs(sandbox, devset)
    elif name == "dns":  # DNS-Challenge names: the fileid_<n> tag pairs them
        for i, p in enumerate(noisy[:3]):
            _link(sandbox / f"dns/noisy/book_{i:03d}_snr5_fileid_{i}.flac", p)
            _link(sandbox / f"dns/clean/clean_fileid_{i}.flac", devset / "pairs/test/clean" / p.name)
    elif name == "devset-folders":  # speech/ and noise/ folders of the devset
        for sub in ("speech", "noise"):
            _link(sandbox / sub, devset / sub)
    elif name == "speech.mp3":
        wav, rate = read_audio(noisy[0], as_numpy=True)
        write_audio(sandbox / "speech.mp3", wav, rate)
    elif name == "my_speech":  # my_speech/: two clean devset utterances (input of a listening-enhancement model)
        for p in sorted((devset / "pairs/test/clean").glob("*.flac"))[:2]:
            _link(sandbox / "my_speech" / p.name, p)
    elif name == "my_outputs":  # "enhanced" outputs named like pairs/test/clean (here: the noisy inputs)
        for n in _pairs(sandbox, devset):
            _link(sandbox / "my_outputs" / n, devset / "pairs/test/noisy" / n)
    elif name == "noisy-files":  # noisy/ (two files), extra.flac, noisy.wav, a 20 s long_podcast.mp3
        for p in noisy[:2]:
            _link(sandbox / "noisy" / p.name, p)
        _link(sandbox / "extra.flac", noisy[2])
        wav, rate = read_audio(noisy[3], as_numpy=True)
        write_audio(sandbox / "noisy.wav", wav, rate)
        import numpy as np

        long = np.concatenate([read_audio(p, as_numpy=True)[0] for p in noisy[:8]])[: 20 * rate]
        write_audio(sandbox / "long_podcast.mp3", long, rate)
    elif name == "stock-models":  # models/ of SpeechBrain's recipes: the stock-recipe tests' own versions
        stock = REPO / "tests" / "stock_recipe" / "hparams" / "models"
        _link(sandbox / "models" / "CNNTransformer.yaml", stock / "cnn_transformer.yaml")
        generator = (stock / "metricgan_generator.yaml").read_text().replace("\nmodel:", "\ngenerator:")
        (sandbox / "models" / "MetricGAN.yaml").write_text(generator)
    elif name == "exported":  # two exported models (tiny random backbones) under exported/
        from conftest import make_run
        from sb_mal.inference import export_run

        for model in ("baseline", "mal_dynamic"):
            if not (sandbox / "exported" / model).exists():
                export_run(make_run(sandbox / "toy_runs" / model)[0], sandbox / "exported" / model)
    else:
        raise ValueError(f"README block asks for an unknown setup {name!r}")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, devset):
    """A folder that looks like a checkout next to ../shared (recipes, hparams, benchmarks, .venv linked)."""
    root = tmp_path_factory.mktemp("readme")
    work = root / "sb_mal"
    for name in ("recipes", "hparams", "benchmarks", "tests", "sb_mal", "pyproject.toml", "setup.cfg", "README.md"):
        _link(work / name, REPO / name)
    _link(work / ".venv", Path(sys.prefix))  # the environment running the tests (README: .venv/bin/...)
    _link(root / "shared" / "data" / "devset", devset)
    (work / "home").mkdir()
    (work / "bench").mkdir()
    return work


def _env(work: Path) -> dict:
    bin_dir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""), HOME=str(work / "home"),
                SB_MAL_BENCH_RESULTS=str(work / "bench" / "RESULTS.md"), OMP_NUM_THREADS="1", MPLBACKEND="Agg",
                SB_MAL_DEVSET=str(devset_root()))


def _check_directives(block: Block) -> None:
    known = {"setup", "append", "skip-line", "prelude", "skip"}
    unknown = set(block.directives) - known
    assert not unknown, f"README line {block.line}: unknown readme-test directive(s) {sorted(unknown)}"
    for reason in block.directives.get("skip", []) + [v.split("|")[0].strip()
                                                     for v in block.directives.get("skip-line", [])]:
        assert reason in SKIP_REASONS, f"README line {block.line}: skip reason {reason!r} (only {SKIP_REASONS})"


def _run(cmd: str, work: Path, timeout: int = 900) -> None:
    proc = subprocess.run(["bash", "-c", cmd], cwd=work, env=_env(work), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\nexit {proc.returncode}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs_as_written(block, sandbox, devset):
    _check_directives(block)
    elsewhere = {"ci:": ".ci/run", "stock-recipe:": "tests/test_stock_recipes.py"}
    for marker in block.markers:
        for prefix, runner in elsewhere.items():
            if marker.startswith(prefix):
                pytest.skip(f"run by {runner}")
    if block.directives.get("skip"):
        pytest.skip(f"needs the {block.directives['skip'][0]}")
    for names in block.directives.get("setup", []):
        for name in names.split():
            _setup(name, sandbox, devset)
    if block.lang == "bash":
        appends = [tuple(s.strip() for s in v.split("|", 1)) for v in block.directives.get("append", [])]
        skips = [tuple(s.strip() for s in v.split("|", 1)) for v in block.directives.get("skip-line", [])]
        ran = 0
        for cmd in commands(block.text):
            if any(text in cmd for _, text in skips):
                continue
            body, comment = re.match(r"^(.*?)(\s+#.*)?$", cmd).groups()
            extra = " ".join(args for prefix, args in appends if body.startswith(prefix))
            _run(f"{body} {extra}".strip(), sandbox)
            ran += 1
        assert ran, f"README line {block.line}: every command was skipped; mark the block `skip:` instead"
    elif block.lang == "python":
        script = sandbox / f"readme_L{block.line}.py"
        script.write_text("\n".join(block.directives.get("prelude", [])) + "\n" + block.text + "\n", encoding="utf-8")
        _run(f"{shlex.quote(sys.executable)} {script.name}", sandbox)
    else:  # yaml: it must load (the objects it names are built)
        script = sandbox / f"readme_L{block.line}.py"
        script.write_text("import sys\nfrom hyperpyyaml import load_hyperpyyaml\n"
                          f"load_hyperpyyaml(open({str(script.with_suffix('.yaml'))!r}).read())\n", encoding="utf-8")
        script.with_suffix(".yaml").write_text(block.text + "\n", encoding="utf-8")
        _run(f"{shlex.quote(sys.executable)} {script.name}", sandbox)


def test_directives_are_read():
    """The parser sees the README's markers and directives (a typo would silently run blocks as written)."""
    by_line = {b.line: b for b in BLOCKS}
    assert any("ci:install" in m for b in BLOCKS for m in b.markers)
    assert sum("stock-recipe" in " ".join(b.markers) for b in BLOCKS) >= 10
    assert any(b.directives.get("skip") == ["network"] for b in by_line.values())
    assert any(b.directives.get("append") for b in by_line.values())


def _prose_driver_options() -> list[tuple[str, tuple[str, ...]]]:
    """(option, drivers) for every ``--option`` the README's prose names in code spans of a paragraph
    that names benchmark drivers (``benchmarks/<name>.py``, ``<name>.py`` or ``*_experiment.py`` for a
    file of benchmarks/); recipe overrides (``--key_name=...``, with underscores) are left to the recipe
    tests."""
    prose = re.sub(r"```.*?```", "", README.read_text(encoding="utf-8"), flags=re.S)
    found = {}
    for paragraph in re.split(r"\n\s*\n", prose):
        names = {n for n in re.findall(r"(?<![\w./-])(?:benchmarks/)?([a-z_*]+\.py)\b", paragraph) if n != "*.py"}
        drivers = tuple(sorted({p.name for n in names for p in (REPO / "benchmarks").glob(n)
                                if not p.name.startswith("_")}))
        for span in re.findall(r"`([^`]+)`", paragraph):
            for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)(?![\w])", span):
                if drivers and "_" not in option:
                    found.setdefault((option, drivers), None)
    return list(found)


@pytest.mark.unit
def test_driver_options_named_in_the_readme_exist():
    """An option the README's prose gives a benchmark driver is one of that driver's own (prose is not run)."""
    options = _prose_driver_options()
    assert ("--dnsmos", ("bench_codec_cost.py", "codec_ladder.py")) in options  # the scan finds them
    helps = {}
    for option, drivers in options:
        for d in drivers:
            if d not in helps:
                proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / d), "--help"], capture_output=True,
                                      text=True, timeout=120, cwd=REPO)
                assert proc.returncode == 0, proc.stderr[-2000:]
                helps[d] = proc.stdout
        assert any(re.search(re.escape(option) + r"(?![\w-])", helps[d]) for d in drivers), \
            f"README names {option} for {', '.join(drivers)}, which none of them accepts"
