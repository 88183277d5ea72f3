"""The paper's taxonomic bird classifier (§2.1–2.4): frontend, model, augmentations, data,
training (Lightning) and clip classification."""
