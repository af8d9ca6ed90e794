"""SpeechBrain's own MetricGAN+ recipe beside sb_mal's: finding or exporting it, its command, its data.

Shared by ``okd_experiment.py`` (part 2) and ``bench_okd_cost.py``. SpeechBrain's recipes are not in
its pip wheel, so the recipe comes from a SpeechBrain checkout (``find_recipe``) or from a git
directory of the SpeechBrain repository (``export_recipe``); either way it is copied into a
temporary folder at run time, never into this repository.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from datetime import datetime
from pathlib import Path

#: The recipe's folder inside SpeechBrain's ``recipes`` folder.
SB_RECIPE = Path("Voicebank/enhance/MetricGAN")
#: What the recipe needs from SpeechBrain's repository (its folder links to the shared data preparation).
SB_RECIPE_FILES = ("recipes/Voicebank/enhance/MetricGAN", "recipes/Voicebank/voicebank_prepare.py")
#: Speakers whose training utterances SpeechBrain's voicebank_prepare.py holds out for validation
#: (the first two of its speaker list; sb_mal's prepare_voicebank holds out the same two).
VALID_SPEAKERS = ("p226", "p287")
#: Training "speakers" of the benchmark's VoiceBank-layout folder (any VoiceBank training speaker but the two).
TRAIN_SPEAKERS = ("p227", "p228", "p230", "p231", "p233", "p236", "p239", "p240", "p243", "p244")
TEST_SPEAKERS = ("p232", "p257")


def find_recipe(path: str | None, option: str = "--speechbrain-recipes") -> Path | None:
    """The recipe folder under ``path``: a SpeechBrain checkout, its ``recipes`` folder, or the recipe
    folder itself (None for None); ``option`` names the command-line option in the error."""
    if path is None:
        return None
    root = Path(path).expanduser().resolve()
    for candidate in (root, root / SB_RECIPE, root / "recipes" / SB_RECIPE):
        if (candidate / "train.py").exists() and (candidate / "hparams" / "train.yaml").exists():
            return candidate
    raise SystemExit(f"{option} {root}: no {SB_RECIPE}/train.py with hparams/train.yaml under it or "
                     "under its recipes/ folder")


def export_recipe(git_dir: str | Path, dest: Path, rev: str = "HEAD") -> Path:
    """Export the recipe (and the data preparation it links to) from a git directory of SpeechBrain's
    repository into ``dest``; returns the recipe folder there."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(git_dir), "archive", "--format=tar", rev, *SB_RECIPE_FILES],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"--speechbrain-git {git_dir}: git archive {rev} {' '.join(SB_RECIPE_FILES)} failed: "
                         f"{archive.stderr.decode(errors='replace').strip()}")
    with tempfile.TemporaryFile() as tmp:
        tmp.write(archive.stdout)
        tmp.seek(0)
        with tarfile.open(fileobj=tmp) as tar:
            tar.extractall(dest, filter="data")
    return find_recipe(str(dest / "recipes" / SB_RECIPE), "--speechbrain-git")


def copy_recipe(recipe: Path, dest: Path) -> Path:
    """A private copy of the recipe folder (links resolved: the data preparation becomes a file)."""
    shutil.copytree(recipe, dest, symlinks=False)
    return dest


def speechbrain_args(data: Path, output: Path, samples: int, seed: int, device: str, n_jobs: int | None,
                     epochs: int | None = None, skip_prep: bool = True) -> list[str]:
    """Command-line overrides of the recipe's ``hparams/train.yaml``: data and output folders, samples
    per epoch, seed, device and metric jobs (None: the YAML's own), no TensorBoard (not installed)."""
    args = [f"--data_folder={data}", f"--output_folder={output}", f"--skip_prep={skip_prep}", "--use_tensorboard=False",
            "--tensorboard_train_logger=null", f"--number_of_samples={samples}", f"--seed={seed}", f"--device={device}"]
    if n_jobs is not None:
        args.append(f"--n_jobs={n_jobs}")
    if epochs is not None:
        args.append(f"--number_of_epochs={epochs}")
    return args


def speechbrain_command(recipe: Path, *args: str) -> list[str]:
    """``python <recipe>/train.py <recipe>/hparams/train.yaml <args>`` (run it with ``cwd=recipe``: the
    recipe imports its data preparation from its own folder)."""
    return [sys.executable, str(recipe / "train.py"), str(recipe / "hparams" / "train.yaml"), *args]


def epoch_seconds(log_txt: Path) -> list[float]:
    """Seconds of each epoch (training + validation) of a SpeechBrain-style run: from the epoch loop's
    'Going into epoch k' line to the next train-logger line, by the timestamps of ``log_txt``."""
    stamp = lambda line: datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    out, start = [], None
    for line in log_txt.read_text(encoding="utf-8", errors="replace").splitlines():
        if "Going into epoch" in line:
            start = stamp(line)
        elif start is not None and "train_logger" in line:
            out.append((stamp(line) - start).total_seconds())
            start = None
    return out


def voicebank_layout(folder: Path, devset: Path, train: int, valid: int, test: int, seconds: float = 3.0,
                     seed: int = 0) -> Path:
    """A VoiceBank-DEMAND folder as SpeechBrain's 16 kHz copy of the corpus lays it out, from the devset.

    ``noisy_trainset_28spk_wav_16k/`` and ``clean_trainset_28spk_wav_16k/`` hold ``train`` fixed
    devset training mixtures of ``seconds`` (ids of VoiceBank training speakers) and ``valid`` devset
    valid pairs cut to at most ``seconds`` (ids of p226 and p287, the speakers both preparations hold
    out for validation); ``noisy_testset_wav_16k/`` and ``clean_testset_wav_16k/`` the first ``test``
    devset test pairs, cut alike. SpeechBrain's ``voicebank_prepare.py`` also reads the transcripts
    (``trainset_28spk_txt/``, ``testset_txt/``) and a ``lexicon.txt`` (which it would otherwise
    download): one two-word sentence for every utterance. Written once per set of arguments
    (``layout.json`` records them).
    """
    folder = Path(folder)
    spec = {"train": train, "valid": valid, "test": test, "seconds": seconds, "seed": seed}
    done = folder / "layout.json"
    if done.exists() and json.loads(done.read_text()) == spec:
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    from sb_mal.audio import read_audio, write_audio
    from sb_mal.data.mixing import OnTheFlyMixer

    rate, limit = 16000, round(seconds * 16000)

    def put(split: str, uid: str, noisy, clean) -> None:
        for kind, wav in (("noisy", noisy), ("clean", clean)):
            name = f"{kind}_trainset_28spk_wav_16k" if split == "train" else f"{kind}_testset_wav_16k"
            write_audio(folder / name / f"{uid}.wav", wav, rate)
        txt = folder / ("trainset_28spk_txt" if split == "train" else "testset_txt") / f"{uid}.txt"
        txt.parent.mkdir(parents=True, exist_ok=True)
        txt.write_text("Hello world.\n")

    mixer = OnTheFlyMixer(devset / "speech/train", devset / "noise/train", segment_seconds=seconds, num_items=train,
                          seed=seed)
    for i in range(train):
        item = mixer[i]
        uid = f"{TRAIN_SPEAKERS[i % len(TRAIN_SPEAKERS)]}_{i // len(TRAIN_SPEAKERS) + 1:03d}"
        put("train", uid, item["noisy_sig"].numpy(), item["clean_sig"].numpy())
    for split, count, speakers in (("valid", valid, VALID_SPEAKERS), ("test", test, TEST_SPEAKERS)):
        pairs = sorted((devset / "pairs" / split / "noisy").glob("*.flac"))[:count]
        if len(pairs) < count:
            raise SystemExit(f"{devset}/pairs/{split} has {len(pairs)} pairs, {count} asked for")
        for i, noisy_path in enumerate(pairs):
            noisy = read_audio(noisy_path, rate, as_numpy=True)[0][:limit]
            clean = read_audio(devset / "pairs" / split / "clean" / noisy_path.name, rate, as_numpy=True)[0][:limit]
            uid = f"{speakers[i % len(speakers)]}_{i // len(speakers) + 1:03d}"
            put("train" if split == "valid" else "test", uid, noisy, clean)
    (folder / "lexicon.txt").write_text("HELLO HH AH0 L OW1\nWORLD W ER1 L D\n")
    done.write_text(json.dumps(spec))
    return folder
