# Training stage: progressive GAN reconstruction training on the train slides' records (train_reconstruction).
# Resume state lives in results/model/checkpoints/, deliberately not an output: Snakemake leaves it alone when the
# job fails or is killed, and rerunning the rule continues from the last checkpoint.


rule train_reconstruction:
    """Train the generator (GANomaly or Berg) progressively from 4×4 to the patch size; held-out error per phase."""
    input:
        manifests=manifests("train"),
        heldout=manifests("calibrate"),
    output:
        weights="results/model/generator.weights.h5",
        model="results/model/model.json",
        loss_log=report(
            "results/model/loss_log.csv",
            caption="../report/training_loss_log.rst",
            category="Training",
            labels={"figure": "loss log"},
        ),
        heldout=report(
            "results/model/heldout_error.csv",
            caption="../report/training_heldout.rst",
            category="Training",
            labels={"figure": "held-out reconstruction error"},
        ),
        samples=report(
            directory("results/model/samples"),
            patterns=["{name}.png"],
            caption="../report/training_samples.rst",
            category="Training",
            labels={"figure": "sample reconstructions", "phase": "{name}"},
        ),
        training="results/model/training.json",
    log:
        "results/logs/train_reconstruction/train_reconstruction.log",
    benchmark:
        "results/benchmarks/train_reconstruction/train_reconstruction.tsv"
    conda:
        "../../envs/tensorflow.yaml"
    threads: 8
    resources:
        gpu=CONFIG.resources.gpus.training,
        mem_mb=16000,
        runtime=2880,
    params:
        **config_params(
            "model",
            "training",
            "seed",
            "stain.augment_sigma",
            "tiling.patch_size_px",
            "resources.gpus.training",
        ),
    script:
        "../../scripts/train_reconstruction.py"
