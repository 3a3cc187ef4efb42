"""The training config: every knob of one run as a frozen dataclass (values come from params.yaml's profiles)."""
from __future__ import annotations

from dataclasses import dataclass, field

from immiscible.config import choices, validate
from immiscible.diffusion.objectives import OBJECTIVES
from immiscible.models import MODEL_CONFIGS
from immiscible.noise.source import KNN_K, METHODS

# Fields that may change between a run and its resumption (they do not change the trajectory).
RESUMABLE_FIELDS = ("steps", "output_dir", "checkpoint_every", "checkpoints_total_limit", "snapshot_every",
                    "log_every", "progress", "data_dir", "assign_background")


@dataclass(frozen=True)
class TrainConfig:
    # data
    dataset: str = "cifar10"              # a prepared name under data_dir, or an ImageFolder path
    data_dir: str = "data"
    resolution: int = 32                  # images are average-pooled to this size (must divide the stored size)
    num_images: int = 0                   # 0: the whole train split; N: its first N images (smoke runs)
    classes: tuple[int, ...] = ()         # train on these classes of the train split only (empty: all of them)
    hflip: bool = False                   # random horizontal flips (the paper's recipe); drawn per (seed, step)
    # model
    model: str = field(default="tiny", metadata=choices(*MODEL_CONFIGS))
    dropout: float | None = None          # None: the model config's own value
    num_classes: int = 0                  # > 0: class-conditional (a class embedding with one extra "null" class)
    label_dropout: float = 0.0            # share of labels replaced by the null class (classifier-free guidance)
    init_from: str = ""                   # fine-tuning: start from these weights (a snapshot .safetensors, or a run
                                          # folder: its last EMA snapshot) instead of a random init; "" from scratch
    init_sha256: str = ""                 # SHA-256 of init_from's tensors (weights_digest): filled in by train(); given, must match
    # diffusion (DDPM linear betas 1e-4..0.02 over 1000 steps, as in the paper's DDIM base code)
    objective: str = field(default="eps", metadata=choices(*OBJECTIVES))
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = field(default="linear", metadata=choices("linear", "scaled_linear", "squaredcos_cap_v2"))
    # noise assignment
    method: str = field(default="vanilla", metadata=choices(*METHODS))
    knn_k: int = KNN_K
    assign_cost: str = field(default="l2", metadata=choices("l2", "sqeuclidean"))
    assign_solver: str = field(default="auto", metadata=choices("auto", "jv", "lap", "scipy"))
    assign_scope: str = field(default="global", metadata=choices("global", "local"))  # across processes or per process
    # "thread": assign batch s+1 in a background thread while batch s trains (same results); "inline": in the loop;
    # "auto": thread on a GPU, inline on CPU (there the thread would compete with torch for the same cores).
    assign_background: str = field(default="auto", metadata=choices("auto", "thread", "inline"))
    # optimisation
    batch_size: int = 64                  # global batch (all processes together) = the assignment batch
    steps: int = 1000
    lr: float = 2e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999             # effective decay is min(ema_decay, (1+n)/(10+n)) (diffusers EMAModel)
    mixed_precision: str = field(default="no", metadata=choices("no", "fp16", "bf16"))  # GPU only
    # bookkeeping
    seed: int = 0
    output_dir: str = "checkpoints/run"
    checkpoint_every: int = 500
    checkpoints_total_limit: int = 2      # full checkpoints kept (EMA snapshots are kept separately)
    snapshot_every: int = 0               # EMA weights saved for evaluation every N steps (0: final only)
    log_every: int = 10
    progress: bool = True
    # what the run's trajectory depends on beyond these fields (an experiment's model source, its loss settings):
    # recorded with the config and compared on resume like every field
    settings: dict = field(default_factory=dict)


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Validate types, choices and ranges of the whole config before any compute."""
    cfg = validate(cfg)
    positive = ("resolution", "num_train_timesteps", "batch_size", "checkpoint_every", "log_every", "knn_k",
                "checkpoints_total_limit")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}={getattr(cfg, name)!r} must be >= 1")
    for name in ("steps", "num_images", "warmup_steps", "snapshot_every", "num_classes"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name}={getattr(cfg, name)!r} must be >= 0")
    if not 0 <= cfg.ema_decay < 1:
        raise ValueError(f"ema_decay={cfg.ema_decay!r} must be in [0, 1)")
    if not 0 <= cfg.label_dropout < 1 or (cfg.label_dropout and not cfg.num_classes):
        raise ValueError(f"label_dropout={cfg.label_dropout!r} must be in [0, 1) and needs num_classes > 0")
    if len(set(cfg.classes)) != len(cfg.classes) or any(c < 0 for c in cfg.classes):
        raise ValueError(f"classes={list(cfg.classes)!r} must be distinct class indices >= 0")
    if cfg.init_sha256 and not cfg.init_from:
        raise ValueError("init_sha256 is the digest of init_from's weights: set init_from too (or neither)")
    if cfg.method == "exact_class" and not cfg.num_classes:
        raise ValueError("method 'exact_class' assigns within each class: it needs a class-conditional run "
                         "(num_classes > 0); use 'exact' for unconditional training")
    return cfg


