"""MEME (Lee et al., AAAI 2024): multi-architecture multi-expert diffusion on the shared diffusion core.

- `nets`: the iFormer-style mixer (conv high-frequency path, pooled self-attention low-frequency path) and the
  iU-Net built from it, plus the per-expert channel-ratio schedule;
- `assignment`: hard or soft assignment of training timesteps to experts;
- `module`: `RoutedExperts` (sends each timestep to the expert that owns it) and `MEMEModule`.
"""
