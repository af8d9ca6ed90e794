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
``<!-- stock-recipe: ... -->`` (YAML entries run in a SpeechBrain recipe by tests/test_stock_recipes.py).

The sandbox is a git checkout: every file of the working tree that git does not ignore, copied and
committed once, with ``.venv`` linked to the running interpreter's environment, ``../shared/data/devset``
to the devset and ``$HOME`` beside it (not inside). The fixtures a ``setup:`` creates are the user's own
files and are listed in the checkout's ``.git/info/exclude``; python blocks run from a folder beside
the checkout. Blocks run in README order and later ones use what earlier ones made (a run, then its
export); after the last, ``git status`` must show nothing: what the README's commands write is ignored
by ``.gitignore`` (or goes outside), and no tracked file changed. Nothing is written outside ``tmp_path``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
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
    end: int = 0  # line of the closing fence

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
        block = Block(i + 1, fence.group(1), "\n".join(lines[i + 1:end]), end=end + 1)
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


README_TEXT = README.read_text(encoding="utf-8")  # read once: block line numbers refer to this text
BLOCKS = [b for b in parse_readme(README_TEXT) if b.lang in ("bash", "python", "yaml")]


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


def _git(checkout: Path, *args: str) -> str:
    """Run git in ``checkout`` with no global or system configuration (a user's excludesFile must not
    hide what a command left), and return its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="readme", GIT_AUTHOR_EMAIL="-",
               GIT_COMMITTER_NAME="readme", GIT_COMMITTER_EMAIL="-")
    proc = subprocess.run(["git", *args], cwd=checkout, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def make_checkout(dest: Path) -> Path:
    """``dest`` as a fresh git checkout of the repository's working tree: every file git does not ignore
    (tracked or not, as it is now) copied, and committed once."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("the repository is not a git checkout, or git is not installed")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True, timeout=120).stdout
    for name in dict.fromkeys(listed.split("\0")):
        source = REPO / name
        if name and os.path.lexists(source) and not source.is_dir():  # a deleted tracked file is left out
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name, follow_symlinks=False)
    _git(dest, "init", "-q")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "--no-verify", "--no-gpg-sign", "-m", "the working tree")
    return dest


def dirt(checkout: Path) -> list[str]:
    """What ``git status`` reports in ``checkout``: changed tracked files and untracked files that
    ``.gitignore`` does not cover, one line each (none in a clean checkout)."""
    return _git(checkout, "status", "--porcelain", "--untracked-files=all").splitlines()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, devset):
    """A git checkout of the working tree next to ../shared, with .venv linked (see the module docstring)."""
    root = tmp_path_factory.mktemp("readme")
    work = make_checkout(root / "sb_mal")
    _link(work / ".venv", Path(sys.prefix))  # the environment running the tests (README: .venv/bin/...)
    _link(root / "shared" / "data" / "devset", devset)
    (root / "home").mkdir()
    (root / "blocks").mkdir()
    RAN.clear()
    return work


#: ids of the blocks whose commands ran in this session's sandbox
RAN: list[str] = []


def _env(work: Path) -> dict:
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""), HOME=str(work.parent / "home"),
               OMP_NUM_THREADS="1", MPLBACKEND="Agg", SB_MAL_DEVSET=str(devset_root()))
    for name in ("SB_MAL_BENCH_RESULTS", "SB_MAL_WRITE_RESULTS"):  # the benchmarks write where they do by default
        env.pop(name, None)
    return env


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
    before = set(os.listdir(sandbox))
    for names in block.directives.get("setup", []):
        for name in names.split():
            _setup(name, sandbox, devset)
    fixtures = sorted(set(os.listdir(sandbox)) - before)
    if fixtures:  # the user's own inputs, not what the README's commands write: excluded in this checkout only
        with open(sandbox / ".git" / "info" / "exclude", "a", encoding="utf-8") as exclude:
            exclude.write("".join(f"/{name}\n" for name in fixtures))
    RAN.append(block.id)
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
        script = sandbox.parent / "blocks" / f"readme_L{block.line}.py"
        script.write_text("\n".join(block.directives.get("prelude", [])) + "\n" + block.text + "\n", encoding="utf-8")
        _run(f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}", sandbox)
    else:  # yaml: it must load (the objects it names are built)
        script = sandbox.parent / "blocks" / f"readme_L{block.line}.py"
        script.write_text("import sys\nfrom hyperpyyaml import load_hyperpyyaml\n"
                          f"load_hyperpyyaml(open({str(script.with_suffix('.yaml'))!r}).read())\n", encoding="utf-8")
        script.with_suffix(".yaml").write_text(block.text + "\n", encoding="utf-8")
        _run(f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}", sandbox)


def test_the_checkout_stays_clean(sandbox):
    """After the blocks above, in README order: what they wrote is ignored and no tracked file changed."""
    if not RAN:
        pytest.skip("no README block ran in this session")
    assert not dirt(sandbox), (f"after README blocks {', '.join(RAN)}, git status in the checkout shows (add the "
                               f"outputs to .gitignore, or write them elsewhere):\n" + "\n".join(dirt(sandbox)))


@pytest.mark.unit
def test_the_clean_check_sees_dirt(tmp_path):
    """The check itself: a new file and a changed tracked file show; an ignored output does not."""
    checkout = make_checkout(tmp_path / "checkout")
    assert dirt(checkout) == []
    assert (checkout / "README.md").read_text() == README.read_text()
    (checkout / "results" / "run").mkdir(parents=True)
    (checkout / "results" / "run" / "log.txt").write_text("ignored")
    (checkout / "stray.json").write_text("{}")
    with open(checkout / "README.md", "a") as readme:
        readme.write("changed\n")
    assert dirt(checkout) == [" M README.md", "?? stray.json"]


def test_directives_are_read():
    """The parser sees the README's markers and directives (a typo would silently run blocks as written)."""
    by_line = {b.line: b for b in BLOCKS}
    assert any("ci:install" in m for b in BLOCKS for m in b.markers)
    assert sum("stock-recipe" in " ".join(b.markers) for b in BLOCKS) >= 10
    assert any(b.directives.get("skip") == ["network"] for b in by_line.values())
    assert any(b.directives.get("append") for b in by_line.values())


#: commands whose ``append:`` directive makes them small (the README offers those sizes next to them)
SIZED = ("python recipes/", "torchrun", "sb-mal iterate", "python benchmarks/")


def _paragraph_after(block: Block) -> str:
    """The first paragraph after the block's closing fence, its lines joined by spaces."""
    lines = README_TEXT.splitlines()[block.end:]
    while lines and not lines[0].strip():
        lines.pop(0)
    paragraph = []
    for line in lines:
        if not line.strip():
            break
        paragraph.append(line.strip())
    return " ".join(paragraph)


@pytest.mark.unit
def test_the_small_sizes_are_offered_next_to_the_commands():
    """Where the test runs a block at tiny sizes, the paragraph right after it offers the same
    arguments to the reader ("Try it small first: add ..."), word for word."""
    checked = 0
    for block in BLOCKS:
        appends = [tuple(s.strip() for s in v.split("|", 1)) for v in block.directives.get("append", [])]
        sizes = [args for prefix, args in appends if prefix.startswith(SIZED)]
        if not sizes:
            continue
        after = _paragraph_after(block)
        missing = [args for args in sizes if f"`{args}`" not in after]
        assert after.startswith("Try") and not missing, \
            f"README line {block.line}: the paragraph after the block should offer `{missing or sizes}` to try it small"
        checked += 1
    assert checked >= 10


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
