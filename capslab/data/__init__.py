from capslab.data.arrays import as_labels, as_pixels
from capslab.data.augment import random_shift, shift_images
from capslab.data.base import DataInfo, Dataset, DatasetParams, Split, single_label_base
from capslab.data.download import cache_dir, fetch
from capslab.data.files import FileDataset, FileParams, ReleaseFile, md5_file
from capslab.data.idx import IDXDataset, IDXFile, IDXParams, load_idx_split, read_idx, read_idx_bytes, write_idx
from capslab.data.mat import read_mat, struct_field
from capslab.data.norb import parse_norb, read_norb, write_norb

__all__ = [
    "DataInfo",
    "Dataset",
    "DatasetParams",
    "FileDataset",
    "FileParams",
    "IDXDataset",
    "IDXFile",
    "IDXParams",
    "ReleaseFile",
    "Split",
    "single_label_base",
    "as_labels",
    "as_pixels",
    "cache_dir",
    "fetch",
    "load_idx_split",
    "md5_file",
    "parse_norb",
    "random_shift",
    "shift_images",
    "read_idx",
    "read_idx_bytes",
    "read_mat",
    "read_norb",
    "struct_field",
    "write_idx",
    "write_norb",
]
