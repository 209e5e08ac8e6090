"""HoughCL: DenseCL with a choice of dense positive-pair rules (arg-max, threshold, Hough voting)."""
