"""Clip format (read / write / validate), data sets and batching, real-video ingest."""
