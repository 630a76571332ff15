"""The Ray side of clmr-ray, in one place: everything below this package is plain torch/Python.

    tasks.py   Ray tasks for the data jobs (prepare, corpus generation); the local Ray we start
    train.py   Ray Train V2: TorchTrainer pretraining, checkpoints, worker failures
    tune.py    Ray Tune + Optuna: the one trainable (an experiment as a trial), sweeps
    ablate.py  an ablation file's rows x seeds as Tune trials

Importing this package imports no Ray: the CLI sets Ray's environment (tasks.quiet_ray_defaults)
before the first `import ray`.
"""
