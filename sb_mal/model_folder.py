"""The one way a model folder is loaded: fetch, judge, build, load weights, recognise its layout.

A model folder holds ``hyperparams.yaml`` and the weight files its pretrainer names (SpeechBrain's
hub layout; ``sb-mal export`` writes the same). :func:`load_model_folder` serves a local folder or a
hub id (the hub cache included) for :meth:`sb_mal.inference.Enhancer.from_hparams` and, through
:func:`sb_mal.pretrained.load_pretrained`, for training (``init_from``, the losses'
``from_pretrained``), export and the command line:

1. ``hyperparams.yaml`` is fetched (a local folder never touches the network) and judged by
   :mod:`sb_mal.trust` before anything in it runs;
2. each weight file must lie inside the folder (:func:`_check_weight_paths`) and is loaded strictly
   as plain tensors (:func:`sb_mal.weights.load_weights`);
3. :func:`folder_layout` says how the model is run (the one layout and sample-rate rule).

Every failure is a :class:`ModelLoadError` (or :class:`sb_mal.trust.UntrustedCodeError`) whose
one-line message names the file or hub id and the cause.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["SPECTRAL_MASK_HPARAMS", "ExportError", "FolderLayout", "ModelFolder", "ModelLoadError", "folder_layout",
           "load_model_folder", "one_line", "resolve_source"]

#: The hparams of SpeechBrain's SpectralMaskEnhancement layout (features in, mask out, resynthesis).
SPECTRAL_MASK_HPARAMS = ("compute_stft", "spectral_magnitude", "resynth")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExportError(ValueError):
    """A run folder or checkpoint cannot be used (names the file and what is wrong)."""


class ModelLoadError(ExportError):
    """A model source cannot be loaded: one line naming the file (or hub id) and the cause."""


def one_line(err: BaseException, limit: int = 400) -> str:
    """``Type: message`` on one line (whitespace folded), at most ``limit`` characters."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def resolve_source(source) -> tuple[str, object]:
    """``("local", Path)`` for an existing file or folder, ``("hub", id)`` for a hub id ``org/name``.

    A path that does not exist is an error here, not a hub lookup: only a string of the form
    ``org/name`` (no leading ``.``, ``/`` or ``~``) that is not a local path is taken as a hub id.

    Example
    -------
    >>> resolve_source("speechbrain/metricgan-plus-voicebank")
    ('hub', 'speechbrain/metricgan-plus-voicebank')
    >>> resolve_source("./no/such/folder")
    Traceback (most recent call last):
    ...
    sb_mal.model_folder.ModelLoadError: ./no/such/folder: no such file or folder (and not a hub id of the form org/name)
    """
    if not isinstance(source, (str, os.PathLike)):  # e.g. SpeechBrain's FetchSource
        return "hub", source
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.exists():
        return "local", path
    if _HUB_ID.match(text):
        return "hub", text
    raise ModelLoadError(f"{text}: no such file or folder (and not a hub id of the form org/name)")


@dataclass
class FolderLayout:
    """How a folder's ``enhance_model`` is run: ``layout`` (``waveform`` or ``spectral_mask``), its
    ``sample_rate`` (None if the hparams do not say) and, for a spectral-mask model, ``input_fn``
    (``log1p(spectral_magnitude(compute_stft(wav)))``)."""

    layout: str
    sample_rate: int | None
    input_fn: Callable | None = None


def folder_layout(hparams: dict, where: str) -> FolderLayout:
    """The layout and sample rate of a model folder's hparams (the one rule for both).

    ``spectral_mask`` when the hparams define :data:`SPECTRAL_MASK_HPARAMS` (all three: some but not
    all is an error naming the missing ones), ``waveform`` otherwise. The rate is ``sample_rate``;
    failing that, ``compute_stft.sample_rate`` (spectral-mask) or ``audio_normalizer.sample_rate``.

    Example
    -------
    >>> folder_layout({"sample_rate": 8000}, "x.yaml")
    FolderLayout(layout='waveform', sample_rate=8000, input_fn=None)
    """
    present = [k for k in SPECTRAL_MASK_HPARAMS if k in hparams]
    if present and len(present) < len(SPECTRAL_MASK_HPARAMS):
        missing = [k for k in SPECTRAL_MASK_HPARAMS if k not in hparams]
        raise ModelLoadError(f"{where}: a spectral-mask model folder needs {list(SPECTRAL_MASK_HPARAMS)}; "
                             f"{missing} not defined")
    spectral = bool(present)
    rate = hparams.get("sample_rate")
    if rate is None and spectral:
        rate = getattr(hparams["compute_stft"], "sample_rate", None)
    if rate is None and "audio_normalizer" in hparams:
        rate = getattr(hparams["audio_normalizer"], "sample_rate", None)
    input_fn = None
    if spectral:
        from sb_mal.dsp import Log1pMagnitude

        input_fn = Log1pMagnitude(hparams["compute_stft"], spectral_magnitude=hparams["spectral_magnitude"])
    return FolderLayout("spectral_mask" if spectral else "waveform", None if rate is None else int(rate), input_fn)


@dataclass
class ModelFolder:
    """A loaded model folder: its ``hparams`` (weights loaded into their modules), ``where`` (the
    hyperparameter file or hub id, for messages) and ``layout`` (:func:`folder_layout`)."""

    hparams: dict
    where: str
    layout: FolderLayout


def load_model_folder(source, hparams_file: str = "hyperparams.yaml", *, trust_code: bool = False,
                      overrides: dict | None = None, overrides_must_match: bool = True, savedir=None,
                      download_only: bool = False, local_strategy=None, fetch_config=None) -> ModelFolder | None:
    """Load the model folder ``source`` (a local folder or a hub id); see the module docstring.

    ``trust_code`` lifts :mod:`sb_mal.trust`'s judgement (and lets non-module loadables run their
    own load hooks); weights are read as plain tensors in any case. The other arguments are those of
    SpeechBrain's ``Pretrained.from_hparams``. Returns None with ``download_only``.
    """
    from speechbrain.utils.fetching import FetchConfig, LocalStrategy, fetch

    from sb_mal.trust import UntrustedCodeError, load_model_hparams
    from sb_mal.weights import WeightsError

    kind, src = resolve_source(source)
    if kind == "local":
        if not src.is_dir():
            raise ModelLoadError(f"{src}: is a file; a model source is a folder (with {hparams_file}) or a hub id")
        src = os.fspath(src)
        fetch_config = fetch_config or FetchConfig(allow_network=False)
    fetch_config = fetch_config or FetchConfig()
    if local_strategy is None:
        local_strategy = LocalStrategy.COPY if platform.system() == "Windows" else LocalStrategy.SYMLINK
    origin = src if kind == "local" else f"hub model {src}"
    try:
        hparams_path = fetch(filename=hparams_file, source=src, savedir=savedir, save_filename=None,
                             local_strategy=local_strategy, fetch_config=fetch_config)
    except Exception as err:  # noqa: BLE001 - the hub and the file system raise many kinds
        raise ModelLoadError(f"{origin}: cannot fetch {hparams_file} ({one_line(err, 200)})") from err
    where = os.path.join(src, hparams_file) if kind == "local" else f"{src}/{hparams_file}"
    try:
        hparams = load_model_hparams(hparams_path, trust_code, overrides, overrides_must_match)
    except UntrustedCodeError:
        raise
    except Exception as err:  # noqa: BLE001 - anything a YAML program raises: name the file
        raise ModelLoadError(f"{where}: cannot be loaded ({one_line(err, 300)})") from err
    for key in ("pretrainer", "modules"):
        if not isinstance(hparams, dict) or key not in hparams:
            raise ModelLoadError(f"{where}: no {key!r} defined (see sb_mal.inference.export_run)")
    hparams["savedir"] = savedir
    pretrainer = hparams["pretrainer"]
    if not trust_code:
        _check_weight_paths(pretrainer, src if kind == "local" else None, src, where)
    pretrainer.set_collect_in(savedir)
    try:
        paths = pretrainer.collect_files(default_source=src, local_strategy=local_strategy, fetch_config=fetch_config)
    except Exception as err:  # noqa: BLE001
        names = ", ".join(f"{n}.ckpt" for n in pretrainer.loadables)
        raise ModelLoadError(f"{origin}: cannot fetch the weights named by {hparams_file} ({names}): "
                             f"{one_line(err, 300)}") from err
    if download_only:
        return None
    try:
        _load_collected(pretrainer, paths, where, trust_code)
    except WeightsError as err:
        raise ModelLoadError(str(err)) from err
    return ModelFolder(hparams, where, folder_layout(hparams, where))


def _load_collected(pretrainer, paths: dict, where: str, trust_code: bool) -> None:
    """Load every collected weight file the way :func:`sb_mal.weights.load_strict` does.

    A loadable that is not a ``torch.nn.Module``, or whose custom hook is not ``load_strict``, is
    refused unless ``trust_code`` (then its own hook runs)."""
    from sb_mal.weights import load_strict, load_weights

    for name, obj in pretrainer.loadables.items():
        if name not in paths:
            continue
        hook = pretrainer.custom_hooks.get(name)
        if isinstance(obj, torch.nn.Module) and hook in (None, load_strict):
            load_weights(obj, paths[name], built_by=where)
        elif trust_code:
            (hook or _default_hook(obj))(obj, paths[name])
        else:
            raise ModelLoadError(f"{where}: loadable {name!r} ({type(obj).__name__}) is not a torch.nn.Module loaded "
                                 "by sb_mal.inference.load_strict; pass trust_code=True (--trust-code) to run its "
                                 "own load hook")


def _default_hook(obj):
    from speechbrain.utils.checkpoints import DEFAULT_LOAD_HOOKS, get_default_hook

    hook = get_default_hook(obj, DEFAULT_LOAD_HOOKS)
    if hook is None:
        raise ModelLoadError(f"don't know how to load a {type(obj).__name__}")
    return lambda o, p: hook(o, p, False)


def _check_weight_paths(pretrainer, folder: str | None, hub_id, where: str) -> None:
    """Keep an untrusted folder's weights inside it.

    A pretrainer ``paths`` entry may name a file of the folder itself (``enhance_model.ckpt``) or,
    as SpeechBrain's hub folders do, the same file under a hub id
    (``speechbrain/metricgan-plus-voicebank/enhance_model.ckpt``): the folder's own id when it is
    loaded from the hub; for a local folder (e.g. a downloaded copy) that always means the folder's
    own file, which must exist. Any other location (another repository, an absolute path, ``..``)
    is refused.
    """
    from speechbrain.utils.parameter_transfer import Pretrainer

    from sb_mal.trust import UntrustedCodeError

    for name in pretrainer.loadables:
        given = pretrainer.paths.get(name)
        filename = f"{name}.ckpt"
        if given is not None:
            source, filename = Pretrainer.split_path(os.fspath(given) if isinstance(given, os.PathLike) else given)
            source = str(getattr(source, "path", source))
            if source in ("", "./", "."):
                own = True
            elif folder is not None:
                own = _HUB_ID.match(source) is not None  # org/name: the hub id this folder was downloaded from
            else:
                own = source == str(hub_id)
            if not own or filename in ("", ".", "..") or "\\" in filename:
                raise UntrustedCodeError(f"{where}: the pretrainer loads {name!r} from {given!r}, outside the model "
                                         "folder; pass trust_code=True (--trust-code) if you trust it")
            if folder is not None:
                pretrainer.paths[name] = os.path.join(folder, filename)
        if folder is not None and not os.path.isfile(os.path.join(folder, filename)):
            raise ModelLoadError(f"{os.path.join(folder, filename)}: missing (the weights of {name!r} named by {where})")
