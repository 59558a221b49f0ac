"""Retrieval data on disk: BEIR folders (`DataSource`) and the mined-candidates store. Knows nothing of models."""

from pa_retriever.data.beir import DataFormatError, RetrievalData
from pa_retriever.data.source import DataSource

__all__ = ["DataFormatError", "DataSource", "RetrievalData"]
