"""Inference: the :class:`Enhancer` interface (a SpeechBrain ``Pretrained``) and export of a
training run to a self-contained, hub-style model folder.

Example
-------
>>> from sb_mal.inference import Enhancer, export_run  # doctest: +SKIP
>>> folder = export_run("results/baseline/folders/1234", "my_model")  # doctest: +SKIP
>>> Enhancer.from_hparams(source=folder).enhance_file("noisy.wav", "enhanced.wav")  # doctest: +SKIP
"""

from sb_mal.inference.enhancer import Enhancer, chunk_starts, load_strict
from sb_mal.inference.export import ExportError, export_run, find_best_checkpoint

__all__ = ["Enhancer", "ExportError", "chunk_starts", "export_run", "find_best_checkpoint", "load_strict"]
