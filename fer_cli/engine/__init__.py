"""Engine: what runs models over data: training, the prediction stream, scoring, ensembles and calibration."""
