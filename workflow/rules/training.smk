# Training stage: each detector's progressive GAN, trained on its records of the train slides (train_reconstruction).
# Resume state lives in the detector's model/checkpoints/, deliberately not an output: Snakemake leaves it alone when the
# job fails or is killed, and rerunning the rule continues from the last checkpoint.


rule train_reconstruction:
    """Train the generator (GANomaly or Berg) progressively from 4×4 to the patch size; held-out error per phase."""
    input:
        manifests=manifests("train"),
        heldout=manifests("calibrate"),
    output:
        weights=model_path("generator.weights.h5"),
        model=model_path("model.json"),
        loss_log=report(
            model_path("loss_log.csv"),
            caption="../report/training_loss_log.rst",
            category="Training",
            labels={"detector": "{detector}", "figure": "loss log"},
        ),
        heldout=report(
            model_path("heldout_error.csv"),
            caption="../report/training_heldout.rst",
            category="Training",
            labels={
                "detector": "{detector}",
                "figure": "held-out reconstruction error",
            },
        ),
        samples=report(
            directory(model_path("samples")),
            patterns=["{name}.png"],
            caption="../report/training_samples.rst",
            category="Training",
            labels={
                "detector": "{detector}",
                "figure": "sample reconstructions",
                "phase": "{name}",
            },
        ),
        training=model_path("training.json"),
    log:
        log_path("train_reconstruction", "{detector}"),
    benchmark:
        bench_path("train_reconstruction", "{detector}")
    conda:
        "../../envs/tensorflow.yaml"
    threads: 8
    resources:
        gpu=CONFIG.resources.gpus.training,
        mem_mb=16000,
        runtime=2880,
    params:
        **detector_params(
            "model",
            "training",
            "seed",
            "stain.augment_sigma",
            "tiling.patch_size_px",
            "resources.gpus.training",
        ),
    script:
        "../../scripts/train_reconstruction.py"
