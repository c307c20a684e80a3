"""Tools beside the training code: the FRED-shaped data generator and the data check."""
