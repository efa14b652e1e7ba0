from capslab.data.augment import random_shift
from capslab.data.base import DataInfo, Dataset, DatasetParams, Split
from capslab.data.download import cache_dir, fetch
from capslab.data.idx import IDXDataset, IDXFile, IDXParams, load_idx_split, read_idx, write_idx

__all__ = [
    "DataInfo", "Dataset", "DatasetParams", "IDXDataset", "IDXFile", "IDXParams", "Split", "cache_dir", "fetch",
    "load_idx_split", "random_shift", "read_idx", "write_idx",
]
