"""A model folder cannot make Python run anything outside the allow-list, by any path.

The hostile cases come from an audit and from the forms HyperPyYAML offers; the reachable-callables
test generates its own cases: every object reachable by attribute from the packages a model folder
may use, judged against ``pydoc.locate`` (what HyperPyYAML itself would reach).
"""

from __future__ import annotations

import os
import pickle
import pydoc
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from sb_mal.checkpoints import load_pretrained
from sb_mal.cli import main
from sb_mal.inference import Enhancer
from sb_mal.trust import (
    ALLOWED_OBJECTS,
    MODEL_MODULES,
    UntrustedCodeError,
    check_hparams_file,
    is_allowed,
    is_allowed_object,
    load_model_hparams,
)

from conftest import make_run  # noqa: E402  (shared test helpers)
from sb_folders import spectral_mask_folder, waveform_folder

REPO = Path(__file__).resolve().parents[1]

#: Each case appends an entry that would create ``{marker}`` if it ran.
PAYLOADS = {
    "apply": "x: !apply:os.system ['touch {marker}']\n",
    "applyref": "x: !applyref:os.system ['touch {marker}']\n",
    "walk_through_torch": "x: !apply:torch.nn.functional.torch.os.system ['touch {marker}']\n",
    "walk_through_torch_name": "x: !name:torch.nn.functional.torch.os.system ['touch {marker}']\n",
    "walk_short": "x: !apply:torch.os.system ['touch {marker}']\n",
    "walk_sb_mal": "x: !apply:sb_mal.models.backbone.torch.os.system ['touch {marker}']\n",
    "walk_class_globals": "x: !apply:sb_mal.models.SpectralUNetSE.__init__.__globals__ ['touch {marker}']\n",
    "percent_escape": "x: !apply:os%2Esystem ['touch {marker}']\n",
    "builtin_exec": "x: !apply:exec ['open(\"{marker}\", \"w\")']\n",
    "builtin_eval": "x: !apply:eval ['__import__(\"os\").system(\"touch {marker}\")']\n",
    "python_tag": "x: !!python/object/apply:os.system ['touch {marker}']\n",
    "python_name": "x: !!python/name:os.system\n",
    "tuple_payload": "x: (!!python/object/apply:os.system ['touch {marker}'])\n",
    "explicit_tuple": "x: !tuple (!!python/object/apply:os.system ['touch {marker}'])\n",
    "module_tag": "x: !module:os\n",
    "include": "x: !include:{marker}.yaml\n",
    "tag_directive": "%TAG !e! tag:yaml.org,2002:python/object/apply:\n---\nx: !e!os.system ['touch {marker}']\n",
    "attribute_reference": "y: !ref <enhance_model.load_state_dict>\n",
    "torch_load": "x: !apply:torch.load ['{marker}']\n",
    "torch_load_in_allowed_class": "x: !apply:torch.nn.Module.load_state_dict [null, '{marker}']\n",
    "unknown_future_tag": "x: !execute:os.system ['touch {marker}']\n",
    "copy": "x: !copy <enhance_model>\n",
}


def _prepend_directive(text: str, payload: str) -> str:
    return payload + text.replace("%YAML", "#") if payload.startswith("%") else text + payload


@pytest.fixture()
def exported(tmp_path):
    run, _ = make_run(tmp_path / "run")
    assert main(["export", str(run), "-o", str(tmp_path / "model"), "--key", "loss", "--min"]) == 0
    (tmp_path / "model" / "export_info.json").unlink()  # loaded through hyperparams.yaml from here on
    return tmp_path / "model"


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(PAYLOADS))
def test_no_payload_runs_through_any_entry_point(exported, tmp_path, capsys, case):
    marker = tmp_path / "code_ran"
    hp = exported / "hyperparams.yaml"
    hp.write_text(_prepend_directive(hp.read_text(), PAYLOADS[case].format(marker=marker)))
    (tmp_path / f"{marker.name}.yaml").write_text(f"y: !apply:os.system ['touch {marker}']\n")
    with pytest.raises(UntrustedCodeError, match="trust_code=True"):
        Enhancer.from_hparams(source=str(exported))
    with pytest.raises(UntrustedCodeError, match="trust_code=True"):
        load_pretrained(exported)
    wav = tmp_path / "in.wav"
    import soundfile as sf

    sf.write(wav, torch.randn(8000).mul(0.1).numpy(), 16000)
    assert main(["enhance", str(wav), "-o", str(tmp_path / "out"), "--source", str(exported), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(hp) in err and "--trust-code" in err, err
    assert not marker.exists()


@pytest.mark.integration
def test_a_placeholder_must_be_replaced(tmp_path):
    file = tmp_path / "hyperparams.yaml"
    file.write_text("n_fft: !PLACEHOLDER\nlayer: !new:torch.nn.Linear [!ref <n_fft>, 2]\n")
    with pytest.raises(UntrustedCodeError, match="n_fft.*PLACEHOLDER"):
        load_model_hparams(file)
    assert load_model_hparams(file, overrides={"n_fft": 8})["layer"].in_features == 8


@pytest.mark.integration
def test_payloads_inside_strings_stay_strings(exported, tmp_path):
    marker = tmp_path / "code_ran"
    hp = exported / "hyperparams.yaml"
    payload = f"(!!python/object/apply:os.system ['touch {marker}'])"
    hp.write_text(hp.read_text() + f"a: \"{payload}\"\nb: !ref <a>\nc: !ref <a> and more\n")
    hparams = load_model_hparams(hp)
    assert hparams["a"] == hparams["b"] == payload and hparams["c"] == payload + " and more"
    Enhancer.from_hparams(source=str(exported))
    assert not marker.exists()


@pytest.mark.integration
def test_trusting_the_folder_is_the_users_choice(exported, tmp_path):
    marker = tmp_path / "code_ran"
    hp = exported / "hyperparams.yaml"
    hp.write_text(hp.read_text() + PAYLOADS["apply"].format(marker=marker))
    Enhancer.from_hparams(source=str(exported), trust_code=True)
    assert marker.exists()


@pytest.mark.integration
def test_nested_aliases_are_refused_at_once_and_references_cannot_explode(tmp_path):
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    file = tmp_path / "hyperparams.yaml"
    file.write_text(laughs)
    assert len(laughs) < 1200
    started = time.monotonic()
    with pytest.raises(UntrustedCodeError, match="anchor or alias"):
        load_model_hparams(file)
    previous = ["a"] + [f"b{i}" for i in range(8)]
    refs = "a: xxxxxxxxxx\n" + "".join(f"b{i}: !ref {f'<{previous[i]}>' * 10}\n" for i in range(9))
    file.write_text(refs)
    with pytest.raises(UntrustedCodeError, match="expand to more than"):
        load_model_hparams(file)
    for text, why in [("a: 10\nb: !ref <a> ** <a> ** <a> ** <a>\n", "power"),
                      ("a: \"'x'\"\nb: !ref <a> * 100000000000\n", "not a number"),
                      ("a: !ref <b>\nb: !ref <a>\n", "circular")]:
        file.write_text(text)
        with pytest.raises(UntrustedCodeError, match=why):
            load_model_hparams(file)
    assert time.monotonic() - started < 5
    file.write_text("n: 4\nm: !ref <n> * 2 + 1\nlayer: !new:torch.nn.Linear [!ref <m>, 2]\nt: (1, 2.5)\n")
    loaded = load_model_hparams(file)  # what references and tuples are for still works
    assert loaded["m"] == 9 and loaded["layer"].in_features == 9 and loaded["t"] == (1, 2.5)


@pytest.mark.integration
def test_speechbrain_and_sb_mal_folders_still_load(tmp_path, exported):
    assert Enhancer.from_hparams(source=str(exported)).sample_rate == 16000
    assert Enhancer.from_hparams(source=str(waveform_folder(tmp_path / "wf"))).layout == "waveform"
    assert Enhancer.from_hparams(source=str(spectral_mask_folder(tmp_path / "sm"))).layout == "spectral_mask"
    assert load_pretrained(spectral_mask_folder(tmp_path / "sm2")).kind == "spectral_mask_folder"


def _reachable_names(limit_per_root: int = 4000):
    """(dotted name, object) pairs reachable by attribute from every module a model folder may use:
    the module's attributes, and the attributes of the modules, classes and functions found there."""
    roots = sorted({*MODEL_MODULES, *(n.rsplit(".", 1)[0] for n in ALLOWED_OBJECTS)})
    import importlib
    import pkgutil

    modules = {}
    for root in roots:
        mod = importlib.import_module(root)
        modules[root] = mod
        for info in pkgutil.iter_modules(getattr(mod, "__path__", []) or []):
            try:
                modules[f"{root}.{info.name}"] = importlib.import_module(f"{root}.{info.name}")
            except Exception:  # noqa: BLE001 - an optional dependency missing: not reachable either
                continue
    found = []
    for root, mod in modules.items():
        names = []
        for attr in sorted(vars(mod)):
            if attr.startswith("__"):
                continue
            obj = vars(mod)[attr]
            names.append((f"{root}.{attr}", obj))
            if isinstance(obj, (types.ModuleType, type)) or callable(obj):
                for sub in sorted(getattr(obj, "__dict__", {}) if not isinstance(obj, types.ModuleType) else vars(obj)):
                    if not sub.startswith("__"):
                        names.append((f"{root}.{attr}.{sub}", None))
        found.extend(names[:limit_per_root])
    return found


@pytest.mark.integration
def test_every_reachable_object_outside_the_allow_list_is_refused(tmp_path):
    refused = accepted = 0
    dangerous = []
    for name, _ in _reachable_names():
        try:
            obj = pydoc.locate(name)  # what HyperPyYAML reaches for this name
        except Exception:  # noqa: BLE001 - names whose import fails cannot run either
            continue
        if obj is None or not (callable(obj) or isinstance(obj, types.ModuleType)):
            continue
        if is_allowed_object(obj):
            accepted += is_allowed(name)
            continue
        assert not is_allowed(name), f"{name} reaches {obj!r}, which is not on the allow-list, yet is accepted"
        refused += 1
        if getattr(obj, "__module__", "") in ("os", "posix", "subprocess", "builtins", "shutil", "pickle") or \
                getattr(obj, "__name__", "") in ("load", "system", "exec", "eval", "Popen", "import_module"):
            dangerous.append(name)
    assert refused > 1000 and accepted > 100 and len(dangerous) > 50, (refused, accepted, len(dangerous))
    # the full file check on a sample of the dangerous ones, under each calling tag
    marker = tmp_path / "code_ran"
    for i, name in enumerate(dangerous[:: max(1, len(dangerous) // 60)]):
        tag = ("!apply:", "!name:", "!new:")[i % 3]
        file = tmp_path / f"h{i}.yaml"
        file.write_text(f"x: {tag}{name} ['{marker}']\n")
        with pytest.raises(UntrustedCodeError, match="outside the allow-list"):
            check_hparams_file(file)
    assert not marker.exists()


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.integration
def test_pickled_payloads_never_run_even_when_the_environment_forces_full_unpickling(exported, tmp_path):
    marker = tmp_path / "code_ran"
    with open(exported / "enhance_model.ckpt", "wb") as fout:
        pickle.dump({"weight": _Payload(marker)}, fout)
    import zipfile

    torch.save({"w": torch.zeros(1), "p": _Payload(marker)}, tmp_path / "zip.ckpt")
    assert zipfile.is_zipfile(tmp_path / "zip.ckpt")
    script = (
        "import sys\nfrom sb_mal.inference import Enhancer\nfrom sb_mal.checkpoints import load_pretrained\n"
        "from sb_mal.weights import load_state_file\n"
        f"for fn in (lambda: Enhancer.from_hparams(source={str(exported)!r}),\n"
        f"           lambda: Enhancer.from_hparams(source={str(exported)!r}, trust_code=True),\n"
        f"           lambda: load_pretrained({str(exported)!r}),\n"
        f"           lambda: load_state_file({str(tmp_path / 'zip.ckpt')!r})):\n"
        "    try:\n        fn()\n        print('LOADED')\n    except Exception as err:\n        print('REFUSED', err)\n"
    )
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("REFUSED") for line in lines), out.stdout
    assert all("ckpt" in line for line in lines), out.stdout  # each names the file
    assert not marker.exists()


def _hub_cache(cache: Path, repo: str, folder: Path) -> None:
    """An offline Hugging Face hub cache holding ``folder``'s files under the repo id ``repo``."""
    rev = "0" * 40
    base = cache / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / rev
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(rev)


@pytest.mark.integration
def test_hub_ids_served_from_the_local_cache_are_checked_too(exported, tmp_path, monkeypatch):
    marker = tmp_path / "code_ran"
    hp = exported / "hyperparams.yaml"
    hp.write_text(hp.read_text() + PAYLOADS["walk_through_torch"].format(marker=marker))
    cache = tmp_path / "hub"
    _hub_cache(cache, "someone/evil-enhancer", exported)
    _hub_cache(cache, "someone/good-enhancer", waveform_folder(tmp_path / "good"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    assert Enhancer.from_hparams(source="someone/good-enhancer", savedir=tmp_path / "s1").layout == "waveform"
    with pytest.raises(UntrustedCodeError, match="outside the allow-list"):
        Enhancer.from_hparams(source="someone/evil-enhancer", savedir=tmp_path / "s2")
    with pytest.raises(UntrustedCodeError, match="outside the allow-list"):
        load_pretrained("someone/evil-enhancer", savedir=tmp_path / "s3")
    assert not marker.exists()
    snapshot = next((cache / "models--someone--good-enhancer" / "snapshots").iterdir())
    (snapshot / "enhance_model.ckpt").unlink()  # a hub folder missing its weights: the file is named
    with pytest.raises(ValueError, match="someone/good-enhancer.*enhance_model.ckpt"):
        Enhancer.from_hparams(source="someone/good-enhancer", savedir=tmp_path / "s4")


@pytest.mark.integration
def test_weights_from_outside_the_folder_and_missing_weights_are_named(exported, tmp_path):
    hp = exported / "hyperparams.yaml"
    text = hp.read_text()
    hp.write_text(text.replace("    loadables:", f"    paths:\n        enhance_model: {tmp_path / 'elsewhere.ckpt'}\n"
                                                 "    loadables:"))
    with pytest.raises(UntrustedCodeError, match="outside the model folder"):
        Enhancer.from_hparams(source=str(exported))
    hp.write_text(text)
    (exported / "enhance_model.ckpt").unlink()
    with pytest.raises(ValueError, match=f"{exported / 'enhance_model.ckpt'}: missing"):
        Enhancer.from_hparams(source=str(exported))


@pytest.mark.integration
def test_export_info_and_model_config_are_judged_by_the_object(exported):
    import json

    run = exported.parent / "run"
    cfg_file = run / "model_config.json"
    cfg = json.loads(cfg_file.read_text())
    for name in ("subprocess.Popen", "torch.nn.functional.torch.os.system", "sb_mal.models.backbone.torch.load",
                 "builtins.eval"):
        cfg_file.write_text(json.dumps({**cfg, "class": name}))
        with pytest.raises(UntrustedCodeError, match="outside the allow-list"):
            load_pretrained(run)
        assert main(["export", str(run), "-o", str(exported.parent / "again"), "--key", "loss", "--min"]) == 2


@pytest.mark.integration
def test_a_downloaded_speechbrain_hub_folder_naming_its_own_hub_path_loads_offline(tmp_path):
    folder = spectral_mask_folder(tmp_path / "metricgan")
    hp = folder / "hyperparams.yaml"
    hp.write_text(hp.read_text() + "    paths:\n        enhance_model: speechbrain/metricgan-plus-voicebank/"
                                   "enhance_model.ckpt\n")
    assert Enhancer.from_hparams(source=str(folder)).layout == "spectral_mask"  # its own file, no network
    for elsewhere in ("someone/other/deeper/enhance_model.ckpt", "/etc/enhance_model.ckpt", "../x/enhance_model.ckpt"):
        hp.write_text(hp.read_text().rsplit("    paths:", 1)[0] + f"    paths:\n        enhance_model: {elsewhere}\n")
        with pytest.raises(UntrustedCodeError, match="outside the model folder"):
            Enhancer.from_hparams(source=str(folder))
