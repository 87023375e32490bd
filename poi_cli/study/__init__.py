"""Layer 3, study: what a trained model says about a prepared split (where the input comes
from `poi prepare`). May import core, data and model, never train or deploy.

evaluate (`poi evaluate`: accuracy, calibration, selective prediction, Table IV strata),
audit (`poi audit`: images whose label the PIN disagrees with), clean (`poi clean`: an
audit made into a label file), calibrate (`poi calibrate`: T_cal), report (`poi report`:
tables and plots across runs).
"""
