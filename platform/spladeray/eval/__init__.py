"""Evaluation: metrics (ir-measures), BM25 baseline, fusion, sparsity, reports."""
