"""Stable Diffusion latent training with noise assignment (the paper's ImageNet experiments), for GPU machines:
components (``components``), the VAE latent cache (``latents``), text-conditioned training on the engine (``train``)
and sampling through the diffusers pipeline (``sample``). Needs the ``sd`` extra (transformers)."""
