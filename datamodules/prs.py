"""Classification data for the PRS experiments: bundled digits (CPU demo), CIFAR-100, class-balanced ImageNet subsets.

Every item is `(image tensor, label)`; each module exposes `num_classes` and `input_shape` (linked into the model
by the CLI). Validation and test use the same held-out split (CIFAR-100 test / ImageNet val / the digits held-out
images): the experiments select no model on it, they report the last epoch.

Layouts (nothing is downloaded):
- CIFAR-100: `<root>/cifar-100-python/{train,test}`, the python-pickle release (read by `datamodules.ssl.datasets`).
- ImageNet: `<root>/train/<wnid>/*.JPEG`; validation either sorted `<root>/val/<wnid>/*.JPEG` or the official
  flat `<root>/val/*.JPEG` with `<root>/LOC_val_solution.csv` (`ImageId,PredictionString`; the prediction string
  starts with the wnid). A subset keeps `fraction` of every class's training images (at least one), drawn with
  `subset_seed`; with `subset_list` the chosen files are written there once and read back on later runs.
- Digits: scikit-learn's 1,797 bundled 8x8 digits, upsampled; a seeded split into a training pool of `n_train`
  images and the held-out rest, of which `train_fraction` of the pool is used.
"""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS

from datamodules.domainbed import load_rgb
from datamodules.errors import DataLayoutError
from datamodules.loaders import eval_dataloader
from datamodules.rotated_digits import upsampled_digits
from datamodules.ssl.datasets import CIFAR_URL, ArrayImages, TensorImages, read_cifar

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_LAYOUT = (
    "expected <root>/train/<wnid>/*.JPEG and either <root>/val/<wnid>/*.JPEG or the official flat "
    "<root>/val/*.JPEG with <root>/LOC_val_solution.csv; get ILSVRC-2012 from https://image-net.org "
    "(or the Kaggle 'imagenet-object-localization-challenge' release, which ships LOC_val_solution.csv)"
)


class RandomStepsSampler(DistributedSampler):
    """`num_samples` indices per rank, drawn with replacement, the same draw on every rank then sharded.

    Gives fixed-length epochs (so small splits still train a set number of steps). Each epoch draws
    `num_samples * world_size` indices from a generator seeded with `seed + epoch` (identical on every rank) and
    rank r takes every world_size-th one from r, so a global batch under DDP is what one process with the global
    batch size would see. A `DistributedSampler` subclass, so Lightning keeps it instead of replacing it.
    """

    def __init__(self, dataset: Dataset, num_samples: int, seed: int = 0) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        world = torch.distributed.get_world_size() if distributed else 1
        rank = torch.distributed.get_rank() if distributed else 0
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.per_rank = num_samples

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        draw = torch.randint(len(self.dataset), (self.per_rank * self.num_replicas,), generator=gen)
        return iter(draw[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.per_rank


class _Classification(L.LightningDataModule):
    """Shuffled training loader (optionally a fixed number of steps per epoch) and DDP-exact eval loaders."""

    train_set: Dataset
    eval_set: Dataset

    def __init__(self, batch_size: int, eval_batch_size: int, num_workers: int, steps_per_epoch: int | None):
        super().__init__()
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be positive or null, got {steps_per_epoch}")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.steps_per_epoch = num_workers, steps_per_epoch

    def train_dataloader(self) -> DataLoader:
        if self.steps_per_epoch is None and len(self.train_set) < self.batch_size:
            raise DataLayoutError(
                f"{len(self.train_set)} training images, fewer than batch_size {self.batch_size}"
            )
        sampler = None
        if self.steps_per_epoch is not None:
            # fixed-length epochs (with replacement), so small splits still train; seed_everything's seed is the
            # same on every rank, so the ranks share one draw
            seed = int(torch.initial_seed()) % 2**31
            sampler = RandomStepsSampler(self.train_set, self.steps_per_epoch * self.batch_size, seed)
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return eval_dataloader(self.eval_set, self.eval_batch_size, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return eval_dataloader(self.eval_set, self.eval_batch_size, self.num_workers)


class DigitsClassificationDataModule(_Classification):
    """scikit-learn digits upsampled to `image_size` (single channel, [0, 1]); the PRS CPU demo's data.

    Args:
        image_size: side of the upsampled images (8 keeps the originals).
        n_train: size of the seeded training pool; the other 1,797 - n_train images are held out.
        train_fraction: fraction of the pool used for training (our spec's 15 % / 100 % splits).
        split_seed: seed of the shuffle that defines the pool and the held-out images.
        shift: random translation, in original 8x8 pixels, applied to training images (0: none).
        steps_per_epoch: training batches per epoch and rank, drawn with replacement (null: one pass over the
            split); under DDP the ranks share one seeded draw (`RandomStepsSampler`).
    """

    def __init__(
        self,
        image_size: int = 16,
        n_train: int = 1200,
        train_fraction: float = 1.0,
        split_seed: int = 0,
        shift: int = 1,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        steps_per_epoch: int | None = 20,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, steps_per_epoch)
        if not 0.0 < train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 (the digits are 8x8), got {image_size}")
        self.image_size, self.n_train, self.train_fraction = image_size, n_train, train_fraction
        self.split_seed, self.shift = split_seed, shift
        self.num_classes = 10
        self.input_shape = (1, image_size, image_size)

    def setup(self, stage: str | None = None) -> None:
        images, labels = upsampled_digits(self.image_size)
        if not 0 < self.n_train < len(labels):
            raise ValueError(f"n_train must be in (0, {len(labels)}), got {self.n_train}")
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        pool, held_out = order[: self.n_train], order[self.n_train :]
        train = pool[: max(1, round(self.train_fraction * self.n_train))]
        pad = round(self.shift * self.image_size / 8)
        augment = T.RandomCrop(self.image_size, padding=pad) if pad > 0 else None
        self.train_set = TensorImages(images[train], labels[train], augment)
        self.eval_set = TensorImages(images[held_out], labels[held_out])


class CIFAR100DataModule(_Classification):
    """CIFAR-100 (fine labels) from the python-pickle release, with the usual ViT-on-CIFAR augmentation.

    Training: random crop 32 with 4-pixel zero padding, horizontal flip, optional RandAugment, normalisation.
    Evaluation: the 10,000 test images, normalised.

    Args:
        root: folder that holds `cifar-100-python/`.
        randaugment_ops, randaugment_magnitude: RandAugment(N, M) (0 ops: off).
    """

    def __init__(
        self,
        root: str = "data/cifar",
        batch_size: int = 128,
        eval_batch_size: int = 256,
        randaugment_ops: int = 2,
        randaugment_magnitude: int = 9,
        num_workers: int = 4,
        steps_per_epoch: int | None = None,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, steps_per_epoch)
        self.root = root
        self.num_classes = 100
        self.input_shape = (3, 32, 32)
        extra = [T.RandAugment(randaugment_ops, randaugment_magnitude)] if randaugment_ops > 0 else []
        normalize = [T.ToTensor(), T.Normalize(CIFAR100_MEAN, CIFAR100_STD)]
        self.train_transform = T.Compose(
            [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *extra, *normalize]
        )
        self.eval_transform = T.Compose(normalize)

    def setup(self, stage: str | None = None) -> None:
        base = Path(self.root) / "cifar-100-python"
        missing = [str(base / f) for f in ("train", "test") if not (base / f).is_file()]
        if missing:
            raise DataLayoutError(
                f"CIFAR-100: missing {', '.join(missing)}.\n  Expected the python-pickle release unpacked under "
                f"--data.init_args.root: {base}/{{train,test,meta}}.\n  Get 'CIFAR-100 python version' "
                f"(cifar-100-python.tar.gz) from {CIFAR_URL} and untar it into the root."
            )
        if stage in ("fit", None):
            self.train_set = ArrayImages(*read_cifar(self.root, "cifar100", train=True), self.train_transform)
        self.eval_set = ArrayImages(*read_cifar(self.root, "cifar100", train=False), self.eval_transform)


class ImageFiles(Dataset):
    """`(transform(RGB image), label)` over (path, label) pairs; an undecodable file raises a clear error."""

    def __init__(self, samples: list[tuple[str, int]], transform) -> None:
        if not samples:
            raise DataLayoutError("empty split: no images")
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return self.transform(load_rgb(path)), label


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)


def balanced_subset(per_class: list[list[str]], fraction: float, seed: int) -> list[list[str]]:
    """Keep round(fraction * n_c) (at least 1) of each class's files, drawn with one seeded generator."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for files in per_class:
        keep = max(1, round(fraction * len(files)))
        order = torch.randperm(len(files), generator=gen)[:keep].sort().values
        out.append([files[i] for i in order.tolist()])
    return out


def imagenet_val_samples(root: Path, class_index: dict[str, int]) -> list[tuple[str, int]]:
    """Validation (path, label): sorted `val/<wnid>/` folders, else flat `val/` + `LOC_val_solution.csv`."""
    val = root / "val"
    if not val.is_dir():
        raise DataLayoutError(f"ImageNet: {val} does not exist; {IMAGENET_LAYOUT}")
    folders = sorted(p for p in val.iterdir() if p.is_dir())
    if folders:
        unknown = [p.name for p in folders if p.name not in class_index]
        if unknown:
            raise DataLayoutError(f"ImageNet: val classes {unknown[:5]} have no train/<wnid> folder")
        return [(str(f), class_index[d.name]) for d in folders for f in _images(d)]
    solution = next(
        (p for p in (root / "LOC_val_solution.csv", val / "LOC_val_solution.csv") if p.is_file()), None
    )
    if solution is None:
        raise DataLayoutError(
            f"ImageNet: {val} has no <wnid> folders and no LOC_val_solution.csv; {IMAGENET_LAYOUT}"
        )
    by_stem = {p.stem: p for p in _images(val)}
    samples = []
    with open(solution, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"ImageId", "PredictionString"} <= set(rows[0]):
        raise DataLayoutError(
            f"{solution}: expected the columns ImageId,PredictionString, got {list(rows[0])}"
        )
    for row in rows:
        wnid = row["PredictionString"].split()[0] if row["PredictionString"].split() else ""
        if row["ImageId"] not in by_stem:
            raise DataLayoutError(f"{solution} lists {row['ImageId']!r}, which is not an image in {val}")
        if wnid not in class_index:
            raise DataLayoutError(
                f"{solution}: {row['ImageId']} has class {wnid!r}, not a train/<wnid> folder"
            )
        samples.append((str(by_stem[row["ImageId"]]), class_index[wnid]))
    return sorted(samples)


class ImageNetSubsetDataModule(_Classification):
    """A class-balanced, seeded `fraction` of the ImageNet training set (ImageFolder layout); full validation set.

    Args:
        root: the ImageNet root (see the module docstring for the layout).
        fraction: share of each class's training images kept (0.1 = a 10 % subset).
        subset_seed: seed of the draw.
        subset_list: optional text file of the chosen training files (relative to root, one a line): written on the
            first run, read (and checked) on later runs, so a subset is reproducible across machines.
        image_size: training crop / evaluation centre-crop size.
    """

    def __init__(
        self,
        root: str = "data/imagenet",
        fraction: float = 0.1,
        subset_seed: int = 0,
        subset_list: str | None = None,
        image_size: int = 224,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        num_workers: int = 8,
        steps_per_epoch: int | None = None,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, steps_per_epoch)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.root, self.fraction, self.subset_seed, self.subset_list = (
            Path(root),
            fraction,
            subset_seed,
            subset_list,
        )
        train = self.root / "train"
        if not train.is_dir():
            raise DataLayoutError(f"ImageNet: {train} does not exist; {IMAGENET_LAYOUT}")
        self.classes = sorted(p.name for p in train.iterdir() if p.is_dir())
        if not self.classes:
            raise DataLayoutError(f"ImageNet: no <wnid> folders in {train}; {IMAGENET_LAYOUT}")
        self.num_classes = len(self.classes)
        self.input_shape = (3, image_size, image_size)
        normalize = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        self.train_transform = T.Compose(
            [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *normalize]
        )
        self.eval_transform = T.Compose(
            [T.Resize(round(image_size / 0.875)), T.CenterCrop(image_size), *normalize]
        )

    def train_files(self) -> list[tuple[str, int]]:
        """The subset's (path, label) pairs, from `subset_list` when it exists, else drawn (and written)."""
        index = {w: i for i, w in enumerate(self.classes)}
        listed = Path(self.subset_list) if self.subset_list else None
        if listed is not None and listed.is_file():
            rel = [ln.strip() for ln in listed.read_text().splitlines() if ln.strip()]
            if not rel:
                raise DataLayoutError(f"subset list {listed} is empty")
            samples = []
            for r in rel:
                path = self.root / r
                if not path.is_file() or path.parent.name not in index:
                    raise DataLayoutError(
                        f"subset list {listed} names {r!r}, not an image under {self.root}/train"
                    )
                samples.append((str(path), index[path.parent.name]))
            return samples
        per_class = []
        for wnid in self.classes:
            files = _images(self.root / "train" / wnid)
            if not files:
                raise DataLayoutError(f"ImageNet: class folder {self.root / 'train' / wnid} has no images")
            per_class.append([str(p) for p in files])
        chosen = balanced_subset(per_class, self.fraction, self.subset_seed)
        samples = [(f, i) for i, files in enumerate(chosen) for f in files]
        if listed is not None:
            listed.parent.mkdir(parents=True, exist_ok=True)
            tmp = listed.with_suffix(listed.suffix + ".tmp")
            tmp.write_text("".join(str(Path(f).relative_to(self.root)) + "\n" for f, _ in samples))
            tmp.replace(listed)  # never a half-written list
        return samples

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None):
            self.train_set = ImageFiles(self.train_files(), self.train_transform)
        index = {w: i for i, w in enumerate(self.classes)}
        self.eval_set = ImageFiles(imagenet_val_samples(self.root, index), self.eval_transform)
