"""The engine: one training loop on accelerate (``loop.train``), its config (``config.TrainConfig``) and checkpoint
I/O (``checkpoints``). Experiments call it with their own model, loss and params group; it imports no experiment."""
