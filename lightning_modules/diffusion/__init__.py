"""The shared diffusion core (ANT, and next MEME and PPAP), in diffusers' separation of concerns.

- `nets`: denoising networks (diffusers `UNet2DModel` presets: tiny for CPU, ADM-like, LDM-like);
- `schedulers`: the training noise schedule (`DDPMScheduler`) and the samplers built from it (DDIM / DDPM);
- `sampling`: the reverse-process loop (seeded per sample, optionally decoding latents);
- `latent`: a frozen `AutoencoderKL` read from a local folder (latent diffusion);
- `fid`: FID through torchmetrics with a pluggable feature extractor (Inception from a local file, or a
  digits classifier's features);
- `module`: `DiffusionModule`, the LightningModule that ties them together.
"""
