"""Using a trained detector on new footage: checkpoints to detectors, frame sources, outputs (predict_fred.py)."""
