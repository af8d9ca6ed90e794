#!/usr/bin/env python3
"""A speech-enhancement recipe written the way SpeechBrain's Voicebank templates are written.

It exists to check that sb_mal's losses drop into SpeechBrain's *stock* recipes with one YAML
entry. So, as in ``recipes/Voicebank/enhance/{waveform_map,spectral_mask}`` of SpeechBrain:

- the model comes from a ``models`` include and is referenced as ``<models[model]>``;
- ``compute_cost`` is called for the training loss *and* again through
  ``MetricStats(metric=compute_cost)`` on every step (twice per step, before ``backward()``), and
  it is not in ``modules`` (so nothing moves it to the device);
- ``waveform_map``: waveforms in, waveforms out (the model gets ``[B, T, 1]``);
  ``spectral_mask``: log1p-magnitude features in, a mask out, the enhanced magnitude resynthesised
  with the noisy phase; the cost is computed on waveforms (``waveform_target: True``);
- data prepared by a VoiceBank preparation on the main process, JSON manifests with
  ``{data_root}``, ``--device``, ``--precision`` and every other run option honoured.

Usage::

    python tests/stock_recipe/train.py tests/stock_recipe/hparams/waveform_map.yaml --data_folder=...
"""

import sys

import torch
from hyperpyyaml import load_hyperpyyaml
from pesq import PesqError, pesq

import speechbrain as sb
from speechbrain.nnet.loss.stoi_loss import stoi_loss
from speechbrain.processing.features import spectral_magnitude
from speechbrain.utils.callchains import lengths_arg_exists
from speechbrain.utils.distributed import run_on_main
from speechbrain.utils.metric_stats import MetricStats


class SEBrain(sb.Brain):
    """Enhancement Brain in the style of SpeechBrain's Voicebank templates."""

    def compute_forward(self, batch, stage):
        """Enhance the noisy batch (waveform mapping or spectral masking)."""
        batch = batch.to(self.device)
        noisy_wavs, lens = batch.noisy_sig
        if self.hparams.task == "spectral_mask":
            noisy_feats = self.compute_feats(noisy_wavs)
            model = self.modules.model
            takes_lengths = lengths_arg_exists(getattr(model, "module", model).forward)
            mask = model(noisy_feats, lens) if takes_lengths else model(noisy_feats)
            predict_spec = mask * noisy_feats
            return self.hparams.resynth(torch.expm1(predict_spec), noisy_wavs)
        out = self.modules.model(noisy_wavs.unsqueeze(-1))
        return out[:, :, 0] if out.dim() == 3 else out

    def compute_feats(self, wavs):
        """log1p of the STFT magnitude, as the spectral-mask recipes compute it."""
        return torch.log1p(spectral_magnitude(self.hparams.compute_STFT(wavs), power=0.5))

    def compute_objectives(self, predict_wavs, batch, stage):
        """The cost on waveforms; logged per utterance through MetricStats (a second call)."""
        clean_wavs, lens = batch.clean_sig
        loss = self.hparams.compute_cost(predict_wavs, clean_wavs, lens)
        self.loss_metric.append(batch.id, predict_wavs, clean_wavs, lens, reduction="batch")
        if stage != sb.Stage.TRAIN:
            self.stoi_metric.append(batch.id, predict_wavs, clean_wavs, lens, reduction="batch")
            self.pesq_metric.append(batch.id, predict=predict_wavs.detach(), target=clean_wavs, lengths=lens)
        return loss

    def on_stage_start(self, stage, epoch=None):
        """Fresh metric accumulators every stage."""
        self.loss_metric = MetricStats(metric=self.hparams.compute_cost)
        self.stoi_metric = MetricStats(metric=stoi_loss)

        def pesq_eval(pred_wav, target_wav):
            return pesq(fs=16000, ref=target_wav.float().cpu().numpy(), deg=pred_wav.float().cpu().numpy(),
                        mode="wb", on_error=PesqError.RETURN_VALUES)

        if stage != sb.Stage.TRAIN:
            self.pesq_metric = MetricStats(metric=pesq_eval, n_jobs=1, batch_eval=False)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log and keep the checkpoint with the best validation PESQ."""
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        stats = {"loss": stage_loss, "pesq": self.pesq_metric.summarize("average"),
                 "stoi": -self.stoi_metric.summarize("average")}
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats({"Epoch": epoch}, train_stats={"loss": self.train_loss},
                                                valid_stats=stats)
            self.checkpointer.save_and_keep_only(meta=stats, max_keys=["pesq"])
        else:
            self.hparams.train_logger.log_stats({"Epoch loaded": self.hparams.epoch_counter.current},
                                                test_stats=stats)
            self.test_stats = stats


def dataio_prep(hparams):
    """Datasets from the JSON manifests (noisy_wav / clean_wav with {data_root})."""

    @sb.utils.data_pipeline.takes("noisy_wav")
    @sb.utils.data_pipeline.provides("noisy_sig")
    def noisy_pipeline(noisy_wav):
        return sb.dataio.dataio.read_audio(noisy_wav)

    @sb.utils.data_pipeline.takes("clean_wav")
    @sb.utils.data_pipeline.provides("clean_sig")
    def clean_pipeline(clean_wav):
        return sb.dataio.dataio.read_audio(clean_wav)

    datasets = {}
    for split in ("train", "valid", "test"):
        datasets[split] = sb.dataio.dataset.DynamicItemDataset.from_json(
            json_path=hparams[f"{split}_annotation"], replacements={"data_root": hparams["data_folder"]},
            dynamic_items=[noisy_pipeline, clean_pipeline], output_keys=["id", "noisy_sig", "clean_sig"])
    datasets["train"] = datasets["train"].filtered_sorted(sort_key="length")
    return datasets


def main(argv):
    """Run the recipe; returns the Brain (the tests call this in-process)."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    from sb_mal.data.voicebank import prepare_voicebank

    run_on_main(prepare_voicebank, kwargs={"data_folder": hparams["data_folder"],
                                           "save_folder": hparams["output_folder"], "download": False,
                                           "progress": False})
    datasets = dataio_prep(hparams)
    sb.create_experiment_directory(experiment_directory=hparams["output_folder"],
                                   hyperparams_to_save=hparams_file, overrides=overrides)
    brain = SEBrain(modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
                    run_opts=run_opts, checkpointer=hparams["checkpointer"])
    brain.fit(brain.hparams.epoch_counter, datasets["train"], datasets["valid"],
              train_loader_kwargs=hparams["dataloader_options"], valid_loader_kwargs=hparams["dataloader_options"])
    brain.evaluate(datasets["test"], max_key="pesq", test_loader_kwargs=hparams["dataloader_options"])
    return brain


if __name__ == "__main__":
    main(sys.argv[1:])
