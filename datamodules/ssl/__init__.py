"""Datamodules of the self-supervised methods: CIFAR-10/100 (python-pickle release), ImageNet-100 (ImageFolder +
the CMC 100-class list), scikit-learn's bundled digits; N-view augmentation pipelines per method."""
