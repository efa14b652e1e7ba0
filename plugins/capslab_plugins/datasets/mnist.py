"""``mnist``: LeCun, Cortes, Burges' MNIST (60,000 training and 10,000 test digits, 28x28) from IDX files.

Reads the four standard files, gzipped or not, from ``data_dir``, else from capslab's data cache, where
missing ones are downloaded (``download: true``) and checked against the MD5s torchvision uses.
"""

import capslab

IDXFile = capslab.data.IDXFile


class MNIST(capslab.data.IDXDataset):
    name = "mnist"
    info = capslab.DataInfo(1, 28, 28, 10)
    files = {
        "train": (
            IDXFile("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
            IDXFile("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
        ),
        "test": (
            IDXFile("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
            IDXFile("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
        ),
    }
    # torchvision's mirror first: yann.lecun.com often refuses downloads (HTTP 403)
    mirrors = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")


@capslab.hookimpl
def register_datasets(register):
    register(MNIST)
