"""Datasets and corpus preparation: manifests, folders of pairs, on-the-fly mixing, VoiceBank-DEMAND,
and the embedded synthetic mini corpus."""

from sb_mal.data.manifest import load_manifest, manifest_paths, prepare_pairs, to_placeholder, write_manifest

__all__ = ["load_manifest", "manifest_paths", "prepare_pairs", "to_placeholder", "write_manifest"]
