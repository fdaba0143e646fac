"""Descriptors: cutoff functions, ACSF, SOAP power spectrum and chirality-aware features."""

from jaxpot.descriptors import acsf, chiral, cutoff, environment, soap

__all__ = ["acsf", "chiral", "cutoff", "environment", "soap"]
