"""Data: the synthetic shapes dataset, shard writing and the webdataset pipeline."""
