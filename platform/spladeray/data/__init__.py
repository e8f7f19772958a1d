"""Data: BEIR readers, Ray Data readers, hard negatives, teacher scores, the prepare pipeline."""
