"""Datasets and corpus preparation: manifests, folders of pairs, on-the-fly mixing, VoiceBank-DEMAND,
and the embedded synthetic mini corpus.

Heavy modules (torch datasets, eSpeak) are imported from their own submodules:
``sb_mal.data.mixing``, ``sb_mal.data.datasets``, ``sb_mal.data.voicebank``, ``sb_mal.data.mini``.
"""

from sb_mal.data.manifest import load_manifest, manifest_paths, prepare_pairs, to_placeholder, write_manifest

__all__ = ["load_manifest", "manifest_paths", "prepare_pairs", "to_placeholder", "write_manifest"]
