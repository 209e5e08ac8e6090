"""PPAP: plug-and-play diffusion guidance with noise-range experts (LoRA, data-free distillation).

- `nets`: classifiers as guides (timm by name or an `ImageClassifier` checkpoint), input adapters, peft LoRA.
- `module`: `PPAPExpertModule`, N guidance experts trained by distillation (or the supervised baselines).
- `guidance`: `NoiseRangeGuide` and the guided DDIM / DDPM sampler shared by every diffusion module.
- `sampling`: `PPAPGuidedSampling`, `cli.py predict` for guided samples.
"""
