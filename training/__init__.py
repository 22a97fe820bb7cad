"""The training pipeline: torch, torchvision and albumentations; exports ONNX with a model card.

Modules, in the order a run uses them:

- ``config``    — typed ``TrainConfig``; YAML defaults (``configs/``), flags win, saved as config.yaml;
- ``models``    — architecture registry (``get_model``, ``list_models``), 1-channel by design;
- ``data``      — dataset checks, the seeded stratified split (split.csv), the image cache built
                  with ``inspection.preprocess`` (== serving's input), albumentations presets;
- ``engine``    — ``train_one_epoch``, ``evaluate``, early stopping, resumable checkpoints;
- ``calibrate`` — the reject threshold on P(defect) for ``max_escape`` / ``max_overkill``;
- ``export``    — ONNX (uint8 pixels -> probabilities), checker, parity, golden frames, int8;
- ``report``    — report.html with confusion matrix, ROC and precision–recall plots;
- ``train``     — ``main(cfg)``: the whole run, written atomically as models/<name>/<version>/.

Programmatic use (what ``inspection train`` does)::

    from training.config import CONFIG_DIR, load_config
    from training.train import main
    result = main(load_config(CONFIG_DIR / "demo.yaml", {"data": "datasets/sample"}))
    print(result.summary)          # escape / overkill report; result.path is the version folder
"""
