"""Readers and writers of retrieval data; import them from :mod:`datamodules.formats`."""
