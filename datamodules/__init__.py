"""Data modules: the DomainBed-protocol multi-domain layer and its datasets."""

from datamodules.domainbed import DomainBedDataModule
from datamodules.errors import CorruptImageError, DataLayoutError
from datamodules.multidomain import DomainBalancedStream, MultiDomainDataModule
from datamodules.rotated_digits import RotatedDigitsDataModule

__all__ = [
    "CorruptImageError",
    "DataLayoutError",
    "DomainBalancedStream",
    "DomainBedDataModule",
    "MultiDomainDataModule",
    "RotatedDigitsDataModule",
]
