from capslab.data.base import DataInfo, Dataset, DatasetParams, Split

__all__ = ["DataInfo", "Dataset", "DatasetParams", "Split"]
