"""Receivers: a version released by a deployment gets its reference statistics computed once."""
