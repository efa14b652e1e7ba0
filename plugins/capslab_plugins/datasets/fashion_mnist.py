"""``fashion_mnist``: Zalando's Fashion-MNIST (Xiao, Rasul, Vollgraf 2017), MNIST's IDX format and sizes.

Uses Debian's ``dataset-fashion-mnist`` files in /usr/share/datasets/fashion-mnist when present (Debian
re-gzipped them, so their .gz MD5s differ from the release's while the decompressed bytes match:
``verify: true`` checks those), else ``data_dir`` or the cache, downloading from Zalando when missing.
"""

import capslab

IDXFile = capslab.data.IDXFile


class FashionMNIST(capslab.data.IDXDataset):
    name = "fashion_mnist"
    info = capslab.DataInfo(1, 28, 28, 10)
    files = {
        "train": (
            IDXFile("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
            IDXFile("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
        ),
        "test": (
            IDXFile("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
            IDXFile("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
        ),
    }
    mirrors = (
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    )
    system_dirs = ("/usr/share/datasets/fashion-mnist",)


@capslab.hookimpl
def register_datasets(register):
    register(FashionMNIST)
