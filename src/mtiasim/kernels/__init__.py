"""Kernels: operators -> command programs for a PE sub-grid."""
