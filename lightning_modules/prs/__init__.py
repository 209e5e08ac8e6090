"""PRS: progressive reparameterization from convolution to self-attention (layers, hybrid backbone, module).

Kept empty on purpose: `lightning_modules.nets.backbones` imports `lightning_modules.prs.nets` to register the
`prs_*` timm models, so this package must not import the classifier (that would be a circular import).
"""
