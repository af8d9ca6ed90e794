"""sb_mal.inference: the Enhancer interface, chunked enhancement, export, and the CLI commands."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from sb_mal.audio import AudioError, read_audio
from sb_mal.cli import main
from sb_mal.cli.models import enhance_jobs as _enhance_jobs
from sb_mal.inference import Enhancer, ExportError, chunk_starts, export_run, find_best_checkpoint
from sb_mal.models import SpectralUNetSE

from conftest import make_run, tiny_unet  # noqa: E402  (shared test helpers)

SR = 16000


# -- models with known behaviour ------------------------------------------------------------------
class Pointwise(nn.Module):
    """No context at all: chunked and whole processing must agree exactly."""

    def __init__(self):
        super().__init__()
        self.max_len = 0

    def forward(self, wav, lengths=None):
        self.max_len = max(self.max_len, wav.shape[-1])
        return 0.5 * torch.tanh(2 * wav)


class Fir(nn.Module):
    """A 33-tap FIR filter: context of 16 samples each side (zero padding at the chunk edges)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 33, padding=16, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(1, 1, 33, generator=torch.Generator().manual_seed(1)) / 6)

    def forward(self, wav, lengths=None):
        return self.conv(wav[:, None])[:, 0]


def enhancer_for(model, **hparams) -> Enhancer:
    return Enhancer(modules={"enhance_model": model}, hparams={"sample_rate": SR, **hparams}, run_opts={"device": "cpu"})


def noise(seconds: float, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return 0.3 * torch.randn(batch, int(seconds * SR), generator=torch.Generator().manual_seed(seed))


# -- Enhancer -------------------------------------------------------------------------------------
def test_modules_and_hparams_are_enforced(tmp_path):
    with pytest.raises(ValueError, match=r"\['enhance_model'\].*found \['other'\]"):
        Enhancer(modules={"other": Pointwise()}, hparams={"sample_rate": SR})
    with pytest.raises(ValueError, match="'sample_rate' is required"):
        Enhancer(modules={"enhance_model": Pointwise()}, hparams={})
    with pytest.raises(ValueError, match="overlap_seconds"):
        enhancer_for(Pointwise(), chunk_seconds=1.0, overlap_seconds=0.8)
    (tmp_path / "hyperparams.yaml").write_text(textwrap.dedent("""\
        sample_rate: 16000
        model: !new:torch.nn.Identity
        modules:
            wrong_name: !ref <model>
        pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    """))
    with pytest.raises(ValueError, match=r"hyperparams\.yaml: `modules` must define \['enhance_model'\]") as err:
        Enhancer.from_hparams(source=str(tmp_path))
    assert str(tmp_path) in str(err.value)
    (tmp_path / "hyperparams.yaml").write_text("sample_rate: 16000\nmodules: {}\n")
    with pytest.raises(ValueError, match="hyperparams.yaml: no 'pretrainer' defined"):
        Enhancer.from_hparams(source=tmp_path)


def test_enhance_batch_short_input_is_the_model_output():
    model = tiny_unet()
    enh = enhancer_for(model)
    x = noise(1.0, batch=2)
    assert torch.equal(enh.enhance_batch(x), model(x))
    assert torch.equal(enh(x), model(x))  # forward
    lengths = torch.tensor([1.0, 0.5])
    out = enh.enhance_batch(x, lengths)
    assert torch.equal(out[:, :8000], model(x, lengths)[:, :8000])
    assert out[1, 8000:].abs().max() == 0  # past the length: silence
    assert enh.enhance_batch(x[0]).shape == (SR,)  # 1-D in, 1-D out
    with pytest.raises(ValueError, match=r"\[batch, samples\], got shape \(1, 2, 3\)"):
        enh.enhance_batch(torch.zeros(1, 2, 3))


def test_precision_comes_from_run_opts():
    model = tiny_unet()
    x = noise(0.5, batch=2)
    with torch.no_grad():
        ref = model(x)
    enh = Enhancer(modules={"enhance_model": model}, hparams={"sample_rate": SR},
                   run_opts={"device": "cpu", "precision": "bf16"})
    out = enh.enhance_batch(x)
    assert enh.precision == "bf16" and out.dtype == torch.float32
    assert 0 < (out - ref).abs().max() < 0.05  # autocast really ran in bfloat16, and still works


@pytest.mark.parametrize("total", [100, 16000, 16001, 27999, 28000, 40000, 123457])
def test_chunk_starts_cover_with_full_chunks_and_overlap(total):
    chunk, overlap = 16000, 4000
    starts = chunk_starts(total, chunk, overlap)
    assert starts[0] == 0 and min(starts[-1] + chunk, total) == total
    assert starts == sorted(set(starts))
    if total > chunk:
        assert all(s + chunk <= total for s in starts)  # every chunk has full context
        assert all(b - a <= chunk - overlap for a, b in zip(starts, starts[1:]))  # overlap >= `overlap`


def test_chunked_overlap_add_is_exact_for_a_pointwise_model():
    """The cross-fade weights sum to one everywhere (also where the end-aligned last chunk overlaps more)."""
    model = Pointwise()
    enh = enhancer_for(model, chunk_seconds=1.0, overlap_seconds=0.25)
    x = noise(3.7, batch=2)
    out = enh.enhance_batch(x)
    assert model.max_len == SR  # the model only ever saw one chunk
    assert (out - model(x)).abs().max() < 1e-6
    lengths = torch.tensor([1.0, 0.45])
    out = enh.enhance_batch(x, lengths)
    valid = round(0.45 * x.shape[1])
    assert (out[1, :valid] - model(x[1, :valid])).abs().max() < 1e-6 and out[1, valid:].abs().max() == 0


def test_chunk_seams_are_smooth_for_a_model_with_context():
    """Chunked != whole only within the model's context of a chunk edge, and the cross-fade makes
    those errors negligible (a hard cut between chunks would not)."""
    model = Fir()
    x = noise(5.3)
    whole = model(x)[0].detach()
    faded = enhancer_for(model).enhance_batch(x, chunk_seconds=1.0, overlap_seconds=0.25)[0]
    cut = enhancer_for(model).enhance_batch(x, chunk_seconds=1.0, overlap_seconds=0.0)[0]
    edges = sorted({e for s in chunk_starts(x.shape[1], SR, SR // 4) for e in (s, s + SR)} - {0, x.shape[1]})
    near = torch.zeros(x.shape[1], dtype=torch.bool)
    for e in edges:
        near[max(0, e - 16):e + 16] = True
    err_faded, err_cut = (faded - whole).abs(), (cut - whole).abs()
    assert err_faded[~near].max() < 1e-6  # exact away from the edges
    assert err_cut.max() > 0.05  # a hard cut leaves a visible step
    assert err_faded.max() < 0.01 * err_cut.max()  # the cross-fade hides the edges


def test_chunked_bigru_model_matches_a_per_chunk_reference():
    """With a bidirectional GRU, chunked output is *not* the whole-signal output; it must equal the
    documented recipe: each chunk enhanced alone, cross-faded with sin^2 ramps, normalised."""
    model = tiny_unet()
    x = noise(2.375)  # 38000 samples: chunks [0, 16k), [12k, 28k), end-aligned [22k, 38k)
    out = enhancer_for(model).enhance_batch(x, chunk_seconds=1.0, overlap_seconds=0.25)[0].numpy()
    n, ov = x.shape[1], 4000
    ramp = np.sin(0.5 * np.pi * (np.arange(ov) + 0.5) / ov) ** 2
    num, den = np.zeros(n), np.zeros(n)
    for k, s in enumerate([0, 12000, 22000]):
        w = np.ones(SR)
        if k > 0:
            w[:ov] = ramp
        if k < 2:
            w[-ov:] = ramp[::-1]
        with torch.no_grad():
            num[s:s + SR] += w * model(x[:, s:s + SR])[0].numpy()
        den[s:s + SR] += w
    assert np.abs(out - num / den).max() < 1e-5
    with torch.no_grad():
        assert np.abs(out - model(x)[0].numpy()).max() > 1e-4  # honest: chunking changes this model's output


# -- enhance_file -----------------------------------------------------------------------------------
def test_enhance_file_resamples_downmixes_and_protects_input(tmp_path):
    model = tiny_unet()
    enh = enhancer_for(model)
    src = tmp_path / "in.wav"
    stereo = 0.2 * np.random.default_rng(0).standard_normal((44100, 2)).astype(np.float32)
    sf.write(src, stereo, 44100, subtype="FLOAT")
    out = enh.enhance_file(src, tmp_path / "out" / "e.flac")
    ref_in, _ = read_audio(src, SR)  # the model sees 16 kHz mono
    with torch.no_grad():
        assert torch.equal(out, model(ref_in[None])[0])
    written, rate = sf.read(tmp_path / "out" / "e.flac", dtype="float32")
    assert rate == SR and written.ndim == 1 and len(written) == SR
    assert np.abs(written - out.clamp(-1, 1).numpy()).max() <= 1 / 32768 + 1e-6  # PCM_16
    before = src.read_bytes()
    with pytest.raises(AudioError, match="refusing to overwrite the input"):
        enh.enhance_file(src, src)
    assert src.read_bytes() == before


def test_enhance_file_streams_long_files_exactly(tmp_path):
    """A file longer than a chunk is read and written piece by piece; the result equals chunked
    enhancement of the whole decoded file, and no temporary file is left behind."""
    model = tiny_unet()
    enh = enhancer_for(model, chunk_seconds=1.0, overlap_seconds=0.25)
    src = tmp_path / "long.wav"
    sf.write(src, 0.2 * np.random.default_rng(1).standard_normal((int(3.3 * 22050), 2)), 22050, subtype="FLOAT")
    out_path = tmp_path / "o" / "long.wav"
    streamed = enh.enhance_file(src, out_path)
    wav, _ = read_audio(src, SR)
    in_memory = enh.enhance_batch(wav[None])[0]
    assert streamed.shape == in_memory.shape and (streamed - in_memory).abs().max() < 1e-5
    written, rate = sf.read(out_path, dtype="float32")
    assert rate == SR and np.abs(written - streamed.clamp(-1, 1).numpy()).max() <= 1 / 32768 + 1e-6
    assert os.listdir(out_path.parent) == ["long.wav"]
    assert enh.enhance_file(src, tmp_path / "o" / "x.wav", return_waveform=False) is None


MEMORY_SCRIPT = """
import json, resource, sys
import numpy as np, soundfile as sf, torch
from sb_mal.inference import Enhancer

class Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.max_len = 0
    def forward(self, wav, lengths=None):
        self.max_len = max(self.max_len, wav.shape[-1])
        return 0.5 * wav

def make(path, seconds, rate=24000):  # stereo, written block by block
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=rate, channels=2, subtype="PCM_16") as f:
        for _ in range(seconds // 10):
            f.write(0.1 * rng.standard_normal((10 * rate, 2)))

folder = sys.argv[1]
make(folder + "/short.wav", 20)
make(folder + "/long.wav", 240)
model = Recorder()
enh = Enhancer(modules={"enhance_model": model}, hparams={"sample_rate": 16000}, run_opts={"device": "cpu"})
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB on Linux
enh.enhance_file(folder + "/short.wav", folder + "/short_out.wav", return_waveform=False)
after_short = peak()
enh.enhance_file(folder + "/long.wav", folder + "/long_out.wav", return_waveform=False)
print(json.dumps({"after_short": after_short, "after_long": peak(), "max_len": model.max_len,
                  "frames": sf.info(folder + "/long_out.wav").frames}))
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units differ outside Linux")
def test_enhance_file_memory_does_not_grow_with_length(tmp_path):
    """240 s of 24 kHz stereo audio (46 MB as float32, ~100 MB with its mono, resampled and enhanced
    copies) must not raise the peak memory measured after a 20 s file: the file is read, resampled,
    enhanced and written in chunks (~10 s in a fresh process, mostly imports)."""
    script = tmp_path / "mem.py"
    script.write_text(MEMORY_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["max_len"] == 10 * SR  # never more than one 10 s chunk at once
    assert res["frames"] == 240 * SR
    assert res["after_long"] - res["after_short"] < 25, res  # whole-file processing would add ~100 MiB


# -- export -----------------------------------------------------------------------------------------
def model_with(state) -> SpectralUNetSE:
    model = tiny_unet()
    model.load_state_dict(state)
    return model.eval()


def test_find_best_checkpoint_by_key_and_mode(tmp_path):
    run, _ = make_run(tmp_path / "run")
    assert find_best_checkpoint(run / "save")[0].name == "CKPT+b"
    assert find_best_checkpoint(run / "save", "loss", "min")[0].name == "CKPT+a"
    with pytest.raises(ExportError, match="no checkpoint has a numeric 'si_sdr'.*keys found: loss, pesq"):
        find_best_checkpoint(run / "save", "si_sdr")
    with pytest.raises(ExportError, match="no checkpoints"):
        find_best_checkpoint(tmp_path)


ROUNDTRIP_SCRIPT = """
import sys, torch
from sb_mal.inference import Enhancer
out, data, savedir = sys.argv[1:4]
ref = torch.load(data)
enh = Enhancer.from_hparams(source=out, savedir=savedir, run_opts={"device": "cpu"})
state = enh.mods.enhance_model.state_dict()
same = state.keys() == ref["state"].keys() and all(torch.equal(state[k], ref["state"][k]) for k in state)
got = enh.enhance_batch(ref["input"])
print(f"{same} {(got - ref['output']).abs().max().item()}")
"""


@pytest.mark.slow
def test_export_round_trip_in_a_fresh_process(tmp_path):
    run, states = make_run(tmp_path / "run")
    out = export_run(run, tmp_path / "model")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "custom.py", "enhance_model.ckpt",
                                                     "export_info.json", "hyperparams.yaml"]
    hp = (out / "hyperparams.yaml").read_text()
    assert not re.search(r"^\s*paths:", hp, re.M) and "!new:sb_mal.models.backbone.SpectralUNetSE" in hp
    card = (out / "README.md").read_text()
    assert "CKPT+b" in card and "| pesq | 2.5 |" in card and "hf upload" in card and "foreign_class" in card
    info = json.loads((out / "export_info.json").read_text())
    assert info["checkpoint"] == "CKPT+b" and info["meta"]["pesq"] == 2.5
    x = noise(1.5, seed=3, batch=2)
    with torch.no_grad():
        ref = model_with(states["b"])(x)  # the best checkpoint's weights, as trained
    torch.save({"input": x, "output": ref, "state": states["b"]}, tmp_path / "ref.pt")
    script = tmp_path / "load.py"
    script.write_text(ROUNDTRIP_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "ref.pt"), str(tmp_path / "sd")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_weights, max_diff = proc.stdout.strip().splitlines()[-1].split()
    # bit-identical weights; outputs equal up to float rounding (~1e-7 seen: frozen parameters and
    # another process can take other CPU kernels)
    assert same_weights == "True" and float(max_diff) < 1e-6
    # a given checkpoint instead of the best one
    out_a = export_run(run, tmp_path / "model_a", checkpoint="CKPT+a")
    enh = Enhancer.from_hparams(source=str(out_a))
    with torch.no_grad():
        assert (enh.enhance_batch(x) - model_with(states["a"])(x)).abs().max() < 1e-6


def test_export_fails_loudly_on_bad_runs(tmp_path):
    run, _ = make_run(tmp_path / "run")
    # architecture in model_config.json does not match the weights
    cfg = json.loads((run / "model_config.json").read_text())
    (run / "model_config.json").write_text(json.dumps({**cfg, "kwargs": {**cfg["kwargs"], "bottleneck_dim": 64}}))
    with pytest.raises(ExportError, match="(?s)does not match SpectralUNetSE.*size mismatch"):
        export_run(run, tmp_path / "out")
    (run / "model_config.json").write_text(json.dumps(cfg))
    # every checkpoint damaged the same way: no fallback is left, the best one's error is named
    ckpts = [run / "save" / f"CKPT+{n}" / "model.ckpt" for n in ("b", "a")]
    state = torch.load(ckpts[0])
    for ckpt in ckpts:  # a weight missing from the checkpoint (a non-strict load would accept this silently)
        torch.save({k: v for k, v in state.items() if k != "mask_conv.bias"}, ckpt)
    with pytest.raises(ExportError, match=f"(?s)no checkpoint.*{re.escape(str(ckpts[0]))}.*Missing key.*mask_conv.bias"):
        export_run(run, tmp_path / "out")
    for ckpt in ckpts:
        ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="unreadable checkpoint"):
        export_run(run, tmp_path / "out")
    for ckpt in ckpts:
        torch.save({k: v * float("nan") for k, v in state.items()}, ckpt)
    with pytest.raises(ExportError, match="non-finite weights"):
        export_run(run, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (run / "model_config.json").unlink()
    with pytest.raises(ExportError, match="model_config.json: missing"):
        export_run(run, tmp_path / "out")
    with pytest.raises(ExportError, match="run folder not found"):
        export_run(tmp_path / "nope", tmp_path / "out")


def test_export_falls_back_past_an_unloadable_best(tmp_path, caplog):
    run, states = make_run(tmp_path / "run")
    best = run / "save" / "CKPT+b" / "model.ckpt"  # pesq 2.5, the best
    best.write_bytes(best.read_bytes()[:100])  # torn
    out = export_run(run, tmp_path / "out")
    info = json.loads((out / "export_info.json").read_text())
    assert info["checkpoint"] == "CKPT+a" and "skipping checkpoint CKPT+b" in caplog.text
    loaded = torch.load(out / "enhance_model.ckpt")
    assert all(torch.equal(loaded[k], v) for k, v in states["a"].items())
    shutil.rmtree(run / "save" / "CKPT+b")
    (run / "save" / "CKPT+b").mkdir()  # an old-style torn checkpoint: CKPT.yaml claims the best, no weights
    (run / "save" / "CKPT+b" / "CKPT.yaml").write_text("pesq: 9.9\nend-of-epoch: true\nunixtime: 9999999999\n")
    assert main(["export", str(run), "-o", str(tmp_path / "out2")]) == 0
    assert json.loads((tmp_path / "out2" / "export_info.json").read_text())["checkpoint"] == "CKPT+a"


def test_export_accepts_a_ddp_prefixed_state_dict(tmp_path):
    run, states = make_run(tmp_path / "run")
    torch.save({f"module.{k}": v for k, v in states["b"].items()}, run / "save" / "CKPT+b" / "model.ckpt")
    out = export_run(run, tmp_path / "model")
    saved = torch.load(out / "enhance_model.ckpt")
    assert saved.keys() == states["b"].keys() and all(torch.equal(saved[k], v) for k, v in states["b"].items())


def test_export_never_clobbers_silently(tmp_path):
    run, _ = make_run(tmp_path / "run")
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an empty folder; pass overwrite=True"):
        export_run(run, out)
    assert (out / "keep.txt").read_text() == "mine"
    export_run(run, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "enhance_model.ckpt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "run"]  # no temp folders left


def test_loading_an_exported_folder_is_strict(tmp_path):
    run, states = make_run(tmp_path / "run")
    out = export_run(run, tmp_path / "model")
    torch.save({k: v for k, v in states["b"].items() if not k.startswith("rnn.")}, out / "enhance_model.ckpt")
    from sb_mal.checkpoints import ModelLoadError

    with pytest.raises(ModelLoadError, match="enhance_model.ckpt: does not match the model built by .*hyperparams.yaml "
                                             r"\(.*SpectralUNetSE.*Missing key.*rnn"):
        Enhancer.from_hparams(source=str(out))


# -- CLI --------------------------------------------------------------------------------------------
@pytest.fixture()
def exported(tmp_path):
    run, _ = make_run(tmp_path / "run")
    assert main(["export", str(run), "-o", str(tmp_path / "model"), "--key", "loss", "--min"]) == 0
    return tmp_path / "model"


def test_cli_export_reports_the_checkpoint(tmp_path, capsys):
    run, _ = make_run(tmp_path / "run")
    exported = tmp_path / "model"
    assert main(["export", str(run), "-o", str(exported), "--key", "loss", "--min"]) == 0
    assert "CKPT+a (loss=0.9)" in capsys.readouterr().out
    assert json.loads((exported / "export_info.json").read_text())["checkpoint"] == "CKPT+a"
    assert main(["export", str(tmp_path / "run"), "-o", str(exported)]) == 2  # exists
    assert "overwrite" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "run"), "-o", str(exported), "--overwrite"]) == 0


def test_cli_enhance_folders_keeps_layout_and_reports_bad_files(exported, tmp_path, devset_test_pairs, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    os.symlink(devset_test_pairs[0][1], src / "real.flac")  # real noisy speech, 16 kHz
    sf.write(src / "sub" / "stereo.wav", 0.1 * np.random.default_rng(0).standard_normal((22050, 2)), 44100)
    (src / "sub" / "broken.wav").write_bytes(b"RIFF....garbage")
    rc = main(["enhance", str(src), "-o", str(tmp_path / "out"), "--source", str(exported), "--device", "cpu", "-q"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "1 file(s) failed" in err and "broken.wav" in err
    got = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert got == ["real.wav", os.path.join("sub", "stereo.wav")]
    assert sf.info(tmp_path / "out" / "sub" / "stereo.wav").samplerate == SR
    assert sf.info(tmp_path / "out" / "real.wav").frames == sf.info(devset_test_pairs[0][1]).frames
    # single files, flac output, custom chunking
    rc = main(["enhance", str(src / "real.flac"), "-o", str(tmp_path / "out2"), "--source", str(exported),
               "--ext", "flac", "--chunk-seconds", "1", "-q"])
    assert rc == 0 and (tmp_path / "out2" / "real.flac").is_file()


def test_cli_enhance_never_writes_onto_inputs(exported, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", 0.1 * np.ones(SR), SR)
    before = (src / "a.wav").read_bytes()
    assert main(["enhance", str(src), "-o", str(src), "--source", str(exported), "-q"]) == 2
    assert "would overwrite input file" in capsys.readouterr().err
    assert (src / "a.wav").read_bytes() == before and os.listdir(src) == ["a.wav"]
    # an output folder inside the input folder is not rescanned on the next run
    assert main(["enhance", str(src), "-o", str(src / "enh"), "--source", str(exported), "-q"]) == 0
    assert [os.path.basename(s) for s, _ in _enhance_jobs([str(src)], str(src / "enh"), "wav")] == ["a.wav"]
    with pytest.raises(ValueError, match="would both be written to"):
        _enhance_jobs([str(src / "a.wav"), str(src / "enh" / "a.wav")], str(tmp_path / "o"), "wav")
    assert main(["enhance", str(tmp_path / "missing.wav"), "-o", str(tmp_path / "o"), "--source", str(exported)]) == 2
    assert math.isfinite(sf.read(src / "enh" / "a.wav")[0].sum())
